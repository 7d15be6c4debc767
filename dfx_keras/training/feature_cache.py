"""The complete stage's feature cache: the frozen base models' features, computed once, on disk."""

from __future__ import annotations

import hashlib
import os
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from dfx_keras.backbones import nested_layers
from dfx_keras.data import corpus as corpus_lib
from dfx_keras.data import pipelines
from dfx_keras.training.distribute import worker_share
from dfx_keras.workdir import atomic_write


def feature_strategy(strategy: tf.distribute.Strategy) -> tf.distribute.Strategy:
    """The strategy the feature pass runs under: ``strategy`` itself on one machine (all its
    GPUs); in a multi-worker run the default one, on each worker's first device. Every worker
    needs every feature (its share of the training stream covers all images over the epochs),
    and passes of uneven length would stall the collective strategy's lock-step iterators."""
    return tf.distribute.get_strategy() if worker_share(strategy) else strategy


class FeatureCache:
    """Stacked base-model features (N, D, 3) of images, computed once and kept on disk.

    The base models are frozen (BatchNorm in inference mode), so their features do not change
    while the head trains: computing them once replaces ``epochs`` forward passes through three
    backbones by one. Files are keyed by a fingerprint of the base models' weights and compute
    dtypes, the image list and the image size, so a retrained base model or another split never
    reuses stale data. Features are computed in global batches under ``strategy`` (build
    ``complete`` in its scope) and stored as float32; ``write=False`` (non-chief workers) keeps
    them in memory only.
    """

    def __init__(self, folder: str, complete: keras.Model, source, image_size: int, batch_size: int,
                 strategy: tf.distribute.Strategy | None = None, write: bool = True):
        self.folder = folder
        self.source, self.image_size, self.batch_size, self.write = source, image_size, batch_size, write
        self.strategy = strategy or tf.distribute.get_strategy()
        self.stacker = keras.Model(complete.input, complete.get_layer("stacked_features").output)
        self._step = tf.function(self._replica_step, reduce_retracing=True)  # traced once per cache, not per pass
        self.weights_digest = _digest([*(w.numpy().tobytes() for w in self.stacker.weights),
                                       *(layer.dtype_policy.name.encode() for layer in nested_layers(self.stacker))])

    def features(self, samples: Sequence[corpus_lib.Sample]) -> tuple[np.ndarray, list[str]]:
        """Features and the paths they belong to (unreadable images are absent)."""
        key = _digest([self.weights_digest.encode(), str(self.image_size).encode(),
                       *(s.path.encode() for s in samples)])
        path = os.path.join(self.folder, f"{key[:16]}.npz")
        if os.path.exists(path):
            with np.load(path) as data:
                return data["features"], [p.decode() for p in data["paths"]]
        features, indices = self._extract(samples)
        paths = [samples[i].path for i in indices]
        if not self.write:
            return features, paths
        os.makedirs(self.folder, exist_ok=True)
        atomic_write(path, lambda tmp: np.savez(tmp, features=features, paths=np.array([p.encode() for p in paths])))
        return features, paths

    def _extract(self, samples: Sequence[corpus_lib.Sample]) -> tuple[np.ndarray, np.ndarray]:
        """One pass of the samples through the stacker, split across the strategy's replicas.

        Images travel with their sample index (GPU-friendly, unlike path strings). A final batch
        is padded to a multiple of the replica count with index -1, so no replica gets an empty
        slice (oneDNN fails on those); padding rows are dropped here.
        """
        strategy, replicas = self.strategy, self.strategy.num_replicas_in_sync
        ds = pipelines.image_dataset(self.source, samples, self.image_size, self.batch_size,
                                     targets=list(range(len(samples))))

        def pad(images, indices):
            extra = -tf.shape(indices)[0] % replicas
            return (tf.concat([images, tf.zeros(tf.concat([[extra], tf.shape(images)[1:]], 0), images.dtype)], 0),
                    tf.concat([indices, tf.fill([extra], -1)], 0))

        features, indices = [], []
        for batch in strategy.experimental_distribute_dataset(ds.map(pad)):
            for f, i in zip(*map(strategy.experimental_local_results, self._step(*batch))):
                keep = i.numpy() >= 0
                features.append(np.asarray(f, np.float32)[keep])
                indices.append(i.numpy()[keep])
        if not features:
            return np.zeros((0, *self.stacker.output_shape[1:]), np.float32), np.zeros(0, np.int64)
        return np.concatenate(features), np.concatenate(indices)

    def _replica_step(self, images, indices):
        return self.strategy.run(lambda x, i: (self.stacker(x, training=False), i), args=(images, indices))

    def dataset(self, samples: Sequence[corpus_lib.Sample], batch_size: int, weights: Sequence[float] | None = None,
                shuffle_seed: int | None = None, share: tuple[int, int] | None = None) -> tf.data.Dataset:
        """Batches of ``(features, label[, weight])`` in the order an image pipeline would use:
        one pass in sample order, or with a seed the same endless ``seeded_passes`` stream
        (with ``share``, this worker's ``pipelines.worker_slices`` of it)."""
        features, paths = self.features(samples)
        by_path = {s.path: (s.label, w) for s, w in zip(samples, weights if weights is not None else [1.0] * len(samples))}
        labels = np.array([by_path[p][0] for p in paths], np.int32)
        parts = (features, labels) + ((np.array([by_path[p][1] for p in paths], np.float32),) if weights is not None else ())
        if shuffle_seed is None:
            ds = tf.data.Dataset.from_tensor_slices(parts).batch(batch_size)
        else:  # one gather per batch: per-example maps would cost more than a GPU's head step
            parts = tuple(tf.constant(part) for part in parts)
            order = pipelines.seeded_passes(len(paths), shuffle_seed)
            if share is not None:
                order = pipelines.worker_slices(order, share, batch_size)
            ds = order.batch(batch_size).map(lambda i: tuple(tf.gather(p, i) for p in parts))
        return pipelines.finish(ds, share is not None)


def _digest(chunks) -> str:
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()
