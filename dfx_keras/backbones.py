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
import urllib.error
from typing import Callable, Iterator

import keras
from keras import layers, ops

from dfx_keras import torchvision_weights
from dfx_keras.architectures import densenet, resnet, vit

# ImageNet statistics used by the "torch" preprocessing mode (DenseNet in keras.applications).
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# BGR means subtracted by the "caffe" mode (ResNet in keras.applications).
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
# BatchNorm momentum of every backbone (Keras convention: moving = m * moving + (1 - m) * batch).
# The reference fine-tunes torchvision models, whose PyTorch momentum 0.1 is Keras' 0.9;
# keras.applications builds 0.99, which after a short or from-scratch run leaves the running
# statistics near their initial values: in inference mode such a model predicts one class.
BN_MOMENTUM = 0.9


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
    ``build_backbone`` sets its BatchNorm, as every backbone's."""
    inputs = keras.Input(input_shape)
    x = layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    for i, filters in enumerate((32, 64, 64), start=1):
        x = layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
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


# BatchNorm epsilons (see BackboneSpec.bn_epsilon).
TORCH_BN_EPSILON = 1e-5  # PyTorch's BatchNorm2d: the reference's torchvision DenseNets, ResNets, ResNeXt
KERAS_BN_EPSILON = 1e-3  # Keras': EfficientNet's and InceptionV3's ImageNet weights were trained with it


class WeightsError(ValueError):
    """Backbone weights that cannot be had: a weights argument this backbone cannot take, a failed
    download, or a file that does not hold them (a torchvision state dict that does not fit, too)."""


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """What the rest of the project needs to know about a backbone.

    ``layouts[0]`` is built for ``--weights=none`` or a Keras weights file; ``imagenet`` and
    ``torchvision:FILE`` pick the layout whose ``pretrained`` they name (the preprocessing goes
    with it). ``input_handling``: the whole image is resized (squashed) to the square input, and
    ViTs centre-crop it inside the model.

    ``bn_epsilon``: the epsilon of its BatchNorm layers, in every layout: PyTorch's 1e-5 where the
    reference's torchvision model uses it (DenseNet, ResNet, ResNeXt), Keras' 1e-3 where the Keras
    ImageNet weights were trained with it (EfficientNet, InceptionV3) and for the tiny CNN; None
    for a backbone without BatchNorm (the ViTs: LayerNorm, torchvision's epsilon 1e-6).
    """

    name: str
    feature_dim: int
    default_image_size: int
    layouts: tuple[Layout, ...]
    bn_epsilon: float | None
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
        raise WeightsError(f"{self.name} has no {_DESCRIPTIONS[kind]}; use " + _alternatives(self))


def _densenet(name: str, feature_dim: int, keras_constructor: str | None) -> BackboneSpec:
    keras_layout = (_keras_application(keras_constructor, "torch", "relu"),) if keras_constructor else ()
    return BackboneSpec(name, feature_dim, 256, (*keras_layout, _torchvision_densenet(name)), TORCH_BN_EPSILON)


def _resnet(name: str, feature_dim: int, keras_constructor: str | None) -> BackboneSpec:
    keras_layout = ((_keras_application(keras_constructor, "caffe", "conv5_block3_out"),) if keras_constructor
                    else ())
    return BackboneSpec(name, feature_dim, 256, (*keras_layout, _torchvision_resnet(name)), TORCH_BN_EPSILON)


def _keras_only(name: str, feature_dim: int, image_size: int, constructor: str, preprocessing: str,
                feature_map: str) -> BackboneSpec:
    layout = _keras_application(constructor, preprocessing, feature_map)
    return BackboneSpec(name, feature_dim, image_size, (layout,), KERAS_BN_EPSILON)


def _vit(name: str) -> BackboneSpec:
    return BackboneSpec(name, 768, 256, (_torchvision_vit(name),), None, RESIZE_CROP)


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in [
        _densenet("densenet121", 1024, "DenseNet121"),
        _densenet("densenet161", 2208, None),  # keras.applications hard-codes growth rate 32
        _densenet("densenet169", 1664, "DenseNet169"),
        _densenet("densenet201", 1920, "DenseNet201"),
        _resnet("resnet18", 512, None),
        _resnet("resnet34", 512, None),
        _resnet("resnet50", 2048, "ResNet50"),
        _resnet("resnet101", 2048, "ResNet101"),
        _resnet("resnet152", 2048, "ResNet152"),
        _resnet("resnext101", 2048, None),
        _keras_only("efficientnet_b0", 1280, 256, "EfficientNetB0", "none", "top_activation"),
        _keras_only("efficientnet_b4", 1792, 256, "EfficientNetB4", "none", "top_activation"),
        _keras_only("inception_v3", 2048, 299, "InceptionV3", "tf", "mixed10"),
        _vit("vit_b16"),
        _vit("vit_b32"),
        BackboneSpec("tiny", 64, 64, (Layout(_tiny_cnn, "tf", "relu3"),), KERAS_BN_EPSILON),
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
        try:
            torchvision_weights.check_readable(torchvision_weights.file_of(weights))
        except torchvision_weights.StateDictError as e:
            raise WeightsError(str(e)) from None
    elif kind == "file" and not os.path.isfile(weights):
        raise WeightsError(f"--weights must be 'imagenet', 'torchvision:FILE', 'none' or an existing weights file; "
                           f"not found: {weights}")
    return weights


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


def nested_layers(layer: keras.layers.Layer) -> Iterator[keras.layers.Layer]:
    """Every layer inside ``layer``, at any depth (backbones are models inside models)."""
    for sub in getattr(layer, "layers", ()):
        yield sub
        yield from nested_layers(sub)


def set_batchnorm(model: keras.Model, momentum: float, epsilon: float | None = None) -> None:
    """Set the momentum (and, unless None, the epsilon) of every BatchNorm layer in ``model``.

    Both are layer configuration, not weights: set on the built layers they leave loaded
    ImageNet weights untouched, and ``model.save`` keeps them in the ``.keras`` config.
    """
    for layer in nested_layers(model):
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = float(momentum)
            if epsilon is not None:
                layer.epsilon = float(epsilon)


def _download_failed(error: Exception) -> bool:
    """Whether ``error`` is Keras' ``get_file`` failing to fetch a URL (it raises a bare
    Exception, chained to the urllib error)."""
    return any(isinstance(e, urllib.error.URLError) for e in (error, error.__cause__, error.__context__))


def _build_with_weights(layout: Layout, name: str, image_size: int, weights: str | None) -> keras.Model:
    """``layout`` built with ``weights`` (resolved): a file is loaded into the built model (as
    keras.applications would), so a file that is not this backbone's weights raises
    WeightsError, as do a torchvision state dict that does not fit and a failed ImageNet download."""
    shape = (image_size, image_size, 3)
    if weights == "imagenet":
        try:
            return layout.build(shape, name=name, weights="imagenet")
        except Exception as e:
            if not _download_failed(e):
                raise
            reason = getattr(e.__context__, "reason", e)
            raise WeightsError(f"the ImageNet weights of {name} could not be downloaded ({reason}); without internet "
                               "access, copy the weights file to this machine and give --weights=PATH") from None
    model = layout.build(shape, name=name)
    state_dict = torchvision_weights.file_of(weights)
    try:
        if state_dict:
            torchvision_weights.load_state_dict(model, state_dict)
        elif weights:
            model.load_weights(weights)
    except torchvision_weights.StateDictError as e:  # names the tensors that do not fit
        raise WeightsError(str(e)) from None
    except (OSError, ValueError) as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightsError(f"--weights={weights} is not a weights file of the {name} backbone at {image_size}x"
                           f"{image_size}: {message}") from None
    return model


def build_layout(spec: BackboneSpec, layout: Layout, image_size: int, weights: str | None = None,
                 bn_momentum: float = BN_MOMENTUM) -> keras.Model:
    """``layout`` of backbone ``spec`` for square ``image_size`` RGB inputs, with ``weights``
    (resolved, and for this layout), its BatchNorm set as the reference's in every layout:
    ``bn_momentum`` and the registry's ``bn_epsilon``. ``build_backbone`` chooses the layout
    from the weights; this builds any of them (the BatchNorm tests build each from scratch)."""
    model = _build_with_weights(layout, spec.name, image_size, weights)
    set_batchnorm(model, bn_momentum, spec.bn_epsilon)
    return model


def build_backbone(name: str, image_size: int, weights: str | None = None,
                   bn_momentum: float = BN_MOMENTUM) -> keras.Model:
    """Build the feature extractor ``name`` for square ``image_size`` RGB inputs, in the layout
    that ``weights`` need (see ``BackboneSpec``), with those weights; BatchNorm as ``build_layout``."""
    spec = get_backbone(name)
    weights = resolve_weights(weights)
    return build_layout(spec, spec.layout(weights), image_size, weights, bn_momentum)


def check_weights(name: str, weights: str | None, image_size: int | None = None) -> None:
    """Raise WeightsError, one line, when backbone ``name`` cannot start from ``weights``, before
    any heavy work.

    Always checked, without TensorFlow work: the file exists (a ``.pth`` needs torch), and the
    backbone has a layout for these weights. With ``image_size``, the backbone is also built once
    with them (downloading Keras' ImageNet weights if needed), so a failed download, a Keras file
    that is not this backbone's weights and a torchvision state dict that does not fit stop the
    run before its corpus is scanned. train.py checks without ``image_size`` while it reads its
    flags, and with it once its distribution strategy exists.
    """
    weights = resolve_weights(weights)
    get_backbone(name).layout(weights)
    if weights is not None and image_size is not None:
        build_backbone(name, image_size, weights)
