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

Metrics need nothing: ``fit`` resets them at every epoch.
"""

from __future__ import annotations

from typing import Callable

import keras
import numpy as np


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
