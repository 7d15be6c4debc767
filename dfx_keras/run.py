"""What ``train.py`` and ``evaluate.py`` do, each as one call: data -> stages -> raw evaluation ->
export, and data -> protocols -> reports.

Kept apart from the flag parsing (``dfx_keras.cli``) so tests and notebooks can run the same
sequence with a config object.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

from dfx_keras import backbones, input_residuals
from dfx_keras.classes import CLASS_NAMES
from dfx_keras.config import EvaluateConfig, TrainConfig, TrainPlan
from dfx_keras.data import corpus as corpus_lib
from dfx_keras.data import holdout as data_holdout
from dfx_keras.data import pipelines, sources
from dfx_keras.evaluation import classifier, protocols, reports
from dfx_keras.training import distribute, stages
from dfx_keras.workdir import BASELINE, COMPLETE, Workdir


def open_data(cfg: TrainConfig, data_dir: str | None, make_demo_corpus: bool = False,
              write_split: bool = True, data: str | None = None):
    """The scanned corpus without ``cfg.holdout_architectures`` (split.csv and holdout.csv
    written unless ``write_split=False``) and the source that reads its images
    (``sources.open_corpus``).

    A folder's training images (pools 0 and 1) are decoded once, so that any the decoder
    refuses are named and counted here rather than dropped silently mid-epoch (the test pool's
    are counted by the evaluation; a tfds dataset was decoded when it was prepared).
    """
    if make_demo_corpus and not data:
        from dfx_keras.data import demo

        demo.ensure_demo_corpus(data_dir)
    corpus, source = sources.open_corpus(data_dir, data, max_pixels=cfg.max_pixels)
    corpus, held = data_holdout.split_holdout(corpus, data_holdout.normalize(cfg.holdout_architectures))
    if not data:
        training_images = [s for s in corpus.samples if s.pool != corpus_lib.TEST_POOL]
        corpus = corpus.without(pipelines.undecodable(source, training_images), "TensorFlow cannot decode it")
    if write_split:  # the reference's guidance.csv
        os.makedirs(cfg.workdir, exist_ok=True)
        corpus_lib.write_split_csv(corpus.samples, cfg.wd.split_csv)
        data_holdout.record_holdout(cfg.wd, held)
    return corpus, source


@contextlib.contextmanager
def owned_workdir(workdir: str, strategy: str = TrainPlan.strategy) -> Iterator[None]:
    """Own ``workdir`` while training: a second run on it stops at once, naming the owner,
    instead of both writing the same backups. Only the chief locks it (the workers of a
    multi-worker run share it), after creating the strategy, as ``train`` does."""
    if not distribute.is_chief(distribute.get_strategy(strategy)):
        yield
        return
    with Workdir(workdir).lock():
        yield


def evaluate(cfg: EvaluateConfig, corpus: corpus_lib.Corpus | None = None, source=None) -> tuple[dict, dict]:
    """Test protocols of ``cfg.models`` on the corpus' test pool (``corpus``/``source``, or
    opened from ``cfg.data_dir``/``cfg.data`` without the held-out folders when the protocols
    need it), the held-out images ``cfg.holdout`` and/or a generalization folder; writes
    ``cfg.results_dir``. Returns the results and the written paths."""
    data_kwargs, data = {}, {}
    if corpus is None and set(cfg.protocols) - {"generalization"}:
        # Listed, not checked: a full check of every pool would read the whole corpus; the
        # protocols skip and count the test images they cannot read.
        corpus, source = sources.open_corpus(cfg.data_dir, cfg.data, check=False)
        corpus = data_holdout.without_folders(corpus, data_holdout.held_out_folders(cfg.holdout))
        print(f"test pool: {len(protocols.test_data(corpus)[0])} images of {corpus.root}")
    if "generalization" in cfg.protocols:
        protocols.generalization_sets(cfg.generalization_dir)  # layout errors before any model loads
    if corpus is not None:
        test_samples, data = protocols.test_data(corpus)
        data_kwargs = {"source": source, "test_samples": test_samples, "holdout": cfg.holdout}
        if cfg.holdout:
            data["holdout_folders"] = data_holdout.held_out_folders(cfg.holdout)
    classifiers = [classifier.load_classifier(path, name) for name, path in cfg.models.items()]
    results, passes = protocols.evaluate_models(classifiers, cfg.protocols, generalization_dir=cfg.generalization_dir,
                                                batch_size=cfg.batch_size, seed=cfg.seed, **data_kwargs)
    if data:
        results["data"] = data
    return results, reports.write_reports(cfg.results_dir, results, passes)


def calibrate_complete(cfg: TrainConfig, corpus, source) -> dict:
    """The complete model's temperature and thresholds (``models/calibration.json``), fitted on
    its stage's validation split unless they already fit ``complete.keras``."""
    from dfx_keras.evaluation import calibrate

    _, val, _ = stages.complete_split(corpus, cfg.val_fraction)
    return calibrate.calibrate(cfg.wd.model(COMPLETE), source, val, cfg.batch_size)


def evaluate_raw(cfg: TrainConfig, corpus, source) -> dict:
    """Raw test of the workdir's complete model, and of its baseline beside it when
    ``models/baseline.keras`` exists, and its held-out folders (``holdout.csv``), reported in
    ``results/`` (evaluate.py adds the attacks and generalization)."""
    paths = {COMPLETE: cfg.wd.model(COMPLETE)}
    if os.path.exists(cfg.wd.model(BASELINE)):
        paths[BASELINE] = cfg.wd.model(BASELINE)
    held = data_holdout.read_holdout_csv(cfg.wd.holdout_csv)
    results, _ = evaluate(EvaluateConfig(paths, ["raw", "holdout"] if held else ["raw"], cfg.wd.results(),
                                         batch_size=cfg.batch_size, seed=cfg.seed, holdout=held), corpus, source)
    return results


def train(cfg: TrainConfig, plan: TrainPlan) -> dict:
    """Run ``plan.stage`` (all, base, complete, baseline); returns what the summary prints.
    ``plan.train_baseline``: ``all`` also trains the baseline, after the complete model.

    Under ``strategy="multi_worker"`` every worker runs this same call; only the chief writes
    split.csv, results and exports (the stages keep their files chief-only too).
    """
    dist = distribute.get_strategy(plan.strategy)  # first: a multi-worker strategy must exist before TF starts
    distribute.check_batch_size(cfg.batch_size, dist)
    chief = distribute.is_chief(dist)
    data_holdout.check_workdir_holdout(cfg.wd, data_holdout.normalize(cfg.holdout_architectures))
    if plan.stage in ("all", "base", "baseline"):  # a failed download or a bad file, before the corpus is scanned
        input_residuals.check_input_residual(cfg.input_residual, cfg.image_size)
        backbones.check_weights(cfg.backbone, cfg.weights, cfg.image_size)
    corpus, source = open_data(cfg, plan.data_dir, plan.make_demo_corpus, write_split=chief, data=plan.data)
    unreadable = f", {len(corpus.unreadable)} unreadable folder(s) or special file(s)" if corpus.unreadable else ""
    print(f"corpus: {len(corpus.samples)} images ({len(corpus.skipped)} unreadable skipped{unreadable}), "
          f"{dist.num_replicas_in_sync} replica(s), workdir {cfg.workdir}")
    if plan.stage in ("all", "base"):
        for name in ([plan.main_class] if plan.main_class else CLASS_NAMES):
            stages.train_base_model(cfg, corpus, source, name, dist)
    if plan.stage in ("all", "complete"):
        stages.train_complete_model(cfg, corpus, source, dist)
        if chief:
            calibrate_complete(cfg, corpus, source)
    if plan.stage == "baseline" or (plan.stage == "all" and plan.train_baseline):
        stages.train_baseline(cfg, corpus, source, dist)
    outcome = {"workdir": cfg.workdir, "stages": cfg.wd.stage_summaries()}
    if plan.evaluate and chief and plan.stage in ("all", "complete"):
        outcome["results"] = evaluate_raw(cfg, corpus, source)
        outcome["results_path"] = cfg.wd.results(reports.RESULTS_MD)
    if plan.stage == "all" and chief:
        from dfx_keras.serving import export

        outcome["export_path"] = export.export_workdir(cfg.workdir, max_pixels=cfg.max_pixels, reuse=True)
    return outcome
