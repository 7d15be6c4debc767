"""--input_residual: NPR (Tan et al., CVPR 2024) in front of the backbones, inside every saved model."""

import io
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import make_corpus, random_image
from dfx_keras import config, contrastive, models
from dfx_keras.data import corpus as corpus_lib
from dfx_keras.data import pipelines
from dfx_keras.explain import gradcam
from dfx_keras.input_residuals import NPR_SCALE, NeighbouringPixelResidual, check_input_residual
from dfx_keras.serving import module as serving_module
from dfx_keras.training import distribute, fit, stages
from test_training import TINY, _train_cli

SIZE = 32
BASE_NAMES = ("bm_dm", "bm_gan", "bm_real")


def numpy_npr(x):
    """Each pixel minus the top-left pixel of its 2x2 cell, scaled by 2/3 (the authors' code)."""
    anchors = x[:, ::2, ::2, :].repeat(2, axis=1).repeat(2, axis=2)
    return (x - anchors) * 2.0 / 3.0


def images(n, seed=0, size=SIZE):
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype(np.float32)


def test_npr_equals_numpy_on_a_random_batch():
    x = np.random.default_rng(0).normal(size=(3, 8, 12, 3)).astype(np.float32)
    out = NeighbouringPixelResidual()(x).numpy()
    np.testing.assert_allclose(out, numpy_npr(x), atol=1e-6)
    cell = np.array([[1.0, 2.0], [3.0, 5.0]], np.float32)[None, :, :, None]
    np.testing.assert_allclose(NeighbouringPixelResidual()(cell).numpy()[0, :, :, 0],
                               np.array([[0.0, 1.0], [2.0, 4.0]]) * NPR_SCALE, atol=1e-6)


def _base(residual):
    return models.build_base_model("tiny", SIZE, None, name="bm_real", input_residual=residual)


def _baseline(residual):
    return models.build_baseline_model("tiny", SIZE, None, input_residual=residual)


def _contrastive(residual):
    embedder = models.build_feature_extractor("tiny", SIZE, None, name="bm_real_features", input_residual=residual)
    dim = embedder.output_shape[-1]
    return contrastive.attach_centroids(embedder, np.zeros(dim), np.full(dim, 0.5), "bm_real")


@pytest.mark.parametrize("build", [_base, _baseline, _contrastive], ids=["base", "baseline", "contrastive"])
def test_npr_sits_between_the_preprocessing_and_the_backbone_and_survives_a_safe_load(build, tmp_path):
    keras.utils.set_random_seed(1)
    model = build("npr")
    layer = model.get_layer(models.INPUT_RESIDUAL_LAYER)
    assert isinstance(layer, NeighbouringPixelResidual)
    assert layer.input is model.get_layer(models.PREPROCESSING_LAYER).output
    path = str(tmp_path / "model.keras")
    fit.save_model(model, path)
    loaded = models.load_model(path)  # safe_mode=True
    assert isinstance(loaded.get_layer(models.INPUT_RESIDUAL_LAYER), NeighbouringPixelResidual)
    x = images(4)
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-6)


def test_the_backbone_sees_only_the_residual():
    """A constant added to each 2x2 cell changes the image, not NPR: the model's answer stays;
    without the residual it moves (so the check can fail)."""
    x = images(4)
    cells = np.random.default_rng(1).uniform(-40, 40, (4, SIZE // 2, SIZE // 2, 3)).astype(np.float32)
    shifted = x + cells.repeat(2, axis=1).repeat(2, axis=2)
    for residual, same in (("npr", True), ("none", False)):
        keras.utils.set_random_seed(2)
        model = models.build_feature_extractor("tiny", SIZE, None, input_residual=residual)
        gap = np.abs(model(shifted).numpy() - model(x).numpy()).max()
        assert (gap < 1e-4) == same, (residual, gap)


def test_models_without_the_option_have_no_residual_layer():
    assert models.INPUT_RESIDUAL_LAYER not in {layer.name for layer in _base("none").layers}


def test_an_odd_image_size_is_refused_in_one_line(tmp_path):
    with pytest.raises(ValueError, match=r"^--input_residual=npr needs an even --image_size \(2x2 pixel cells\); "
                                         r"got 33$"):
        check_input_residual("npr", 33)
    with pytest.raises(ValueError, match="needs an even --image_size"):
        models.build_base_model("tiny", 33, None, input_residual="npr")
    with pytest.raises(ValueError, match="unknown input residual 'fft'"):
        models.build_base_model("tiny", SIZE, None, input_residual="fft")
    check_input_residual("none", 33)  # the image itself needs no even size
    result = _train_cli(f"--workdir={tmp_path}/w", "--data_dir=/tmp", "--input_residual=npr", "--image_size=33",
                        timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "--input_residual=npr needs an even --image_size (2x2 pixel cells); got 33" in result.stderr
    assert not os.path.exists(f"{tmp_path}/w")  # before any work


def test_grad_cam_goes_through_the_residual():
    keras.utils.set_random_seed(3)
    complete = models.build_complete_model(*[models.build_base_model("tiny", SIZE, None, name=n, input_residual="npr")
                                             for n in BASE_NAMES])
    x = images(2)
    logits, *maps = gradcam.gradcam_model(complete)(x)
    np.testing.assert_allclose(logits.numpy(), complete(x).numpy(), rtol=1e-5, atol=1e-6)
    assert len(maps) == 3


def jpeg(array):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.mark.slow
def test_train_cli_with_npr_records_it_and_every_model_export_and_evaluation_carry_it(tmp_path):
    """train.py --input_residual=npr: flags.txt records it; the base models and the complete
    model hold the layer; evaluation and export ran; the SavedModel serves a JPEG through its
    bytes signature as the Keras complete model answers the same decoded image."""
    data = make_corpus(tmp_path / "corpus", per_folder=16)
    work = str(tmp_path / "work")
    result = _train_cli(f"--workdir={work}", f"--data_dir={data}", "--epochs=1", "--input_residual=npr", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--input_residual=npr" in open(f"{work}/flags.txt").read().splitlines()
    for name in BASE_NAMES:
        model = models.load_model(f"{work}/models/{name}.keras")
        assert isinstance(model.get_layer(models.INPUT_RESIDUAL_LAYER), NeighbouringPixelResidual)
    complete = models.load_model(f"{work}/models/complete.keras")
    for extractor in models.base_feature_extractors(complete):
        assert isinstance(extractor.get_layer(models.INPUT_RESIDUAL_LAYER), NeighbouringPixelResidual)
    assert "raw" in json.load(open(f"{work}/results/results.json"))
    served = tf.saved_model.load(f"{work}/export/dfx/1").signatures[serving_module.SIGNATURE_BYTES]
    encoded = [jpeg(random_image(h, w, seed)) for seed, (h, w) in enumerate([(40, 48), (64, 30)])]
    out = served(**{serving_module.BYTES_INPUT: tf.constant(encoded)})
    expected = complete(tf.stack([pipelines.resize(pipelines.decode_image(e), SIZE) for e in encoded]))
    np.testing.assert_allclose(out["logits"].numpy(), expected.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_contrastive_base_models_and_the_baseline_take_the_residual(tmp_path):
    """The stages the CLI run above leaves out: a contrastive base model and the baseline."""
    data = make_corpus(tmp_path / "corpus", per_folder=8)
    corpus, source = corpus_lib.scan_corpus(data), pipelines.FolderSource(data)
    cfg = config.TrainConfig(workdir=str(tmp_path / "w"), epochs=1, base_objective="contrastive", input_residual="npr",
                             val_fraction=0.5, backbone="tiny", weights=None, image_size=SIZE, batch_size=8, verbose=0)
    strategy = distribute.get_strategy("one_device")
    stages.train_base_model(cfg, corpus, source, "real", strategy)
    stages.train_baseline(cfg, corpus, source, strategy)
    for name in ("bm_real", "baseline"):
        model = models.load_model(cfg.wd.model(name))
        assert isinstance(model.get_layer(models.INPUT_RESIDUAL_LAYER), NeighbouringPixelResidual)
