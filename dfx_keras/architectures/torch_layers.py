"""Keras layers that compute what torchvision's ``Conv2d``, ``BatchNorm2d`` and ``MaxPool2d`` compute.

PyTorch pads a convolution symmetrically (``padding=k // 2`` on every side). Keras' ``"same"``
does too at stride 1 (odd kernels), but at stride 2 on an even input it puts the extra pixel
at the bottom and right only, which shifts every sampling position by one pixel: strided
convolutions and pools pad explicitly and run ``"valid"``.
"""

from __future__ import annotations

import keras
from keras import layers

# PyTorch's BatchNorm2d defaults: momentum 0.1 there is 0.9 in Keras' convention.
BN_MOMENTUM, BN_EPSILON = 0.9, 1e-5


def batch_norm(x, name: str):
    return layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)(x)


def conv2d(x, filters: int, kernel: int, name: str, stride: int = 1, groups: int = 1,
           initializer: keras.initializers.Initializer | None = None):
    """``nn.Conv2d(..., kernel, stride, padding=kernel // 2, groups, bias=False)``."""
    padding = "same"
    if stride > 1 and kernel > 1:
        x = layers.ZeroPadding2D(kernel // 2, name=f"{name}.pad")(x)
        padding = "valid"
    return layers.Conv2D(filters, kernel, strides=stride, padding=padding, groups=groups, use_bias=False,
                         kernel_initializer=initializer or "glorot_uniform", name=name)(x)


def max_pool(x, name: str):
    """``nn.MaxPool2d(3, stride=2, padding=1)`` after a ReLU: zero padding equals PyTorch's
    -inf padding because the inputs are non-negative."""
    x = layers.ZeroPadding2D(1, name=f"{name}.pad")(x)
    return layers.MaxPooling2D(3, strides=2, name=name)(x)


def kaiming_normal(mode: str) -> keras.initializers.Initializer:
    """``nn.init.kaiming_normal_(w, mode=mode, nonlinearity="relu")``: torchvision's conv init."""
    return keras.initializers.VarianceScaling(2.0, mode, "untruncated_normal")
