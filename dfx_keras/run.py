"""What ``train.py`` does, as one call: data -> stages -> raw evaluation -> closing summary.

Kept apart from the flag parsing so tests and notebooks can run the same sequence.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Mapping, Sequence

from dfx_keras import backbones, config, evaluation, reports
from dfx_keras.classes import CLASS_NAMES
from dfx_keras.data import corpus as corpus_lib
from dfx_keras.data import pipelines
from dfx_keras.training import distribute, stages
from dfx_keras.workdir import BASELINE, COMPLETE, Workdir


def open_data(cfg: config.TrainConfig, data_dir: str | None, make_demo_corpus: bool = False,
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
        corpus_lib.write_split_csv(corpus.samples, cfg.wd.split_csv)
    return corpus, source


@contextlib.contextmanager
def owned_workdir(workdir: str, strategy: str = "auto") -> Iterator[None]:
    """Own ``workdir`` while training: a second run on it stops at once, naming the owner,
    instead of both writing the same backups. Only the chief locks it (the workers of a
    multi-worker run share it), after creating the strategy, as ``train`` does."""
    if not distribute.is_chief(distribute.get_strategy(strategy)):
        yield
        return
    with Workdir(workdir).lock():
        yield


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


def evaluate_raw(cfg: config.TrainConfig, corpus, source) -> dict:
    """Raw test of the workdir's complete model, and of its baseline beside it when
    ``models/baseline.keras`` exists, reported in ``results/`` (evaluate.py adds the attacks
    and generalization)."""
    paths = {COMPLETE: cfg.wd.model(COMPLETE)}
    if os.path.exists(cfg.wd.model(BASELINE)):
        paths[BASELINE] = cfg.wd.model(BASELINE)
    results, _ = evaluate(paths, ["raw"], cfg.wd.results(), corpus, source, batch_size=cfg.batch_size,
                          seed=cfg.seed)
    return results


def train(cfg: config.TrainConfig, data_dir: str | None, data: str | None = None, stage: str = "all",
          main_class: str | None = None, strategy: str = "auto", make_demo_corpus: bool = False,
          evaluate: bool = True, train_baseline: bool = False) -> dict:
    """Run ``stage`` (all, base, complete, baseline); returns what the summary prints.
    ``train_baseline``: ``all`` also trains the baseline, after the complete model.

    Under ``strategy="multi_worker"`` every worker runs this same call; only the chief writes
    split.csv, results and exports (``training`` keeps the stages' files chief-only too).
    """
    dist = distribute.get_strategy(strategy)  # first: a multi-worker strategy must exist before TensorFlow starts
    distribute.check_batch_size(cfg.batch_size, dist)
    chief = distribute.is_chief(dist)
    if stage in ("all", "base", "baseline"):  # a failed download or a bad file, before the corpus is scanned
        backbones.check_weights(cfg.backbone, cfg.image_size, cfg.weights)
    corpus, source = open_data(cfg, data_dir, make_demo_corpus, write_split=chief, data=data)
    unreadable = f", {len(corpus.unreadable)} unreadable folder(s) or special file(s)" if corpus.unreadable else ""
    print(f"corpus: {len(corpus.samples)} images ({len(corpus.skipped)} unreadable skipped{unreadable}), "
          f"{dist.num_replicas_in_sync} replica(s), workdir {cfg.workdir}")
    if stage in ("all", "base"):
        for name in ([main_class] if main_class else CLASS_NAMES):
            stages.train_base_model(cfg, corpus, source, name, dist)
    if stage in ("all", "complete"):
        stages.train_complete_model(cfg, corpus, source, dist)
    if stage == "baseline" or (stage == "all" and train_baseline):
        stages.train_baseline(cfg, corpus, source, dist)
    outcome = {"workdir": cfg.workdir, "stages": cfg.wd.stage_summaries()}
    if evaluate and chief and stage in ("all", "complete"):
        outcome["results"] = evaluate_raw(cfg, corpus, source)
        outcome["results_path"] = cfg.wd.results(reports.RESULTS_MD)
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
              f"{Workdir(workdir).model(name)}")
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
