"""Fixed residual inputs in front of a backbone: what the backbone sees instead of the image.

``npr``: Neighbouring Pixel Relationships (Tan et al., "Rethinking the Up-Sampling Operations
in CNN-based Generative Network for Generalizable Deepfake Detection", CVPR 2024). A generator's
up-sampling layers make each 2x2 cell of its output locally correlated in a way cameras do not;
the residual of each pixel against its cell's top-left pixel keeps those traces and drops the
image content, which the paper reports generalizes across GANs and diffusion models. It has no
weights. ``none``: the backbone sees the image, as in DeepFeatureX Net.
"""

from __future__ import annotations

import keras
from keras import layers, ops

INPUT_RESIDUALS = ("none", "npr")  # the first is the default
# The authors' code (github.com/chuangchuangtan/NPR-DeepfakeDetection, networks/resnet.py) feeds
# ``NPR * 2.0 / 3.0`` to the first conv.
NPR_SCALE = 2.0 / 3.0


@keras.saving.register_keras_serializable(package="dfx_keras")
class NeighbouringPixelResidual(layers.Layer):
    """NPR of a normalised image batch (B, H, W, C), H and W even: ``(x - up(x[:, ::2, ::2]))
    * 2/3``, where ``up`` repeats each pixel into a 2x2 cell (nearest-neighbour up-sampling).

    As the authors' code: ``F.interpolate(x, scale_factor=0.5, mode='nearest')`` keeps the
    top-left pixel of each cell, the second interpolate repeats it back, and the residual is
    taken on the ImageNet-normalised input and scaled by 2/3 before the first convolution.
    Here it also sits after the backbone's preprocessing layer, so it sees the scale the first
    conv expects. A registered layer (not a Lambda), so models load with ``safe_mode=True``.
    """

    def build(self, input_shape):
        height, width = input_shape[1], input_shape[2]
        if any(side is not None and side % 2 for side in (height, width)):
            raise ValueError(f"NPR needs an even image size (2x2 cells); got {height}x{width}")

    def call(self, images):
        anchors = images[:, ::2, ::2, :]
        upsampled = ops.repeat(ops.repeat(anchors, 2, axis=1), 2, axis=2)
        return (images - upsampled) * ops.cast(NPR_SCALE, images.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape


def check_input_residual(input_residual: str, image_size: int | None = None) -> None:
    """ValueError, one line, when ``input_residual`` is unknown or cannot run at ``image_size``
    (train.py checks before any work)."""
    if input_residual not in INPUT_RESIDUALS:
        raise ValueError(f"unknown input residual {input_residual!r}; expected one of {INPUT_RESIDUALS}")
    if input_residual == "npr" and image_size is not None and image_size % 2:
        raise ValueError(f"--input_residual=npr needs an even --image_size (2x2 pixel cells); got {image_size}")


def residual_layer(input_residual: str, image_size: int, name: str) -> layers.Layer | None:
    """The layer of ``input_residual`` for square ``image_size`` inputs (None for ``none``)."""
    check_input_residual(input_residual, image_size)
    return NeighbouringPixelResidual(name=name) if input_residual == "npr" else None
