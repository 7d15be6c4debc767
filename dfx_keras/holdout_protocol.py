"""The leave-generators-out protocol: each held-out folder as a binary test of an unseen generator.

A held-out fake folder is tested against real images of the test pool, a held-out real folder
against test-pool fakes (DM and GAN pooled): ``min(n_held_out, n_other_side)`` images of each
side, drawn by a seeded hash (``corpus.balanced_sample``), so accuracy is balanced and AUC/AP
compare the unseen images with the kind of images the model must tell them from.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from dfx_keras import evaluation
from dfx_keras.classes import DM, GAN, REAL
from dfx_keras.data import corpus as corpus_lib
from dfx_keras.data.holdout import folder_name

MEAN_KEYS = ("accuracy", "precision", "recall", "f1", "auc", "ap")


def holdout_sets(test_samples: Sequence[corpus_lib.Sample], held_out: Sequence[corpus_lib.Sample],
                 seed: int) -> dict[str, list[corpus_lib.Sample]]:
    """``<class>/<folder>`` -> its balanced binary set (held-out images + test-pool opponents)."""
    reals = [s for s in test_samples if s.label == REAL]
    fakes = [s for s in test_samples if s.label != REAL]
    sets = {}
    for (label, _), group in sorted(corpus_lib.by_folder(held_out).items()):
        name = folder_name(group[0])
        opponents = fakes if label == REAL else reals
        if not opponents:
            raise corpus_lib.CorpusError(f"held-out folder {name}: the test pool has no "
                                         f"{'fake' if label == REAL else 'real'} image to test it against")
        groups = ((DM, GAN), (REAL,)) if label == REAL else ((label,), (REAL,))
        sets[name] = corpus_lib.balanced_sample([*group, *opponents], None, seed, groups)
    return sets


def holdout_protocol(classifier: evaluation.Classifier, source, sets: dict[str, list[corpus_lib.Sample]],
                     batch_size: int) -> tuple[dict, dict[str, evaluation.Predictions]]:
    """Binary metrics of every held-out set and their unweighted ``mean`` (``n`` there: the sum)."""
    blocks, predictions = {}, {}
    for name, samples in sets.items():
        predictions[name] = evaluation.predict(classifier, source, samples, batch_size,
                                               description=f"{classifier.name}: held-out {name}")
        labels = predictions[name].labels
        held = np.array([folder_name(s) == name for s in predictions[name].samples])
        metrics = evaluation.binary_metrics(labels, predictions[name].probabilities)
        blocks[name] = {**evaluation.summary(metrics), "n_holdout": int(held.sum()), "n_test_pool": int((~held).sum()),
                        **evaluation.skipped_block(predictions[name])}
    mean = {k: float(np.mean([b[k] for b in blocks.values()])) for k in MEAN_KEYS}
    return {**blocks, "mean": {**mean, "n": sum(b["n"] for b in blocks.values()), "sets": len(blocks)}}, predictions
