"""One compiled model for the stages that train the same architecture: the three base models.

Building a model, compiling it and tracing its train and validation steps is most of a small
stage's fixed cost (DenseNet-121 at 64 px: a base model's first epoch ~45 s, the later ones
~6 s). The three base models share one architecture and datasets of one element spec, so the
second and third train the first one's model, whose compiled steps Keras keeps
(``Model.train_function``, ``test_function``), after putting it back in the state in which a
fresh build would start:

- every model variable: weights, BatchNorm statistics and random-generator states, as the
  seeded build drew them (pretrained or not, every base model starts from the same weights);
- every optimizer variable: step counter, moments, learning rate, and the loss scale of a
  ``mixed_float16`` ``LossScaleOptimizer``;
- the Keras model's name, which names the saved ``.keras`` model (``bm_dm``...).

Metrics need nothing: ``fit`` resets them at every epoch. Stages reseed with
``set_random_seed`` below, which keeps TensorFlow's caches, and so the compiled steps' kernels.
"""

from __future__ import annotations

import random
from typing import Callable

import keras
import numpy as np

try:  # private modules: without them every reseed is Keras' own (the same results, only slower)
    from keras.src.backend.common import global_state
    from keras.src.random import seed_generator
    from tensorflow.python.eager import context
except ImportError:
    global_state = None


class ReusedModel:
    """Holds the compiled model of one kind of stage; ``get`` hands it out reset.

    Give one instance to stages that build the same architecture under the same strategy,
    precision and compile settings, and feed it datasets of one element spec (else Keras
    traces the steps again, which is correct, only slower).
    """

    def __init__(self):
        self._model: keras.Model | None = None
        self._initial: list[np.ndarray] = []

    def get(self, new_model: Callable[[], keras.Model], name: str) -> keras.Model:
        """``new_model()``'s model (compiled) the first time; after that the same object reset to
        the state it had then. Named ``name`` either way. Call it in the strategy's scope."""
        if self._model is None:
            model = new_model()
            model.optimizer.build(model.trainable_variables)  # its variables exist now, so they can be reset
            self._model, self._initial = model, [np.array(v) for v in _state(model)]
        else:
            for variable, value in zip(_state(self._model), self._initial):
                variable.assign(value)
        self._model.name = name
        return self._model


def _state(model: keras.Model) -> list:
    """Everything training changes: the model's variables (seed states included) and the optimizer's."""
    return [*model.variables, *model.optimizer.variables]


def set_random_seed(seed: int) -> None:
    """``keras.utils.set_random_seed``, except that TensorFlow's global seed is set only when it
    differs from ``seed``.

    ``tf.random.set_seed`` also empties TensorFlow's eager kernel and function caches
    (``TFE_ContextClearCaches``): a compiled step is not traced again, but its next call builds
    its kernels again, which cost a reused DenseNet-121 base model's first batch 54 s at 64 px
    (88 s with the tracing). Seeded tf.data ops read the global seed's value, which stays the
    same; the Keras, Python and NumPy generators are reset as Keras resets them.
    """
    if global_state is None or context.global_seed() != seed:
        keras.utils.set_random_seed(seed)
        return
    global_state.set_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR, None)  # recreated from the seed
    random.seed(seed)
    np.random.seed(seed)
