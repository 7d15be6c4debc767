"""Backbones, base models, the Conv1D head and the complete model."""

import keras
import numpy as np
import pytest

import dfx_keras
from dfx_keras import backbones, models
from dfx_keras.optimizers import AdamL2


def _numpy_head(x, head):
    """The head as PyTorch computes it, in NumPy: pad 1, valid conv, ReLU, BN (inference)."""
    for i in range(1, 6):
        kernel, bias = head.get_layer(f"conv{i}").get_weights()  # (k, c_in, c_out)
        stride = head.get_layer(f"conv{i}").strides[0]
        x = np.pad(x, ((0, 0), (1, 1), (0, 0)))
        k = kernel.shape[0]
        length = (x.shape[1] - k) // stride + 1
        windows = np.stack([x[:, j * stride:j * stride + k, :] for j in range(length)], axis=1)  # (B, L, k, c)
        x = np.maximum(np.einsum("blkc,kco->blo", windows, kernel) + bias, 0)
        if i < 5:
            gamma, beta, mean, var = head.get_layer(f"bn{i}").get_weights()
            x = gamma * (x - mean) / np.sqrt(var + 1e-5) + beta
    w, b = head.get_layer("logits").get_weights()
    return x.mean(axis=1) @ w + b


def test_head_matches_the_paper_shapes_and_parameter_count():
    head = dfx_keras.build_head(1024)
    assert sum(int(np.prod(w.shape)) for w in head.trainable_weights) == 2_027_331
    assert head.get_layer("conv1").output.shape[1] == 510
    assert head.get_layer("conv2").output.shape[1] == 254
    assert head.output_shape == (None, 3)
    bn = head.get_layer("bn1")
    assert (bn.momentum, bn.epsilon) == (0.9, 1e-5)
    assert "bn5" not in [layer.name for layer in head.layers]


def test_head_matches_a_numpy_reimplementation_of_the_pytorch_layers():
    head = dfx_keras.build_head(1024)
    rng = np.random.default_rng(0)
    for i in range(1, 5):  # non-trivial BatchNorm statistics
        bn = head.get_layer(f"bn{i}")
        n = bn.gamma.shape[0]
        bn.set_weights([rng.uniform(0.5, 1.5, n), rng.normal(0, 0.1, n), rng.normal(0, 0.1, n), rng.uniform(0.5, 2, n)])
    x = rng.normal(size=(2, 1024, 3)).astype(np.float32)
    np.testing.assert_allclose(head(x, training=False).numpy(), _numpy_head(x.astype(np.float64), head),
                               atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def tiny_models():
    return [dfx_keras.build_base_model("tiny", 32, None, name=n) for n in ("bm_dm", "bm_gan", "bm_real")]


def test_base_model_structure(tiny_models):
    bm = tiny_models[0]
    assert bm.input_shape == (None, 32, 32, 3) and bm.output_shape == (None, 2)
    assert isinstance(bm.get_layer("tiny"), keras.Model)
    assert models.feature_extractor(bm).output_shape == [(None, 64), (None, 2)]  # features, and its own output


def test_complete_model_stacks_frozen_features_in_dm_gan_real_order(tiny_models, tmp_path):
    complete = dfx_keras.build_complete_model(*tiny_models)
    names = [layer.name for layer in complete.layers]
    assert names[1:4] == ["bm_dm_features", "bm_gan_features", "bm_real_features"] and "head" in names
    assert all(not complete.get_layer(n).trainable for n in names[1:4])
    assert sum(int(np.prod(w.shape)) for w in complete.trainable_weights) == \
        sum(int(np.prod(w.shape)) for w in complete.get_layer("head").trainable_weights)
    images = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    stacked = keras.Model(complete.input, complete.get_layer("stacked_features").output)(images).numpy()
    for channel, bm in enumerate(tiny_models):
        np.testing.assert_allclose(stacked[..., channel], models.feature_extractor(bm)(images)[0].numpy(), atol=1e-5)
    # A frozen extractor runs BatchNorm in inference mode even when the model trains.
    np.testing.assert_allclose(complete(images, training=True).numpy(),
                               complete.get_layer("head")(stacked, training=True).numpy(), atol=1e-5)
    path = str(tmp_path / "complete.keras")
    complete.save(path)
    loaded = models.load_model(path)
    np.testing.assert_allclose(loaded(images).numpy(), complete(images).numpy(), atol=1e-6)


def test_detector_model_gives_logits_and_each_base_models_own_score_after_loading(tiny_models, tmp_path):
    complete = dfx_keras.build_complete_model(*tiny_models)
    path = str(tmp_path / "complete.keras")
    complete.save(path)
    loaded = models.load_model(path)
    assert models.has_base_outputs(loaded)
    images = np.random.default_rng(1).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    out = models.detector_model(loaded)(images)
    np.testing.assert_allclose(out["logits"].numpy(), complete(images).numpy(), atol=1e-5)
    expected = np.stack([keras.ops.softmax(bm(images))[:, 1] for bm in tiny_models], axis=1)  # DM, GAN, REAL
    np.testing.assert_allclose(out["base_scores"].numpy(), expected, atol=1e-5)


def test_a_complete_model_saved_with_features_only_still_loads_and_detects(tiny_models, tmp_path):
    """complete.keras files of earlier versions nest feature-only extractors: they load, give
    logits, and have no base scores to give."""
    inputs = keras.Input((32, 32, 3), name="image")
    features = [keras.Model(bm.input, bm.get_layer("features").output, name=f"{bm.name}_features")(inputs)
                for bm in tiny_models]
    old = keras.Model(inputs, models.build_head(64)(models.stack_features(features)), name="complete")
    path = str(tmp_path / "old.keras")
    old.save(path)
    loaded = models.load_model(path)
    assert not models.has_base_outputs(loaded)
    images = np.random.default_rng(2).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    out = models.detector_model(loaded)(images)
    assert set(out) == {"logits"}
    np.testing.assert_allclose(out["logits"].numpy(), old(images).numpy(), atol=1e-5)


def test_complete_model_rejects_mismatched_base_models(tiny_models):
    other = dfx_keras.build_base_model("tiny", 48, None)
    with pytest.raises(ValueError, match="input shape"):
        dfx_keras.build_complete_model(tiny_models[0], tiny_models[1], other)


def test_unknown_backbone_lists_the_choices():
    with pytest.raises(ValueError, match="unknown backbone 'densenet999'.*densenet121.*tiny"):
        backbones.get_backbone("densenet999")


def test_weights_argument():
    assert backbones.resolve_weights("none") is None and backbones.resolve_weights("imagenet") == "imagenet"
    with pytest.raises(ValueError, match="not found: /no/such.h5"):
        backbones.resolve_weights("/no/such.h5")


def test_weights_from_a_local_file(tmp_path):
    """Offline users pass a weights file; a Keras backbone loads it by path. The file comes from
    a model built as Keras builds the ImageNet ones (BatchNorm momentum 0.99, epsilon 1.001e-5):
    the reference's settings, set on the built layers, leave every loaded weight as it was."""
    source = keras.applications.DenseNet121(include_top=False, weights=None, input_shape=(64, 64, 3), pooling="avg")
    moving_variance = source.get_layer("conv1_bn").moving_variance
    moving_variance.assign(np.linspace(0.5, 2.0, moving_variance.shape[0]))  # not the initial values
    path = str(tmp_path / "densenet121_notop.weights.h5")
    source.save_weights(path)
    bm = dfx_keras.build_base_model("densenet121", 64, path)
    backbone = bm.get_layer("densenet121")
    for ours, theirs in zip(backbone.weights, source.weights):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy(), err_msg=ours.path)
    assert (backbone.get_layer("conv1_bn").momentum, backbone.get_layer("conv1_bn").epsilon) == (0.9, 1e-5)


@pytest.mark.parametrize("name", ["densenet121", "resnet50", "inception_v3", "efficientnet_b0"])
def test_preprocessing_matches_keras_applications(name):
    """Our serializable layer computes what each application's preprocess_input computes."""
    module = {"densenet121": keras.applications.densenet, "resnet50": keras.applications.resnet,
              "inception_v3": keras.applications.inception_v3,
              "efficientnet_b0": keras.applications.efficientnet}[name]
    images = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)
    ours = backbones.BackbonePreprocessing(backbones.preprocessing_mode(name, "imagenet"))(images)
    np.testing.assert_allclose(ours.numpy(), module.preprocess_input(images.copy()), atol=1e-4)


@pytest.mark.parametrize("name,dim", [("densenet121", 1024), ("resnet50", 2048), ("efficientnet_b0", 1280),
                                      ("inception_v3", 2048), ("tiny", 64)])
def test_registered_feature_sizes_and_feature_maps(name, dim):
    """keras.applications layouts; the torchvision layouts are in test_backbones."""
    spec = backbones.get_backbone(name)
    model = backbones.build_backbone(name, 75 if name == "inception_v3" else 64)
    assert spec.feature_dim == dim and model.output_shape == (None, dim)
    feature_map = backbones.feature_map(model)  # for Grad-CAM
    assert feature_map.name == spec.layouts[0].feature_map
    assert len(feature_map.output.shape) == 4 and feature_map.output.shape[-1] == dim


def test_adam_l2_is_coupled_weight_decay():
    """One step with zero loss gradient: coupled L2 moves w by lr*sign(w) (Adam's first step),
    while Keras' decoupled weight_decay moves it by lr*wd*w."""
    w0 = np.array([2.0, -4.0], np.float32)
    coupled, decoupled = keras.Variable(w0), keras.Variable(w0)
    AdamL2(l2=0.1, learning_rate=0.01).apply([np.zeros(2, np.float32)], [coupled])
    keras.optimizers.Adam(learning_rate=0.01, weight_decay=0.1).apply([np.zeros(2, np.float32)], [decoupled])
    np.testing.assert_allclose(coupled.numpy(), w0 - 0.01 * np.sign(w0), atol=1e-5)
    np.testing.assert_allclose(decoupled.numpy(), w0 - 0.01 * 0.1 * w0, atol=1e-6)
    config = AdamL2(l2=0.1).get_config()
    assert AdamL2.from_config(config).l2 == pytest.approx(0.1)


def test_the_baseline_is_a_detector_of_logits_only():
    baseline = models.build_baseline_model("tiny", 32)
    assert not models.is_complete_model(baseline) and not models.has_base_outputs(baseline)
    images = np.random.default_rng(3).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    out = models.detector_model(baseline)(images)
    assert set(out) == {"logits"}
    np.testing.assert_allclose(out["logits"].numpy(), baseline(images).numpy(), atol=1e-6)


def test_keras_skipset_cache_misses_and_load_model_primes_it():
    """Keras 3.15 writes ``get_attr_skipset``'s cache under another key than it reads, so every
    layer of a model being loaded rebuilds a reference Layer (models.prime_keras_skipset_cache).
    When this first assertion fails, Keras has fixed it: drop the workaround."""
    from keras.src.backend.common import global_state
    from keras.src.saving import saving_lib

    keras.backend.clear_session()
    saving_lib.get_attr_skipset("Layer")
    assert global_state.get_global_attribute("saving_attr_skiplist_Layer") is None
    models.prime_keras_skipset_cache()
    for kind in models.SKIPSET_KINDS:
        cached = global_state.get_global_attribute(f"saving_attr_skiplist_{kind}")
        assert cached is not None and cached == saving_lib.get_attr_skipset(kind)
