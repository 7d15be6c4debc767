"""BatchNorm as the reference trains it: backbone settings, the 0.99 trap, frozen base models."""

import keras
import numpy as np
import pytest

from dfx_keras import backbones, models
from dfx_keras.data import corpus as corpus_lib
from dfx_keras.data import demo, pipelines

# The reference's torchvision models use epsilon 1e-5; Keras ImageNet weights trained with
# another epsilon keep it (EfficientNet, InceptionV3: Keras' 1e-3), as does the tiny CNN. The
# ViTs have LayerNorm only (torchvision's epsilon 1e-6) and no BatchNorm.
EXPECTED_EPSILON = {"densenet": 1e-5, "resnet": 1e-5, "resnext": 1e-5, "efficientnet": 1e-3, "inception": 1e-3,
                    "tiny": 1e-3, "vit": None}
# 32 px but for InceptionV3 (keras.applications' minimum) and the ViTs (ViT-B/32's crop needs 37).
SMALLEST_INPUT = {"inception_v3": 75, "vit_b16": 64, "vit_b32": 64}
# The layouts the registry test builds: every backbone in the layout --weights=none builds, and the
# other layout of the smallest member of each family that has two (keras.applications' and
# torchvision's): 18 of the 22 layouts. The four left out (DenseNet-169/201's and ResNet-101/152's
# torchvision layouts) are deeper copies of layouts built here by the same code, and building
# them would add about 30 s (all 22 took 115 s on 2 shared cores).
BOTH_LAYOUTS = ("densenet121", "resnet50")
LAYOUTS = [(name, layout.pretrained) for name, spec in backbones.BACKBONES.items()
           for layout in (spec.layouts if name in BOTH_LAYOUTS else spec.layouts[:1])]


def _batchnorms(model):
    return [layer for layer in backbones.nested_layers(model) if isinstance(layer, keras.layers.BatchNormalization)]


def _family(name):
    return next(family for family in EXPECTED_EPSILON if name.startswith(family))


def _expected_epsilon(name):
    return EXPECTED_EPSILON[_family(name)]


@pytest.mark.parametrize("name", list(backbones.BACKBONES))
def test_every_registered_backbone_has_the_reference_epsilon(name):
    assert backbones.get_backbone(name).bn_epsilon == _expected_epsilon(name)


def test_the_registry_test_builds_every_backbone_and_every_kind_of_layout():
    assert {name for name, _ in LAYOUTS} == set(backbones.BACKBONES)
    assert {(_family(name), pretrained) for name, pretrained in LAYOUTS} == {
        (_family(name), layout.pretrained) for name, spec in backbones.BACKBONES.items() for layout in spec.layouts}


@pytest.mark.parametrize("name,pretrained", LAYOUTS)
def test_built_backbones_have_the_reference_batchnorm(name, pretrained):
    """Built as build_backbone builds them (from scratch, in the layout that ``pretrained`` weights
    would choose): every BatchNorm layer at momentum 0.9 and the registry's epsilon, in
    keras.applications' and torchvision's layouts alike; a ViT has none, and keeps torchvision's
    LayerNorm epsilon."""
    spec = backbones.get_backbone(name)
    layout = next(layout for layout in spec.layouts if layout.pretrained == pretrained)
    model = backbones.build_layout(spec, layout, SMALLEST_INPUT.get(name, 32))
    norms = _batchnorms(model)
    if _expected_epsilon(name) is None:
        layer_norms = {layer.epsilon for layer in model.layers if isinstance(layer, keras.layers.LayerNormalization)}
        assert not norms and layer_norms == {1e-6}
    else:
        assert norms and {(layer.momentum, layer.epsilon) for layer in norms} == {(0.9, _expected_epsilon(name))}


@pytest.mark.parametrize("name", ["tiny", "resnet18"])  # resnet18: torchvision's layout
def test_bn_momentum_overrides_and_saved_models_keep_the_settings(tmp_path, name):
    model = models.build_base_model(name, 32, None, bn_momentum=0.95)
    path = str(tmp_path / "bm.keras")
    model.save(path)
    loaded = _batchnorms(models.load_model(path))
    assert len(loaded) == len(_batchnorms(model)) >= 3
    assert {(bn.momentum, bn.epsilon) for bn in loaded} == {(0.95, _expected_epsilon(name))}


@pytest.mark.upstream
def test_keras_skips_freezing_a_model_that_is_already_frozen():
    """Pins the TensorFlow-backend behaviour ``models.set_frozen_batchnorm`` works around:
    ``model.trainable = False`` on a frozen model is dropped as a no-op assignment (Keras'
    ``KerasAutoTrackable.__setattr__`` skips ``x.a = value`` when ``x.a is value``), so it does
    not reach a layer made trainable inside it."""
    backbone = backbones.build_backbone("tiny", 32)
    backbone.trainable = False
    batchnorm = _batchnorms(backbone)[0]
    batchnorm.trainable = True
    backbone.trainable = False
    assert batchnorm.trainable
    backbone.trainable = True
    backbone.trainable = False
    assert not batchnorm.trainable


def _extractor_state(complete):
    """Each frozen extractor's variables by path: (running statistics, every other weight)."""
    stats, others = {}, {}
    for extractor in models.base_feature_extractors(complete):
        for variable in extractor.weights:
            kind = stats if variable.path.endswith(("moving_mean", "moving_variance")) else others
            kind[f"{extractor.name}/{variable.path}"] = variable.numpy().copy()
    return stats, others


@pytest.mark.parametrize("mode", models.FROZEN_BN_MODES)
def test_frozen_bn_modes_train_only_the_head(mode, tmp_path):
    """Both modes leave every base-model weight (gamma and beta included) out of the optimizer;
    ``reference`` runs the frozen BatchNorm in training mode (running statistics move),
    ``inference`` does not. Saved, either loads with safe_mode=True as a plainly frozen model."""
    bases = [models.build_base_model("tiny", 32, None, name=n) for n in ("bm_dm", "bm_gan", "bm_real")]
    complete = models.build_complete_model(*bases, frozen_bn=mode)
    head = models.head_of(complete)
    assert [v.path for v in complete.trainable_weights] == [v.path for v in head.trainable_weights]
    (stats, others) = _extractor_state(complete)
    images = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype(np.float32)
    complete(images, training=True)
    (stats_after, others_after) = _extractor_state(complete)
    for path in others:
        np.testing.assert_array_equal(others_after[path], others[path], err_msg=path)
    moved = [path for path in stats if not np.allclose(stats_after[path], stats[path])]
    assert len(moved) == (len(stats) if mode == "reference" else 0)

    models.set_frozen_batchnorm(complete, "inference")
    complete.save(str(tmp_path / "complete.keras"))
    loaded = models.load_model(str(tmp_path / "complete.keras"))
    assert not any(layer.trainable for e in models.base_feature_extractors(loaded) for layer in _batchnorms(e))
    np.testing.assert_allclose(loaded(images).numpy(), complete(images).numpy(), atol=1e-5)


def test_unknown_frozen_bn_mode_is_refused():
    bases = [models.build_base_model("tiny", 32, None, name=n) for n in ("bm_dm", "bm_gan", "bm_real")]
    with pytest.raises(ValueError, match="unknown frozen_bn mode 'train'"):
        models.build_complete_model(*bases, frozen_bn="train")


def _demo_arrays(root, image_size, main_class):
    """A small demo corpus as arrays; targets 1 for ``main_class``, 0 for the rest (unbalanced,
    as a base model's): a two-thirds / one-third train / validation split."""
    demo.generate_demo_corpus(root, images_per_architecture=40, seed=1)
    samples = corpus_lib.scan_corpus(root).samples
    train, val = corpus_lib.holdout_split(samples, 1 / 3, salt="trap")

    def arrays(subset):
        ds = pipelines.image_dataset(pipelines.FolderSource(root), subset, image_size, 64,
                                     targets=[int(s.label == main_class) for s in subset])
        batches = list(ds.as_numpy_iterator())
        return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])

    return arrays(train), arrays(val)


@pytest.mark.upstream
@pytest.mark.slow
def test_keras_default_momentum_leaves_a_from_scratch_model_predicting_one_class(tmp_path):
    """The trap of DESIGN.md 1.2, pinned: a keras.applications backbone (MobileNet, the cheapest
    with BatchNorm) trained from scratch for 90 steps on demo images, real vs rest. Training
    does not depend on the momentum (batch statistics), so both runs fit the same weights; in
    inference mode the one with 0.99, whose running statistics are still mostly their initial
    values, predicts one class, while 0.9 tells the classes apart."""
    (x, y), (x_val, y_val) = _demo_arrays(str(tmp_path / "corpus"), 64, main_class=2)
    majority = max(y_val.mean(), 1 - y_val.mean())
    accuracies, losses = {}, {}
    for momentum in (0.9, 0.99):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((64, 64, 3))
        backbone = keras.applications.MobileNet(include_top=False, weights=None, input_shape=(64, 64, 3),
                                                pooling="avg", alpha=0.25)
        backbones.set_batchnorm(backbone, momentum)
        features = backbone(backbones.BackbonePreprocessing("tf")(inputs))
        model = keras.Model(inputs, keras.layers.Dense(2)(features))
        model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        losses[momentum] = model.fit(x, y, batch_size=16, epochs=6, verbose=0).history["loss"]
        predictions = model(x_val, training=False).numpy().argmax(axis=1)
        accuracies[momentum] = (predictions == y_val).mean()
    np.testing.assert_allclose(losses[0.9], losses[0.99], rtol=1e-3)
    assert accuracies[0.99] == pytest.approx(majority)
    assert accuracies[0.9] > majority + 0.07, (accuracies, majority)
