"""The base models share one compiled model (``training.reuse``) and train as if each were built alone."""

import json

import keras
import numpy as np
import pytest
from conftest import make_corpus

from dfx_keras import config, models
from dfx_keras.classes import CLASS_NAMES
from dfx_keras.data import corpus as corpus_lib
from dfx_keras.data import pipelines
from dfx_keras.training import distribute, fit, stages
from dfx_keras.training.reuse import ReusedModel

TINY = dict(backbone="tiny", weights=None, image_size=32, batch_size=8, epochs=1, verbose=0)


class StepFunctions(keras.callbacks.Callback):
    """Records, at the start of every fit, the model's name, the model object and its compiled train step."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def on_train_begin(self, logs=None):
        self.seen.append((self.model.name, self.model, self.model.train_function))


@pytest.fixture(scope="module")
def corpus16(tmp_path_factory):
    root = make_corpus(tmp_path_factory.mktemp("corpus16"), per_folder=16)
    return corpus_lib.scan_corpus(root), pipelines.FolderSource(root)


def _stage(cfg, name):
    with open(cfg.wd.path("logs", "stages.json")) as f:
        return json.load(f)[name]


@pytest.mark.slow
@pytest.mark.parametrize("objective, strategy, precision", [
    ("cross_entropy", "mirrored", "float32"),  # two replicas, synchronized BatchNorm
    ("contrastive", "one_device", "float32"),
])
def test_reused_base_models_equal_base_models_built_alone(tmp_path, corpus16, objective, strategy, precision):
    """Base models on one compiled model: the second trains the first one's model object and
    compiled train step, and ends with the weights, validation metrics and Keras name of the
    same base model trained in a fresh model (float tolerance). One epoch is enough: Adam's
    step counter and moments left by the first base model would change the second's first step."""
    corpus, source = corpus16
    dist = distribute.get_strategy(strategy)
    steps = StepFunctions()
    shared = config.TrainConfig(workdir=str(tmp_path / "shared"), base_objective=objective, precision=precision,
                                extra_callbacks=[steps], **TINY)
    stages.train_base_models(shared, corpus, source, CLASS_NAMES[:2], dist)
    assert [name for name, _, _ in steps.seen] == ["bm_dm", "bm_gan"]
    assert len({id(model) for _, model, _ in steps.seen}) == 1
    assert len({id(function) for _, _, function in steps.seen}) == 1  # compiled once, not per base model
    alone = config.TrainConfig(workdir=str(tmp_path / "alone"), base_objective=objective, precision=precision, **TINY)
    stages.train_base_model(alone, corpus, source, CLASS_NAMES[1], dist)
    reused, fresh = (models.load_model(cfg.wd.model("bm_gan")) for cfg in (shared, alone))
    assert reused.name == fresh.name == "bm_gan"
    assert [w.shape for w in reused.weights] == [w.shape for w in fresh.weights]
    for a, b in zip(reused.get_weights(), fresh.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    for key in ("val_loss", "val_accuracy", "train_accuracy"):
        assert _stage(shared, "bm_gan")[key] == pytest.approx(_stage(alone, "bm_gan")[key], rel=1e-4, abs=1e-5)


def test_get_puts_back_every_variable_of_the_model_and_its_loss_scale_optimizer(tmp_path):
    """After a fit, ``get`` restores weights, BatchNorm statistics, Adam's step and moments, the
    learning rate and the ``mixed_float16`` loss scale, and renames the model."""
    cfg = config.TrainConfig(workdir=str(tmp_path), precision="mixed_float16", learning_rate=1e-2)

    def build():
        with fit.dtype_policy(cfg.precision):
            inputs = keras.Input((4,))
            x = keras.layers.BatchNormalization()(keras.layers.Dense(8)(inputs))
            return fit.compile_model(keras.Model(inputs, keras.layers.Dense(2, dtype="float32")(x)), cfg)

    reuse = ReusedModel()
    model = reuse.get(build, "bm_dm")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    state = [*model.variables, *model.optimizer.variables]
    initial = [np.array(v) for v in state]
    x, y = np.random.default_rng(0).normal(size=(64, 4)), np.arange(64) % 2
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    model.optimizer.learning_rate.assign(1e-5)  # as a learning-rate schedule would leave it
    changed = [not np.array_equal(np.array(v), a) for v, a in zip(state, initial)]
    assert sum(changed) > len(state) // 2
    assert reuse.get(build, "bm_gan") is model and model.name == "bm_gan"
    for variable, value in zip(state, initial):
        np.testing.assert_array_equal(np.array(variable), value, err_msg=variable.path)
