"""Registry of ImageNet backbones: layouts, preprocessing, input size, feature size, weights.

Every backbone is a Keras functional model without its classifier, ending in global average
pooling (a ViT: its class token), so it maps an image batch to a feature vector of a known
length. A backbone name can have two layouts: keras.applications' (Keras' published ImageNet
weights) and torchvision's (torchvision's ImageNet weights, the reference's starting point,
``dfx_keras.architectures``); the weights choose the layout and the preprocessing. Preprocessing
is a serializable layer (not a Lambda) so models load with ``safe_mode=True`` and the SavedModel
export carries it in the graph.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Callable

import keras
from keras import layers, ops

from dfx_keras import torchvision_weights
from dfx_keras.architectures import densenet, resnet, vit

# ImageNet statistics used by the "torch" preprocessing mode (DenseNet in keras.applications).
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# BGR means subtracted by the "caffe" mode (ResNet in keras.applications).
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="dfx_keras")
class BackbonePreprocessing(layers.Layer):
    """Maps float RGB images in [0, 255] to what a backbone's ImageNet weights expect.

    Modes mirror ``keras.applications.imagenet_utils.preprocess_input``: ``torch`` (scale to
    [0, 1], ImageNet mean/std), ``caffe`` (RGB->BGR, subtract means), ``tf`` (scale to [-1, 1]),
    ``none`` (the backbone normalises inside, e.g. EfficientNet).
    """

    MODES = ("torch", "caffe", "tf", "none")

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise ValueError(f"unknown preprocessing mode {mode!r}; expected one of {self.MODES}")
        self.mode = mode

    def call(self, images):
        images = ops.cast(images, self.compute_dtype)
        if self.mode == "torch":
            mean = ops.convert_to_tensor(_IMAGENET_MEAN, self.compute_dtype)
            std = ops.convert_to_tensor(_IMAGENET_STD, self.compute_dtype)
            return (images / 255.0 - mean) / std
        if self.mode == "caffe":
            mean = ops.convert_to_tensor(_CAFFE_MEAN_BGR, self.compute_dtype)
            return ops.flip(images, axis=-1) - mean
        if self.mode == "tf":
            return images / 127.5 - 1.0
        return images

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def _tiny_cnn(input_shape, name="tiny"):
    """A four-conv CNN for tests and the demo: trains in seconds on a CPU, 64 features.

    BatchNorm momentum is PyTorch's 0.1 (Keras 0.9): with Keras' default 0.99 the running
    statistics of a short from-scratch run stay near their initial values, and the model
    scores chance in inference mode while it fits its training batches.
    """
    inputs = keras.Input(input_shape)
    x = layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    for i, filters in enumerate((32, 64, 64), start=1):
        x = layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization(momentum=0.9)(x)
        x = layers.ReLU(name=f"relu{i}")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, x, name=name)


def _application(constructor_name: str) -> Callable:
    """Wraps a keras.applications constructor as (input_shape, name, weights) -> model."""

    def build(input_shape, name=None, weights=None):
        constructor = getattr(keras.applications, constructor_name)
        model = constructor(include_top=False, weights=weights, input_shape=input_shape, pooling="avg")
        model.name = name or model.name
        return model

    return build


@dataclasses.dataclass(frozen=True)
class Layout:
    """One architecture of a backbone, and what its weights expect.

    ``build(input_shape, name)`` makes it randomly initialised (keras.applications layouts also
    take ``weights="imagenet"``); ``pretrained`` names the ImageNet weights it takes: ``imagenet``
    (Keras' published weights) or ``torchvision`` (a torchvision state dict file).
    """

    build: Callable
    preprocessing: str  # BackbonePreprocessing mode its ImageNet weights were trained with
    feature_map: str  # name of its last spatial feature-map layer (Grad-CAM)
    pretrained: str | None = None


def _keras_application(constructor_name: str, preprocessing: str, feature_map: str) -> Layout:
    return Layout(_application(constructor_name), preprocessing, feature_map, "imagenet")


def _torchvision(architecture: Callable, config: dict, feature_map: str) -> Layout:
    """torchvision's layout; its weights were trained on ImageNet mean/std inputs."""
    return Layout(functools.partial(architecture, **config), "torch", feature_map, "torchvision")


def _torchvision_densenet(name: str) -> Layout:
    return _torchvision(densenet.densenet, densenet.CONFIGS[name], densenet.FEATURE_MAP)


def _torchvision_resnet(name: str) -> Layout:
    config = resnet.CONFIGS[name]
    return _torchvision(resnet.resnet, config, resnet.feature_map(config["stages"]))


def _torchvision_vit(name: str) -> Layout:
    return _torchvision(vit.vision_transformer, vit.CONFIGS[name], vit.FEATURE_MAP)


RESIZE = "resize"
RESIZE_CROP = f"resize, centre crop {vit.CROP_FRACTION:g}"  # 256 -> 224, as the reference


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """What the rest of the project needs to know about a backbone.

    ``layouts[0]`` is built for ``--weights=none`` or a Keras weights file; ``imagenet`` and
    ``torchvision:FILE`` pick the layout whose ``pretrained`` they name (the preprocessing goes
    with it). ``input_handling``: the whole image is resized (squashed) to the square input, and
    ViTs centre-crop it inside the model.
    """

    name: str
    feature_dim: int
    default_image_size: int
    layouts: tuple[Layout, ...]
    input_handling: str = RESIZE

    @property
    def weight_sources(self) -> tuple[str, ...]:
        return tuple(layout.pretrained for layout in self.layouts if layout.pretrained)

    def layout(self, weights: str | None) -> Layout:
        """The layout that takes ``weights`` (None, ``imagenet``, ``torchvision:FILE`` or a Keras file)."""
        kind = _weights_kind(weights)
        if kind not in ("imagenet", "torchvision"):
            return self.layouts[0]
        for layout in self.layouts:
            if layout.pretrained == kind:
                return layout
        raise ValueError(f"{self.name} has no {_DESCRIPTIONS[kind]}; use " + _alternatives(self))


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in [
        BackboneSpec("densenet121", 1024, 256, (_keras_application("DenseNet121", "torch", "relu"),
                                               _torchvision_densenet("densenet121"))),
        BackboneSpec("densenet161", 2208, 256, (_torchvision_densenet("densenet161"),)),
        BackboneSpec("densenet169", 1664, 256, (_keras_application("DenseNet169", "torch", "relu"),
                                               _torchvision_densenet("densenet169"))),
        BackboneSpec("densenet201", 1920, 256, (_keras_application("DenseNet201", "torch", "relu"),
                                               _torchvision_densenet("densenet201"))),
        BackboneSpec("resnet18", 512, 256, (_torchvision_resnet("resnet18"),)),
        BackboneSpec("resnet34", 512, 256, (_torchvision_resnet("resnet34"),)),
        BackboneSpec("resnet50", 2048, 256, (_keras_application("ResNet50", "caffe", "conv5_block3_out"),
                                            _torchvision_resnet("resnet50"))),
        BackboneSpec("resnet101", 2048, 256, (_keras_application("ResNet101", "caffe", "conv5_block3_out"),
                                             _torchvision_resnet("resnet101"))),
        BackboneSpec("resnet152", 2048, 256, (_keras_application("ResNet152", "caffe", "conv5_block3_out"),
                                             _torchvision_resnet("resnet152"))),
        BackboneSpec("resnext101", 2048, 256, (_torchvision_resnet("resnext101"),)),
        BackboneSpec("efficientnet_b0", 1280, 256, (_keras_application("EfficientNetB0", "none", "top_activation"),)),
        BackboneSpec("efficientnet_b4", 1792, 256, (_keras_application("EfficientNetB4", "none", "top_activation"),)),
        BackboneSpec("inception_v3", 2048, 299, (_keras_application("InceptionV3", "tf", "mixed10"),)),
        BackboneSpec("vit_b16", 768, 256, (_torchvision_vit("vit_b16"),), RESIZE_CROP),
        BackboneSpec("vit_b32", 768, 256, (_torchvision_vit("vit_b32"),), RESIZE_CROP),
        BackboneSpec("tiny", 64, 64, (Layout(_tiny_cnn, "tf", "relu3"),)),
    ]
}


def get_backbone(name: str) -> BackboneSpec:
    """The registry entry of ``name``; an unknown name fails with the list of choices."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}") from None


_DESCRIPTIONS = {"imagenet": "ImageNet weights published by Keras (--weights=imagenet)",
                 "torchvision": "torchvision layout here (--weights=torchvision:FILE)"}


def _alternatives(spec: BackboneSpec) -> str:
    """The --weights values ``spec`` takes, for an error line."""
    sources = {"imagenet": "--weights=imagenet (Keras' ImageNet weights)",
               "torchvision": f"--weights={torchvision_weights.PREFIX}FILE (torchvision's ImageNet state dict, "
                              ".pth or .safetensors)"}
    return ", ".join([sources[s] for s in spec.weight_sources] +
                     ["--weights=PATH (a Keras weights file of this backbone)", "or --weights=none"])


def _weights_kind(weights: str | None) -> str:
    """``none``, ``imagenet``, ``torchvision`` or ``file``."""
    if weights in (None, "", "none", "None"):
        return "none"
    if weights == "imagenet":
        return "imagenet"
    return "file" if torchvision_weights.file_of(weights) is None else "torchvision"


def resolve_weights(weights: str | None) -> str | None:
    """``imagenet`` (download), ``torchvision:FILE``, ``none``/None (random init) or a Keras weights file.

    Files are checked here so that a typo fails at once, not after the corpus scan.
    """
    kind = _weights_kind(weights)
    if kind == "none":
        return None
    if kind == "torchvision":
        torchvision_weights.check_readable(torchvision_weights.file_of(weights))
    elif kind == "file" and not os.path.isfile(weights):
        raise ValueError(f"--weights must be 'imagenet', 'torchvision:FILE', 'none' or an existing weights file; "
                         f"not found: {weights}")
    return weights


def check_weights(name: str, weights: str | None) -> None:
    """One line if backbone ``name`` cannot start from ``weights`` (before any heavy work)."""
    get_backbone(name).layout(resolve_weights(weights))


def feature_map(backbone: keras.Model) -> keras.layers.Layer:
    """The last spatial feature-map layer of a built backbone (Grad-CAM's target), whichever
    layout it was built in: (batch, rows, cols, channels), a ViT's patch tokens as a grid."""
    names = {layer.name for layer in backbone.layers}
    for layout in get_backbone(backbone.name).layouts:
        if layout.feature_map in names:
            return backbone.get_layer(layout.feature_map)
    raise ValueError(f"{backbone.name} has none of its registered feature-map layers")


def preprocessing_mode(name: str, weights: str | None) -> str:
    """The input normalisation that ``weights`` expect on backbone ``name``."""
    return get_backbone(name).layout(weights).preprocessing


def build_backbone(name: str, image_size: int, weights: str | None = None) -> keras.Model:
    """Build the feature extractor ``name`` for square ``image_size`` RGB inputs, in the layout
    that ``weights`` need (see ``BackboneSpec``), with those weights."""
    weights = resolve_weights(weights)
    layout = get_backbone(name).layout(weights)
    input_shape = (image_size, image_size, 3)
    if weights == "imagenet":
        return layout.build(input_shape, name=name, weights="imagenet")
    model = layout.build(input_shape, name=name)
    state_dict = torchvision_weights.file_of(weights)
    if state_dict:
        torchvision_weights.load_state_dict(model, state_dict)
    elif weights:
        model.load_weights(weights)
    return model
