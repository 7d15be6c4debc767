"""torchvision's Vision Transformers ViT-B/16 and ViT-B/32 as Keras functional models.

The reference resizes images to 256 and centre-crops 224 for its ViTs; the crop is a layer of
the model here (7/8 of the input side, rounded down to whole patches), so the model takes the
same 256x256 images as the CNNs and the export crops in the graph. Features are the class
token after the final LayerNorm (768 values), as torchvision's classifier reads them.

For Grad-CAM the tokens entering the last encoder block pass through a (rows, cols, 768) grid,
``encoder.patch_grid``: an identity detour, because the last block's *output* patch tokens
never reach the class token (the final LayerNorm is per token), so their gradients are zero.
"""

from __future__ import annotations

import math

import keras
from keras import layers, ops

# As torchvision's constructors.
CONFIGS = {
    "vit_b16": dict(patch_size=16, num_layers=12, num_heads=12, hidden_dim=768, mlp_dim=3072),
    "vit_b32": dict(patch_size=32, num_layers=12, num_heads=12, hidden_dim=768, mlp_dim=3072),
}
LN_EPSILON = 1e-6
CROP_FRACTION = 224 / 256  # the reference: resize to 256, centre crop 224
FEATURE_MAP = "encoder.patch_grid"


@keras.saving.register_keras_serializable(package="dfx_keras")
class ClassToken(layers.Layer):
    """Prepends a learned token to a (batch, tokens, dim) sequence (torchvision's ``class_token``)."""

    def build(self, input_shape):
        self.token = self.add_weight(shape=(1, 1, input_shape[-1]), initializer="zeros", name="token")

    def call(self, tokens):
        batch = ops.shape(tokens)[0]
        token = ops.cast(ops.broadcast_to(self.token, (batch, 1, self.token.shape[-1])), tokens.dtype)
        return ops.concatenate([token, tokens], axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], None if input_shape[1] is None else input_shape[1] + 1, input_shape[2])


@keras.saving.register_keras_serializable(package="dfx_keras")
class PositionEmbedding(layers.Layer):
    """Adds a learned (1, tokens, dim) embedding (torchvision's ``encoder.pos_embedding``)."""

    def build(self, input_shape):
        self.embedding = self.add_weight(shape=(1, *input_shape[1:]),
                                         initializer=keras.initializers.RandomNormal(stddev=0.02), name="embedding")

    def call(self, tokens):
        return tokens + ops.cast(self.embedding, tokens.dtype)


def crop_size(image_size: int, patch_size: int) -> int:
    """The centre crop's side: 7/8 of the image, whole patches (224 for 256)."""
    size = int(image_size * CROP_FRACTION) // patch_size * patch_size
    if size < patch_size:
        raise ValueError(f"image size {image_size} is too small for {patch_size}-pixel patches after the "
                         f"{CROP_FRACTION:.3f} centre crop; use at least {math.ceil(patch_size / CROP_FRACTION)}")
    return size


def _center_crop(x, size: int):
    """torchvision's CenterCrop offsets: round((side - size) / 2) from the top and left."""
    height, width = x.shape[1], x.shape[2]
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    return layers.Cropping2D(((top, height - size - top), (left, width - size - left)), name="center_crop")(x)


def _patch_grid(tokens, rows: int, cols: int):
    """(B, 1 + rows * cols, D) -> the same tokens, the patches passing through a (B, rows, cols, D) grid."""
    dim = tokens.shape[-1]
    class_token = layers.Cropping1D((0, rows * cols), name="encoder.class_token_in")(tokens)
    patches = layers.Cropping1D((1, 0), name="encoder.patch_tokens_in")(tokens)
    grid = layers.Reshape((rows, cols, dim), name=FEATURE_MAP)(patches)
    patches = layers.Reshape((rows * cols, dim), name="encoder.patch_tokens_out")(grid)
    return layers.Concatenate(axis=1, name="encoder.tokens_out")([class_token, patches])


def _encoder_block(x, num_heads: int, mlp_dim: int, name: str):
    """Pre-norm block: x + attention(ln_1(x)), then + mlp(ln_2(.)) with exact (erf) GELU."""
    dim = x.shape[-1]
    y = layers.LayerNormalization(epsilon=LN_EPSILON, name=f"{name}.ln_1")(x)
    y = layers.MultiHeadAttention(num_heads, dim // num_heads, name=f"{name}.self_attention")(y, y)
    x = layers.Add(name=f"{name}.add_1")([x, y])
    y = layers.LayerNormalization(epsilon=LN_EPSILON, name=f"{name}.ln_2")(x)
    y = layers.Dense(mlp_dim, activation="gelu", bias_initializer=keras.initializers.RandomNormal(stddev=1e-6),
                     name=f"{name}.mlp.0")(y)
    y = layers.Dense(dim, bias_initializer=keras.initializers.RandomNormal(stddev=1e-6), name=f"{name}.mlp.3")(y)
    return layers.Add(name=f"{name}.add_2")([x, y])


def vision_transformer(input_shape, patch_size: int, num_layers: int, num_heads: int, hidden_dim: int,
                       mlp_dim: int, name: str = "vit") -> keras.Model:
    """Image (already normalised) -> centre crop -> patches + class token -> encoder -> class token."""
    inputs = keras.Input(input_shape)
    x = _center_crop(inputs, crop_size(min(input_shape[:2]), patch_size))
    x = layers.Conv2D(hidden_dim, patch_size, strides=patch_size, name="conv_proj",
                      kernel_initializer=keras.initializers.VarianceScaling(1.0, "fan_in", "untruncated_normal"))(x)
    rows, cols = x.shape[1], x.shape[2]
    x = layers.Reshape((rows * cols, hidden_dim), name="patches")(x)  # row-major, as torchvision's flatten
    x = ClassToken(name="class_token")(x)
    x = PositionEmbedding(name="encoder.pos_embedding")(x)
    for i in range(num_layers):
        if i == num_layers - 1:
            x = _patch_grid(x, rows, cols)
        x = _encoder_block(x, num_heads, mlp_dim, f"encoder.layers.encoder_layer_{i}")
    x = layers.LayerNormalization(epsilon=LN_EPSILON, name="encoder.ln")(x)
    x = layers.Cropping1D((0, rows * cols), name="class_token_out")(x)
    x = layers.Flatten(name="flatten")(x)
    return keras.Model(inputs, x, name=name)
