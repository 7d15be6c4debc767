"""Distribution: which strategy a run uses, which process writes, how batches split over replicas.

Also ``localhost_cluster``, the TF_CONFIG of a multi-worker cluster on one machine, with which
the tests and the benchmarks run the multi-worker strategy.
"""

from __future__ import annotations

import contextlib
import functools
import socket
from typing import Iterator

import keras
import tensorflow as tf

from dfx_keras.backbones import nested_layers


class MultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """TensorFlow's multi-worker strategy, with a ``reduce`` that Keras 3's ``fit`` can call.

    Keras 3 reduces nested values (its first ``(images, labels)`` batch) and scalar logs with
    ``axis=0``; MirroredStrategy tolerates both, the collective strategy neither, so ``fit``
    fails at its first step (tensorflow/tensorflow#72388). Each leaf is reduced on its own,
    scalars across replicas only.
    """

    def reduce(self, reduce_op, value, axis=None):
        def reduce_leaf(leaf):
            rank = (leaf.values[0] if isinstance(leaf, tf.distribute.DistributedValues) else leaf).shape.rank
            return super(MultiWorkerMirroredStrategy, self).reduce(reduce_op, leaf, axis if rank else None)

        return tf.nest.map_structure(reduce_leaf, value)


@functools.cache
def get_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """``auto``: MirroredStrategy over all GPUs when there are several, else the default.

    ``mirrored`` without GPUs mirrors over the logical CPU devices (how the tests run it).
    ``multi_worker`` reads the cluster from ``TF_CONFIG``; it is created before anything
    lists devices, because collective ops must be configured before TensorFlow's runtime starts.
    One strategy per name and process: every MirroredStrategy numbers its collective ops from
    the same keys, so a second one in a process pairs its all-reduces with the first one's and
    aborts them (TensorFlow's own tests shift a private key base instead).
    """
    if name == "multi_worker":
        return MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if name == "mirrored":
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    raise ValueError(f"unknown strategy {name!r}")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the workdir: always, except on non-chief workers of a
    multi-worker run (TF_CONFIG's ``chief``, or ``worker`` 0 when there is no chief)."""
    return strategy.extended.should_checkpoint


def worker_share(strategy: tf.distribute.Strategy) -> tuple[int, int] | None:
    """``(workers, index)`` of this process in a multi-worker run (``pipelines.image_dataset``'s
    ``share``: each worker reads and decodes only its images); None on one machine."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return None
    return cluster_share(strategy.cluster_resolver)


def cluster_share(resolver: tf.distribute.cluster_resolver.ClusterResolver) -> tuple[int, int] | None:
    """Workers are numbered as TensorFlow numbers input pipelines: a ``chief`` task first (when
    the cluster has one), then ``worker`` 0, 1, ..."""
    spec = resolver.cluster_spec().as_dict()
    chiefs = len(spec.get("chief", ()))
    workers = chiefs + len(spec.get("worker", ()))
    if workers < 2:
        return None
    return workers, 0 if resolver.task_type == "chief" else chiefs + resolver.task_id


def localhost_cluster(workers: int) -> dict[str, list[str]]:
    """A TF_CONFIG ``cluster`` of ``workers`` workers on free localhost ports, to run the
    multi-worker strategy on one machine (its tests and benchmark). The ports are bound to 0
    and released for the workers to take."""
    sockets = [socket.socket() for _ in range(workers)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return {"worker": [f"localhost:{port}" for port in ports]}


class SettingsError(ValueError):
    """A setting that cannot work with this run's devices (train.py reports it in one line)."""


def check_batch_size(batch_size: int, strategy: tf.distribute.Strategy) -> None:
    """The global batch must split into equal per-replica batches (per replica x replicas)."""
    if batch_size % strategy.num_replicas_in_sync:
        raise SettingsError(f"--batch_size={batch_size} is the global batch: it must be a multiple of the "
                         f"{strategy.num_replicas_in_sync} replicas (per-replica batch x replicas)")


def whole_replica_batches(ds: tf.data.Dataset, replicas: int) -> tf.data.Dataset:
    """Cut each batch to a multiple of the replica count, so no replica gets an empty slice.

    For validation sets, whose last batch is partial (training streams are whole batches).
    Uneven slices break two things: Keras 3 builds a distributed model from the first batch
    by averaging its slices, which fails when they differ in size (keras-team/keras#19246,
    a dataset smaller than one global batch), and oneDNN's CPU convolution fails on the empty
    slice a final batch smaller than the replica count leaves. At most ``replicas - 1``
    images of the last batch are skipped. One replica: unchanged.
    """
    if replicas == 1:
        return ds

    def size(batch):
        return tf.shape(tf.nest.flatten(batch)[0])[0]

    def trim(*batch):
        return tf.nest.map_structure(lambda t: t[: size(batch) - size(batch) % replicas], batch)

    return ds.map(trim).filter(lambda *batch: size(batch) > 0)


@contextlib.contextmanager
def synchronized_batchnorm(model: keras.Model, enabled: bool) -> Iterator[None]:
    """Let BatchNorm use the statistics of the global batch, not of each replica's slice.

    Without it, training on R replicas normalises over batch/R images and the loss curve
    depends on the number of GPUs. Set only while fitting, so saved models stay portable.
    """
    layers = [layer for layer in nested_layers(model) if enabled and isinstance(layer, keras.layers.BatchNormalization)]
    for layer in layers:
        layer.synchronized = True
    try:
        yield
    finally:
        for layer in layers:
            layer.synchronized = False
