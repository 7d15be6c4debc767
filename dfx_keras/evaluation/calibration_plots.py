"""The calibration's pictures: a reliability diagram and the ROC curve with its operating points.

Drawn from the results blocks (``calibration``) and the raw test pass (``thresholds``, whose
points are marked on the curve), without pyplot, like every plot of ``reports``.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

from dfx_keras import thresholds
from dfx_keras.classes import REAL

RELIABILITY_PNG, ROC_PNG = "reliability.png", "roc.png"


def _figure(columns: int, height: float = 4.6):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5 * columns, height), dpi=100, layout="constrained")
    return fig, fig.subplots(1, columns, squeeze=False)[0]


def plot_reliability(path: str, block: Mapping) -> str:
    """Accuracy against confidence per bin, before and after the temperature; bar widths are
    the bins, the diagonal is perfect calibration."""
    fig, axes = _figure(2)
    for ax, when in zip(axes, ("before", "after")):
        bins = [b for b in block["reliability"][when] if b["n"]]
        ece = block[f"ece_{when}"]
        ax.bar([b["lower"] for b in bins], [b["accuracy"] for b in bins], width=[b["upper"] - b["lower"] for b in bins],
               align="edge", edgecolor="black", color="tab:blue", alpha=0.7, label="accuracy")
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o", color="tab:red",
                label="(mean confidence, accuracy)")
        for b in bins:  # how many images each bar stands for: most sit in the last bin
            ax.annotate(str(b["n"]), ((b["lower"] + b["upper"]) / 2, min(b["accuracy"], 0.93) + 0.02), ha="center",
                        fontsize=7)
        ax.plot([0, 1], [0, 1], "--", color="gray")
        title = "uncalibrated" if when == "before" else f"temperature {block['temperature']:.3g}"
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top class)", ylabel="accuracy",
               title=f"{title}: ECE {ece:.4f}" if ece is not None else title)
        ax.legend(loc="upper left")
    fig.savefig(path)
    return path


def plot_roc(path: str, scores: Sequence[float], is_fake: Sequence[bool], operating: Mapping[str, Mapping]) -> str:
    """``fake_score`` ROC on the test pool, with each validation-chosen threshold where it lands."""
    fpr, tpr = thresholds.roc_points(scores, is_fake)
    fig, (ax,) = _figure(1, 5)
    ax.plot(fpr, tpr, color="tab:blue", label="fake_score")
    ax.plot([0, 1], [0, 1], "--", color="gray")
    for key, block in operating.items():
        if block.get("fpr") is not None and block.get("tpr") is not None:
            ax.plot(block["fpr"], block["tpr"], "o", label=f"{key}: t={block['threshold']:.3g}, "
                    f"test FPR {block['fpr']:.3f}, TPR {block['tpr']:.3f}")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false-positive rate (real flagged)", ylabel="true-positive rate",
           title="ROC on the test pool, thresholds chosen on validation")
    ax.legend(loc="lower right", fontsize=8)
    fig.savefig(path)
    return path


def write_plots(results_dir: str, results: Mapping, clean=None) -> list[str]:
    """The reliability diagram when ``results`` has a calibration; the ROC curve when the raw
    pass ``clean`` (``evaluation.Predictions``) is given and holds both classes."""
    written = []
    if "calibration" in results:
        written.append(plot_reliability(os.path.join(results_dir, RELIABILITY_PNG), results["calibration"]))
    if clean is not None and len(clean.samples):
        is_fake = clean.labels != REAL
        if is_fake.any() and not is_fake.all():
            written.append(plot_roc(os.path.join(results_dir, ROC_PNG), 1.0 - clean.probabilities[:, REAL], is_fake,
                                    results.get("thresholds", {})))
    return written
