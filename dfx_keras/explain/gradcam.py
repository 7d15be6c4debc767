"""Grad-CAM (Selvaraju et al., 2017) of the complete model: where each base model looked.

For the class the complete model predicts, the gradient of its logit flows back through the
head into each base model's backbone, to its last spatial feature map (for ViT, the patch-token
grid of the last block; each backbone declares that layer in its registry entry,
``backbones.feature_map``). Each channel of the map is weighted by its mean gradient; the
ReLU of the weighted sum, normalised to [0, 1], is the heatmap: one per base model (DM, GAN,
REAL), and their mean.
"""

from __future__ import annotations

import io

import keras
import numpy as np
import tensorflow as tf

from dfx_keras import backbones, models
from dfx_keras.classes import CLASS_NAMES, SHORT_NAMES

_EPSILON = 1e-8


def gradcam_model(complete: keras.Model) -> keras.Model:
    """image -> [logits, DM feature map, GAN feature map, REAL feature map], rebuilt from the
    complete model's own layers (same weights): each backbone split at its feature-map layer."""
    image = keras.Input(complete.input_shape[1:], name=models.IMAGE_INPUT)
    feature_maps, features = [], []
    for extractor in models.base_feature_extractors(complete):
        feature_map, feature = _split_at_feature_map(extractor)(image)
        feature_maps.append(feature_map)
        features.append(feature)
    logits = models.head_of(complete)(models.stack_features(features))
    return keras.Model(image, [logits, *feature_maps], name=f"{complete.name}_gradcam")


def _split_at_feature_map(extractor: keras.Model) -> keras.Model:
    """A base model's image -> [feature map, pooled features], through its own layers (one
    model per base model: their layers share names)."""
    backbone = models.backbone_of(extractor)
    try:
        target = backbones.feature_map(backbone)
    except ValueError as e:
        raise ValueError(f"cannot explain {extractor.name}: {e} (a tiny CNN saved before they were named must be "
                         "retrained)") from None
    split = keras.Model(backbone.input, [target.output, backbone.output])
    image = keras.Input(extractor.input_shape[1:])
    feature_map, pooled = split(models.backbone_input(extractor, image))
    return keras.Model(image, [feature_map, extractor.get_layer(models.FEATURES_LAYER)(pooled)],
                       name=f"{extractor.name}_split")


def heatmaps(model: keras.Model, images: np.ndarray, class_ids: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """Class ids (the predicted ones unless given) and heatmaps (B, 3, rows, cols) in [0, 1],
    one per base model, at each backbone's feature-map resolution."""
    images = tf.convert_to_tensor(images, tf.float32)
    with tf.GradientTape() as tape:
        logits, *feature_maps = model(images, training=False)
        if class_ids is None:
            class_ids = tf.argmax(logits, axis=-1)
        target = tf.gather(logits, tf.convert_to_tensor(class_ids, tf.int64), batch_dims=1)
    gradients = tape.gradient(target, feature_maps)
    maps = []
    for feature_map, gradient in zip(feature_maps, gradients):
        weights = tf.reduce_mean(gradient, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * feature_map, axis=-1))
        maps.append(cam / (tf.reduce_max(cam, axis=(1, 2), keepdims=True) + _EPSILON))
    return np.asarray(class_ids), np.stack([np.asarray(m) for m in maps], axis=1)


def upsample(heatmap: np.ndarray, size: int) -> np.ndarray:
    """A (rows, cols) heatmap bilinearly resized to the image's (size, size)."""
    return tf.image.resize(heatmap[..., None], (size, size), method="bilinear").numpy()[..., 0]


def figure_png(image: np.ndarray, maps: np.ndarray, class_id: int) -> bytes:
    """The image, then the image under each base model's heatmap and under their mean, side by
    side, as PNG bytes."""
    from matplotlib.figure import Figure

    size = image.shape[0]
    panels = [("image", None), *((f"bm_{SHORT_NAMES[c]}", maps[i]) for i, c in enumerate(CLASS_NAMES)),
              ("mean", maps.mean(axis=0))]
    fig = Figure(figsize=(2.2 * len(panels), 2.6), dpi=100, layout="constrained")
    axes = fig.subplots(1, len(panels))
    for ax, (title, heatmap) in zip(axes, panels):
        ax.imshow(np.clip(image, 0, 255).astype(np.uint8))
        if heatmap is not None:
            ax.imshow(upsample(heatmap, size), cmap="jet", alpha=0.45, vmin=0, vmax=1)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle(f"Grad-CAM of {CLASS_NAMES[class_id]}", fontsize=10)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
