"""Metric blocks of the test protocols (DESIGN.md 1.5).

Metric blocks are plain dicts with at least ``accuracy``, ``precision``, ``recall``, ``f1`` and
``n`` (macro averages), plus ``auc`` and ``ap`` in binary blocks, so they go straight into
``results.json``. Undefined values (no positives, empty sets) are NaN, written as ``null``.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from dfx_keras.classes import CLASS_NAMES, DM, GAN, NUM_CLASSES, REAL, fake_score
from dfx_keras.data import corpus as corpus_lib

FAKE = -1  # label of generalization fakes: their generator type (DM or GAN) is unknown
SUMMARY_KEYS = ("accuracy", "precision", "recall", "f1", "n", "auc", "ap")


def label_name(label: int) -> str:
    return "fake" if label == FAKE else CLASS_NAMES[label]


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """Counts with rows = true class, columns = predicted class."""
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)), 1)
    return cm


def safe_div(a, b):
    """``a / b`` as float64, 0 where ``b`` is 0 (undefined scores count 0)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.divide(a, b, out=np.zeros_like(a), where=b > 0)


def per_class_scores(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall and F1 of every class; 0 where undefined (scikit-learn's zero_division=0)."""
    tp = np.diag(cm)
    precision = safe_div(tp, cm.sum(axis=0))
    recall = safe_div(tp, cm.sum(axis=1))
    f1 = safe_div(2 * precision * recall, precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1}


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], names: Sequence[str]) -> dict:
    """Accuracy, macro precision/recall/F1, the per-class scores and the confusion matrix.

    An empty set has accuracy NaN rather than 0, so it cannot pass for a failed model.
    """
    cm = confusion_matrix(y_true, y_pred, len(names))
    scores = per_class_scores(cm)
    n = int(cm.sum())
    return {
        "accuracy": float(np.trace(cm) / n) if n else float("nan"),
        **{k: float(v.mean()) for k, v in scores.items()},
        "n": n,
        "per_class": {name: {k: float(v[i]) for k, v in scores.items()} | {"n": int(cm[i].sum())}
                      for i, name in enumerate(names)},
        "confusion_matrix": cm.tolist(),
    }


def roc_auc(is_positive: Sequence[bool], scores: Sequence[float]) -> float:
    """Area under the ROC curve: the Mann-Whitney U with tied scores given their mean rank
    (a tie between a positive and a negative counts one half); NaN if a class is absent."""
    is_positive = np.asarray(is_positive, bool)
    n_pos, n_neg = int(is_positive.sum()), int((~is_positive).sum())
    if not n_pos or not n_neg:
        return float("nan")
    _, inverse, counts = np.unique(np.asarray(scores, np.float64), return_inverse=True, return_counts=True)
    mean_rank = np.cumsum(counts) - (counts - 1) / 2  # ranks are 1-based
    u = mean_rank[inverse.ravel()][is_positive].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def average_precision(is_positive: Sequence[bool], scores: Sequence[float]) -> float:
    """Area under the step precision-recall curve, one step per distinct score (scikit-learn's
    ``average_precision_score``): sum of (R_k - R_{k-1}) * P_k; NaN without positives."""
    is_positive = np.asarray(is_positive, bool)
    if not is_positive.any():
        return float("nan")
    order = np.argsort(-np.asarray(scores, np.float64), kind="mergesort")
    sorted_scores, hits = np.asarray(scores, np.float64)[order], is_positive[order]
    last = np.r_[np.nonzero(np.diff(sorted_scores))[0], len(hits) - 1]  # last index of each tie run
    tp = np.cumsum(hits)[last]
    precision = tp / (last + 1)
    recall = tp / is_positive.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def binary_metrics(labels: Sequence[int], probabilities: np.ndarray) -> dict:
    """Fake-vs-real metrics: argmax over the 3 classes, then every class but REAL is fake.

    Macro scores over (fake, real), the REAL class' own scores as the reference reports them,
    and ROC AUC / AP of ``fake_score = 1 - p(real)`` with fake as the positive class.
    """
    probabilities = np.asarray(probabilities).reshape(-1, NUM_CLASSES)
    is_real = np.asarray(labels) == REAL
    predicted_real = np.argmax(probabilities, axis=1) == REAL
    block = classification_metrics(is_real.astype(int), predicted_real.astype(int), ("fake", "real"))
    real = block["per_class"]["real"]
    score = fake_score(probabilities)
    return {**block, "real_precision": real["precision"], "real_recall": real["recall"], "real_f1": real["f1"],
            "auc": roc_auc(~is_real, score), "ap": average_precision(~is_real, score)}


def three_class_metrics(labels: Sequence[int], probabilities: np.ndarray) -> dict:
    probabilities = np.asarray(probabilities).reshape(-1, NUM_CLASSES)
    return classification_metrics(labels, np.argmax(probabilities, axis=1), CLASS_NAMES)


def balanced_indices(samples: Sequence[corpus_lib.Sample], seed: int, binary: bool) -> np.ndarray:
    """The reference's balanced test sets, as sorted indices into ``samples``.

    3-class: min-class-count images per class. Binary: as many fakes (DM and GAN pooled) as
    real images, or all fakes and as many real images when fakes are fewer. Chosen by a seeded
    hash of each path (``corpus.balanced_sample``), so the choice does not depend on the order
    images were read in (folder or tfds) and is the same for every attack of one test pool.
    """
    groups = ((DM, GAN), (REAL,)) if binary else ((DM,), (GAN,), (REAL,))
    chosen = {s.path for s in corpus_lib.balanced_sample(samples, None, seed, groups)}
    return np.array([i for i, s in enumerate(samples) if s.path in chosen], np.int64)


def protocol_blocks(samples: Sequence[corpus_lib.Sample], probabilities: np.ndarray, seed: int) -> dict:
    """One test pass: ``three_class`` and ``binary`` on the balanced sets (the reference's
    protocol), ``three_class_full`` and ``binary_full`` on every image read."""
    labels = np.array([s.label for s in samples], np.int64)
    tri, bi = balanced_indices(samples, seed, binary=False), balanced_indices(samples, seed, binary=True)
    return {
        "three_class": three_class_metrics(labels[tri], probabilities[tri]),
        "binary": binary_metrics(labels[bi], probabilities[bi]),
        "three_class_full": three_class_metrics(labels, probabilities),
        "binary_full": binary_metrics(labels, probabilities),
    }


def summary(block: Mapping) -> dict:
    """The headline numbers of a metric block (what tables and top-level keys show)."""
    return {k: block[k] for k in SUMMARY_KEYS if k in block}


def per_architecture_accuracy(samples: Sequence[corpus_lib.Sample], probabilities: np.ndarray) -> dict:
    """3-class and binary (fake/real) accuracy of each ``class/architecture`` folder."""
    predicted = np.argmax(probabilities, axis=1)
    labels = np.array([s.label for s in samples], np.int64)
    groups: dict[tuple[int, str], list[int]] = {}
    for i, s in enumerate(samples):
        groups.setdefault((s.label, s.architecture), []).append(i)
    out = {}
    for (label, architecture), idx in sorted(groups.items()):
        binary_ok = (predicted[idx] == REAL) == (labels[idx] == REAL)
        out[f"{label_name(label)}/{architecture}"] = {
            "accuracy": float(np.mean(predicted[idx] == label)), "binary_accuracy": float(np.mean(binary_ok)),
            "n": len(idx)}
    return out
