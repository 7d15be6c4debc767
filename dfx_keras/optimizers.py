"""Adam with coupled L2 weight decay, as PyTorch's ``Adam(weight_decay=...)``.

PyTorch adds ``weight_decay * w`` to the gradient before the Adam moments (coupled L2); Keras'
``weight_decay`` argument is decoupled (AdamW-like) and trains differently. The reference used
the coupled form on every parameter, so this optimizer reproduces it.
"""

import keras


@keras.saving.register_keras_serializable(package="dfx_keras")
class AdamL2(keras.optimizers.Adam):
    """``keras.optimizers.Adam`` whose gradients get ``l2 * variable`` added first."""

    def __init__(self, l2: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.l2 = float(l2)

    def update_step(self, gradient, variable, learning_rate):
        if self.l2:
            gradient = gradient + keras.ops.cast(self.l2, gradient.dtype) * keras.ops.cast(variable, gradient.dtype)
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "l2": self.l2}
