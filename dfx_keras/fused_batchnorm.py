"""A BatchNormalization whose training step runs TensorFlow's fused kernel.

Keras 3 on TensorFlow trains ``BatchNormalization`` as separate ops: ``tf.nn.moments`` (mean,
squared difference, mean) then ``tf.nn.batch_normalization`` (rsqrt, mul, add), and their
gradients as a dozen more (tile, sum, sub...). TensorFlow has one kernel for the lot,
``FusedBatchNormV3`` / ``FusedBatchNormGradV3`` (oneDNN's on CPU, cuDNN's on GPU, on 4-D NHWC
input), which Keras 2 used by default. The head's Conv1D activations (B, L, C) are NHWC with
H = 1, so the fused kernel takes them after an ``expand_dims``.

Same layer otherwise (a subclass: same weights, config, moving-statistics update). Training
with it matches ``keras.layers.BatchNormalization`` to float tolerance, not bit for bit (other
summation order), so ``models.build_head`` does not use it unless asked (``fused_bn=True``).
Everything the fused kernel does not cover (inference, masks, renorm, synchronized
statistics, an axis other than the last, no scale or centre, other backends) runs Keras' code.
"""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="dfx_keras")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` trained through TensorFlow's fused batch-norm kernel."""

    def _fusable(self, inputs, mask) -> bool:
        return (keras.backend.backend() == "tensorflow" and mask is None and not self.renorm
                and not self.synchronized and self.center and self.scale and len(inputs.shape) in (3, 4)
                and self.axis in (-1, len(inputs.shape) - 1))

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable and self._fusable(inputs, mask)):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf  # only on the TensorFlow backend (_fusable)

        # The kernel takes bfloat16 / float16 input with float32 scale and statistics (it
        # accumulates in float32, as Keras' upcast does), which saves two casts per layer.
        x = inputs if inputs.dtype in (tf.bfloat16, tf.float16, tf.float32) else tf.cast(inputs, "float32")
        # (B, L, C) -> NHWC (B, 1, L, C) and back by expand_dims / squeeze, whose gradients are
        # reshapes (x[:, tf.newaxis]'s is a StridedSliceGrad: 13% of a bfloat16 step).
        x4 = tf.expand_dims(x, 1) if len(inputs.shape) == 3 else x
        empty = tf.constant([], "float32")
        y, mean, unbiased_var, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=x4, scale=tf.cast(self.gamma, "float32"), offset=tf.cast(self.beta, "float32"), mean=empty,
            variance=empty, epsilon=self.epsilon, data_format="NHWC", is_training=True)
        # The kernel returns the Bessel-corrected variance; Keras' moving average uses the biased one.
        count = tf.cast(tf.size(x4) // tf.shape(x4)[-1], "float32")
        variance = unbiased_var * (count - 1.0) / tf.maximum(count, 1.0)
        momentum = self.momentum
        self.moving_mean.assign(self.moving_mean * momentum + tf.cast(mean, self.moving_mean.dtype) * (1.0 - momentum))
        self.moving_variance.assign(self.moving_variance * momentum
                                    + tf.cast(variance, self.moving_variance.dtype) * (1.0 - momentum))
        y = tf.squeeze(y, 1) if len(inputs.shape) == 3 else y
        return tf.cast(y, self.compute_dtype)
