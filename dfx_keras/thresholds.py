"""Operating thresholds on ``fake_score``, chosen by the false-positive rate they allow.

"The best threshold is not 0.5": what a deployment fixes is how many real photos it may flag.
A threshold for rate r is chosen on held-out *real* images (the complete stage's validation
split): the decision is ``fake_score > threshold``, and at most ``floor(r * n)`` of the n real
images score above it. Tied scores are never split: the threshold sits at a score value, so a
tie at the threshold counts as real and the rate reached may be below r. It is then measured,
with the true-positive rate, on the test pool.
"""

from __future__ import annotations

import math
import re
from typing import Mapping, Sequence

import numpy as np

RATES = (0.01, 0.05)
MIN_IMAGES_PER_RATE = 10  # fewer than 10 / rate real images: the rate rests on under 10 images


class ThresholdError(ValueError):
    """A threshold that cannot be chosen (no real image to choose it on) or a bad specification."""


def rate_key(rate: float) -> str:
    """``fpr_0.01``: a rate's key in results.json and calibration.json."""
    return f"fpr_{rate:g}"


def threshold_at_fpr(real_scores: Sequence[float], rate: float) -> float:
    """The smallest threshold t with at most ``floor(rate * n)`` of the real scores above t.

    Raises ThresholdError when there is no real score, or ``rate`` is not in (0, 1).
    """
    if not 0 < rate < 1:
        raise ThresholdError(f"a false-positive rate is in (0, 1), got {rate}")
    scores = np.sort(np.asarray(real_scores, np.float64))[::-1]
    if not len(scores):
        raise ThresholdError(f"no real images to choose the {rate:g} false-positive threshold on")
    allowed = math.floor(rate * len(scores) + 1e-9)  # 0.29 * 100 is 28.999...
    return float(scores[allowed])


def few_images_warning(rate: float, n_real: int) -> str | None:
    """A warning when fewer than ``10 / rate`` real images back ``rate`` (a 1% rate on 50 real
    images is decided by zero images)."""
    needed = math.ceil(MIN_IMAGES_PER_RATE / rate)
    if n_real < needed:
        return (f"the {rate:g} false-positive threshold rests on {n_real} real images; at least {needed} "
                f"(10 / rate) are needed for a reliable rate")
    return None


def choose_thresholds(real_scores: Sequence[float], rates: Sequence[float] = RATES) -> dict:
    """``{"fpr_0.01": {"rate", "threshold", "fpr", "n_real"[, "warning"]}, ...}`` on validation
    real images; ``fpr`` is the rate reached there."""
    real_scores = np.asarray(real_scores, np.float64)
    chosen = {}
    for rate in rates:
        threshold = threshold_at_fpr(real_scores, rate)
        block = {"rate": rate, "threshold": threshold, "fpr": float(np.mean(real_scores > threshold)),
                 "n_real": len(real_scores)}
        warning = few_images_warning(rate, len(real_scores))
        chosen[rate_key(rate)] = block | ({"warning": warning} if warning else {})
    return chosen


def rates_at(threshold: float, scores: Sequence[float], is_fake: Sequence[bool]) -> dict:
    """True- and false-positive rates of ``fake_score > threshold``; a side without images has
    rate None and a ``note`` saying so (never NaN)."""
    scores, is_fake = np.asarray(scores, np.float64), np.asarray(is_fake, bool)
    flagged = scores > threshold
    n_fake, n_real = int(is_fake.sum()), int((~is_fake).sum())
    block = {"threshold": float(threshold), "tpr": float(flagged[is_fake].mean()) if n_fake else None,
             "fpr": float(flagged[~is_fake].mean()) if n_real else None, "n_fake": n_fake, "n_real": n_real}
    missing = [name for name, n in (("fake", n_fake), ("real", n_real)) if not n]
    if missing:
        block["note"] = f"no {' and no '.join(missing)} images: " + ", ".join(
            {"fake": "tpr", "real": "fpr"}[m] for m in missing) + " undefined"
    return block


def measured_on_test(chosen: Mapping[str, Mapping], scores: Sequence[float], is_fake: Sequence[bool]) -> dict:
    """results.json's ``thresholds``: each validation-chosen threshold measured on the test
    scores, with the validation rate it was chosen for."""
    return {key: {**rates_at(block["threshold"], scores, is_fake), "val_fpr": block["fpr"],
                  "val_real_images": block["n_real"], **({"warning": block["warning"]} if "warning" in block else {})}
            for key, block in chosen.items()}


def roc_points(scores: Sequence[float], is_fake: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) of ``score > t`` for t from above the highest score down past the lowest, one
    point per distinct score: the ROC curve. Needs both classes."""
    scores, is_fake = np.asarray(scores, np.float64), np.asarray(is_fake, bool)
    if is_fake.all() or not is_fake.any():
        raise ThresholdError("a ROC curve needs both real and fake images")
    order = np.argsort(-scores, kind="mergesort")
    scores, is_fake = scores[order], is_fake[order]
    last = np.r_[np.nonzero(np.diff(scores))[0], len(scores) - 1]  # end of each run of tied scores
    tp, fp = np.cumsum(is_fake)[last], np.cumsum(~is_fake)[last]
    return np.r_[0.0, fp / (~is_fake).sum()], np.r_[0.0, tp / is_fake.sum()]


def parse_spec(spec: str) -> tuple[str, float]:
    """``--threshold``: ``fpr:0.01`` (a rate chosen at calibration) -> ("fpr", 0.01); a number ->
    ("value", number). Raises ThresholdError with the accepted forms."""
    match = re.fullmatch(r"\s*fpr:([0-9.eE+-]+)\s*", spec)
    try:
        kind, value = ("fpr", float(match.group(1))) if match else ("value", float(spec))
    except ValueError:
        kind, value = "", math.nan
    if kind == "fpr" and 0 < value < 1 or kind == "value" and 0 <= value <= 1:
        return kind, value
    raise ThresholdError(f"--threshold={spec}: give fpr:RATE with RATE in (0, 1) (e.g. fpr:0.01, a rate chosen at "
                         "calibration) or a fake_score value in [0, 1] (e.g. 0.7)")


def resolve(spec: str, calibration: Mapping | None) -> dict:
    """The threshold ``spec`` names and its provenance, for the export's metadata:
    ``{"threshold", "spec", "chosen_by"[, "rate", "val_fpr", "val_real_images"]}``."""
    kind, value = parse_spec(spec)
    if kind == "value":
        return {"threshold": value, "spec": spec, "chosen_by": "given as a number"}
    chosen = (calibration or {}).get("thresholds", {})
    key = rate_key(value)
    if key not in chosen:
        available = ", ".join(k.replace("fpr_", "fpr:") for k in chosen) or "none (no calibration)"
        raise ThresholdError(f"--threshold={spec}: no such rate was chosen at calibration; available: {available}")
    block = chosen[key]
    return {"threshold": block["threshold"], "spec": spec, "rate": value, "val_fpr": block["fpr"],
            "val_real_images": block["n_real"],
            "chosen_by": f"false-positive rate {value:g} on {block['n_real']} validation real images"}
