"""Temperature scaling (Guo et al., 2017) and the expected calibration error.

A detector's softmax is not a probability until it is calibrated: a network trained to low
cross-entropy is over-confident on images it has not seen ("probability of being synthetic:
0.00%"). One temperature T, fitted on held-out images, divides the logits: the class an image
gets does not change (the argmax is the same), its scores become honest.

Pure NumPy on logits, so it runs on any model's outputs; ``calibration.json`` holds the fit.
"""

from __future__ import annotations

import json
import math
import os
from typing import Sequence

import numpy as np

from dfx_keras.workdir import atomic_write, calibration_path, file_sha256

# A separable validation set drives the NLL-optimal T towards 0 (every score 0 or 1); a
# degenerate one towards infinity. Bounded, T keeps its meaning.
T_MIN, T_MAX = 0.05, 20.0
DEFAULT_BINS = 15
_GOLDEN = (math.sqrt(5) - 1) / 2


def log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``softmax(logits / temperature)`` in float64."""
    return np.exp(log_softmax(np.asarray(logits, np.float64) / temperature))


def logits_of(probabilities: np.ndarray) -> np.ndarray:
    """Logits that give ``probabilities`` back (``log p``: a softmax ignores a per-row constant),
    so a model that returns only probabilities can be calibrated. Zeros (float underflow) stay
    finite at the smallest float64 log."""
    return np.log(np.maximum(np.asarray(probabilities, np.float64), np.finfo(np.float64).tiny))


def negative_log_likelihood(logits: np.ndarray, labels: Sequence[int], temperature: float) -> float:
    """Mean cross-entropy of ``softmax(logits / temperature)`` against ``labels``."""
    labels = np.asarray(labels, np.int64)
    log_p = log_softmax(np.asarray(logits, np.float64) / temperature)
    return float(-log_p[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: Sequence[int], bounds: tuple[float, float] = (T_MIN, T_MAX),
                    tolerance: float = 1e-6) -> float:
    """The temperature in ``bounds`` minimising the validation NLL.

    The NLL is convex in ``1 / T`` (a log-sum-exp of linear functions minus a linear one), so a
    golden-section search on ``1 / T`` finds the bounded minimum. Raises ValueError on an empty set.
    """
    logits, labels = np.asarray(logits, np.float64), np.asarray(labels, np.int64)
    if not len(labels):
        raise ValueError("cannot fit a temperature on an empty validation set")
    low, high = 1.0 / bounds[1], 1.0 / bounds[0]  # inverse temperatures

    def loss(beta):
        return negative_log_likelihood(logits, labels, 1.0 / beta)

    a, b = low, high
    c, d = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
    fc, fd = loss(c), loss(d)
    while b - a > tolerance * max(1.0, a):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - _GOLDEN * (b - a)
            fc = loss(c)
        else:
            a, c, fc = c, d, fd
            d = a + _GOLDEN * (b - a)
            fd = loss(d)
    beta = min((low, high, (a + b) / 2), key=loss)  # the bound itself when the minimum lies beyond it
    return float(1.0 / beta)


def reliability_bins(probabilities: np.ndarray, labels: Sequence[int], bins: int = DEFAULT_BINS) -> list[dict]:
    """Top-label reliability: equal-width confidence bins ``(lower, upper]`` (the first also
    holds 0), each with its image count, mean confidence and accuracy (None when empty)."""
    probabilities, labels = np.asarray(probabilities, np.float64), np.asarray(labels, np.int64)
    confidence = probabilities.max(axis=1) if len(labels) else np.zeros(0)
    correct = probabilities.argmax(axis=1) == labels if len(labels) else np.zeros(0, bool)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    out = []
    for b in range(bins):
        member = index == b
        n = int(member.sum())
        out.append({"lower": float(edges[b]), "upper": float(edges[b + 1]), "n": n,
                    "confidence": float(confidence[member].mean()) if n else None,
                    "accuracy": float(correct[member].mean()) if n else None})
    return out


def expected_calibration_error(probabilities: np.ndarray, labels: Sequence[int], bins: int = DEFAULT_BINS) -> float:
    """ECE: sum over bins of (share of images) x |accuracy - mean confidence|; NaN when empty."""
    table = reliability_bins(probabilities, labels, bins)
    total = sum(b["n"] for b in table)
    if not total:
        return float("nan")
    return float(sum(b["n"] / total * abs(b["accuracy"] - b["confidence"]) for b in table if b["n"]))


def calibration_block(logits: np.ndarray, labels: Sequence[int], temperature: float,
                      bins: int = DEFAULT_BINS) -> dict:
    """results.json's ``calibration``: ECE before and after dividing by ``temperature``, and the
    reliability bins of both (the diagram's data)."""
    before, after = softmax(logits), softmax(logits, temperature)
    return {"temperature": float(temperature), "ece_before": expected_calibration_error(before, labels, bins),
            "ece_after": expected_calibration_error(after, labels, bins), "bins": bins, "n": len(labels),
            "reliability": {"before": reliability_bins(before, labels, bins),
                            "after": reliability_bins(after, labels, bins)}}


# --- calibration.json ---------------------------------------------------------------------------

def write(path: str, calibration: dict) -> None:
    """Write a calibration (temperature, thresholds, what they were fitted on) atomically."""
    atomic_write(path, json.dumps(calibration, indent=2, allow_nan=False) + "\n")


def read(path: str, model_sha256: str | None = None) -> dict | None:
    """The calibration at ``path``; None when there is none, or when ``model_sha256`` is given and
    it was fitted to another model file (a retrained complete.keras makes it stale)."""
    try:
        with open(path) as f:
            calibration = json.load(f)
    except FileNotFoundError:
        return None
    if model_sha256 is not None and calibration.get("model_sha256") != model_sha256:
        return None
    return calibration


def calibration_of(model_path: str) -> dict | None:
    """The calibration fitted to this very ``.keras`` file, or None (none fitted, or fitted to a
    file since replaced, or fitted to another model of the folder such as the baseline)."""
    path = calibration_path(model_path)
    return read(path, file_sha256(model_path)) if os.path.exists(path) else None
