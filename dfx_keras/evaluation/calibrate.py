"""The complete model's calibration: fitted once on the complete stage's validation split.

The validation split is held out from the head's training (it only chose the best epoch), so
its logits are honest enough to fit the temperature on, and its real images to choose the
operating thresholds on. Both go to ``models/calibration.json`` beside ``complete.keras``,
tied to that file by its hash: a retrained model is recalibrated, never served with a stale T.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from absl import logging

from dfx_keras import calibration, thresholds
from dfx_keras.classes import REAL
from dfx_keras.data import corpus as corpus_lib
from dfx_keras.evaluation import protocols
from dfx_keras.evaluation.classifier import load_classifier
from dfx_keras.workdir import calibration_path, file_sha256


def fit(logits: np.ndarray, labels: Sequence[int], model_sha256: str, rates: Sequence[float] = thresholds.RATES,
        bins: int = calibration.DEFAULT_BINS) -> dict:
    """Temperature and thresholds from validation ``logits`` (B, 3) and ``labels``; the
    thresholds are on the calibrated ``fake_score``, the one the export serves."""
    labels = np.asarray(labels, np.int64)
    temperature = calibration.fit_temperature(logits, labels)
    fake_score = 1.0 - calibration.softmax(logits, temperature)[:, REAL]
    before, after = calibration.softmax(logits), calibration.softmax(logits, temperature)
    fitted = {"model_sha256": model_sha256, "temperature": temperature, "bounds": [calibration.T_MIN, calibration.T_MAX],
              "fitted_on": "complete stage validation split", "val_images": len(labels),
              "val_ece_before": calibration.expected_calibration_error(before, labels, bins),
              "val_ece_after": calibration.expected_calibration_error(after, labels, bins), "thresholds": {}}
    try:
        fitted["thresholds"] = thresholds.choose_thresholds(fake_score[labels == REAL], rates)
    except thresholds.ThresholdError as e:  # the temperature stands without them
        fitted["thresholds_error"] = str(e)
    return fitted


def calibrate(model_path: str, source, val_samples: Sequence[corpus_lib.Sample], batch_size: int,
              overwrite: bool = False) -> dict:
    """``model_path``'s calibration: the one on disk when it fits this file (unless
    ``overwrite``), else fitted on ``val_samples`` and written atomically beside the model."""
    existing = None if overwrite else calibration.calibration_of(model_path)
    if existing:
        return existing
    classifier = load_classifier(model_path, "complete")
    predictions = protocols.predict(classifier, source, val_samples, batch_size,
                                     description="complete: calibration on the validation split")
    fitted = fit(predictions.logits, predictions.labels, file_sha256(model_path))
    for warning in [b["warning"] for b in fitted["thresholds"].values() if "warning" in b] + (
            [fitted["thresholds_error"]] if "thresholds_error" in fitted else []):
        logging.warning("%s", warning)
    calibration.write(calibration_path(model_path), fitted)
    logging.info("calibration: T=%.3f, validation ECE %.4f -> %.4f", fitted["temperature"], fitted["val_ece_before"],
                 fitted["val_ece_after"])
    return fitted
