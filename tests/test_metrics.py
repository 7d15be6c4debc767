"""Metrics against hand-computed values: confusion matrices, macro and per-class scores, the
REAL class' binary scores, ROC AUC and AP with ties, the balanced test sets, the report merge."""

import math

import numpy as np
import pytest

from dfx_keras.evaluation import reports
from dfx_keras.evaluation import metrics
from dfx_keras.classes import DM, GAN, REAL
from dfx_keras.data.corpus import Sample


def one_hot(predicted, confidence=0.8):
    """Probabilities whose argmax is ``predicted``."""
    p = np.full((len(predicted), 3), (1 - confidence) / 2)
    p[np.arange(len(predicted)), predicted] = confidence
    return p


# 10 images. Rows true, columns predicted (DM, GAN, REAL):
#   DM   [2, 1, 1]
#   GAN  [0, 3, 0]
#   REAL [1, 0, 2]
Y_TRUE = [DM, DM, DM, DM, GAN, GAN, GAN, REAL, REAL, REAL]
Y_PRED = [DM, DM, GAN, REAL, GAN, GAN, GAN, DM, REAL, REAL]


def test_confusion_matrix_and_three_class_scores_by_hand():
    block = metrics.three_class_metrics(Y_TRUE, one_hot(Y_PRED))
    assert block["confusion_matrix"] == [[2, 1, 1], [0, 3, 0], [1, 0, 2]]
    assert block["n"] == 10 and block["accuracy"] == pytest.approx(7 / 10)
    # precision = column-wise: DM 2/3, GAN 3/4, REAL 2/3; recall = row-wise: 2/4, 3/3, 2/3
    precision, recall = [2 / 3, 3 / 4, 2 / 3], [1 / 2, 1, 2 / 3]
    f1 = [2 * p * r / (p + r) for p, r in zip(precision, recall)]
    assert block["precision"] == pytest.approx(np.mean(precision))
    assert block["recall"] == pytest.approx(np.mean(recall))
    assert block["f1"] == pytest.approx(np.mean(f1))
    per_class = block["per_class"]
    assert per_class["dm_generated"] == pytest.approx({"precision": 2 / 3, "recall": 0.5, "f1": 4 / 7, "n": 4})
    assert per_class["gan_generated"]["f1"] == pytest.approx(6 / 7) and per_class["gan_generated"]["n"] == 3
    assert per_class["real"]["f1"] == pytest.approx(2 / 3)


def test_binary_maps_dm_and_gan_to_fake_and_reports_the_real_class():
    block = metrics.binary_metrics(Y_TRUE, one_hot(Y_PRED))
    # fake = DM or GAN. True fakes: 7, predicted real among them: 1 (DM->REAL). True real: 3,
    # predicted fake among them: 1 (REAL->DM). Rows true (fake, real): [[6, 1], [1, 2]].
    assert block["confusion_matrix"] == [[6, 1], [1, 2]]
    assert block["accuracy"] == pytest.approx(8 / 10)
    assert block["real_precision"] == pytest.approx(2 / 3) and block["real_recall"] == pytest.approx(2 / 3)
    assert block["real_f1"] == pytest.approx(2 / 3)
    assert block["precision"] == pytest.approx((6 / 7 + 2 / 3) / 2)
    assert block["recall"] == pytest.approx((6 / 7 + 2 / 3) / 2)
    assert block["per_class"]["fake"]["n"] == 7 and block["per_class"]["real"]["n"] == 3


def test_undefined_scores_are_zero_and_an_empty_set_has_no_accuracy():
    # Nothing is predicted GAN: its precision is 0 (scikit-learn's zero_division=0), not NaN.
    block = metrics.three_class_metrics([DM, GAN, REAL], one_hot([DM, DM, REAL]))
    assert block["per_class"]["gan_generated"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "n": 1}
    empty = metrics.binary_metrics([], np.zeros((0, 3)))
    assert empty["n"] == 0 and math.isnan(empty["accuracy"]) and math.isnan(empty["auc"])


def test_roc_auc_counts_ties_as_one_half():
    # positives 0.8, 0.5; negatives 0.5, 0.2. Pairs (pos > neg): 0.8>0.5, 0.8>0.2, 0.5=0.5 (1/2),
    # 0.5>0.2 -> 3.5 / 4.
    assert metrics.roc_auc([1, 1, 0, 0], [0.8, 0.5, 0.5, 0.2]) == pytest.approx(0.875)
    assert metrics.roc_auc([1, 0, 1, 0], [0.3, 0.3, 0.3, 0.3]) == pytest.approx(0.5)
    assert metrics.roc_auc([1, 1, 0], [0.9, 0.8, 0.1]) == 1.0
    assert metrics.roc_auc([0, 0, 1], [0.9, 0.8, 0.1]) == 0.0
    assert math.isnan(metrics.roc_auc([1, 1], [0.2, 0.3]))


def test_average_precision_steps_once_per_distinct_score():
    # Sorted: 0.9 (pos), 0.5 (pos), 0.5 (neg), 0.1 (neg). Thresholds 0.9: P=1, R=1/2;
    # 0.5 (both tied images at once): P=2/3, R=1. AP = 1/2*1 + 1/2*2/3 = 5/6.
    assert metrics.average_precision([1, 1, 0, 0], [0.9, 0.5, 0.5, 0.1]) == pytest.approx(5 / 6)
    # Without the tie the positive at 0.5 would come first: AP = 1.
    assert metrics.average_precision([1, 1, 0, 0], [0.9, 0.6, 0.5, 0.1]) == pytest.approx(1.0)
    # Ranks 1 and 3 positive: 1/2*1 + 1/2*2/3.
    assert metrics.average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx(5 / 6)
    assert math.isnan(metrics.average_precision([0, 0], [0.1, 0.2]))


def test_binary_auc_and_ap_use_one_minus_p_real_with_fake_positive():
    labels = [DM, GAN, REAL, REAL]
    # p(real): 0.1, 0.6, 0.6, 0.9 -> fake_score 0.9, 0.4, 0.4, 0.1: one fake-real tie.
    probabilities = np.array([[0.8, 0.1, 0.1], [0.2, 0.2, 0.6], [0.3, 0.1, 0.6], [0.05, 0.05, 0.9]])
    block = metrics.binary_metrics(labels, probabilities)
    assert block["auc"] == pytest.approx((1 + 1 + 0.5 + 1) / 4)
    assert block["ap"] == pytest.approx(1 / 2 * 1 + 1 / 2 * 2 / 3)


def test_balanced_sets_take_the_smallest_class_count_whatever_the_read_order():
    labels = [DM] * 5 + [GAN] * 3 + [REAL] * 4
    samples = [Sample(f"{label}/{i}.png", label, "a") for i, label in enumerate(labels)]
    three = metrics.balanced_indices(samples, seed=1, binary=False)
    assert np.bincount([samples[i].label for i in three], minlength=3).tolist() == [3, 3, 3]
    binary = metrics.balanced_indices(samples, seed=1, binary=True)
    assert sorted(samples[i].label == REAL for i in binary) == [False] * 4 + [True] * 4
    shuffled = samples[::-1]  # another source may read the same images in another order
    assert {shuffled[i].path for i in metrics.balanced_indices(shuffled, seed=1, binary=True)} == \
        {samples[i].path for i in binary}
    assert {samples[i].path for i in metrics.balanced_indices(samples, seed=2, binary=True)} != \
        {samples[i].path for i in binary}
    blocks = metrics.protocol_blocks(samples, one_hot(labels), seed=1)
    assert blocks["three_class"]["n"] == 9 and blocks["binary"]["n"] == 8
    assert blocks["three_class_full"]["n"] == blocks["binary_full"]["n"] == 12


def test_per_architecture_accuracy_groups_by_class_and_folder():
    samples = [Sample("a", DM, "Glide"), Sample("b", DM, "Glide"), Sample("c", GAN, "Glide"), Sample("d", REAL, "FFHQ")]
    # DM->GAN is wrong 3-class but right binary (both fake).
    result = metrics.per_architecture_accuracy(samples, one_hot([DM, GAN, GAN, DM]))
    assert result == {"dm_generated/Glide": {"accuracy": 0.5, "binary_accuracy": 1.0, "n": 2},
                      "gan_generated/Glide": {"accuracy": 1.0, "binary_accuracy": 1.0, "n": 1},
                      "real/FFHQ": {"accuracy": 0.0, "binary_accuracy": 0.0, "n": 1}}


def test_results_json_is_strict_and_merges_only_results_of_the_same_model(tmp_path):
    model = {"name": "complete", "path": "/w/models/complete.keras", "modified": 1.0}
    reports.write_results_json(str(tmp_path), {"model": model, "raw": {"auc": float("nan")},
                                               "baseline": {"model": {"name": "baseline"}, "raw": {"n": 1}}})
    text = (tmp_path / "results.json").read_text()
    assert "NaN" not in text and '"auc": null' in text
    reports.write_results_json(str(tmp_path), {"model": model, "robustness": {"blur_k3": {}},
                                               "baseline": {"model": {"name": "baseline"}, "robustness": {}}})
    merged = reports.read_results(str(tmp_path))
    assert {"raw", "robustness"} <= set(merged) and {"raw", "robustness"} <= set(merged["baseline"])
    retrained = {**model, "modified": 2.0}
    reports.write_results_json(str(tmp_path), {"model": retrained, "raw": {"n": 5}})
    assert set(reports.read_results(str(tmp_path))) == {"model", "raw"}  # stale blocks dropped
