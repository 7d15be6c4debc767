"""The pairs of DeepFeatureX-SN's base models (``dfx_keras.contrastive``), drawn once and read in tf.data.

A base model's set is its main class against the rest, balanced; each image gets one partner,
drawn once with a seeded fair-coin label (SAME or OTHER side), and the pair stream replays the
same order on every replica and worker, so a run resumes and distributes like the other stages.
"""

from __future__ import annotations

from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from dfx_keras.classes import NUM_CLASSES
from dfx_keras.contrastive import OTHER, SAME
from dfx_keras.data import pipelines
from dfx_keras.data.corpus import Sample, balanced_sample


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
    return pipelines.finish(ds.batch(batch_size), share is not None)


def embed(embedder: keras.Model, dataset: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Features and targets of an ``(images, targets)`` dataset, one pass in inference mode."""
    features, targets = [], []
    for images, batch_targets in dataset:
        features.append(np.asarray(embedder(images, training=False), np.float32))
        targets.append(batch_targets.numpy())
    return np.concatenate(features), np.concatenate(targets)
