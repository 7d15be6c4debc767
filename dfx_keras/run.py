"""What ``train.py`` does, as one call: data -> stages -> raw evaluation -> closing summary.

Kept apart from the flag parsing so tests and notebooks can run the same sequence.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Mapping, Sequence

from dfx_keras import backbones, durable, evaluation, reports, training
from dfx_keras.classes import CLASS_NAMES
from dfx_keras.data import corpus as corpus_lib
from dfx_keras.data import pipelines


def open_data(cfg: training.TrainConfig, data_dir: str | None, make_demo_corpus: bool = False,
              write_split: bool = True, data: str | None = None):
    """The scanned corpus (split.csv written unless ``write_split=False``) and the source that
    reads its images: the corpus folder, or a prepared tfds dataset when ``data`` is
    ``tfds:NAME/CONFIG``.

    A folder's training images (pools 0 and 1) are decoded once, so that any the decoder
    refuses are named and counted here rather than dropped silently mid-epoch (the test pool's
    are counted by the evaluation; a tfds dataset was decoded when it was prepared).
    """
    if data:
        from dfx_keras.data import tfds_source

        corpus, source = tfds_source.open_tfds(data)
    else:
        if make_demo_corpus:
            from dfx_keras.data import demo

            demo.ensure_demo_corpus(data_dir)
        corpus, source = corpus_lib.scan_corpus(data_dir, max_pixels=cfg.max_pixels), pipelines.folder_source(data_dir)
        training_images = [s for s in corpus.samples if s.pool != corpus_lib.TEST_POOL]
        corpus = corpus.without(pipelines.undecodable(source, training_images), "TensorFlow cannot decode it")
    if write_split:  # the reference's guidance.csv
        os.makedirs(cfg.workdir, exist_ok=True)
        corpus_lib.write_split_csv(corpus.samples, cfg.path("split.csv"))
    return corpus, source


LOCK_FILE = ".lock"


@contextlib.contextmanager
def owned_workdir(workdir: str, strategy: str = "auto") -> Iterator[None]:
    """Own ``workdir`` while training: a second run on it stops at once, naming the owner,
    instead of both writing the same backups. Only the chief locks it (the workers of a
    multi-worker run share it), after creating the strategy, as ``train`` does."""
    if not training.is_chief(training.get_strategy(strategy)):
        yield
        return
    os.makedirs(workdir, exist_ok=True)
    with durable.exclusive_lock(os.path.join(workdir, LOCK_FILE), f"workdir {workdir}"):
        yield


def recorded_data_flags(workdir: str) -> dict[str, str]:
    """``data_dir`` / ``data`` as train.py recorded them in ``W/flags.txt``."""
    path = os.path.join(workdir, "flags.txt")
    if not os.path.exists(path):
        return {}
    found = {}
    with open(path) as f:
        for line in f:
            name, _, value = line.strip().lstrip("-").partition("=")
            if name in ("data_dir", "data") and value:
                found[name] = value
    return found


def evaluate(model_paths: Mapping[str, str], protocols: Sequence[str], results_dir: str,
             corpus: corpus_lib.Corpus | None = None, source=None, generalization_dir: str | None = None,
             batch_size: int = 32, seed: int = 42) -> tuple[dict, dict]:
    """Test protocols of the models (name -> path; the first is the main one, the others, such
    as the baseline, are reported beside it) on the corpus' test pool and/or a generalization
    folder; writes ``results_dir``. Returns the results and the written paths."""
    data_kwargs, data = {}, {}
    if corpus is not None:
        test_samples, data = evaluation.test_data(corpus)
        data_kwargs = {"source": source, "test_samples": test_samples}
    classifiers = [evaluation.load_classifier(path, name) for name, path in model_paths.items()]
    results, passes = evaluation.evaluate_models(classifiers, protocols, generalization_dir=generalization_dir,
                                                 batch_size=batch_size, seed=seed, **data_kwargs)
    if data:
        results["data"] = data
    return results, reports.write_reports(results_dir, results, passes)


def calibrate_complete(cfg: training.TrainConfig, corpus, source) -> dict:
    """The complete model's temperature and thresholds (``models/calibration.json``), fitted on
    its stage's validation split unless they already fit ``complete.keras``."""
    from dfx_keras import calibrate

    _, val, _ = training.complete_split(corpus, cfg.val_fraction)
    return calibrate.calibrate(cfg.path("models", "complete.keras"), source, val, cfg.batch_size)


def evaluate_raw(cfg: training.TrainConfig, corpus, source) -> dict:
    """Raw test of the workdir's complete model, and of its baseline beside it when
    ``models/baseline.keras`` exists, reported in ``results/`` (evaluate.py adds the attacks
    and generalization)."""
    paths = {"complete": cfg.path("models", "complete.keras")}
    if os.path.exists(cfg.path("models", "baseline.keras")):
        paths[evaluation.BASELINE] = cfg.path("models", "baseline.keras")
    results, _ = evaluate(paths, ["raw"], cfg.path("results"), corpus, source, batch_size=cfg.batch_size,
                          seed=cfg.seed)
    return results


def train(cfg: training.TrainConfig, data_dir: str | None, data: str | None = None, stage: str = "all",
          main_class: str | None = None, strategy: str = "auto", make_demo_corpus: bool = False,
          evaluate: bool = True, train_baseline: bool = False) -> dict:
    """Run ``stage`` (all, base, complete, baseline); returns what the summary prints.
    ``train_baseline``: ``all`` also trains the baseline, after the complete model.

    Under ``strategy="multi_worker"`` every worker runs this same call; only the chief writes
    split.csv, results and exports (``training`` keeps the stages' files chief-only too).
    """
    dist = training.get_strategy(strategy)  # first: a multi-worker strategy must exist before TensorFlow starts
    training.check_batch_size(cfg.batch_size, dist)
    chief = training.is_chief(dist)
    if stage in ("all", "base", "baseline"):  # a failed download or a bad file, before the corpus is scanned
        backbones.check_weights(cfg.backbone, cfg.weights, cfg.image_size)
    corpus, source = open_data(cfg, data_dir, make_demo_corpus, write_split=chief, data=data)
    unreadable = f", {len(corpus.unreadable)} unreadable folder(s) or special file(s)" if corpus.unreadable else ""
    print(f"corpus: {len(corpus.samples)} images ({len(corpus.skipped)} unreadable skipped{unreadable}), "
          f"{dist.num_replicas_in_sync} replica(s), workdir {cfg.workdir}")
    if stage in ("all", "base"):
        for name in ([main_class] if main_class else CLASS_NAMES):
            training.train_base_model(cfg, corpus, source, name, dist)
    if stage in ("all", "complete"):
        training.train_complete_model(cfg, corpus, source, dist)
        if chief:
            calibrate_complete(cfg, corpus, source)
    if stage == "baseline" or (stage == "all" and train_baseline):
        training.train_baseline(cfg, corpus, source, dist)
    outcome = {"workdir": cfg.workdir, "stages": training.stage_summaries(cfg.workdir)}
    if evaluate and chief and stage in ("all", "complete"):
        outcome["results"] = evaluate_raw(cfg, corpus, source)
        outcome["results_path"] = cfg.path("results", reports.RESULTS_MD)
    if stage == "all" and chief:
        from dfx_keras import export

        outcome["export_path"] = export.export_workdir(cfg.workdir, max_pixels=cfg.max_pixels, reuse=True)
    return outcome


def print_summary(outcome: dict, seconds: float) -> None:
    """The closing table: each stage's validation accuracy (and a base model's training
    images of its main class and of the others), the test accuracies, the paths."""
    workdir = outcome["workdir"]
    print(f"\n{'stage':<10} {'epochs':>6} {'best':>5} {'val_acc':>8} {'val_loss':>9} {'main':>6} {'others':>6}  model")
    for name, s in outcome["stages"].items():
        print(f"{name:<10} {s['epochs']:>6} {s['best_epoch']:>5} {s['val_accuracy']:>8.4f} {s['val_loss']:>9.4f} "
              f"{s.get('main_images', ''):>6} {s.get('other_images', ''):>6}  "
              f"{os.path.join(workdir, 'models', name + '.keras')}")
    if outcome["stages"].get("complete", {}).get("frozen_bn") == "reference":
        print("complete.keras trained with --frozen_bn=reference: its base models' BatchNorm statistics have drifted "
              "and differ from models/bm_*.keras")
    results = outcome.get("results", {})
    if results.get("raw"):
        print(f"\n{'test (balanced)':<16} {'3-class':>8} {'binary':>8} {'AUC':>8}  n (3-class / binary)")
        baseline = results.get(evaluation.BASELINE, {}).get("raw")
        for name, raw in [("complete", results["raw"])] + ([(evaluation.BASELINE, baseline)] if baseline else []):
            print(f"{name:<16} {raw['three_class']['accuracy']:>8.4f} {raw['binary']['accuracy']:>8.4f} "
                  f"{raw['binary']['auc']:>8.4f}  {raw['three_class']['n']} / {raw['binary']['n']}")
        print(f"results: {outcome['results_path']}")
    if outcome.get("export_path"):
        print(f"SavedModel for TF Serving: {outcome['export_path']}")
    print(f"done in {seconds / 60:.1f} min; workdir {workdir}")
