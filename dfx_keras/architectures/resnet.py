"""torchvision's ResNets (18, 34, 50, 101, 152) and ResNeXt-101 32x8d as Keras functional models.

torchvision's ResNets are "v1.5": a bottleneck block strides in its 3x3 convolution, where
keras.applications' ResNet50/101/152 (v1, the original Caffe layout) stride in the first 1x1
convolution and give their convolutions biases. torchvision's weights need this layout.
ResNeXt-101 is torchvision's ``resnext101_32x8d`` (32 groups of width 8 per 64 planes); the
reference code loaded NVIDIA's torch.hub ResNeXt-101 32x4d instead, a different model.

Each block's output (its last ReLU) is named after the torchvision block, ``layer4.2``.
"""

from __future__ import annotations

import keras
from keras import layers

from dfx_keras.architectures.torch_layers import batch_norm, conv2d, kaiming_normal, max_pool

# As torchvision's constructors.
CONFIGS = {
    "resnet18": dict(block="basic", stages=(2, 2, 2, 2)),
    "resnet34": dict(block="basic", stages=(3, 4, 6, 3)),
    "resnet50": dict(block="bottleneck", stages=(3, 4, 6, 3)),
    "resnet101": dict(block="bottleneck", stages=(3, 4, 23, 3)),
    "resnet152": dict(block="bottleneck", stages=(3, 8, 36, 3)),
    "resnext101": dict(block="bottleneck", stages=(3, 4, 23, 3), groups=32, width_per_group=8),
}
EXPANSION = {"basic": 1, "bottleneck": 4}
PLANES = (64, 128, 256, 512)


def feature_map(stages: tuple[int, ...]) -> str:
    """The last block of the last stage: the last spatial feature map (``layer4.2``)."""
    return f"layer{len(stages)}.{stages[-1] - 1}"


def _conv_bn(x, filters: int, kernel: int, name: str, bn_name: str, stride: int = 1, groups: int = 1):
    x = conv2d(x, filters, kernel, name, stride=stride, groups=groups, initializer=kaiming_normal("fan_out"))
    return batch_norm(x, bn_name)


def _shortcut(x, filters: int, stride: int, name: str):
    """The identity, or ``downsample`` (1x1 conv + BN) when the shape changes."""
    if stride == 1 and x.shape[-1] == filters:
        return x
    return _conv_bn(x, filters, 1, f"{name}.downsample.0", f"{name}.downsample.1", stride=stride)


def _basic_block(x, planes: int, stride: int, name: str, groups: int, width_per_group: int):
    shortcut = _shortcut(x, planes, stride, name)
    y = _conv_bn(x, planes, 3, f"{name}.conv1", f"{name}.bn1", stride=stride)
    y = layers.ReLU(name=f"{name}.relu")(y)
    y = _conv_bn(y, planes, 3, f"{name}.conv2", f"{name}.bn2")
    y = layers.Add(name=f"{name}.add")([y, shortcut])
    return layers.ReLU(name=name)(y)


def _bottleneck(x, planes: int, stride: int, name: str, groups: int, width_per_group: int):
    """1x1 -> 3x3 (the stride, the groups) -> 1x1 (4 x planes), plus the shortcut."""
    width = int(planes * width_per_group / 64) * groups
    shortcut = _shortcut(x, planes * EXPANSION["bottleneck"], stride, name)
    y = _conv_bn(x, width, 1, f"{name}.conv1", f"{name}.bn1")
    y = layers.ReLU(name=f"{name}.relu1")(y)
    y = _conv_bn(y, width, 3, f"{name}.conv2", f"{name}.bn2", stride=stride, groups=groups)
    y = layers.ReLU(name=f"{name}.relu2")(y)
    y = _conv_bn(y, planes * EXPANSION["bottleneck"], 1, f"{name}.conv3", f"{name}.bn3")
    y = layers.Add(name=f"{name}.add")([y, shortcut])
    return layers.ReLU(name=name)(y)


_BLOCKS = {"basic": _basic_block, "bottleneck": _bottleneck}


def resnet(input_shape, block: str, stages: tuple[int, ...], groups: int = 1, width_per_group: int = 64,
           name: str = "resnet") -> keras.Model:
    """Image (already normalised) -> globally pooled features (512 x expansion channels).

    ``stages``: blocks per stage (torchvision's ``layers`` argument).
    """
    inputs = keras.Input(input_shape)
    x = _conv_bn(inputs, 64, 7, "conv1", "bn1", stride=2)
    x = layers.ReLU(name="relu")(x)
    x = max_pool(x, "maxpool")
    for stage, (planes, blocks) in enumerate(zip(PLANES, stages), start=1):
        for i in range(blocks):
            stride = 2 if stage > 1 and i == 0 else 1
            x = _BLOCKS[block](x, planes, stride, f"layer{stage}.{i}", groups, width_per_group)
    x = layers.GlobalAveragePooling2D(name="avgpool")(x)
    return keras.Model(inputs, x, name=name)
