"""Training stages: three base models, the complete model (head on cached features), a baseline.

Each stage builds and compiles its model inside ``strategy.scope()``, feeds a global batch,
keeps the weights with the lowest validation loss, and resumes from its last finished epoch
when rerun after an interruption (``BackupAndRestore``). A stage whose model file exists is
skipped unless ``overwrite``.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import shutil
import sys
from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from dfx_keras import models
from dfx_keras.classes import CLASS_NAMES, class_id
from dfx_keras.data import attacks
from dfx_keras.data import corpus as corpus_lib
from dfx_keras.data import pipelines
from dfx_keras.optimizers import AdamL2


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
    val_fraction: float = 0.2
    seed: int = 42
    feature_cache: bool = True
    cache_images: bool = False
    augment: Sequence[str] = ()  # attack kinds of data.attacks.random_augment ("jpeg", "blur"); empty: none
    augment_p: float = 0.5
    overwrite: bool = False
    verbose: int | str = "auto"
    extra_callbacks: Sequence[keras.callbacks.Callback] = ()

    def path(self, *parts: str) -> str:
        return os.path.join(self.workdir, *parts)


def get_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """``auto``: MirroredStrategy over all GPUs when there are several, else the default.

    ``mirrored`` without GPUs mirrors over the logical CPU devices (how the tests run it).
    """
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if name == "mirrored":
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"unknown strategy {name!r}")


def prepare_corpus(data_dir: str, workdir: str) -> corpus_lib.Corpus:
    """Scan and check the corpus, and write ``split.csv`` (the reference's guidance.csv)."""
    corpus = corpus_lib.scan_corpus(data_dir)
    os.makedirs(workdir, exist_ok=True)
    corpus_lib.write_split_csv(corpus.samples, os.path.join(workdir, "split.csv"))
    return corpus


# --- fitting ---------------------------------------------------------------------------------

def _best_val_loss(csv_path: str) -> float:
    """Lowest val_loss logged so far, so a resumed run keeps the right best checkpoint."""
    if not os.path.exists(csv_path):
        return np.inf
    with open(csv_path, newline="") as f:
        losses = [float(r["val_loss"]) for r in csv.DictReader(f) if r.get("val_loss")]
    return min(losses, default=np.inf)


def _clear_stage_state(cfg: TrainConfig, name: str) -> None:
    """Forget a previous run of a stage (for --overwrite or a fresh start)."""
    shutil.rmtree(cfg.path("backup", name), ignore_errors=True)
    shutil.rmtree(cfg.path("logs", name), ignore_errors=True)
    for path in (cfg.path("logs", f"{name}.csv"), cfg.path("checkpoints", f"{name}.best.weights.h5")):
        if os.path.exists(path):
            os.remove(path)


def _lr_schedule(cfg: TrainConfig) -> Callable[[int, float], float]:
    return lambda epoch, lr: cfg.learning_rate * cfg.lr_gamma ** (epoch // cfg.lr_step_epochs)


def compile_model(model: keras.Model, cfg: TrainConfig) -> keras.Model:
    """Adam with coupled L2, cross-entropy on logits, accuracy."""
    model.compile(
        optimizer=AdamL2(l2=cfg.weight_decay, learning_rate=cfg.learning_rate, beta_1=0.9, beta_2=0.999),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    return model


def check_sizes(name: str, train: Sequence, val: Sequence) -> None:
    """Fail early and clearly when a corpus is too small to train or validate a stage."""
    if not train or not val:
        raise corpus_lib.CorpusError(f"{name}: {len(train)} training and {len(val)} validation images; the corpus is too "
                         f"small for this stage (add images or raise --val_fraction)")


def fit(name: str, build: Callable[[], keras.Model], train_ds: tf.data.Dataset, val_ds: tf.data.Dataset,
        cfg: TrainConfig, strategy: tf.distribute.Strategy) -> tuple[keras.Model, dict]:
    """Train ``build()`` for ``cfg.epochs`` with resume, logs and best-val-loss selection.

    Returns the model holding its best weights and a summary of the best epoch.
    """
    for sub in ("backup", "logs", "checkpoints"):
        os.makedirs(cfg.path(sub), exist_ok=True)
    csv_path = cfg.path("logs", f"{name}.csv")
    best_path = cfg.path("checkpoints", f"{name}.best.weights.h5")
    resuming = os.path.isdir(cfg.path("backup", name))
    if not resuming:
        _clear_stage_state(cfg, name)
    keras.utils.set_random_seed(cfg.seed)
    with strategy.scope():
        model = compile_model(build(), cfg)
    checkpoint = keras.callbacks.ModelCheckpoint(best_path, monitor="val_loss", save_best_only=True,
                                                 save_weights_only=True)
    checkpoint.best = _best_val_loss(csv_path)
    callbacks = [
        keras.callbacks.BackupAndRestore(cfg.path("backup", name), delete_checkpoint=False),
        checkpoint,
        keras.callbacks.CSVLogger(csv_path, append=True),
        keras.callbacks.TensorBoard(cfg.path("logs", name), write_graph=False),
        *cfg.extra_callbacks,
    ]
    if cfg.lr_step_epochs:
        callbacks.append(keras.callbacks.LearningRateScheduler(_lr_schedule(cfg)))
    logging.info("training %s for %d epochs%s", name, cfg.epochs, " (resuming)" if resuming else "")
    model.fit(train_ds, validation_data=val_ds, epochs=cfg.epochs, callbacks=callbacks,
              verbose=cfg.verbose if cfg.verbose != "auto" else (1 if sys.stdout.isatty() else 2))
    model.load_weights(best_path)
    shutil.rmtree(cfg.path("backup", name), ignore_errors=True)
    return model, _best_epoch_summary(csv_path)


def _best_epoch_summary(csv_path: str) -> dict:
    with open(csv_path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val_loss")]
    best = min(rows, key=lambda r: float(r["val_loss"]))
    return {"epochs": len(rows), "best_epoch": int(best["epoch"]) + 1, "val_loss": float(best["val_loss"]),
            "val_accuracy": float(best["val_accuracy"]), "train_accuracy": float(best["accuracy"])}


def save_model(model: keras.Model, path: str) -> None:
    """Save a ``.keras`` file atomically: a crash never leaves a half-written model behind."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path[: -len(".keras")] + ".tmp.keras"
    model.save(tmp)
    os.replace(tmp, path)


def _record(cfg: TrainConfig, name: str, summary: dict) -> dict:
    """Keep a stage's summary in logs/stages.json (read by the closing table)."""
    path = cfg.path("logs", "stages.json")
    stages = json.load(open(path)) if os.path.exists(path) else {}
    stages[name] = summary
    with open(path + ".tmp", "w") as f:
        json.dump(stages, f, indent=2)
    os.replace(path + ".tmp", path)
    return summary


def stage_summaries(workdir: str) -> dict:
    path = os.path.join(workdir, "logs", "stages.json")
    return json.load(open(path)) if os.path.exists(path) else {}


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
                     targets: Sequence[int], weights: Sequence[float] | None = None) -> tf.data.Dataset:
    """A stage's shuffled training batches, augmented when ``cfg.augment``; augmented images
    are never cached (a cache would freeze the first epoch's random attacks)."""
    transform = augmentation(cfg)
    return pipelines.image_dataset(source, samples, image_size, cfg.batch_size, targets=targets, weights=weights,
                                   shuffle_seed=cfg.seed, transform=transform,
                                   cache=cfg.cache_images and transform is None)


# --- stages ----------------------------------------------------------------------------------

def base_model_data(cfg: TrainConfig, corpus: corpus_lib.Corpus, source, main_class: str):
    """Train and validation datasets of one base model, and the subset they were drawn from.

    Main class vs an ``others_fraction`` sample of every other architecture folder, from
    pool 0; targets are 1 for the main class, 0 for the rest.
    """
    main = class_id(main_class)
    subset = corpus_lib.base_model_subset(corpus.pool(corpus_lib.BASE_POOL), main, cfg.others_fraction)
    train, val = corpus_lib.holdout_split(subset, cfg.val_fraction, salt=f"val-{models.base_model_name(main_class)}")
    check_sizes(models.base_model_name(main_class), train, val)
    train_ds = training_dataset(cfg, source, train, cfg.image_size, [int(s.label == main) for s in train])
    val_ds = pipelines.image_dataset(source, val, cfg.image_size, cfg.batch_size,
                                     targets=[int(s.label == main) for s in val], cache=cfg.cache_images)
    return train_ds, val_ds, train, val


def train_base_model(cfg: TrainConfig, corpus: corpus_lib.Corpus, source, main_class: str,
                     strategy: tf.distribute.Strategy) -> dict | None:
    """One base model, trained on its deliberately unbalanced set (see ``base_model_data``)."""
    name = models.base_model_name(main_class)
    model_path = cfg.path("models", f"{name}.keras")
    if _skip(cfg, model_path):
        return None
    train_ds, val_ds, train, val = base_model_data(cfg, corpus, source, main_class)
    others = corpus_lib.fraction_others(train + val, class_id(main_class))
    logging.info("%s: %d train / %d val images, %.1f%% others", name, len(train), len(val), 100 * others)
    model, summary = fit(name, lambda: models.build_base_model(cfg.backbone, cfg.image_size, cfg.weights, name=name),
                         train_ds, val_ds, cfg, strategy)
    save_model(model, model_path)
    return _record(cfg, name, {**summary, "train_images": len(train), "val_images": len(val), "others_share": others})


def complete_split(corpus: corpus_lib.Corpus, val_fraction: float):
    """Pool 1 split for the complete model and its class weights (1 - share)."""
    train, val = corpus_lib.balanced_holdout(corpus.pool(corpus_lib.COMPLETE_POOL), val_fraction, salt="val-complete")
    check_sizes("complete", train, val)
    return train, val, corpus_lib.class_weights(corpus.pool(corpus_lib.COMPLETE_POOL))


def load_base_models(workdir: str) -> list[keras.Model]:
    """The three trained base models, in the order DM, GAN, REAL."""
    paths = [os.path.join(workdir, "models", f"{models.base_model_name(c)}.keras") for c in CLASS_NAMES]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise FileNotFoundError(f"train the base models first; missing: {', '.join(missing)}")
    return [models.load_model(p) for p in paths]


def train_complete_model(cfg: TrainConfig, corpus: corpus_lib.Corpus, source,
                         strategy: tf.distribute.Strategy) -> dict | None:
    """The head on the frozen base models' stacked features, with class-weighted loss."""
    model_path = cfg.path("models", "complete.keras")
    if _skip(cfg, model_path):
        return None
    train, val, weights = complete_split(corpus, cfg.val_fraction)
    with strategy.scope():
        complete = models.build_complete_model(*load_base_models(cfg.workdir))
    image_size = complete.input_shape[1]
    logging.info("complete model: %d train / %d val images, class weights %s", len(train), len(val),
                 {CLASS_NAMES[c]: round(w, 3) for c, w in weights.items()})
    sample_weights = [weights[s.label] for s in train]
    if cfg.feature_cache and cfg.augment:
        logging.warning("--augment: the complete model trains end to end on augmented images; the feature cache "
                        "(clean images only) is bypassed")
    if cfg.feature_cache and not cfg.augment:
        cache = FeatureCache(cfg.workdir, complete, source, image_size, cfg.batch_size, strategy)
        train_ds = cache.dataset(train, cfg.batch_size, weights=sample_weights, shuffle_seed=cfg.seed)
        val_ds = cache.dataset(val, cfg.batch_size)
        feature_dim = complete.get_layer("stacked_features").output.shape[1]
        head, summary = fit("complete", lambda: models.build_head(feature_dim), train_ds, val_ds, cfg, strategy)
        with strategy.scope():
            complete = models.build_complete_model(*load_base_models(cfg.workdir), head=head)
    else:
        train_ds = training_dataset(cfg, source, train, image_size, [s.label for s in train], sample_weights)
        val_ds = pipelines.image_dataset(source, val, image_size, cfg.batch_size, targets=[s.label for s in val])
        complete, summary = fit("complete", lambda: models.build_complete_model(*load_base_models(cfg.workdir)),
                                train_ds, val_ds, cfg, strategy)
    save_model(complete, model_path)
    return _record(cfg, "complete", {**summary, "train_images": len(train), "val_images": len(val),
                                     "class_weights": {CLASS_NAMES[c]: w for c, w in weights.items()}})


def train_baseline(cfg: TrainConfig, corpus: corpus_lib.Corpus, source, strategy: tf.distribute.Strategy) -> dict | None:
    """The paper's comparison: one backbone as a 3-class classifier on pool 1, weighted loss."""
    model_path = cfg.path("models", "baseline.keras")
    if _skip(cfg, model_path):
        return None
    train, val, weights = complete_split(corpus, cfg.val_fraction)
    train_ds = training_dataset(cfg, source, train, cfg.image_size, [s.label for s in train],
                                [weights[s.label] for s in train])
    val_ds = pipelines.image_dataset(source, val, cfg.image_size, cfg.batch_size, targets=[s.label for s in val])
    model, summary = fit("baseline", lambda: models.build_baseline_model(cfg.backbone, cfg.image_size, cfg.weights),
                         train_ds, val_ds, cfg, strategy)
    save_model(model, model_path)
    return _record(cfg, "baseline", {**summary, "train_images": len(train), "val_images": len(val)})


# --- feature cache ---------------------------------------------------------------------------

class FeatureCache:
    """Stacked base-model features (N, D, 3) of images, computed once and kept on disk.

    The base models are frozen (BatchNorm in inference mode), so their features do not change
    while the head trains: computing them once replaces ``epochs`` forward passes through three
    backbones by one. Files are keyed by a fingerprint of the base models' weights, the image
    list and the image size, so a retrained base model or another split never reuses stale data.
    """

    def __init__(self, workdir: str, complete: keras.Model, source, image_size: int, batch_size: int,
                 strategy: tf.distribute.Strategy):
        self.folder = os.path.join(workdir, "features")
        self.source, self.image_size, self.batch_size = source, image_size, batch_size
        with strategy.scope():
            self.stacker = keras.Model(complete.input, complete.get_layer("stacked_features").output)
        self.weights_digest = _digest(w.numpy().tobytes() for w in self.stacker.weights)

    def features(self, samples: Sequence[corpus_lib.Sample]) -> tuple[np.ndarray, list[str]]:
        """Features and the paths they belong to (unreadable images are absent)."""
        key = _digest([self.weights_digest.encode(), str(self.image_size).encode(),
                       *(s.path.encode() for s in samples)])
        path = os.path.join(self.folder, f"{key[:16]}.npz")
        if os.path.exists(path):
            with np.load(path) as data:
                return data["features"], [p.decode() for p in data["paths"]]
        ds = pipelines.image_dataset(self.source, samples, self.image_size, self.batch_size, with_paths=True)
        features, paths = [], []
        for images, batch_paths in ds:
            features.append(self.stacker.predict_on_batch(images))
            paths.extend(p.decode() for p in batch_paths.numpy())
        features = np.concatenate(features) if features else np.zeros((0, *self.stacker.output_shape[1:]), np.float32)
        os.makedirs(self.folder, exist_ok=True)
        tmp = path[: -len(".npz")] + ".tmp.npz"
        np.savez(tmp, features=features, paths=np.array([p.encode() for p in paths]))
        os.replace(tmp, path)
        return features, paths

    def dataset(self, samples: Sequence[corpus_lib.Sample], batch_size: int, weights: Sequence[float] | None = None,
                shuffle_seed: int | None = None) -> tf.data.Dataset:
        """Batches of ``(features, label[, weight])`` in the same order an image pipeline would use."""
        features, paths = self.features(samples)
        by_path = {s.path: (s.label, w) for s, w in zip(samples, weights if weights is not None else [1.0] * len(samples))}
        labels = np.array([by_path[p][0] for p in paths], np.int32)
        parts = (features, labels) + ((np.array([by_path[p][1] for p in paths], np.float32),) if weights is not None else ())
        ds = tf.data.Dataset.from_tensor_slices(parts)
        if shuffle_seed is not None:
            ds = ds.shuffle(len(paths), seed=shuffle_seed, reshuffle_each_iteration=True)
        return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _digest(chunks) -> str:
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()

