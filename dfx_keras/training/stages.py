"""The training stages: three base models, the complete model (head on cached features), a baseline.

A stage whose model file exists is skipped unless ``overwrite``; its summary goes to
``logs/stages.json`` and its model is saved before its backup is deleted.
"""

from __future__ import annotations

import os
import shutil
from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from dfx_keras import contrastive, models
from dfx_keras.classes import CLASS_NAMES, class_id
from dfx_keras.config import TrainConfig
from dfx_keras.data import attacks, pipelines
from dfx_keras.data import corpus as corpus_lib
from dfx_keras.training.distribute import SettingsError, is_chief, worker_share
from dfx_keras.training.feature_cache import FeatureCache, feature_strategy
from dfx_keras.training import pairs
from dfx_keras.training.fit import fit, save_stage_model
from dfx_keras.training.reuse import ReusedModel, set_random_seed
from dfx_keras.workdir import BASELINE, COMPLETE, Workdir


def check_sizes(name: str, train: Sequence, val: Sequence) -> None:
    """Fail early and clearly when a corpus is too small to train or validate a stage."""
    if not train or not val:
        raise corpus_lib.CorpusError(f"{name}: {len(train)} training and {len(val)} validation images; the corpus is too "
                         f"small for this stage (add images or raise --val_fraction)")


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


def seed_stage(cfg: TrainConfig) -> None:
    """Reset every random generator to ``cfg.seed`` before a stage builds its datasets.

    A seeded tf.data shuffle also depends on TensorFlow's global seed; without the reset a
    stage's image order, and so its result, would depend on which stages ran before it in the
    same process (``--stage=all`` against ``--stage=base``).
    """
    set_random_seed(cfg.seed)


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


def train_base_models(cfg: TrainConfig, corpus: corpus_lib.Corpus, source, main_classes: Sequence[str],
                      strategy: tf.distribute.Strategy) -> None:
    """The base models of ``main_classes``, one after the other, on one compiled model: the
    first builds and traces it, the others reuse it reset to its initial state
    (``training.reuse``), so they train as if each were built alone, without the fixed cost."""
    reuse = ReusedModel()
    for main_class in main_classes:
        train_base_model(cfg, corpus, source, main_class, strategy, reuse)


def train_base_model(cfg: TrainConfig, corpus: corpus_lib.Corpus, source, main_class: str,
                     strategy: tf.distribute.Strategy, reuse: ReusedModel | None = None) -> dict | None:
    """One base model, trained on its deliberately unbalanced set (see ``base_model_data``);
    ``reuse``: the compiled model shared with the other base models (``train_base_models``)."""
    name = models.base_model_name(main_class)
    model_path = cfg.wd.model(name)
    if _skip(cfg, model_path):
        return None
    if cfg.base_objective == "contrastive":
        return train_contrastive_base_model(cfg, corpus, source, main_class, strategy, reuse)
    train_ds, val_ds, train, val = base_model_data(cfg, corpus, source, main_class, worker_share(strategy))
    others = corpus_lib.fraction_others(train + val, class_id(main_class))
    counts = corpus_lib.base_model_counts(train, class_id(main_class))
    logging.info("%s: %d train / %d val images, %.1f%% others", name, len(train), len(val), 100 * others)
    warning = corpus_lib.few_others_warning(name, counts["other_images"])
    if warning and is_chief(strategy):
        logging.warning(warning)
    model, summary = fit(name, lambda: models.build_base_model(cfg.backbone, cfg.image_size, cfg.weights, name=name,
                                                               bn_momentum=cfg.bn_momentum,
                                                               input_residual=cfg.input_residual),
                         train_ds, val_ds, cfg, strategy, len(train), reuse)
    return finish_stage(cfg, name, model, model_path, {**summary, "train_images": len(train), "val_images": len(val),
                                                       "others_share": others, **counts}, strategy)


def train_contrastive_base_model(cfg: TrainConfig, corpus: corpus_lib.Corpus, source, main_class: str,
                                 strategy: tf.distribute.Strategy, reuse: ReusedModel | None = None) -> dict:
    """DeepFeatureX-SN's base model: the Siamese backbone trained on pairs of its balanced
    main-vs-rest set, saved with the main and rest centroids of its training split as its head;
    stages.json records the validation contrastive loss and nearest-centroid accuracy.
    ``reuse``: the compiled Siamese model shared with the other base models."""
    if not isinstance(source, pipelines.FolderSource):
        raise SettingsError("--base_objective=contrastive reads image pairs by path: give the corpus folder "
                            "with --data_dir (a tfds dataset is read in record order)")
    seed_stage(cfg)
    name, main = models.base_model_name(main_class), class_id(main_class)
    subset = pairs.balanced_main_vs_rest(corpus.pool(corpus_lib.BASE_POOL), main, cfg.seed)
    train, val = corpus_lib.holdout_split(subset, cfg.val_fraction, salt=f"val-{name}")
    check_sizes(name, train, val)
    is_main = {"train": np.array([s.label == main for s in train]), "val": np.array([s.label == main for s in val])}
    drawn = {split: pairs.draw_partners(is_main[split], cfg.seed + i) for i, split in enumerate(is_main)}
    train_ds = pairs.pair_dataset(source, train, *drawn["train"], cfg.image_size, cfg.batch_size,
                                  shuffle_seed=cfg.seed, transform=augmentation(cfg), share=worker_share(strategy))
    val_ds = pairs.pair_dataset(source, val, *drawn["val"], cfg.image_size, cfg.batch_size)
    logging.info("%s (contrastive): %d train / %d val images, %.0f%% same-side training pairs", name, len(train),
                 len(val), 100 * np.mean(drawn["train"][1] == contrastive.SAME))

    def build():
        return contrastive.build_siamese(models.build_feature_extractor(
            cfg.backbone, cfg.image_size, cfg.weights, name=f"{name}_features", bn_momentum=cfg.bn_momentum,
            input_residual=cfg.input_residual), name)

    siamese, summary = fit(name, build, train_ds, val_ds, cfg, strategy, len(train), reuse,
                           loss=contrastive.contrastive_loss,
                           metrics=[keras.metrics.MeanMetricWrapper(contrastive.pair_accuracy, name="accuracy")])
    embedder = contrastive.branch_of(siamese)
    embedder.name = f"{name}_features"  # a reused Siamese model was built for another base model
    features = {split: pairs.embed(embedder, pipelines.image_dataset(
        source, samples, cfg.image_size, cfg.batch_size, targets=is_main[split].astype(int).tolist()))
        for split, samples in (("train", train), ("val", val))}
    rest, main_centroid = contrastive.centroids(*features["train"])
    accuracy = contrastive.nearest_centroid_accuracy(*features["val"], rest, main_centroid)
    with strategy.scope():
        model = contrastive.attach_centroids(embedder, rest, main_centroid, name)
    summary = {**summary, "val_pair_accuracy": summary["val_accuracy"],
               "train_pair_accuracy": summary.pop("train_accuracy"), "val_accuracy": accuracy,
               "val_centroid_accuracy": accuracy, "objective": "contrastive",
               "margin": contrastive.MARGIN, "train_images": len(train), "val_images": len(val),
               **corpus_lib.base_model_counts(train, main)}
    return finish_stage(cfg, name, model, cfg.wd.model(name), summary, strategy)


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

    def new_head() -> keras.Model:  # one builder for both paths: the same layers and initial weights
        return models.build_head(feature_dim, fused_bn=cfg.head_fused_bn)

    if cfg.feature_cache and not cfg.augment and cfg.frozen_bn == "inference":
        cache = FeatureCache(cfg.wd.features, frozen, source, image_size, cfg.batch_size, strategy=extract_with,
                             write=is_chief(strategy))
        train_ds = cache.dataset(train, cfg.batch_size, weights=[weights[s.label] for s in train],
                                 shuffle_seed=cfg.seed, share=worker_share(strategy))
        val_ds = cache.dataset(val, cfg.batch_size)
        head, summary = fit("complete", new_head, train_ds, val_ds, cfg, strategy, len(train))
        with strategy.scope():
            if extract_with is not strategy:  # a multi-worker run extracted under the default strategy
                bases = load_base_models(cfg.wd)
            complete = models.build_complete_model(*bases, head=models.uncompiled_copy(head))
    else:
        train_ds, val_ds = complete_pool_datasets(cfg, source, train, val, weights, image_size, strategy)

        def build_end_to_end():
            head = new_head()  # first, to draw the same initial weights as with the cache
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
                                                                        cfg.bn_momentum, cfg.input_residual),
                         train_ds, val_ds, cfg, strategy, len(train))
    return finish_stage(cfg, "baseline", model, model_path,
                        {**summary, "train_images": len(train), "val_images": len(val)}, strategy)
