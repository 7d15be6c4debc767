"""What ``train.py`` does, as one call: data -> stages -> raw evaluation -> closing summary.

Kept apart from the flag parsing so tests and notebooks can run the same sequence.
"""

from __future__ import annotations

import json
import os

from dfx_keras import evaluation, models, training
from dfx_keras.classes import CLASS_NAMES
from dfx_keras.data import corpus as corpus_lib
from dfx_keras.data import pipelines


def open_data(cfg: training.TrainConfig, data_dir: str | None, make_demo_corpus: bool = False):
    """The scanned corpus (split.csv written) and the source that reads its images."""
    if make_demo_corpus:
        from dfx_keras.data import demo

        demo.ensure_demo_corpus(data_dir)
    return training.prepare_corpus(data_dir, cfg.workdir), pipelines.folder_source(data_dir)


def write_results(workdir: str, results: dict) -> str:
    """Merge ``results`` into ``results/results.json`` (written atomically); returns its path."""
    path = os.path.join(workdir, "results", "results.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    merged = json.load(open(path)) if os.path.exists(path) else {}
    merged.update(results)
    with open(path + ".tmp", "w") as f:
        json.dump(merged, f, indent=2, allow_nan=True)
    os.replace(path + ".tmp", path)
    return path


def evaluate_raw(cfg: training.TrainConfig, corpus, source, model_name: str = "complete") -> dict:
    """Raw test-pool metrics of a trained model of the workdir."""
    model = models.load_model(cfg.path("models", f"{model_name}.keras"))
    blocks, read, probabilities = evaluation.raw_protocol(
        model, source, corpus.pool(corpus_lib.TEST_POOL), model.input_shape[1], cfg.batch_size, cfg.seed)
    return {"raw": blocks, "per_architecture": evaluation.per_architecture_accuracy(read, probabilities)}


def train(cfg: training.TrainConfig, data_dir: str | None, data: str | None = None, stage: str = "all",
          main_class: str | None = None, strategy: str = "auto", make_demo_corpus: bool = False,
          evaluate: bool = True) -> dict:
    """Run ``stage`` (all, base, complete, baseline); returns what the summary prints."""
    corpus, source = open_data(cfg, data_dir, make_demo_corpus)
    dist = training.get_strategy(strategy)
    print(f"corpus: {len(corpus.samples)} images ({len(corpus.skipped)} unreadable skipped), "
          f"{dist.num_replicas_in_sync} replica(s), workdir {cfg.workdir}")
    if stage in ("all", "base"):
        for name in ([main_class] if main_class else CLASS_NAMES):
            training.train_base_model(cfg, corpus, source, name, dist)
    if stage in ("all", "complete"):
        training.train_complete_model(cfg, corpus, source, dist)
    if stage == "baseline":
        training.train_baseline(cfg, corpus, source, dist)
    outcome = {"workdir": cfg.workdir, "stages": training.stage_summaries(cfg.workdir)}
    if evaluate and stage in ("all", "complete"):
        results = evaluate_raw(cfg, corpus, source)
        outcome["results"], outcome["results_path"] = results, write_results(cfg.workdir, results)
    return outcome


def print_summary(outcome: dict, seconds: float) -> None:
    """The closing table: each stage's validation accuracy, the test accuracies, the paths."""
    workdir = outcome["workdir"]
    print(f"\n{'stage':<10} {'epochs':>6} {'best':>5} {'val_acc':>8} {'val_loss':>9}  model")
    for name, s in outcome["stages"].items():
        print(f"{name:<10} {s['epochs']:>6} {s['best_epoch']:>5} {s['val_accuracy']:>8.4f} {s['val_loss']:>9.4f}  "
              f"{os.path.join(workdir, 'models', name + '.keras')}")
    raw = outcome.get("results", {}).get("raw")
    if raw:
        print(f"\ntest (balanced): 3-class accuracy {raw['three_class']['accuracy']:.4f} (n={raw['three_class']['n']}), "
              f"binary accuracy {raw['binary']['accuracy']:.4f} (n={raw['binary']['n']}), "
              f"AUC {raw['binary']['auc']:.4f}")
        print(f"results: {outcome['results_path']}")
    print(f"done in {seconds / 60:.1f} min; workdir {workdir}")
