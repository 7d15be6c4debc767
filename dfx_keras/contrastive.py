"""DeepFeatureX-SN's base models (DESIGN.md 1.6): Siamese training on pairs, a nearest-centroid head.

A contrastive base model trains its backbone on pairs of images of its balanced main-vs-rest set:
each image gets one partner, drawn once with a seeded label y ~ Bernoulli(0.5) (0: a partner of
the same side, 1: of the other side), and the loss pulls same-side pooled features together and
pushes other-side ones at least ``margin`` apart:

    L = mean(0.5 * (1 - y) * d^2 + 0.5 * y * max(0, margin - d)^2),  d = ||f(a) - f(b)||.

It has no trained main-vs-rest head; ``CentroidLogits`` takes its place and keeps the interface
of a cross-entropy base model (image -> ``features`` -> (B, 2) logits, index 1 the main class):
it holds the main and rest feature centroids of the training split as weights and returns the
negative distances to them, so softmax gives the nearest-centroid probability.

Keras objects and NumPy only (``models.load_model`` registers the layers); the pairs are drawn
and read in ``training.pairs``.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

MARGIN = 2.0
SAME, OTHER = 0, 1  # pair labels, as the follow-up's
_EPSILON = 1e-12  # under the square root: a finite gradient for identical features


def contrastive_loss(pair_labels, distances, margin: float = MARGIN):
    """Per-pair loss (Keras averages it over the batch): same-side pairs pay d^2 / 2, other-side
    pairs pay max(0, margin - d)^2 / 2."""
    y = tf.cast(tf.reshape(pair_labels, [-1]), tf.float32)
    d = tf.cast(tf.reshape(distances, [-1]), tf.float32)
    return 0.5 * (1.0 - y) * tf.square(d) + 0.5 * y * tf.square(tf.maximum(margin - d, 0.0))


def pair_accuracy(pair_labels, distances, margin: float = MARGIN):
    """Share of pairs on the right side of margin / 2 (a readable companion of the loss)."""
    y = tf.cast(tf.reshape(pair_labels, [-1]), tf.float32)
    d = tf.cast(tf.reshape(distances, [-1]), tf.float32)
    return tf.cast(tf.equal(tf.cast(d > margin / 2, tf.float32), y), tf.float32)


@keras.saving.register_keras_serializable(package="dfx_keras")
class PairDistance(keras.layers.Layer):
    """Euclidean distance between two batches of feature vectors, (B, D) x 2 -> (B,), float32."""

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    def call(self, inputs):
        a, b = (tf.cast(x, tf.float32) for x in inputs)
        return tf.sqrt(tf.reduce_sum(tf.square(a - b), axis=-1) + _EPSILON)


@keras.saving.register_keras_serializable(package="dfx_keras")
class CentroidLogits(keras.layers.Layer):
    """Features (B, D) -> [-(distance to the rest centroid), -(distance to the main centroid)].

    The centroids are non-trainable weights (row 0 rest, row 1 main), so the ``.keras`` file
    stores them; set them with ``set_centroids`` after training.
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    def build(self, input_shape):
        self.centroids = self.add_weight(shape=(2, input_shape[-1]), initializer="zeros", trainable=False,
                                         name="centroids")

    def set_centroids(self, rest: np.ndarray, main: np.ndarray) -> None:
        self.centroids.assign(np.stack([rest, main]).astype(np.float32))

    def call(self, features):
        x = tf.cast(features, tf.float32)[:, None, :]
        return -tf.sqrt(tf.reduce_sum(tf.square(x - self.centroids[None]), axis=-1) + _EPSILON)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 2)


def build_siamese(embedder: keras.Model, name: str) -> keras.Model:
    """(image_a, image_b) -> distance between their ``embedder`` features: one shared backbone."""
    shape = embedder.input_shape[1:]
    a, b = keras.Input(shape, name="image_a"), keras.Input(shape, name="image_b")
    return keras.Model([a, b], PairDistance(name="distance")([embedder(a), embedder(b)]), name=name)


def branch_of(siamese: keras.Model) -> keras.Model:
    """The shared backbone (feature extractor) of a ``build_siamese`` model."""
    (embedder,) = [layer for layer in siamese.layers if isinstance(layer, keras.Model)]
    return embedder


def attach_centroids(embedder: keras.Model, rest: np.ndarray, main: np.ndarray, name: str) -> keras.Model:
    """The base model: ``embedder``'s layers (``features`` included) then ``CentroidLogits``."""
    head = CentroidLogits(name="logits")
    model = keras.Model(embedder.input, head(embedder.output), name=name)
    head.set_centroids(rest, main)
    return model


def centroids(features: np.ndarray, is_main: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean feature vector of the rest and of the main class."""
    is_main = np.asarray(is_main, bool)
    return features[~is_main].mean(axis=0), features[is_main].mean(axis=0)


def nearest_centroid_accuracy(features: np.ndarray, is_main: np.ndarray, rest: np.ndarray, main: np.ndarray) -> float:
    """Share of images nearer the centroid of their own side (ties go to the rest)."""
    to_rest = np.linalg.norm(features - rest, axis=1)
    to_main = np.linalg.norm(features - main, axis=1)
    return float(np.mean((to_main < to_rest) == np.asarray(is_main, bool)))
