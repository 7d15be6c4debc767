"""tf.data pipelines: encoded images -> decoded RGB -> (attack) -> resized batches.

Training and evaluation share these functions so an image is decoded and resized the same way
everywhere (and the same way as the SavedModel's serving graph, see ``decode_and_resize``).

A *source* yields ``(relative_path, encoded_bytes)`` for a list of samples; targets and sample
weights are looked up by path, so the folder reader and the tfds reader feed the same code.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import tensorflow as tf

from dfx_keras.data.corpus import Sample

AUTOTUNE = tf.data.AUTOTUNE


def decode_uint8(encoded: tf.Tensor) -> tf.Tensor:
    """PNG/JPEG/BMP/GIF(first frame)/WebP bytes -> uint8 (H, W, 3) RGB."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False, dtype=tf.uint8)
    image.set_shape([None, None, 3])
    return image


def decode_image(encoded: tf.Tensor) -> tf.Tensor:
    """PNG/JPEG/BMP/GIF(first frame)/WebP bytes -> float32 (H, W, 3) RGB in [0, 255].

    Grayscale, palette, RGBA (alpha dropped), 16-bit (scaled to 8-bit) and CMYK JPEG all come
    out as 8-bit RGB; ``tf.io.decode_image`` does the conversions.
    """
    return tf.cast(decode_uint8(encoded), tf.float32)


def resize(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Squash the whole image to ``image_size`` square: bilinear with antialias (the paper's)."""
    resized = tf.image.resize(image, (image_size, image_size), method="bilinear", antialias=True)
    return tf.clip_by_value(resized, 0.0, 255.0)


def decode_and_resize(encoded: tf.Tensor, image_size: int, transform: Callable | None = None) -> tf.Tensor:
    """Decode, apply ``transform`` at the original resolution (attacks), then resize.

    Without a transform the 8-bit image goes to the resize as it is (same result, float32
    out): resizing a float32 copy of a full-size image made the training pipeline 1.7x slower.
    """
    if transform is None:
        return resize(decode_uint8(encoded), image_size)
    return resize(transform(decode_image(encoded)), image_size)


class FolderSource:
    """Reads images from the corpus folder, ``root/<relative path>``."""

    def __init__(self, root: str):
        self.root = root

    def encoded(self, samples: Sequence[Sample], shuffle_seed: int | None = None,
                select: Callable[[tf.data.Dataset], tf.data.Dataset] | None = None) -> tf.data.Dataset:
        """``(path, bytes)`` in sample order, or, given a seed, ``seeded_passes`` over the samples.

        Paths are ordered before any file is read, so no shuffle buffer holds images; ``select``
        picks from the ordered paths (a worker's share) before they are read.
        """
        paths = tf.constant([s.path for s in samples], tf.string)
        if shuffle_seed is None:
            order = tf.data.Dataset.from_tensor_slices(paths)
        else:
            order = seeded_passes(len(samples), shuffle_seed).map(lambda i: tf.gather(paths, i))
        if select is not None:
            order = select(order)
        root = self.root.rstrip("/") + "/"
        return order.map(lambda p: (p, tf.io.read_file(root + p)), num_parallel_calls=AUTOTUNE)


def seeded_passes(count: int, seed: int) -> tf.data.Dataset:
    """Indices ``0..count-1``, pass after pass without end, each pass in its own seeded order.

    Pass k's order is a pure function of ``(seed, k)``, so every iterator replays the same
    stream. A ``reshuffle_each_iteration`` shuffle instead draws a new order for each iterator,
    and Keras and tf.distribute create iterators differently (one device, several, cached
    features or images): the same seed would give them different orders.
    """
    def one_pass(k):
        order = tf.random.experimental.stateless_shuffle(tf.range(count, dtype=tf.int64),
                                                         seed=tf.stack([tf.constant(seed, tf.int64), k]))
        return tf.data.Dataset.from_tensor_slices(order)

    return tf.data.Dataset.counter().flat_map(one_pass)


def lookup_table(samples: Sequence[Sample], values: Sequence, dtype) -> tf.lookup.StaticHashTable:
    """A table from each sample's path to its value (``dtype``); -1 for any other path."""
    keys = tf.constant([s.path for s in samples], tf.string)
    return tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(keys, tf.constant(values, dtype)),
                                     default_value=tf.constant(-1, dtype))


def worker_slices(ds: tf.data.Dataset, share: tuple[int, int], batch_size: int) -> tf.data.Dataset:
    """Worker ``index`` of ``workers``: its slice of every global batch of the flat stream ``ds``.

    Worker k of W takes elements ``[k*B/W, (k+1)*B/W)`` of each batch of B, so at every step the
    workers' slices together are the one-device global batch (the loss curve stays the same)
    while each worker reads and decodes only its own images.
    """
    workers, index = share
    size = batch_size // workers

    def take(*batch):
        return tf.nest.map_structure(lambda t: t[index * size:(index + 1) * size], batch)

    return ds.batch(batch_size).map(take).unbatch()


def image_dataset(source, samples: Sequence[Sample], image_size: int, batch_size: int, *,
                  targets: Sequence[int] | None = None, weights: Sequence[float] | None = None,
                  shuffle_seed: int | None = None, transform: Callable | None = None,
                  with_paths: bool = False, cache: bool = False, repeat: bool = False,
                  share: tuple[int, int] | None = None) -> tf.data.Dataset:
    """Batches of ``(images, targets[, weights])``, or ``(images, paths)`` with ``with_paths``.

    Without ``shuffle_seed``: one pass in sample order. With it (training): an endless stream of
    seeded passes, batched across pass boundaries (every batch is whole); a training loop
    counts its epochs in steps. Images that fail to decode are dropped with a logged warning
    (``ignore_errors``) rather than stopping a run; corpus scans already removed the ones a
    header check can find. ``cache`` keeps the resized images of one pass in memory and then
    shuffles them in a seeded buffer (only without a transform, which may be random).

    ``share=(workers, index)`` (a multi-worker training stream) reads only this worker's images:
    its ``worker_slices`` of the seeded stream, or with ``cache`` every ``workers``-th sample
    (shuffled after the cache, so the global batches then differ from one device's). Batches
    stay global-sized; the strategy splits them among the worker's replicas (``finish``).
    """
    select = None
    if share is not None:
        select = (lambda ds: ds.shard(*share)) if cache else (lambda ds: worker_slices(ds, share, batch_size))
    ds = source.encoded(samples, shuffle_seed=None if cache else shuffle_seed, select=select)
    target_table = lookup_table(samples, targets, tf.int32) if targets is not None else None
    weight_table = lookup_table(samples, weights, tf.float32) if weights is not None else None

    def load(path, encoded):
        image = decode_and_resize(encoded, image_size, transform)
        if with_paths:
            return image, path
        parts = [image, target_table.lookup(path)]
        if weight_table is not None:
            parts.append(weight_table.lookup(path))
        return tuple(parts)

    ds = ds.map(load, num_parallel_calls=AUTOTUNE).ignore_errors(log_warning=True)
    if cache:
        ds = ds.cache()
        if shuffle_seed is not None:  # the same stream for every iterator, as seeded_passes
            ds = ds.repeat().shuffle(min(len(samples), 4096), seed=shuffle_seed, reshuffle_each_iteration=False)
    if repeat:
        ds = ds.repeat()
    return finish(ds.batch(batch_size), share is not None)


def undecodable(source, samples: Sequence[Sample]) -> list[Sample]:
    """The samples TensorFlow's decoder refuses, found by decoding each once, in parallel.

    The corpus scan checks PNGs by their chunk checksums only (a full decode would make it 30x
    slower), so a PNG whose checksums are right but whose data is not passes it. A training
    stream, endless and dropping such images with ``ignore_errors``, could not say which it
    dropped; this pass can, before training: the images that did not come out.
    """
    def decoded(path, encoded):
        return path, decoded_shape(encoded)

    ds = source.encoded(samples).map(decoded, num_parallel_calls=AUTOTUNE).ignore_errors()
    read = {path.decode() for paths, _ in finish(ds.batch(1024)).as_numpy_iterator() for path in paths}
    return [s for s in samples if s.path not in read]


def decoded_shape(encoded: tf.Tensor) -> tf.Tensor:
    """The shape of the decoded image: an output that makes the decode run (and fail on bad
    data). A decode that only a ``tf.control_dependencies`` edge needs is pruned from graphs
    and tf.data functions, bad data and all (tests/test_pipelines.py pins it)."""
    return tf.shape(decode_uint8(encoded))


def finish(ds: tf.data.Dataset, sharded: bool = False) -> tf.data.Dataset:
    """The end of every pipeline here: prefetch, ``without_autotuning``, and the core count as
    the parallelism of ``AUTOTUNE`` maps (the most the tuner would give them; tf.data's
    default without it, 16, would starve a many-core GPU host).

    ``sharded`` tells a multi-worker strategy how ``ds`` is split among workers (one machine:
    ignored): ``ds`` already holds only this worker's images (``share``), so the worker keeps
    every batch (``AutoShardPolicy.OFF``); each global-sized batch then feeds its replicas for
    ``workers`` steps. Otherwise every worker runs the whole pipeline and keeps its slice of
    each batch (``DATA``): our sources are lists of paths read with ``tf.io.read_file``, not
    reader datasets, so TensorFlow's default (shard by file) would warn and do this anyway.
    """
    options = tf.data.Options()
    options.autotune.initial_parallelism = os.cpu_count() or 1
    policy = tf.data.experimental.AutoShardPolicy
    options.experimental_distribute.auto_shard_policy = policy.OFF if sharded else policy.DATA
    return without_autotuning(ds.prefetch(AUTOTUNE), options)


def without_autotuning(ds: tf.data.Dataset, options: tf.data.Options | None = None) -> tf.data.Dataset:
    """``ds`` with ``options`` (the caller's other settings, completed here) and without
    tf.data's autotuning model (the thread that retunes parallelism and buffers).

    TensorFlow 2.21 often deletes an autotuned iterator only when that thread next wakes up,
    and it sleeps 10 ms, 20 ms, 40 ms, ... doubling from the first element: an iterator dropped
    after 6 s blocks the caller until 10.2 s, one dropped after 40 s until 41 s or 82 s. Keras
    drops one at the end of every ``fit`` and every validation or prediction pass, and the
    serving graph one per request (a one-image request's p90 latency doubled), so runs paid up
    to a pass's time again (tests/test_pipelines.py pins the wait). Prefetch buffers still grow
    on demand without it.
    """
    options = options or tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)


def folder_source(data_dir: str) -> FolderSource:
    """The source for a corpus folder (the tfds source lives in ``tfds_source``)."""
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"corpus folder not found: {data_dir}")
    return FolderSource(data_dir)
