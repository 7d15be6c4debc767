"""Temperature scaling and ECE (dfx_keras.calibration), the thresholds chosen by false-positive
rate (dfx_keras.thresholds) and the fit that ties them to a model (dfx_keras.evaluation.calibrate)."""

import json

import numpy as np
import pytest

from dfx_keras import calibration, thresholds
from dfx_keras.evaluation import calibrate
from dfx_keras.workdir import calibration_path, file_sha256


def sampled_logits(temperature, n=20000, seed=0):
    """Logits whose labels are drawn from softmax(logits / temperature): the NLL-optimal
    temperature of this set is ``temperature`` (up to sampling noise)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 4, (n, 3))
    p = calibration.softmax(logits, temperature)
    labels = (rng.random((n, 1)) > np.cumsum(p, axis=1)).sum(axis=1)
    return logits, labels


@pytest.mark.parametrize("true_t", [0.5, 1.0, 3.0])
def test_the_fit_recovers_a_known_temperature(true_t):
    logits, labels = sampled_logits(true_t)
    assert calibration.fit_temperature(logits, labels) == pytest.approx(true_t, rel=0.05)


def test_the_fit_is_the_nll_minimum():
    logits, labels = sampled_logits(2.0, n=3000, seed=1)
    t = calibration.fit_temperature(logits, labels)
    nll = calibration.negative_log_likelihood
    assert nll(logits, labels, t) <= min(nll(logits, labels, t * 0.99), nll(logits, labels, t * 1.01))


def test_separable_logits_stop_at_the_lower_bound():
    """Every image right with a margin: the NLL falls as T -> 0; the bound holds it at 0.05."""
    labels = np.arange(300) % 3
    logits = np.eye(3)[labels] * 5.0
    assert calibration.fit_temperature(logits, labels) == pytest.approx(calibration.T_MIN)
    wrong = np.eye(3)[(labels + 1) % 3] * 5.0  # every image confidently wrong: T -> infinity, held at 20
    assert calibration.fit_temperature(wrong, labels) == pytest.approx(calibration.T_MAX)


def test_an_empty_validation_set_is_a_clear_error():
    with pytest.raises(ValueError, match="empty validation set"):
        calibration.fit_temperature(np.zeros((0, 3)), [])


def test_ece_equals_a_hand_computed_value():
    # Top confidences 0.9, 0.9 (bin (0.8, 0.9]... with 10 bins), 0.6, 0.35; correct: yes, no, yes, no.
    probabilities = np.array([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.6, 0.3, 0.1], [0.35, 0.33, 0.32]])
    labels = np.array([0, 0, 0, 1])
    # bin (0.8, 0.9]: 2 images, confidence 0.9, accuracy 0.5 -> |0.5 - 0.9| = 0.4, weight 2/4
    # bin (0.5, 0.6]: 1 image, 0.6 vs 1 -> 0.4, weight 1/4; bin (0.3, 0.4]: 0.35 vs 0 -> 0.35, weight 1/4
    expected = 0.5 * 0.4 + 0.25 * 0.4 + 0.25 * 0.35
    assert calibration.expected_calibration_error(probabilities, labels, bins=10) == pytest.approx(expected)
    table = calibration.reliability_bins(probabilities, labels, bins=10)
    assert [b["n"] for b in table] == [0, 0, 0, 1, 0, 1, 0, 0, 2, 0]
    assert table[8] == {"lower": pytest.approx(0.8), "upper": pytest.approx(0.9), "n": 2,
                        "confidence": pytest.approx(0.9), "accuracy": 0.5}
    assert np.isnan(calibration.expected_calibration_error(np.zeros((0, 3)), []))


def test_the_temperature_lowers_ece_and_keeps_the_argmax():
    logits, labels = sampled_logits(3.0, n=5000, seed=2)
    block = calibration.calibration_block(logits, labels, calibration.fit_temperature(logits, labels))
    assert block["ece_after"] < block["ece_before"] / 3
    assert block["bins"] == calibration.DEFAULT_BINS and len(block["reliability"]["after"]) == block["bins"]
    np.testing.assert_array_equal(calibration.softmax(logits, 3.0).argmax(1), logits.argmax(1))


def test_logits_of_probabilities_give_them_back_and_stay_finite():
    p = np.array([[0.7, 0.3, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    logits = calibration.logits_of(p)
    assert np.isfinite(logits).all()
    np.testing.assert_allclose(calibration.softmax(logits), p, atol=1e-12)


# --- thresholds --------------------------------------------------------------------------------

def test_threshold_at_fpr_hand_computed():
    real = np.arange(100) / 100  # 0.00 ... 0.99
    assert thresholds.threshold_at_fpr(real, 0.01) == pytest.approx(0.98)  # only 0.99 lies above
    assert thresholds.threshold_at_fpr(real, 0.05) == pytest.approx(0.94)  # 0.95..0.99 above
    assert thresholds.threshold_at_fpr(real, 0.29) == pytest.approx(0.70)  # 0.29 * 100 is 28.999...
    chosen = thresholds.choose_thresholds(real)
    assert chosen["fpr_0.05"] == {"rate": 0.05, "threshold": pytest.approx(0.94), "fpr": 0.05, "n_real": 100,
                                       "warning": chosen["fpr_0.05"]["warning"]}
    assert "rests on 100 real images; at least 1000" in chosen["fpr_0.01"]["warning"]
    assert "at least 200" in chosen["fpr_0.05"]["warning"]
    assert "warning" not in thresholds.choose_thresholds(np.linspace(0, 1, 1000))["fpr_0.01"]


def test_ties_are_never_split_so_the_rate_stays_at_most_the_target():
    real = np.array([0.2] * 10 + [0.9] * 5 + [0.1] * 85)  # 5% of the reals tie at 0.9
    t = thresholds.threshold_at_fpr(real, 0.01)
    assert t == 0.9 and np.mean(real > t) == 0.0  # a tie at the threshold is real
    assert thresholds.threshold_at_fpr(real, 0.05) == 0.2  # exactly the 5 tied images above: 5%
    assert thresholds.threshold_at_fpr([0.5] * 50, 0.05) == 0.5  # all tied: nothing flagged


def test_an_empty_real_set_is_a_clear_message_not_nan():
    with pytest.raises(thresholds.ThresholdError, match="no real images to choose the 0.01 false-positive"):
        thresholds.choose_thresholds([])
    with pytest.raises(thresholds.ThresholdError, match=r"in \(0, 1\)"):
        thresholds.threshold_at_fpr([0.1], 1.0)


def test_rates_on_test_including_all_one_class():
    scores, is_fake = np.array([0.1, 0.6, 0.8, 0.3, 0.9, 0.7]), np.array([0, 0, 0, 1, 1, 1], bool)
    assert thresholds.rates_at(0.65, scores, is_fake) == {"threshold": 0.65, "tpr": pytest.approx(2 / 3),
                                                          "fpr": pytest.approx(1 / 3), "n_fake": 3, "n_real": 3}
    only_fakes = thresholds.rates_at(0.65, scores[is_fake], is_fake[is_fake])
    assert only_fakes["fpr"] is None and only_fakes["tpr"] == pytest.approx(2 / 3)
    assert only_fakes["note"] == "no real images: fpr undefined"
    only_reals = thresholds.rates_at(0.65, scores[~is_fake], is_fake[~is_fake])
    assert only_reals["tpr"] is None and only_reals["note"] == "no fake images: tpr undefined"
    with pytest.raises(thresholds.ThresholdError, match="both real and fake"):
        thresholds.roc_points(scores[is_fake], is_fake[is_fake])


def test_roc_points_one_per_distinct_score():
    fpr, tpr = thresholds.roc_points([0.9, 0.8, 0.8, 0.1], [True, True, False, False])
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 1, 1])


def test_threshold_specs():
    calibration_ = {"thresholds": thresholds.choose_thresholds(np.arange(1000) / 1000)}
    resolved = thresholds.resolve("fpr:0.01", calibration_)
    assert resolved["threshold"] == pytest.approx(0.989) and resolved["val_real_images"] == 1000
    assert resolved["chosen_by"] == "false-positive rate 0.01 on 1000 validation real images"
    assert thresholds.resolve("0.7", None) == {"threshold": 0.7, "spec": "0.7", "chosen_by": "given as a number"}
    with pytest.raises(thresholds.ThresholdError, match="available: none"):
        thresholds.resolve("fpr:0.01", None)
    for bad in ("fpr=0.01", "fpr:1.5", "fpr:0", "1.2", "-0.1", "high", "fpr:"):
        with pytest.raises(thresholds.ThresholdError, match="give fpr:RATE"):
            thresholds.parse_spec(bad)
    assert thresholds.parse_spec(" fpr:0.05 ") == ("fpr", 0.05) and thresholds.parse_spec("0") == ("value", 0.0)


# --- the fit tied to a model file -------------------------------------------------------------

def test_fit_chooses_thresholds_on_calibrated_validation_reals_and_is_tied_to_the_file(tmp_path):
    logits, labels = sampled_logits(2.0, n=3000, seed=3)
    fitted = calibrate.fit(logits, labels, "abc")
    fake_score = 1 - calibration.softmax(logits, fitted["temperature"])[:, 2]
    real = fake_score[labels == 2]
    assert fitted["thresholds"]["fpr_0.05"]["threshold"] == thresholds.threshold_at_fpr(real, 0.05)
    assert fitted["thresholds"]["fpr_0.05"]["fpr"] <= 0.05 and fitted["val_ece_after"] < fitted["val_ece_before"]
    model = tmp_path / "complete.keras"
    model.write_bytes(b"model")

    calibration.write(calibration_path(str(model)), {**fitted, "model_sha256": file_sha256(str(model))})
    assert calibration.calibration_of(str(model))["temperature"] == fitted["temperature"]
    assert json.loads((tmp_path / "calibration.json").read_text())["model_sha256"] == file_sha256(str(model))
    model.write_bytes(b"retrained")
    assert calibration.calibration_of(str(model)) is None  # stale


def test_a_validation_split_without_real_images_keeps_its_temperature_and_says_why_no_thresholds():
    logits, labels = sampled_logits(1.5, n=2000, seed=4)
    fakes = labels != 2
    fitted = calibrate.fit(logits[fakes], labels[fakes], "abc")
    assert fitted["thresholds"] == {} and 0.05 <= fitted["temperature"] <= 20
    assert fitted["thresholds_error"] == "no real images to choose the 0.01 false-positive threshold on"
