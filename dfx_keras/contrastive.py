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
"""

from __future__ import annotations

from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from dfx_keras.classes import NUM_CLASSES
from dfx_keras.data import pipelines
from dfx_keras.data.corpus import Sample, balanced_sample

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


def attach_centroids(embedder: keras.Model, rest: np.ndarray, main: np.ndarray, name: str) -> keras.Model:
    """The base model: ``embedder``'s layers (``features`` included) then ``CentroidLogits``."""
    head = CentroidLogits(name="logits")
    model = keras.Model(embedder.input, head(embedder.output), name=name)
    head.set_centroids(rest, main)
    return model


def balanced_main_vs_rest(samples: Sequence[Sample], main_class: int, seed: int) -> list[Sample]:
    """The follow-up's base-model set: the main class against all other classes, the larger side
    down-sampled (by a seeded hash) to the smaller one's count."""
    others = tuple(c for c in range(NUM_CLASSES) if c != main_class)
    return balanced_sample(samples, None, seed, groups=((main_class,), others))


def draw_partners(is_main: Sequence[bool], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One partner per image, drawn once: ``(partner index, pair label)`` per image.

    The label is a seeded fair coin (SAME or OTHER); the partner is drawn uniformly from the
    images of that side, never the image itself. An image whose drawn side has no candidate
    takes the other label (a set with one side only cannot train a base model anyway).
    """
    is_main = np.asarray(is_main, bool)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, len(is_main)).astype(np.int32)
    u = rng.random(len(is_main))
    sides = {side: np.flatnonzero(is_main == side) for side in (True, False)}
    position = np.empty(len(is_main), np.int64)
    for members in sides.values():
        position[members] = np.arange(len(members))
    partners = np.empty(len(is_main), np.int64)
    for side, members in sides.items():
        others = sides[not side]
        if len(members) < 2:
            labels[members] = OTHER
        if not len(others):
            labels[members] = SAME
        same = members[labels[members] == SAME]
        k = np.floor(u[same] * (len(members) - 1)).astype(np.int64)  # k >= own position: skip the image itself
        partners[same] = members[k + (k >= position[same])]
        other = members[labels[members] == OTHER]
        partners[other] = others[np.floor(u[other] * len(others)).astype(np.int64)] if len(others) else other
    return partners, labels


def pair_dataset(source: pipelines.FolderSource, samples: Sequence[Sample], partners: np.ndarray,
                 pair_labels: np.ndarray, image_size: int, batch_size: int, *, shuffle_seed: int | None = None,
                 transform: Callable | None = None, share: tuple[int, int] | None = None) -> tf.data.Dataset:
    """Batches of ``((images_a, images_b), pair labels)``, both images read and decoded in tf.data.

    Without a seed one pass in sample order (validation); with one, the endless
    ``pipelines.seeded_passes`` stream over the pairs, every replica and worker replaying the same
    order (``share``: this worker's ``worker_slices``, as ``pipelines.image_dataset``). A pair
    whose either image fails to decode is dropped. Reads files by path: a folder corpus only.
    """
    firsts = tf.constant([s.path for s in samples], tf.string)
    seconds = tf.constant([samples[j].path for j in partners], tf.string)
    labels = tf.constant(pair_labels, tf.int32)
    order = (tf.data.Dataset.range(len(samples)) if shuffle_seed is None
             else pipelines.seeded_passes(len(samples), shuffle_seed))
    if share is not None:
        order = pipelines.worker_slices(order, share, batch_size)
    root = source.root.rstrip("/") + "/"

    def load(i):
        def image(paths):
            return pipelines.decode_and_resize(tf.io.read_file(root + tf.gather(paths, i)), image_size, transform)

        return (image(firsts), image(seconds)), tf.gather(labels, i)

    ds = order.map(load, num_parallel_calls=pipelines.AUTOTUNE).ignore_errors(log_warning=True)
    return pipelines.per_worker(ds.batch(batch_size).prefetch(pipelines.AUTOTUNE), share is not None)


def embed(embedder: keras.Model, dataset: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Features and targets of an ``(images, targets)`` dataset, one pass in inference mode."""
    features, targets = [], []
    for images, batch_targets in dataset:
        features.append(np.asarray(embedder(images, training=False), np.float32))
        targets.append(batch_targets.numpy())
    return np.concatenate(features), np.concatenate(targets)


def centroids(features: np.ndarray, is_main: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean feature vector of the rest and of the main class."""
    is_main = np.asarray(is_main, bool)
    return features[~is_main].mean(axis=0), features[is_main].mean(axis=0)


def nearest_centroid_accuracy(features: np.ndarray, is_main: np.ndarray, rest: np.ndarray, main: np.ndarray) -> float:
    """Share of images nearer the centroid of their own side (ties go to the rest)."""
    to_rest = np.linalg.norm(features - rest, axis=1)
    to_main = np.linalg.norm(features - main, axis=1)
    return float(np.mean((to_main < to_rest) == np.asarray(is_main, bool)))
