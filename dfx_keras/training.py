"""Training stages: three base models, the complete model (head on cached features), a baseline.

Each stage builds and compiles its model inside ``strategy.scope()``, feeds a global batch,
keeps the weights with the lowest validation loss, and resumes from its last finished epoch
when rerun after an interruption (``stage_backup``). A stage whose model file exists is
skipped unless ``overwrite``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import os
import shutil
import socket
import sys
import tempfile
from typing import Callable, Iterator, Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from dfx_keras import models
from dfx_keras.backbones import BN_MOMENTUM, nested_layers
from dfx_keras.classes import CLASS_NAMES, class_id
from dfx_keras.data import attacks
from dfx_keras.data import corpus as corpus_lib
from dfx_keras.data import pipelines
from dfx_keras.optimizers import AdamL2
from dfx_keras.stage_backup import StageBackup
from dfx_keras.workdir import COMPLETE, BASELINE, Workdir, atomic_write


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run depends on (the CLI builds it from flags)."""

    workdir: str
    backbone: str = "densenet121"
    weights: str | None = "imagenet"
    image_size: int = 256
    batch_size: int = 32
    epochs: int = 50
    learning_rate: float = 1e-4
    weight_decay: float = 1e-3
    lr_step_epochs: int = 0
    lr_gamma: float = 0.1
    others_fraction: float = 0.04
    others_min_images: int = 0  # every other-class folder gives a base model at least this many (pool-0 size caps it)
    val_fraction: float = 0.2
    seed: int = 42
    max_pixels: int = corpus_lib.DEFAULT_MAX_PIXELS  # decompression-bomb limit of the scan and the export
    feature_cache: bool = True
    cache_images: bool = False
    augment: Sequence[str] = ()  # attack kinds of data.attacks.random_augment ("jpeg", "blur"); empty: none
    augment_p: float = 0.5
    precision: str = "float32"  # a Keras dtype policy: float32, mixed_bfloat16 or mixed_float16
    jit_compile: bool | str = "auto"  # XLA; "auto" is Keras' choice (one GPU without tf.distribute only)
    sync_batchnorm: bool = True
    bn_momentum: float = BN_MOMENTUM  # the backbones' BatchNorm momentum (Keras convention)
    frozen_bn: str = "inference"  # models.FROZEN_BN_MODES: the frozen base models' BatchNorm in the complete stage
    overwrite: bool = False
    verbose: int | str = "auto"
    extra_callbacks: Sequence[keras.callbacks.Callback] = ()

    @property
    def wd(self) -> Workdir:
        return Workdir(self.workdir)


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


# --- fitting ---------------------------------------------------------------------------------

def _lr_schedule(cfg: TrainConfig) -> Callable[[int, float], float]:
    return lambda epoch, lr: cfg.learning_rate * cfg.lr_gamma ** (epoch // cfg.lr_step_epochs)


def jit_compile(cfg: TrainConfig, replicas: int) -> bool | str:
    """``cfg.jit_compile``, except on several replicas: Keras 3 cannot XLA-compile a step under
    tf.distribute (keras-team/keras#19005: replica variables on other devices), so it is off there."""
    if replicas > 1 and cfg.jit_compile is True:
        logging.warning("--jit_compile ignored on %d replicas: Keras 3 does not support XLA under tf.distribute",
                        replicas)
        return False
    return cfg.jit_compile


def compile_model(model: keras.Model, cfg: TrainConfig, replicas: int = 1) -> keras.Model:
    """Adam with coupled L2, cross-entropy on logits, accuracy; XLA per ``jit_compile``.

    Under ``mixed_float16`` Keras wraps the optimizer in a ``LossScaleOptimizer`` itself.
    """
    model.compile(
        optimizer=AdamL2(l2=cfg.weight_decay, learning_rate=cfg.learning_rate, beta_1=0.9, beta_2=0.999),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        jit_compile=jit_compile(cfg, replicas),
    )
    return model


@contextlib.contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    """Build models under a Keras dtype policy (``mixed_bfloat16``...), then restore the old one.

    Layers take the global policy when they are created, so only building needs it; the
    models' logits layers are float32, so the softmax and the loss stay float32.
    """
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


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


def check_sizes(name: str, train: Sequence, val: Sequence) -> None:
    """Fail early and clearly when a corpus is too small to train or validate a stage."""
    if not train or not val:
        raise corpus_lib.CorpusError(f"{name}: {len(train)} training and {len(val)} validation images; the corpus is too "
                         f"small for this stage (add images or raise --val_fraction)")


@contextlib.contextmanager
def _stage_files(cfg: TrainConfig, name: str, chief: bool) -> Iterator[tuple[str, str, str]]:
    """This worker's backup folder, best checkpoint and CSV log of a stage.

    The chief uses the workdir's. The other workers of a multi-worker run must run the same
    callbacks in step with the chief (saving reads distributed variables) without racing it
    for the same files: they work on a scratch copy of the chief's files, so a resumed run
    starts at the same epoch everywhere, and the copy is deleted when the stage ends.
    """
    paths = (cfg.wd.backup(name), cfg.wd.checkpoint(name), cfg.wd.log_csv(name))
    if chief:
        yield paths
        return
    scratch = tempfile.mkdtemp(prefix=f"dfx-{name}-")
    try:
        copies = tuple(os.path.join(scratch, os.path.basename(p)) for p in paths)
        for src, dst in zip(paths, copies):
            if os.path.isdir(src):
                shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".tmp-*"))
            elif os.path.exists(src):
                shutil.copy(src, dst)
        yield copies
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


class SettingsError(ValueError):
    """A setting that cannot work with this run's devices (train.py reports it in one line)."""


def check_batch_size(batch_size: int, strategy: tf.distribute.Strategy) -> None:
    """The global batch must split into equal per-replica batches (per replica x replicas)."""
    if batch_size % strategy.num_replicas_in_sync:
        raise SettingsError(f"--batch_size={batch_size} is the global batch: it must be a multiple of the "
                         f"{strategy.num_replicas_in_sync} replicas (per-replica batch x replicas)")


def fit(name: str, build: Callable[[], keras.Model], train_ds: tf.data.Dataset, val_ds: tf.data.Dataset,
        cfg: TrainConfig, strategy: tf.distribute.Strategy, train_size: int) -> tuple[keras.Model, dict]:
    """Train ``build()`` for ``cfg.epochs`` with resume, logs and best-val-loss selection.

    ``build`` runs inside ``strategy.scope()`` under ``cfg.precision``; the datasets hold
    global batches, which the strategy splits across replicas. Only the chief writes the
    workdir (TensorBoard logs from the chief only). Returns the model holding its best
    weights and a summary of the best epoch.

    The training stream is endless (``pipelines.seeded_passes``; finite datasets are repeated)
    and an epoch is ``ceil(train_size / batch_size)`` whole batches: Keras 3 ends an epoch of
    unknown length (an image pipeline that skips unreadable files) by probing past its end,
    which advances the optimizer's step counter without an update.
    """
    check_batch_size(cfg.batch_size, strategy)
    chief, replicas = is_chief(strategy), strategy.num_replicas_in_sync
    if chief:
        for path in (cfg.wd.backup(name), cfg.wd.checkpoint(name), cfg.wd.log_csv(name)):
            os.makedirs(os.path.dirname(path), exist_ok=True)

    def new_model() -> keras.Model:
        keras.utils.set_random_seed(cfg.seed)
        return compile_model(build(), cfg, replicas)

    with _stage_files(cfg, name, chief) as (backup_dir, best_path, csv_path):
        backup = StageBackup(backup_dir, best_path, csv_path)
        with strategy.scope(), dtype_policy(cfg.precision):
            model = backup.restore(new_model)
        if chief and not backup.epochs_done:  # a fresh start: the TensorBoard logs of an earlier run go
            shutil.rmtree(cfg.wd.tensorboard(name), ignore_errors=True)
        # The backup right after the log: a generation exists only once its epoch is logged.
        callbacks = [keras.callbacks.CSVLogger(csv_path, append=True), backup, *cfg.extra_callbacks]
        if chief:
            callbacks.append(keras.callbacks.TensorBoard(cfg.wd.tensorboard(name), write_graph=False))
        if cfg.lr_step_epochs:
            callbacks.append(keras.callbacks.LearningRateScheduler(_lr_schedule(cfg)))
        logging.info("training %s for %d epochs on %d replica(s)%s", name, cfg.epochs, replicas,
                     f" (resuming after epoch {backup.epochs_done})" if backup.epochs_done else "")
        with synchronized_batchnorm(model, cfg.sync_batchnorm and replicas > 1):
            model.fit(train_ds.repeat(), epochs=cfg.epochs, initial_epoch=backup.epochs_done,
                      steps_per_epoch=-(-train_size // cfg.batch_size), callbacks=callbacks,
                      validation_data=whole_replica_batches(val_ds, replicas),
                      verbose=cfg.verbose if cfg.verbose != "auto" else (1 if sys.stdout.isatty() else 2))
        model.load_weights(best_path)
        return model, backup.summary()


def save_model(model: keras.Model, path: str, chief: bool = True) -> None:
    """Save a ``.keras`` file atomically: a crash never leaves a half-written model behind.

    Non-chief workers of a multi-worker run save in step with the chief too (saving reads
    distributed variables), into a scratch folder that is deleted at once.
    """
    if not chief:
        with tempfile.TemporaryDirectory(prefix="dfx-model-") as scratch:
            model.save(os.path.join(scratch, os.path.basename(path)))
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write(path, model.save)


def save_stage_model(model: keras.Model, path: str, strategy: tf.distribute.Strategy) -> None:
    """``save_model`` (the chief into the workdir), then wait until every worker has saved.

    In a multi-worker run the other workers finish their scratch saves first; without this
    barrier (a one-number all-reduce, which the chief joins once its file is in place) they
    could read a base model the chief is still writing, or the previous run's file.
    """
    save_model(model, path, is_chief(strategy))
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(1.0)), axis=None)


def _record(cfg: TrainConfig, name: str, summary: dict, chief: bool = True) -> dict:
    """Keep a stage's summary in logs/stages.json (read by the closing table); chief only."""
    if not chief:
        return summary
    cfg.wd.record_stage(name, summary)
    return summary


def finish_stage(cfg: TrainConfig, name: str, model: keras.Model, model_path: str, summary: dict,
                 strategy: tf.distribute.Strategy) -> dict:
    """Record a trained stage, save its model, and only then delete its backup: a kill at any
    moment leaves either the finished model or a backup to resume from."""
    summary = _record(cfg, name, summary, is_chief(strategy))
    save_stage_model(model, model_path, strategy)
    if is_chief(strategy):
        shutil.rmtree(cfg.wd.backup(name), ignore_errors=True)
    return summary


def _skip(cfg: TrainConfig, model_path: str) -> bool:
    if os.path.exists(model_path) and not cfg.overwrite:
        logging.info("%s exists: stage skipped (--overwrite retrains it)", model_path)
        return True
    return False


def augmentation(cfg: TrainConfig) -> Callable | None:
    """The follow-up paper's training augmentation (``--augment``): a share ``augment_p`` of the
    images attacked at their original resolution, as the test attacks are. Randomness is
    stateful (``seed=None``): a different draw every epoch, not reproducible run to run."""
    if not cfg.augment:
        return None
    kinds, p = tuple(cfg.augment), cfg.augment_p
    return lambda image: attacks.random_augment(image, kinds, p)


def training_dataset(cfg: TrainConfig, source, samples: Sequence[corpus_lib.Sample], image_size: int,
                     targets: Sequence[int], weights: Sequence[float] | None = None,
                     share: tuple[int, int] | None = None) -> tf.data.Dataset:
    """A stage's shuffled training batches, augmented when ``cfg.augment``; augmented images
    are never cached (a cache would freeze the first epoch's random attacks). ``share``: this
    worker's images only (``worker_share``)."""
    transform = augmentation(cfg)
    return pipelines.image_dataset(source, samples, image_size, cfg.batch_size, targets=targets, weights=weights,
                                   shuffle_seed=cfg.seed, transform=transform,
                                   cache=cfg.cache_images and transform is None, share=share)


# --- stages ----------------------------------------------------------------------------------

def seed_stage(cfg: TrainConfig) -> None:
    """Reset every random generator to ``cfg.seed`` before a stage builds its datasets.

    A seeded tf.data shuffle also depends on TensorFlow's global seed; without the reset a
    stage's image order, and so its result, would depend on which stages ran before it in the
    same process (``--stage=all`` against ``--stage=base``).
    """
    keras.utils.set_random_seed(cfg.seed)


def base_model_data(cfg: TrainConfig, corpus: corpus_lib.Corpus, source, main_class: str,
                    share: tuple[int, int] | None = None):
    """Train and validation datasets of one base model, and the subset they were drawn from.

    Main class vs an ``others_fraction`` sample (at least ``others_min_images``) of every other
    architecture folder, from pool 0; targets are 1 for the main class, 0 for the rest.
    """
    seed_stage(cfg)
    main = class_id(main_class)
    subset = corpus_lib.base_model_subset(corpus.pool(corpus_lib.BASE_POOL), main, cfg.others_fraction,
                                          others_min_images=cfg.others_min_images)
    train, val = corpus_lib.holdout_split(subset, cfg.val_fraction, salt=f"val-{models.base_model_name(main_class)}")
    check_sizes(models.base_model_name(main_class), train, val)
    train_ds = training_dataset(cfg, source, train, cfg.image_size, [int(s.label == main) for s in train],
                                share=share)
    val_ds = pipelines.image_dataset(source, val, cfg.image_size, cfg.batch_size,
                                     targets=[int(s.label == main) for s in val], cache=cfg.cache_images)
    return train_ds, val_ds, train, val


def train_base_model(cfg: TrainConfig, corpus: corpus_lib.Corpus, source, main_class: str,
                     strategy: tf.distribute.Strategy) -> dict | None:
    """One base model, trained on its deliberately unbalanced set (see ``base_model_data``)."""
    name = models.base_model_name(main_class)
    model_path = cfg.wd.model(name)
    if _skip(cfg, model_path):
        return None
    train_ds, val_ds, train, val = base_model_data(cfg, corpus, source, main_class, worker_share(strategy))
    others = corpus_lib.fraction_others(train + val, class_id(main_class))
    counts = corpus_lib.base_model_counts(train, class_id(main_class))
    logging.info("%s: %d train / %d val images, %.1f%% others", name, len(train), len(val), 100 * others)
    warning = corpus_lib.few_others_warning(name, counts["other_images"])
    if warning and is_chief(strategy):
        logging.warning(warning)
    model, summary = fit(name, lambda: models.build_base_model(cfg.backbone, cfg.image_size, cfg.weights, name=name,
                                                               bn_momentum=cfg.bn_momentum),
                         train_ds, val_ds, cfg, strategy, len(train))
    return finish_stage(cfg, name, model, model_path, {**summary, "train_images": len(train), "val_images": len(val),
                                                       "others_share": others, **counts}, strategy)


def complete_split(corpus: corpus_lib.Corpus, val_fraction: float):
    """Pool 1 split for the complete model and its class weights (1 - share)."""
    pool = corpus.pool(corpus_lib.COMPLETE_POOL)
    train, val = corpus_lib.balanced_holdout(pool, val_fraction, salt="val-complete")
    check_sizes("complete", train, val)
    return train, val, corpus_lib.class_weights(pool)


def complete_pool_datasets(cfg: TrainConfig, source, train: Sequence[corpus_lib.Sample],
                           val: Sequence[corpus_lib.Sample], weights: dict[int, float], image_size: int,
                           strategy: tf.distribute.Strategy) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """Pool-1 image batches (the complete model end to end, and the baseline): class-weighted
    training images, this worker's share of them, and the validation images."""
    train_ds = training_dataset(cfg, source, train, image_size, [s.label for s in train],
                                [weights[s.label] for s in train], share=worker_share(strategy))
    val_ds = pipelines.image_dataset(source, val, image_size, cfg.batch_size, targets=[s.label for s in val])
    return train_ds, val_ds


def load_base_models(wd: Workdir) -> list[keras.Model]:
    """The workdir's three trained base models, in the order DM, GAN, REAL."""
    return [models.load_model(p) for p in wd.base_model_paths()]


def train_complete_model(cfg: TrainConfig, corpus: corpus_lib.Corpus, source,
                         strategy: tf.distribute.Strategy) -> dict | None:
    """The head on the frozen base models' stacked features, with class-weighted loss.

    With the feature cache the head trains on features computed once; without it, end to end
    on images through the frozen base models. Both build the head first after seeding and see
    the same order, so for the same seed they train the same head (up to float rounding).
    ``cfg.frozen_bn="reference"`` trains end to end with the frozen base models' BatchNorm in
    training mode (``models.set_frozen_batchnorm``), as the reference did: complete.keras then
    holds running statistics that have drifted from those of ``models/bm_*.keras``.
    """
    model_path = cfg.wd.model(COMPLETE)
    if _skip(cfg, model_path):
        return None
    seed_stage(cfg)
    train, val, weights = complete_split(corpus, cfg.val_fraction)
    extract_with = feature_strategy(strategy)
    with extract_with.scope():  # shapes, and the cache's extractor
        bases = load_base_models(cfg.wd)
        frozen = models.build_complete_model(*bases)
    image_size, feature_dim = frozen.input_shape[1], frozen.get_layer("stacked_features").output.shape[1]
    logging.info("complete model: %d train / %d val images, class weights %s", len(train), len(val),
                 {CLASS_NAMES[c]: round(w, 3) for c, w in weights.items()})
    if cfg.feature_cache and cfg.augment:
        logging.warning("--augment: the complete model trains end to end on augmented images; the feature cache "
                        "(clean images only) is bypassed")
    if cfg.feature_cache and cfg.frozen_bn == "reference":
        logging.warning("--frozen_bn=reference: the base models' BatchNorm statistics change while the head trains; "
                        "the complete model trains end to end and the feature cache is bypassed")
    if cfg.feature_cache and not cfg.augment and cfg.frozen_bn == "inference":
        cache = FeatureCache(cfg.wd.features, frozen, source, image_size, cfg.batch_size, strategy=extract_with,
                             write=is_chief(strategy))
        train_ds = cache.dataset(train, cfg.batch_size, weights=[weights[s.label] for s in train],
                                 shuffle_seed=cfg.seed, share=worker_share(strategy))
        val_ds = cache.dataset(val, cfg.batch_size)
        head, summary = fit("complete", lambda: models.build_head(feature_dim), train_ds, val_ds, cfg, strategy,
                            len(train))
        with strategy.scope():
            if extract_with is not strategy:  # a multi-worker run extracted under the default strategy
                bases = load_base_models(cfg.wd)
            complete = models.build_complete_model(*bases, head=models.uncompiled_copy(head))
    else:
        train_ds, val_ds = complete_pool_datasets(cfg, source, train, val, weights, image_size, strategy)

        def build_end_to_end():
            head = models.build_head(feature_dim)  # first, to draw the same initial weights as with the cache
            return models.build_complete_model(*load_base_models(cfg.wd), head=head, frozen_bn=cfg.frozen_bn)

        complete, summary = fit("complete", build_end_to_end, train_ds, val_ds, cfg, strategy, len(train))
        models.set_frozen_batchnorm(complete, "inference")  # saved plainly frozen, whatever it trained with
    return finish_stage(cfg, "complete", complete, model_path,
                        {**summary, "train_images": len(train), "val_images": len(val),
                         "class_weights": {CLASS_NAMES[c]: w for c, w in weights.items()}, "frozen_bn": cfg.frozen_bn},
                        strategy)


def train_baseline(cfg: TrainConfig, corpus: corpus_lib.Corpus, source, strategy: tf.distribute.Strategy) -> dict | None:
    """The paper's comparison: one backbone as a 3-class classifier on pool 1, weighted loss."""
    model_path = cfg.wd.model(BASELINE)
    if _skip(cfg, model_path):
        return None
    seed_stage(cfg)
    train, val, weights = complete_split(corpus, cfg.val_fraction)
    train_ds, val_ds = complete_pool_datasets(cfg, source, train, val, weights, cfg.image_size, strategy)
    model, summary = fit("baseline", lambda: models.build_baseline_model(cfg.backbone, cfg.image_size, cfg.weights,
                                                                        cfg.bn_momentum),
                         train_ds, val_ds, cfg, strategy, len(train))
    return finish_stage(cfg, "baseline", model, model_path,
                        {**summary, "train_images": len(train), "val_images": len(val)}, strategy)


# --- feature cache ---------------------------------------------------------------------------

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
        return pipelines.per_worker(ds.prefetch(tf.data.AUTOTUNE), share is not None)


def _digest(chunks) -> str:
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()

