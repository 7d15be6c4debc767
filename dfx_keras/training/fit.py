"""Fitting one stage: compile, the fit loop with resume and best-val-loss selection, saving.

Each stage builds and compiles its model inside ``strategy.scope()`` (the base models after
the first take the first one's, reset: ``training.reuse``), feeds a global batch, keeps the
weights with the lowest validation loss, and resumes from its last finished epoch when rerun
after an interruption (``training.backup``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from typing import Callable, Iterator

import keras
import tensorflow as tf
from absl import logging

from dfx_keras.config import TrainConfig
from dfx_keras.optimizers import AdamL2
from dfx_keras.training.backup import StageBackup
from dfx_keras.training.distribute import check_batch_size, is_chief, synchronized_batchnorm, whole_replica_batches
from dfx_keras.training.reuse import ReusedModel, set_random_seed
from dfx_keras.workdir import atomic_write


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


def compile_model(model: keras.Model, cfg: TrainConfig, replicas: int = 1, loss=None, metrics=None) -> keras.Model:
    """Adam with coupled L2, cross-entropy on logits and accuracy unless ``loss`` and
    ``metrics`` are given (the contrastive base models); XLA per ``jit_compile``.

    Under ``mixed_float16`` Keras wraps the optimizer in a ``LossScaleOptimizer`` itself.
    """
    model.compile(
        optimizer=AdamL2(l2=cfg.weight_decay, learning_rate=cfg.learning_rate, beta_1=0.9, beta_2=0.999),
        loss=loss or keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=metrics or [keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
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


def fit(name: str, build: Callable[[], keras.Model], train_ds: tf.data.Dataset, val_ds: tf.data.Dataset,
        cfg: TrainConfig, strategy: tf.distribute.Strategy, train_size: int, reuse: ReusedModel | None = None,
        **compile_args) -> tuple[keras.Model, dict]:
    """Train ``build()`` for ``cfg.epochs`` with resume, logs and best-val-loss selection
    (``compile_args``: ``compile_model``'s loss and metrics, when not cross-entropy).
    ``reuse``: take the model, and its compiled steps, from there (built and compiled on first
    use, reset to its initial state after; see ``training.reuse``) and name it ``name``.

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
        set_random_seed(cfg.seed)
        if reuse is not None:
            return reuse.get(lambda: compile_model(build(), cfg, replicas, **compile_args), name)
        return compile_model(build(), cfg, replicas, **compile_args)

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
