"""Test protocols and metrics (DESIGN.md 1.5): predictions in batches, metric blocks, raw test.

Metric blocks are plain dicts with at least ``accuracy``, ``precision``, ``recall``, ``f1`` and
``n`` (macro averages), so they go straight into ``results.json``.
"""

from __future__ import annotations

import sys
from typing import Callable, Sequence

import numpy as np

from dfx_keras.classes import CLASS_NAMES, NUM_CLASSES, REAL
from dfx_keras.data import corpus as corpus_lib
from dfx_keras.data import pipelines


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """Counts with rows = true class, columns = predicted class."""
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)), 1)
    return cm


def _safe_div(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.divide(a, b, out=np.zeros_like(a), where=b > 0)


def per_class_scores(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall and F1 of every class from a confusion matrix (0 where undefined)."""
    tp = np.diag(cm)
    precision = _safe_div(tp, cm.sum(axis=0))
    recall = _safe_div(tp, cm.sum(axis=1))
    f1 = _safe_div(2 * precision * recall, precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1}


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], names: Sequence[str]) -> dict:
    """Accuracy, macro precision/recall/F1, the per-class scores and the confusion matrix."""
    cm = confusion_matrix(y_true, y_pred, len(names))
    scores = per_class_scores(cm)
    n = int(cm.sum())
    return {
        "accuracy": float(np.trace(cm) / n) if n else 0.0,
        **{k: float(v.mean()) for k, v in scores.items()},
        "n": n,
        "per_class": {name: {k: float(v[i]) for k, v in scores.items()} | {"n": int(cm[i].sum())}
                      for i, name in enumerate(names)},
        "confusion_matrix": cm.tolist(),
    }


def roc_auc(is_positive: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with tied ranks averaged); NaN if one class."""
    is_positive = np.asarray(is_positive, bool)
    n_pos, n_neg = int(is_positive.sum()), int((~is_positive).sum())
    if not n_pos or not n_neg:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = np.asarray(scores)[order]
    ranks = np.empty(len(scores), np.float64)
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[is_positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(is_positive: np.ndarray, scores: np.ndarray) -> float:
    """Average precision (area under the step precision-recall curve, as scikit-learn)."""
    is_positive = np.asarray(is_positive, bool)
    if not is_positive.any():
        return float("nan")
    order = np.argsort(-np.asarray(scores), kind="mergesort")
    sorted_scores, hits = np.asarray(scores)[order], is_positive[order]
    # Thresholds at distinct scores: the last index of each run of equal scores.
    last = np.r_[np.nonzero(np.diff(sorted_scores))[0], len(hits) - 1]
    tp = np.cumsum(hits)[last]
    precision = tp / (last + 1)
    recall = tp / is_positive.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def binary_metrics(labels: Sequence[int], probabilities: np.ndarray) -> dict:
    """Fake-vs-real metrics: argmax over the 3 classes, DM/GAN mapped to fake.

    Macro scores over (fake, real), the REAL class' own scores as the reference reports them,
    and ROC AUC / AP of ``fake_score = 1 - p(real)`` with fake as the positive class.
    """
    is_fake = np.asarray(labels) != REAL
    predicted_fake = np.argmax(probabilities, axis=1) != REAL
    block = classification_metrics(1 - is_fake.astype(int), 1 - predicted_fake.astype(int), ("fake", "real"))
    real = block["per_class"]["real"]
    fake_score = 1.0 - np.asarray(probabilities)[:, REAL]
    return {**block, "real_precision": real["precision"], "real_recall": real["recall"], "real_f1": real["f1"],
            "auc": roc_auc(is_fake, fake_score), "ap": average_precision(is_fake, fake_score)}


def three_class_metrics(labels: Sequence[int], probabilities: np.ndarray) -> dict:
    return classification_metrics(labels, np.argmax(probabilities, axis=1), CLASS_NAMES)


def predict(model, source, samples: Sequence[corpus_lib.Sample], image_size: int, batch_size: int,
            transform: Callable | None = None, progress: bool = True) -> tuple[list[corpus_lib.Sample], np.ndarray]:
    """Class probabilities of ``samples`` in batches; returns the samples actually read.

    ``model`` maps float images in [0, 255] to logits (a Keras model or a callable).
    """
    import keras  # local: keeps the metric functions importable without a backend

    ds = pipelines.image_dataset(source, samples, image_size, batch_size, with_paths=True, transform=transform)
    by_path = {s.path: s for s in samples}
    bar = keras.utils.Progbar(len(samples), unit_name="image", verbose=1 if sys.stdout.isatty() else 2) \
        if progress else None
    read, probabilities = [], []
    for images, paths in ds:
        logits = model(images, training=False) if isinstance(model, keras.Model) else model(images)
        probabilities.append(keras.ops.convert_to_numpy(keras.ops.softmax(logits, axis=-1)))
        read.extend(by_path[p.decode()] for p in paths.numpy())
        if bar:
            bar.add(len(paths))
    probs = np.concatenate(probabilities) if probabilities else np.zeros((0, NUM_CLASSES), np.float32)
    return read, probs


def balanced_indices(labels: Sequence[int], seed: int, binary: bool) -> np.ndarray:
    """The reference's balanced test sets, as indices into ``labels``.

    3-class: min-class-count images per class. Binary: all real images and as many fakes,
    DM and GAN pooled. Drawn with ``seed``.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    groups = [np.nonzero(labels != REAL)[0], np.nonzero(labels == REAL)[0]] if binary else \
        [np.nonzero(labels == c)[0] for c in range(NUM_CLASSES)]
    n = min(len(g) for g in groups)
    return np.sort(np.concatenate([rng.choice(g, n, replace=False) for g in groups]))


def raw_blocks(labels: Sequence[int], probabilities: np.ndarray, seed: int) -> dict:
    """``three_class`` and ``binary`` on the balanced sets, plus both on the full test pool."""
    labels = np.asarray(labels)
    tri, bi = balanced_indices(labels, seed, binary=False), balanced_indices(labels, seed, binary=True)
    return {
        "three_class": three_class_metrics(labels[tri], probabilities[tri]),
        "binary": binary_metrics(labels[bi], probabilities[bi]),
        "three_class_full": three_class_metrics(labels, probabilities),
        "binary_full": binary_metrics(labels, probabilities),
    }


def per_architecture_accuracy(samples: Sequence[corpus_lib.Sample], probabilities: np.ndarray) -> dict:
    """3-class and binary (fake/real) accuracy of each architecture folder."""
    predicted = np.argmax(probabilities, axis=1)
    out = {}
    for (label, architecture), group in sorted(corpus_lib.by_folder(samples).items()):
        idx = np.array([i for i, s in enumerate(samples) if (s.label, s.architecture) == (label, architecture)])
        binary_ok = (predicted[idx] == REAL) == (label == REAL)
        out[f"{CLASS_NAMES[label]}/{architecture}"] = {
            "accuracy": float(np.mean(predicted[idx] == label)), "binary_accuracy": float(np.mean(binary_ok)),
            "n": int(len(idx))}
    return out


def raw_protocol(model, source, samples: Sequence[corpus_lib.Sample], image_size: int, batch_size: int,
                 seed: int) -> tuple[dict, list[corpus_lib.Sample], np.ndarray]:
    """Raw test on the test pool: metric blocks, and the samples read with their probabilities."""
    read, probabilities = predict(model, source, samples, image_size, batch_size)
    labels = [s.label for s in read]
    blocks = raw_blocks(labels, probabilities, seed)
    blocks["skipped_unreadable"] = len(samples) - len(read)
    return blocks, read, probabilities
