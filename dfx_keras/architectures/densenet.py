"""torchvision's DenseNet-BC (121, 161, 169, 201) as a Keras functional model.

keras.applications' DenseNet has the same layer order (and ports the same original weights)
but hard-codes growth rate 32 and 64 initial features, so it cannot build DenseNet-161
(growth 48, 96 initial features). This definition is parametrised like torchvision's
``DenseNet(growth_rate, block_config, num_init_features)`` and names its layers after
torchvision's modules, so torchvision's state dicts load onto it.
"""

from __future__ import annotations

import keras
from keras import layers

from dfx_keras.architectures.torch_layers import batch_norm, conv2d, kaiming_normal, max_pool

# As torchvision's constructors.
CONFIGS = {
    "densenet121": dict(growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64),
    "densenet161": dict(growth_rate=48, block_config=(6, 12, 36, 24), num_init_features=96),
    "densenet169": dict(growth_rate=32, block_config=(6, 12, 32, 32), num_init_features=64),
    "densenet201": dict(growth_rate=32, block_config=(6, 12, 48, 32), num_init_features=64),
}
BN_SIZE = 4  # bottleneck width: bn_size * growth_rate channels
FEATURE_MAP = "relu"  # F.relu after features.norm5: the last spatial map (same name as keras.applications')


def _dense_layer(x, growth_rate: int, name: str):
    """norm1 -> relu1 -> conv1 (1x1) -> norm2 -> relu2 -> conv2 (3x3), concatenated after the input."""
    y = batch_norm(x, f"{name}.norm1")
    y = layers.ReLU(name=f"{name}.relu1")(y)
    y = conv2d(y, BN_SIZE * growth_rate, 1, f"{name}.conv1", initializer=kaiming_normal("fan_in"))
    y = batch_norm(y, f"{name}.norm2")
    y = layers.ReLU(name=f"{name}.relu2")(y)
    y = conv2d(y, growth_rate, 3, f"{name}.conv2", initializer=kaiming_normal("fan_in"))
    return layers.Concatenate(name=f"{name}.concat")([x, y])


def _transition(x, filters: int, name: str):
    x = batch_norm(x, f"{name}.norm")
    x = layers.ReLU(name=f"{name}.relu")(x)
    x = conv2d(x, filters, 1, f"{name}.conv", initializer=kaiming_normal("fan_in"))
    return layers.AveragePooling2D(2, strides=2, name=f"{name}.pool")(x)


def densenet(input_shape, growth_rate: int, block_config: tuple[int, ...], num_init_features: int,
             name: str = "densenet") -> keras.Model:
    """Image (already normalised) -> globally pooled features (``features.norm5`` channels)."""
    num_features = num_init_features
    inputs = keras.Input(input_shape)
    x = conv2d(inputs, num_features, 7, "features.conv0", stride=2, initializer=kaiming_normal("fan_in"))
    x = batch_norm(x, "features.norm0")
    x = layers.ReLU(name="features.relu0")(x)
    x = max_pool(x, "features.pool0")
    for block, num_layers in enumerate(block_config, start=1):
        for i in range(1, num_layers + 1):
            x = _dense_layer(x, growth_rate, f"features.denseblock{block}.denselayer{i}")
        num_features += num_layers * growth_rate
        if block < len(block_config):
            num_features //= 2
            x = _transition(x, num_features, f"features.transition{block}")
    x = batch_norm(x, "features.norm5")
    x = layers.ReLU(name=FEATURE_MAP)(x)
    x = layers.GlobalAveragePooling2D(name="avgpool")(x)
    return keras.Model(inputs, x, name=name)
