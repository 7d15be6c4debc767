"""Registry of ImageNet backbones: constructor, preprocessing, input size, feature size.

Every backbone is a Keras functional model without its classifier, ending in global average
pooling, so it maps an image batch to a feature vector of a known length. Preprocessing is a
serializable layer (not a Lambda) so models load with ``safe_mode=True`` and the SavedModel
export carries it in the graph.
"""

from __future__ import annotations

import dataclasses
import os
import urllib.error
from typing import Callable, Iterator

import keras
from keras import layers, ops

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


def _tiny_cnn(input_shape, weights=None, name="tiny"):
    """A four-conv CNN for tests and the demo: trains in seconds on a CPU, 64 features.
    ``build_backbone`` sets its BatchNorm, as every backbone's."""
    if weights not in (None, "none"):
        raise ValueError("the tiny backbone has no pretrained weights; use --weights=none")
    inputs = keras.Input(input_shape)
    x = layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    for filters in (32, 64, 64):
        x = layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, x, name=name)


def _application(constructor_name: str) -> Callable:
    """Wraps a keras.applications constructor as (input_shape, weights, name) -> model."""

    def build(input_shape, weights=None, name=None):
        constructor = getattr(keras.applications, constructor_name)
        model = constructor(include_top=False, weights=weights, input_shape=input_shape, pooling="avg")
        model.name = name or model.name
        return model

    return build


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """What the rest of the project needs to know about a backbone.

    ``bn_epsilon``: the epsilon of its BatchNorm layers: PyTorch's 1e-5 where the reference's
    torchvision model uses it (DenseNet, ResNet), Keras' 1e-3 where the Keras ImageNet weights
    were trained with it (EfficientNet, InceptionV3) and for the tiny CNN; None keeps whatever
    the constructor builds (a backbone without BatchNorm).
    """

    name: str
    build: Callable
    preprocessing: str
    default_image_size: int
    feature_dim: int
    bn_epsilon: float | None = None


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in [
        BackboneSpec("densenet121", _application("DenseNet121"), "torch", 256, 1024, bn_epsilon=1e-5),
        BackboneSpec("densenet169", _application("DenseNet169"), "torch", 256, 1664, bn_epsilon=1e-5),
        BackboneSpec("densenet201", _application("DenseNet201"), "torch", 256, 1920, bn_epsilon=1e-5),
        BackboneSpec("resnet50", _application("ResNet50"), "caffe", 256, 2048, bn_epsilon=1e-5),
        BackboneSpec("resnet101", _application("ResNet101"), "caffe", 256, 2048, bn_epsilon=1e-5),
        BackboneSpec("resnet152", _application("ResNet152"), "caffe", 256, 2048, bn_epsilon=1e-5),
        BackboneSpec("efficientnet_b0", _application("EfficientNetB0"), "none", 256, 1280, bn_epsilon=1e-3),
        BackboneSpec("efficientnet_b4", _application("EfficientNetB4"), "none", 256, 1792, bn_epsilon=1e-3),
        BackboneSpec("inception_v3", _application("InceptionV3"), "tf", 299, 2048, bn_epsilon=1e-3),
        BackboneSpec("tiny", _tiny_cnn, "tf", 64, 64, bn_epsilon=1e-3),
    ]
}


def get_backbone(name: str) -> BackboneSpec:
    """The registry entry of ``name``; an unknown name fails with the list of choices."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}") from None


def resolve_weights(weights: str | None) -> str | None:
    """``imagenet`` (download), ``none``/None (random init) or a path to a weights file.

    A path is checked here so that a typo fails at once, not after the corpus scan.
    """
    if weights in (None, "", "none", "None"):
        return None
    if weights == "imagenet":
        return "imagenet"
    if not os.path.isfile(weights):
        raise ValueError(f"--weights must be 'imagenet', 'none' or an existing weights file; not found: {weights}")
    return weights


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


class WeightsError(ValueError):
    """Backbone weights that cannot be had: a failed download, or a file that does not hold them."""


def _download_failed(error: Exception) -> bool:
    """Whether ``error`` is Keras' ``get_file`` failing to fetch a URL (it raises a bare
    Exception, chained to the urllib error)."""
    return any(isinstance(e, urllib.error.URLError) for e in (error, error.__cause__, error.__context__))


def _build_with_weights(spec, name: str, image_size: int, weights: str | None) -> keras.Model:
    """``spec`` built with ``weights``: a file is loaded into the built model (as
    keras.applications would), so a file that is not this backbone's weights raises
    WeightsError, as does a failed ImageNet download."""
    shape = (image_size, image_size, 3)
    if weights in (None, "imagenet"):
        try:
            return spec.build(shape, weights=weights, name=name)
        except Exception as e:
            if not _download_failed(e):
                raise
            reason = getattr(e.__context__, "reason", e)
            raise WeightsError(f"the ImageNet weights of {name} could not be downloaded ({reason}); without internet "
                               "access, copy the weights file to this machine and give --weights=PATH") from None
    model = spec.build(shape, weights=None, name=name)
    try:
        model.load_weights(weights)
    except (OSError, ValueError) as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightsError(f"--weights={weights} is not a weights file of the {name} backbone at {image_size}x"
                           f"{image_size}: {message}") from None
    return model


def build_backbone(name: str, image_size: int, weights: str | None = None,
                   bn_momentum: float = BN_MOMENTUM) -> keras.Model:
    """Build the feature extractor ``name`` for square ``image_size`` RGB inputs, its
    BatchNorm set as the reference's (``BN_MOMENTUM``, the registry's ``bn_epsilon``)."""
    spec = get_backbone(name)
    model = _build_with_weights(spec, name, image_size, resolve_weights(weights))
    set_batchnorm(model, bn_momentum, spec.bn_epsilon)
    return model


def check_weights(name: str, image_size: int, weights: str | None) -> None:
    """Build the backbone with ``weights`` once (downloading them if needed), so a download
    failure or a bad weights file stops a run before its corpus is scanned; raises WeightsError."""
    if resolve_weights(weights) is not None:
        build_backbone(name, image_size, weights)
