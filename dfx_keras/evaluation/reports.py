"""Evaluation outputs in ``results/``: results.json, results.md, predictions.csv and PNG plots.

Everything is rendered from the results dict (and the per-image predictions for the CSV), so
``results.md`` can be rebuilt from a ``results.json`` alone. A ``baseline`` key holding the
same blocks is shown beside the main model in every table and plot.
"""

from __future__ import annotations

import csv
import json
import math
import os
from typing import Iterable, Mapping, Sequence

import numpy as np

from dfx_keras.classes import CLASS_NAMES
from dfx_keras.evaluation import calibration_plots
from dfx_keras.evaluation.metrics import label_name, safe_div
from dfx_keras.workdir import BASELINE, atomic_write

RESULTS_JSON, RESULTS_MD, PREDICTIONS_CSV = "results.json", "results.md", "predictions.csv"
CONFUSION_PNG, ATTACKS_PNG = "confusion_matrix{suffix}.png", "accuracy_vs_attack.png"
MEASURES = {"binary": "binary", "three_class": "3-class"}  # accuracy-vs-attack lines per model
MAX_LISTED = 20  # unreadable images named in results.md
PREDICTION_COLUMNS = ("path", "label", "architecture", *(f"p_{c}" for c in CLASS_NAMES), "prediction", "attack",
                      "protocol", "model")


# --- results.json ----------------------------------------------------------------------------

def json_safe(value):
    """NaN and infinities -> None, numpy scalars -> Python: strict JSON that any reader parses."""
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def merge_results(old: Mapping, new: Mapping) -> dict:
    """``new`` over ``old``, so protocols run one at a time add up; old blocks are kept only
    while they belong to the same model file (same ``model`` identity), so the results of a
    model since retrained never survive beside the new ones. The baseline merges the same way.
    """
    merged = dict(old) if old.get("model") == new.get("model") else {}
    merged.update({k: v for k, v in new.items() if k != BASELINE})
    if BASELINE in new:
        merged[BASELINE] = merge_results(merged.get(BASELINE, {}), new[BASELINE])
    return merged


def write_results_json(results_dir: str, results: Mapping) -> str:
    """Merge ``results`` into ``results.json`` (see ``merge_results``), written atomically as
    strict JSON. Returns the path."""
    path = os.path.join(results_dir, RESULTS_JSON)
    os.makedirs(results_dir, exist_ok=True)
    merged = merge_results(read_results(results_dir), results)
    atomic_write(path, json.dumps(json_safe(merged), indent=2, allow_nan=False))
    return path


def read_results(results_dir: str) -> dict:
    path = os.path.join(results_dir, RESULTS_JSON)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


# --- predictions.csv -------------------------------------------------------------------------

def prediction_rows(model: str, passes: Iterable) -> Iterable[list]:
    """One row per image and pass; ``passes`` as ``protocols.evaluate`` returns them."""
    for protocol, attack, predictions in passes:
        predicted = np.argmax(predictions.probabilities, axis=1)
        for sample, probabilities, p in zip(predictions.samples, predictions.probabilities, predicted):
            yield [sample.path, label_name(sample.label), sample.architecture,
                   *(f"{v:.6f}" for v in probabilities), CLASS_NAMES[p], attack, protocol, model]


def write_predictions_csv(path: str, passes_by_model: Mapping[str, Iterable]) -> str:
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(PREDICTION_COLUMNS)
            for model, passes in passes_by_model.items():
                writer.writerows(prediction_rows(model, passes))

    atomic_write(path, write)
    return path


# --- plots -----------------------------------------------------------------------------------

def _figure(height: float, columns: int):
    """A figure drawn without pyplot (rendered by Agg into the PNG): no GUI backend, and no
    global matplotlib state changed in a user's notebook."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, height), dpi=100, layout="constrained")
    return fig, fig.subplots(1, columns, squeeze=False)[0]


def plot_confusion(path: str, cm: Sequence[Sequence[int]], title: str) -> str:
    """Counts and row-normalised (recall per true class) confusion matrices, side by side."""
    cm = np.asarray(cm, np.int64)
    normalised = safe_div(cm, cm.sum(axis=1, keepdims=True))
    fig, axes = _figure(4.6, 2)
    for ax, values, kind, fmt in ((axes[0], cm, "counts", "d"), (axes[1], normalised, "row-normalised", ".2f")):
        image = ax.imshow(values, cmap="Blues", vmin=0, vmax=max(values.max(), 1e-9))
        fig.colorbar(image, ax=ax, fraction=0.046)
        ax.set(xticks=range(len(CLASS_NAMES)), yticks=range(len(CLASS_NAMES)), xticklabels=CLASS_NAMES,
               yticklabels=CLASS_NAMES, xlabel="predicted", ylabel="true", title=f"{title}: {kind}")
        for (i, j), v in np.ndenumerate(values):
            ax.text(j, i, format(v, fmt), ha="center", va="center",
                    color="white" if v > 0.6 * values.max() else "black")
    atomic_write(path, fig.savefig)
    return path


def attack_curves(models: Mapping[str, Mapping]) -> dict[str, dict]:
    """Per attack group: ``x``, the strengths with the clean test first, and the accuracies
    under ``(model, measure)`` keys; a missing attack is NaN."""
    from dfx_keras.data.attacks import ATTACK_GROUPS

    curves = {}
    for group, members in ATTACK_GROUPS.items():
        xs = ["none", *(str(strength) for strength, _ in members)]
        lines = {}
        for model, blocks in models.items():
            passes = [blocks.get("raw", {}), *(blocks.get("robustness", {}).get(key, {}) for _, key in members)]
            for measure in MEASURES:
                lines[(model, measure)] = [_number(p.get(measure, {}).get("accuracy")) for p in passes]
        curves[group] = {"x": xs, **lines}
    return curves


def plot_attack_strength(path: str, models: Mapping[str, Mapping]) -> str:
    """Accuracy vs JPEG quality and vs blur kernel, clean test at the left of each panel."""
    curves = attack_curves(models)
    labels = {"jpeg": "JPEG quality factor", "blur": "Gaussian blur kernel (sigma 4)"}
    fig, axes = _figure(4.2, len(curves))
    for ax, (group, curve) in zip(axes, curves.items()):
        for (model, measure), ys in ((k, v) for k, v in curve.items() if k != "x"):
            # One colour per measure, one line style per model: the baseline is dashed.
            ax.plot(curve["x"], ys, marker="o", color=f"C{list(MEASURES).index(measure)}",
                    linestyle="--" if model == BASELINE else "-", label=f"{model} {MEASURES[measure]}")
        ax.set(xlabel=labels.get(group, group), ylabel="accuracy (balanced test)", ylim=(0, 1.02),
               title=f"accuracy vs {group}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    atomic_write(path, fig.savefig)
    return path


# --- results.md ------------------------------------------------------------------------------

def _number(value) -> float:
    return float("nan") if value is None else float(value)


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _table(headers: Sequence[str], rows: Iterable[Sequence]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_fmt(v) if not isinstance(v, str) else v for v in row) + " |" for row in rows]
    return "\n".join(lines)


def models_of(results: Mapping) -> dict[str, Mapping]:
    """The evaluated models' blocks: the main model, then the baseline when present."""
    main = {k: v for k, v in results.items() if k not in (BASELINE, "data")}
    name = results.get("model", {}).get("name", "complete")
    return {name: main, **({BASELINE: results[BASELINE]} if BASELINE in results else {})}


RAW_ROWS = (("three_class", "3-class, balanced"), ("three_class_full", "3-class, full pool"),
            ("binary", "binary, balanced"), ("binary_full", "binary, full pool"))
METRIC_COLUMNS = ("n", "accuracy", "precision", "recall", "f1", "real_precision", "real_recall", "real_f1", "auc",
                  "ap")


def _raw_section(models: Mapping[str, Mapping]) -> list[str]:
    rows, per_class, confusion = [], [], []
    for model, blocks in models.items():
        raw = blocks.get("raw")
        if not raw:
            continue
        rows += [[model, label, *(raw[key].get(c) for c in METRIC_COLUMNS)] for key, label in RAW_ROWS if key in raw]
        per_class += [[model, name, *(v[c] for c in ("n", "precision", "recall", "f1"))]
                      for name, v in raw["three_class"]["per_class"].items()]
        confusion += [[model, CLASS_NAMES[i], *row] for i, row in enumerate(raw["three_class"]["confusion_matrix"])]
    if not rows:
        return []
    return ["## Raw test", "", "Balanced sets as the reference (min class count per class; binary: as many fakes "
            "as real images, DM and GAN pooled); full pool: every test image read. Precision, recall and F1 are "
            "macro averages; real_* are the REAL class' own (the reference's binary numbers); AUC and AP use "
            "fake_score = 1 - p(real).", "",
            _table(["model", "test", "n", "accuracy", "precision", "recall", "f1", "real P", "real R", "real F1",
                    "AUC", "AP"], rows), "",
            "### Per class (3-class, balanced)", "", _table(["model", "class", "n", "precision", "recall", "f1"],
                                                            per_class), "",
            "### Confusion matrix (3-class, balanced; rows true, columns predicted)", "",
            _table(["model", "true", *CLASS_NAMES], confusion), ""]


def _get(block: Mapping, dotted: str):
    for part in dotted.split("."):
        block = block.get(part, {}) if isinstance(block, Mapping) else {}
    return None if block == {} else block


def _side_by_side(key_header: str, tables: Mapping[str, Mapping[str, Mapping]], shared: Sequence[tuple[str, str]],
                  per_model: Sequence[tuple[str, str]]) -> str:
    """One row per key of the models' tables (``model -> key -> block``): the ``shared``
    columns once (from the first model that has the key), the ``per_model`` columns for each
    model, side by side. Columns are ``(header, dotted path in the block)``."""
    keys = list(dict.fromkeys(k for t in tables.values() for k in t))
    headers = [key_header, *(h for h, _ in shared), *(f"{m} {h}" for m in tables for h, _ in per_model)]
    rows = []
    for key in keys:
        first = next(t[key] for t in tables.values() if key in t)
        rows.append([key, *(_get(first, path) for _, path in shared),
                     *(_get(t.get(key, {}), path) for t in tables.values() for _, path in per_model)])
    return _table(headers, rows)


def _per_architecture_section(models: Mapping[str, Mapping]) -> list[str]:
    tables = {model: blocks["per_architecture"] for model, blocks in models.items() if blocks.get("per_architecture")}
    if not tables:
        return []
    table = _side_by_side("folder", tables, [("n", "n")],
                          [("3-class acc", "accuracy"), ("binary acc", "binary_accuracy")])
    return ["## Per architecture (full test pool)", "", table, ""]


def _robustness_section(models: Mapping[str, Mapping], plot: str | None) -> list[str]:
    tables = {model: {"none": blocks.get("raw", {}), **blocks["robustness"]}
              for model, blocks in models.items() if blocks.get("robustness")}
    if not tables:
        return []
    shared = [("n binary", "binary.n"), ("n 3-class", "three_class.n"), ("skipped", "skipped")]
    per_model = [("binary acc", "binary.accuracy"), ("AUC", "binary.auc"), ("3-class acc", "three_class.accuracy")]
    table = _side_by_side("attack", tables, shared, per_model)
    lines = ["## Robustness", "", "Each attack applied to the original-resolution test image before the model's "
             "resize; balanced sets (\"none\": the raw test). The top-level numbers of each attack in results.json "
             "are its balanced binary ones.", "", table, ""]
    return lines + ([f"![accuracy vs attack strength]({plot})", ""] if plot else [])


def _generalization_section(models: Mapping[str, Mapping]) -> list[str]:
    tables = {model: {**blocks["generalization"], "**mean**": blocks.get("generalization_mean", {})}
              for model, blocks in models.items() if blocks.get("generalization")}
    if not tables:
        return []
    columns = [(c.replace("_", " "), c) for c in ("accuracy", "precision", "recall", "f1", "real_f1", "auc", "ap")]
    table = _side_by_side("set", tables, [("n real", "n_real"), ("n fake", "n_fake")], columns)
    return ["## Generalization (binary, every image of each set; mean over sets)", "", table, ""]


def _holdout_section(models: Mapping[str, Mapping]) -> list[str]:
    tables = {model: {**{k: v for k, v in blocks["holdout"].items() if k != "mean"},
                      "**mean**": blocks["holdout"].get("mean", {})}
              for model, blocks in models.items() if blocks.get("holdout")}
    if not tables:
        return []
    columns = [(c.upper() if c in ("auc", "ap") else c, c) for c in ("accuracy", "auc", "ap")]
    table = _side_by_side("held-out folder", tables, [("n", "n"), ("n held out", "n_holdout")], columns)
    return ["## Held-out folders (leave-generators-out)", "", "Folders kept out of every training stage "
            "(--holdout_architectures). Each is a balanced binary set: its images against as many test-pool "
            "images of the other side (real images for a generator's folder, fakes for a real one); mean over "
            "folders.", "", table, ""]


def _skipped_section(models: Mapping[str, Mapping], data: Mapping) -> list[str]:
    """Every image left out, by pass: never silently."""
    counts, paths = [], dict.fromkeys(data.get("skipped_at_scan", []))
    if paths:
        counts.append(["all", "corpus scan (test pool)", len(paths)])
    for model, blocks in models.items():
        held_out = {k: v for k, v in blocks.get("holdout", {}).items() if k != "mean"}
        passes = {"raw": blocks.get("raw", {}), **blocks.get("robustness", {}), **blocks.get("generalization", {}),
                  **held_out}
        counts += [[model, name, block["skipped"]] for name, block in passes.items() if block.get("skipped")]
        paths.update(dict.fromkeys(p for block in passes.values() for p in block.get("skipped_images", [])))
    if not counts:
        return ["No image was skipped.", ""]
    listed = [f"- `{p}`" for p in list(paths)[:MAX_LISTED]]
    if len(paths) > MAX_LISTED:
        listed.append(f"- ... and {len(paths) - MAX_LISTED} more (results.json lists them all)")
    return ["## Skipped images", "", "Images that could not be read (or attacked) are left out of the metrics and "
            "counted here; predictions.csv lists the images used.", "", _table(["model", "pass", "skipped"], counts),
            "", "Images left out (relative to their test folder):", "", *listed, ""]


def results_markdown(results: Mapping, confusion_plots: Mapping[str, str] = {}, attacks_plot: str | None = None) -> str:
    """The paper's tables for every evaluated model, side by side."""
    models = models_of(results)
    data = results.get("data", {})
    lines = ["# Evaluation results", ""]
    if data:
        lines.append(f"- test data: `{data.get('source')}`, test pool {data.get('test_images')} images")
        if data.get("holdout_folders"):
            lines.append(f"- held out of training and of the test pool: {', '.join(data['holdout_folders'])}")
    lines += [f"- {name}: `{blocks.get('model', {}).get('path', '?')}`" for name, blocks in models.items()]
    lines.append("")
    lines += _raw_section(models)
    lines += [f"![{model} confusion matrix]({plot})\n" for model, plot in confusion_plots.items()]
    lines += _calibration_section(results)
    lines += _per_architecture_section(models)
    lines += _robustness_section(models, attacks_plot)
    lines += _generalization_section(models)
    lines += _holdout_section(models)
    lines += _skipped_section(models, data)
    return "\n".join(lines)


def _calibration_section(results: Mapping) -> list[str]:
    """The main model's calibration (ECE before/after) and its operating thresholds on test."""
    lines = []
    if "calibration" in results:
        c = results["calibration"]
        lines += ["## Calibration", "", f"Temperature {_fmt(c['temperature'])}: expected calibration error on the "
                  f"test pool {_fmt(c['ece_before'])} before, {_fmt(c['ece_after'])} after ({c['bins']} bins).", "",
                  f"![reliability diagram]({calibration_plots.RELIABILITY_PNG})", ""]
    if results.get("thresholds"):
        rows = [(key, f"{b['threshold']:.4g}", _fmt(b.get("val_fpr")), _fmt(b["fpr"]), _fmt(b["tpr"]))
                for key, b in results["thresholds"].items()]
        lines += ["## Operating thresholds", "", "`fake_score > threshold` is fake; thresholds chosen on the "
                  "validation real images, rates measured on the test pool.", "",
                  _table(["target", "threshold", "validation FPR", "test FPR", "test TPR"], rows), "",
                  f"![ROC curve]({calibration_plots.ROC_PNG})", ""]
    return lines


def _raw_pass(passes_by_model: Mapping[str, Iterable] | None):
    """The main model's raw test pass among ``evaluation.evaluate``'s passes, or None."""
    for protocol, attack, predictions in next(iter((passes_by_model or {}).values()), ()):
        if (protocol, attack) == ("raw", "none"):
            return predictions
    return None


# --- everything ------------------------------------------------------------------------------

def write_reports(results_dir: str, results: Mapping, passes_by_model: Mapping[str, Iterable] | None = None) -> dict:
    """results.json (merged), plots, results.md, and predictions.csv when predictions are given.

    Returns the written paths by kind.
    """
    written = {"json": write_results_json(results_dir, results)}
    merged = read_results(results_dir)
    models = models_of(merged)
    confusion = {}
    for model, blocks in models.items():
        if "raw" in blocks:
            name = CONFUSION_PNG.format(suffix="" if model != BASELINE else f"_{BASELINE}")
            plot_confusion(os.path.join(results_dir, name), blocks["raw"]["three_class"]["confusion_matrix"],
                           f"{model}, 3-class balanced")
            confusion[model] = name
    attacks = ATTACKS_PNG if any(b.get("robustness") for b in models.values()) else None
    if attacks:
        plot_attack_strength(os.path.join(results_dir, attacks), models)
    written["plots"] = [os.path.join(results_dir, p) for p in [*confusion.values(), *([attacks] if attacks else [])]]
    written["plots"] += calibration_plots.write_plots(results_dir, merged, _raw_pass(passes_by_model))
    written["markdown"] = os.path.join(results_dir, RESULTS_MD)
    atomic_write(written["markdown"], results_markdown(merged, confusion, attacks))
    if passes_by_model is not None:
        written["csv"] = write_predictions_csv(os.path.join(results_dir, PREDICTIONS_CSV), passes_by_model)
    return written
