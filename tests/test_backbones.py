"""The registry's backbones and torchvision's weights on them (no torch needed).

``data/torchvision_tensors.json.gz`` lists every tensor name and shape of torchvision 0.29's
state dicts for the twelve torchvision architectures (written by
``benchmarks/check_torchvision_parity.py torch --tensor_list=...``): our layouts must hold
exactly those tensors, and synthetic state dicts with those names and shapes, written with
safetensors, exercise the loader. The numerical parity with torchvision itself was measured
once with torch installed (benchmarks/RESULTS.md).
"""

import functools
import gzip
import json
import pathlib
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from safetensors.numpy import save_file

from conftest import make_corpus
from dfx_keras import backbones, models, torchvision_weights
from dfx_keras.config import TrainConfig
from dfx_keras.serving import export
from dfx_keras.serving.module import SIGNATURE_IMAGES
from dfx_keras.training import distribute, stages
from dfx_keras.architectures import densenet, resnet, vit
from dfx_keras.data import corpus as corpus_lib
from dfx_keras.data import pipelines

TORCHVISION = json.load(gzip.open(pathlib.Path(__file__).with_name("data") / "torchvision_tensors.json.gz", "rt"))
# DESIGN.md 1.2: the authors' fourteen backbones, plus InceptionV3 and the tiny CNN.
FEATURE_DIMS = {"densenet121": 1024, "densenet161": 2208, "densenet169": 1664, "densenet201": 1920,
                "resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048, "resnet152": 2048,
                "resnext101": 2048, "efficientnet_b0": 1280, "efficientnet_b4": 1792, "vit_b16": 768, "vit_b32": 768,
                "inception_v3": 2048, "tiny": 64}
NEW = ("densenet161", "resnet18", "resnet34", "resnext101", "vit_b16", "vit_b32")
BUFFERS = (".running_mean", ".running_var", ".num_batches_tracked")
TORCHVISION_WEIGHTS = "torchvision:FILE"  # picks the torchvision layout (the file is read only when building)


def torchvision_state(name: str, seed: int = 0) -> dict[str, np.ndarray]:
    """A random state dict with the names and shapes of torchvision's ``name`` (classifier included)."""
    rng = np.random.default_rng(seed)
    state = {}
    for tensor, shape in TORCHVISION["models"][name]:
        if tensor.endswith(".num_batches_tracked"):
            state[tensor] = np.array(7, np.int64)
        elif tensor.endswith(".running_var"):
            state[tensor] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
        else:
            state[tensor] = rng.standard_normal(shape, np.float32)
    return state


def write_state(tmp_path, state, file="weights.safetensors") -> str:
    path = str(tmp_path / file)
    save_file(state, path)
    return path


# --- the registry --------------------------------------------------------------------------------

def test_the_registry_holds_the_papers_backbones_with_their_feature_sizes_and_weights():
    assert {name: spec.feature_dim for name, spec in backbones.BACKBONES.items()} == FEATURE_DIMS
    sources = {name: spec.weight_sources for name, spec in backbones.BACKBONES.items()}
    assert sources["densenet121"] == sources["resnet50"] == ("imagenet", "torchvision")
    assert all(sources[name] == ("torchvision",) for name in NEW)
    assert sources["efficientnet_b0"] == sources["inception_v3"] == ("imagenet",) and sources["tiny"] == ()
    assert backbones.get_backbone("vit_b16").input_handling == "resize, centre crop 0.875"
    assert backbones.get_backbone("resnet18").input_handling == "resize"
    assert all(spec.default_image_size == 256 for name, spec in backbones.BACKBONES.items()
               if name not in ("inception_v3", "tiny"))


def test_preprocessing_is_chosen_with_the_weights(tmp_path):
    """Keras' ImageNet weights keep each application's mode; torchvision's take ImageNet mean/std."""
    path = write_state(tmp_path, {"x": np.zeros(1, np.float32)})
    tv = f"torchvision:{path}"
    assert backbones.preprocessing_mode("resnet50", "imagenet") == "caffe"
    assert backbones.preprocessing_mode("resnet50", None) == "caffe"  # none builds keras.applications' layout
    assert backbones.preprocessing_mode("resnet50", tv) == "torch"
    assert backbones.preprocessing_mode("inception_v3", "imagenet") == "tf"
    assert backbones.preprocessing_mode("vit_b16", None) == backbones.preprocessing_mode("vit_b16", tv) == "torch"


@pytest.mark.parametrize("name,weights,message", [
    ("vit_b16", "imagenet", "vit_b16 has no ImageNet weights published by Keras (--weights=imagenet); use "
                            "--weights=torchvision:FILE"),
    ("efficientnet_b0", "torchvision:{file}", "efficientnet_b0 has no torchvision layout here"),
    ("tiny", "imagenet", "or --weights=none"),
    ("resnet18", "torchvision:/no/such.safetensors", "file not found: /no/such.safetensors"),
])
def test_weights_a_backbone_cannot_take_fail_in_one_line(tmp_path, name, weights, message):
    weights = weights.format(file=write_state(tmp_path, {"x": np.zeros(1, np.float32)}))
    with pytest.raises(backbones.WeightsError) as error:
        backbones.check_weights(name, weights)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_pth_file_without_torch_names_the_conversion(tmp_path, monkeypatch):
    path = tmp_path / "resnet18.pth"
    path.write_bytes(b"PK")
    monkeypatch.setattr(torchvision_weights.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(backbones.WeightsError, match=r"needs torch.*from safetensors.torch import save_file"):
        backbones.check_weights("resnet18", f"torchvision:{path}")


@pytest.fixture(scope="module")
def built():
    """Backbones built once per module at their default size, random weights (the huge ones are slow)."""
    cache = {}

    def build(name):
        if name not in cache:
            spec = backbones.get_backbone(name)
            layout = spec.layout(TORCHVISION_WEIGHTS)
            cache[name] = layout.build((spec.default_image_size,) * 2 + (3,), name=name)
        return cache[name]

    return build


@pytest.mark.slow
@pytest.mark.parametrize("name", [*NEW, "resnet50"])  # every block type; CONFIGS are checked below for all
def test_torchvision_layouts_hold_torchvisions_tensors(built, name):
    """At the default size: the feature size, the feature map, and exactly torchvision's tensors
    (names and shapes, the classifier excepted), so its trainable parameters are torchvision's."""
    spec = backbones.get_backbone(name)
    model = built(name)
    assert model.output_shape == (None, spec.feature_dim)
    feature_map = backbones.feature_map(model)
    assert feature_map.name == spec.layout(TORCHVISION_WEIGHTS).feature_map
    grid = feature_map.output.shape
    assert len(grid) == 4 and grid[-1] == spec.feature_dim
    assert grid[1:3] == ((14, 14) if name == "vit_b16" else (7, 7) if name == "vit_b32" else (8, 8))
    theirs = {t: tuple(shape) for t, shape in TORCHVISION["models"][name]
              if not t.startswith(torchvision_weights.CLASSIFIERS)}
    ours = {t: slot.shape for t, slot in torchvision_weights.model_slots(model).items()}
    assert ours == theirs
    parameters = sum(int(np.prod(shape)) for t, shape in theirs.items() if not t.endswith(BUFFERS))
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == parameters


def _count(names, pattern):
    return len({m.group(1) for m in map(re.compile(pattern).match, names) if m})


def test_every_torchvision_config_is_torchvisions():
    """Block counts, widths and patch sizes of all twelve, read off torchvision's tensor names and
    shapes (the builders themselves are checked on one config per block type above)."""
    for name, tensors in TORCHVISION["models"].items():
        shapes = dict((t, shape) for t, shape in tensors)
        if name in densenet.CONFIGS:
            blocks = tuple(_count(shapes, rf"features\.denseblock{b}\.(denselayer\d+)\.") for b in range(1, 5))
            growth = shapes["features.denseblock1.denselayer1.conv2.weight"][0]
            assert densenet.CONFIGS[name] == dict(growth_rate=growth, block_config=blocks,
                                                  num_init_features=shapes["features.conv0.weight"][0]), name
        elif name in resnet.CONFIGS:
            config = {"groups": 1, "width_per_group": 64, **resnet.CONFIGS[name]}
            assert config["stages"] == tuple(_count(shapes, rf"layer{s}\.(\d+)\.") for s in range(1, 5)), name
            assert ("layer1.0.conv3.weight" in shapes) == (config["block"] == "bottleneck"), name
            conv2 = shapes["layer1.0.conv2.weight"]  # (width, width / groups, 3, 3); 64 planes in layer1
            assert (conv2[0] // conv2[1], conv2[1]) == (config["groups"], config["width_per_group"]), name
        else:
            config = vit.CONFIGS[name]
            hidden, patch = config["hidden_dim"], config["patch_size"]
            assert shapes["conv_proj.weight"] == [hidden, 3, patch, patch], name
            assert _count(shapes, r"encoder\.layers\.(encoder_layer_\d+)\.") == config["num_layers"], name
            assert shapes["encoder.layers.encoder_layer_0.mlp.0.weight"] == [config["mlp_dim"], hidden], name
            assert hidden % config["num_heads"] == 0


# --- torchvision state dicts ---------------------------------------------------------------------

def test_resnet18_state_dict_lands_in_the_right_variables(tmp_path):
    state = torchvision_state("resnet18")
    model = backbones.build_backbone("resnet18", 64, f"torchvision:{write_state(tmp_path, state)}")
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):  # PyTorch (out, in, kh, kw), Keras (kh, kw, in, out)
            np.testing.assert_array_equal(layer.kernel.numpy(), np.einsum("oikl->klio", state[f"{layer.name}.weight"]))
        elif isinstance(layer, keras.layers.BatchNormalization):
            for ours, theirs in zip(layer.weights, ("weight", "bias", "running_mean", "running_var")):
                np.testing.assert_array_equal(ours.numpy(), state[f"{layer.name}.{theirs}"])
    assert model.get_layer("layer2.0.conv1").strides == (2, 2)  # v1.5: the stride is in the 3x3 conv
    assert model.get_layer("layer2.0.downsample.0").kernel.shape == (1, 1, 64, 128)


def test_a_state_dict_that_does_not_fit_is_refused_naming_every_tensor(tmp_path):
    state = torchvision_state("resnet18")
    del state["layer1.0.bn1.running_var"]
    state["layer5.0.conv1.weight"] = np.zeros((3, 3), np.float32)
    state["conv1.weight"] = np.zeros((64, 3, 3, 3), np.float32)
    path = write_state(tmp_path, state)
    with pytest.raises(backbones.WeightsError) as error:
        backbones.build_backbone("resnet18", 64, f"torchvision:{path}")
    assert str(error.value) == (
        f"{path} does not fit resnet18 (torchvision layout): missing tensors: layer1.0.bn1.running_var; "
        "unexpected tensors: layer5.0.conv1.weight; "
        "wrong shapes: conv1.weight is (64, 3, 3, 3) in the file, (64, 3, 7, 7) in the model")


def test_another_architectures_file_lists_a_few_names_and_counts_the_rest(tmp_path):
    path = write_state(tmp_path, torchvision_state("resnet34"))
    with pytest.raises(backbones.WeightsError, match=r"unexpected tensors: layer1\.2\.\S+, .* \(\+\d+ more\)$"):
        backbones.build_backbone("resnet18", 64, f"torchvision:{path}")


def test_a_damaged_file_is_one_line(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(torchvision_weights.StateDictError, match=r"^cannot read .*broken\.safetensors: "):
        torchvision_weights.read_state_dict(str(path))


def test_torchvisions_legacy_names_are_read_as_torchvision_reads_them():
    """The download files of torchvision's DenseNets (2017) and ViTs (before 0.13) use older names."""
    legacy = {"features.denseblock1.denselayer1.norm.1.weight": 1,
              "features.denseblock4.denselayer16.conv.2.weight": 2,
              "encoder.layers.encoder_layer_0.mlp.linear_1.bias": 3,
              "encoder.layers.encoder_layer_11.mlp.linear_2.weight": 4, "features.norm5.weight": 5}
    assert torchvision_weights.current_names(legacy) == {
        "features.denseblock1.denselayer1.norm1.weight": 1, "features.denseblock4.denselayer16.conv2.weight": 2,
        "encoder.layers.encoder_layer_0.mlp.0.bias": 3, "encoder.layers.encoder_layer_11.mlp.3.weight": 4,
        "features.norm5.weight": 5}


def test_a_2017_densenet_file_without_batch_counters_loads(tmp_path):
    state = {name.replace("norm1.", "norm.1.").replace("conv2.", "conv.2."): tensor
             for name, tensor in torchvision_state("densenet121").items() if not name.endswith("num_batches_tracked")}
    model = backbones.build_backbone("densenet121", 64, f"torchvision:{write_state(tmp_path, state)}")
    np.testing.assert_array_equal(model.get_layer("features.denseblock3.denselayer7.norm1").gamma.numpy(),
                                  state["features.denseblock3.denselayer7.norm.1.weight"])
    assert model.get_layer("features.conv0").kernel.shape == (7, 7, 3, 64)


def _torch_multihead_attention(x, state, prefix, heads):
    """nn.MultiheadAttention's forward in NumPy (batch_first, no mask, no dropout)."""
    w, b = state[f"{prefix}.in_proj_weight"], state[f"{prefix}.in_proj_bias"]
    q, k, v = np.split(x @ w.T + b, 3, axis=-1)
    split = lambda t: t.reshape(*t.shape[:2], heads, -1).transpose(0, 2, 1, 3)  # (B, heads, T, d)
    q, k, v = split(q), split(k), split(v)
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1])
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    attended = (scores / scores.sum(-1, keepdims=True)) @ v
    merged = attended.transpose(0, 2, 1, 3).reshape(x.shape)
    return merged @ state[f"{prefix}.out_proj.weight"].T + state[f"{prefix}.out_proj.bias"]


@pytest.mark.slow
def test_vit_state_dict_attention_class_token_and_positions(built, tmp_path):
    """ViT-B/32 at 256: the fused q/k/v projection computes what PyTorch's attention computes."""
    state = torchvision_state("vit_b32")
    state["encoder.layers.encoder_layer_3.self_attention.in_proj_weight"] *= 0.05  # softmax not saturated
    model = built("vit_b32")
    torchvision_weights.load_state_dict(model, write_state(tmp_path, state))
    np.testing.assert_array_equal(model.get_layer("class_token").token.numpy(), state["class_token"])
    np.testing.assert_array_equal(model.get_layer("encoder.pos_embedding").embedding.numpy(),
                                  state["encoder.pos_embedding"])
    np.testing.assert_array_equal(model.get_layer("encoder.layers.encoder_layer_0.mlp.3").kernel.numpy(),
                                  state["encoder.layers.encoder_layer_0.mlp.3.weight"].T)
    x = np.random.default_rng(1).standard_normal((2, 50, 768)).astype(np.float32)
    prefix = "encoder.layers.encoder_layer_3.self_attention"
    ours = model.get_layer(prefix)(x, x).numpy()
    np.testing.assert_allclose(ours, _torch_multihead_attention(x.astype(np.float64), state, prefix, 12),
                               atol=2e-4, rtol=1e-4)


# --- one backbone per family: train, save, load, export -----------------------------------------

def test_vit_crops_the_centre_as_torchvision_and_checks_small_sizes():
    assert [vit.crop_size(s, 16) for s in (256, 64, 40)] == [224, 48, 32]
    assert vit.crop_size(64, 32) == 32
    with pytest.raises(ValueError, match="image size 32 is too small for 32-pixel patches"):
        vit.crop_size(32, 32)
    model = backbones.build_backbone("vit_b16", 64)
    crop = model.get_layer("center_crop")
    image = np.arange(64 * 64 * 3, dtype=np.float32).reshape(1, 64, 64, 3)
    np.testing.assert_array_equal(crop(image).numpy(), image[:, 8:56, 8:56])
    assert model.get_layer(vit.FEATURE_MAP).output.shape == (None, 3, 3, 768)


@pytest.fixture(scope="module")
def corpus16(tmp_path_factory):
    root = make_corpus(tmp_path_factory.mktemp("corpus16"), per_folder=16)
    return corpus_lib.scan_corpus(root), pipelines.FolderSource(root)


# Small members of each family, built by the registry's own builders from the same layer types
# (grouped convolutions, the class token, position embedding, attention): training a full-size one
# under MirroredStrategy on CPU spends minutes tracing and all-reducing BatchNorm statistics.
FAMILIES = {
    "densenet": (densenet.densenet, dict(growth_rate=8, block_config=(1, 1), num_init_features=16),
                 densenet.FEATURE_MAP, backbones.TORCH_BN_EPSILON),
    "resnet": (resnet.resnet, dict(block="basic", stages=(1, 1)), resnet.feature_map((1, 1)),
               backbones.TORCH_BN_EPSILON),
    "resnext": (resnet.resnet, dict(block="bottleneck", stages=(1, 1), groups=4, width_per_group=4),
                resnet.feature_map((1, 1)), backbones.TORCH_BN_EPSILON),
    "vit": (vit.vision_transformer, dict(patch_size=16, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64),
            vit.FEATURE_MAP, None),
}


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_trains_mirrored_saves_loads_safely_and_exports(corpus16, tmp_path, monkeypatch, family):
    """The baseline stage (one backbone, 3 classes) on 2 replicas at 64 px with synchronized
    BatchNorm, then the .keras file with safe_mode=True and the SavedModel: the same
    probabilities everywhere, the feature map and the BatchNorm settings (--bn_momentum) still there."""
    build, config, feature_map, bn_epsilon = FAMILIES[family]
    layout = backbones.Layout(functools.partial(build, **config), "torch", feature_map, "torchvision")
    spec = backbones.BackboneSpec(f"{family}_small", 0, 64, (layout,), bn_epsilon)
    monkeypatch.setitem(backbones.BACKBONES, spec.name, spec)
    corpus, source = corpus16
    cfg = TrainConfig(workdir=str(tmp_path / "w"), backbone=spec.name, weights=None, image_size=64,
                      batch_size=8, epochs=1, verbose=0, bn_momentum=0.95)
    summary = stages.train_baseline(cfg, corpus, source, distribute.get_strategy("mirrored"))
    assert summary["epochs"] == 1 and np.isfinite(summary["val_loss"])
    loaded = models.load_model(cfg.wd.model("baseline"))
    assert loaded.get_layer("preprocessing").mode == "torch"
    assert backbones.feature_map(loaded.get_layer(spec.name)).name == feature_map
    batchnorms = [bn for bn in backbones.nested_layers(loaded) if isinstance(bn, keras.layers.BatchNormalization)]
    assert {(bn.momentum, bn.epsilon, bn.synchronized) for bn in batchnorms} == (
        set() if bn_epsilon is None else {(0.95, bn_epsilon, False)})
    images = tf.constant(np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)), tf.float32)
    expected = tf.nn.softmax(loaded(images, training=False)).numpy()
    exported = export.export_saved_model(loaded, str(tmp_path / "export"))
    served = tf.saved_model.load(exported).signatures[SIGNATURE_IMAGES](images=images)
    np.testing.assert_allclose(served["probabilities"].numpy(), expected, atol=1e-5)
