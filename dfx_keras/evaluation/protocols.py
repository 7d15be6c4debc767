"""Test protocols (DESIGN.md 1.5): raw, robustness to attacks, generalization; and the held-out
folders of a leave-generators-out run (holdout).

Each pass predicts a list of images in batches (``predict``: decoding and attacking in
tf.data) and turns the probabilities into metric blocks (``metrics``).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Callable, Sequence

import numpy as np
from absl import logging

from dfx_keras import calibration, thresholds
from dfx_keras.classes import DM, GAN, NUM_CLASSES, REAL, fake_score
from dfx_keras.data import corpus as corpus_lib
from dfx_keras.data.holdout import folder_name
from dfx_keras.evaluation.classifier import Classifier, model_identity
from dfx_keras.evaluation.metrics import FAKE, binary_metrics, per_architecture_accuracy, protocol_blocks, summary

GENERALIZATION_FOLDERS = {"0_real": REAL, "1_fake": FAKE}
GENERALIZATION_MEAN_KEYS = ("accuracy", "precision", "recall", "f1", "real_precision", "real_recall", "real_f1", "auc",
                            "ap")


@dataclasses.dataclass
class Predictions:
    """What one pass over a list of images produced: the samples read, in the order read,
    their (calibrated) probabilities, the paths that could not be read (or attacked), and the
    uncalibrated logits (log-probabilities) the probabilities came from."""

    samples: list[corpus_lib.Sample]
    probabilities: np.ndarray
    skipped: list[str]
    logits: np.ndarray | None = None

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], np.int64)


def bytes_dataset(source, samples: Sequence[corpus_lib.Sample], batch_size: int, transform: Callable | None = None):
    """Batches of ``(encoded bytes, paths)`` for a model that decodes itself.

    Every image is decoded here too, so unreadable files are dropped before they reach the
    model (one bad file would fail the whole batch there); attacked images go as lossless PNG.
    """
    import tensorflow as tf

    from dfx_keras.data import pipelines

    def load(path, encoded):
        if transform is not None:
            return tf.io.encode_png(tf.cast(transform(pipelines.decode_image(encoded)), tf.uint8)), path
        return encoded, path, pipelines.decoded_shape(encoded)  # the check: no float32 copy

    ds = source.encoded(samples).map(load, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors(log_warning=True)
    if transform is None:
        ds = ds.map(lambda encoded, path, _: (encoded, path))
    return pipelines.finish(ds.batch(batch_size))


def predict(classifier: Classifier, source, samples: Sequence[corpus_lib.Sample], batch_size: int,
            transform: Callable | None = None, description: str = "") -> Predictions:
    """Probabilities of ``samples`` in batches, decoding and attacking in parallel in tf.data.

    A progress bar counts images on stderr-like output (one line per pass when not a terminal).
    """
    import keras

    from dfx_keras.data import pipelines

    if classifier.image_size is None:
        ds = bytes_dataset(source, samples, batch_size, transform)
    else:
        ds = pipelines.image_dataset(source, samples, classifier.image_size, batch_size, with_paths=True,
                                     transform=transform)
    if description:
        print(description, flush=True)
    bar = keras.utils.Progbar(len(samples), unit_name="image", verbose=1 if sys.stdout.isatty() else 2)
    probabilities, paths, seen = [], [], 0
    for inputs, batch_paths in ds:
        probabilities.append(np.asarray(classifier.probabilities(inputs)))
        paths.append(batch_paths.numpy())
        seen += len(paths[-1])
        bar.update(seen)
    if seen < len(samples):  # skipped images: close the bar short of its target, and say so
        bar.update(seen, finalize=True)
        logging.warning("%s: %d of %d images could not be read%s and are left out (listed in the results)",
                        description or classifier.name, len(samples) - seen, len(samples),
                        " or attacked" if transform else "")
    by_path = {s.path: s for s in samples}
    read = [by_path[p.decode()] for p in np.concatenate(paths)] if paths else []
    read_paths = {s.path for s in read}
    probs = np.concatenate(probabilities).astype(np.float64) if probabilities else np.zeros((0, NUM_CLASSES))
    logits = calibration.logits_of(probs)
    return Predictions(read, calibration.softmax(logits, classifier.temperature),
                       [s.path for s in samples if s.path not in read_paths], logits)


def skipped_block(predictions: Predictions) -> dict:
    """How many images of a pass were left out (unreadable, or too small for an attack), and which."""
    return {"skipped": len(predictions.skipped), "skipped_images": predictions.skipped}


def evaluate_pass(classifier: Classifier, source, samples: Sequence[corpus_lib.Sample], batch_size: int, seed: int,
              transform: Callable | None = None, description: str = "") -> tuple[dict, Predictions]:
    """One pass over the test pool (clean or attacked): the ``protocol_blocks`` and a headline.

    The top-level accuracy/precision/recall/f1/n/auc/ap are those of the balanced binary test,
    the measure the reference's robustness and generalization numbers use.
    """
    predictions = predict(classifier, source, samples, batch_size, transform, description)
    blocks = protocol_blocks(predictions.samples, predictions.probabilities, seed)
    return {**summary(blocks["binary"]), **blocks, **skipped_block(predictions)}, predictions


def raw_protocol(classifier: Classifier, source, samples: Sequence[corpus_lib.Sample], batch_size: int,
                 seed: int) -> tuple[dict, Predictions]:
    """Raw test: the clean test pool."""
    return evaluate_pass(classifier, source, samples, batch_size, seed, description=f"{classifier.name}: raw test")


def robustness_protocol(classifier: Classifier, source, samples: Sequence[corpus_lib.Sample], batch_size: int,
                        seed: int) -> tuple[dict, dict[str, Predictions]]:
    """Every attack applied on the fly to each original-resolution test image, before the
    resize; the balanced sets are drawn with the same seed, so attacks compare the same images."""
    from dfx_keras.data.attacks import ATTACKS

    blocks, predictions = {}, {}
    for key, attack in ATTACKS.items():
        blocks[key], predictions[key] = evaluate_pass(classifier, source, samples, batch_size, seed, attack,
                                                  description=f"{classifier.name}: {key}")
    return blocks, predictions


def test_data(corpus: corpus_lib.Corpus) -> tuple[list[corpus_lib.Sample], dict]:
    """The test pool of a scanned corpus, and what results.json records of it (``data``)."""
    samples = corpus.pool(corpus_lib.TEST_POOL)
    if not samples:
        raise corpus_lib.CorpusError(f"the test pool (20% of the images, by path hash) of {corpus.root} is empty: "
                                     "the corpus is too small")
    skipped = sorted(path for path, _ in corpus.skipped if corpus_lib.pool_of(path) == corpus_lib.TEST_POOL)
    return samples, {"source": corpus.root, "test_images": len(samples), "skipped_at_scan": skipped}


def generalization_sets(root: str) -> dict[str, list[corpus_lib.Sample]]:
    """The sets of a generalization folder: every subfolder holding ``0_real/`` and ``1_fake/``.

    Samples' paths are relative to ``root``; images may sit in subfolders of 0_real/1_fake.
    Raises ``CorpusError`` with what was found when no subfolder has the layout or a set is
    empty on one side (its binary metrics would be meaningless).
    """
    if not os.path.isdir(root):
        raise corpus_lib.CorpusError(f"generalization folder not found: {root}")
    subfolders = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    names = [d for d in subfolders if all(os.path.isdir(os.path.join(root, d, f)) for f in GENERALIZATION_FOLDERS)]
    if not names:
        raise corpus_lib.CorpusError(
            f"{root} has no set: expected subfolders <set>/0_real/ and <set>/1_fake/ holding images "
            f"(found subfolders: {', '.join(subfolders) or 'none'})")
    sets = {}
    for name in names:
        samples = []
        for folder, label in GENERALIZATION_FOLDERS.items():
            found = _images_under(root, f"{name}/{folder}")
            if not found:
                extensions = ", ".join(corpus_lib.IMAGE_EXTENSIONS)
                raise corpus_lib.CorpusError(f"generalization set {name}: no images ({extensions}) in "
                                             f"{os.path.join(root, name, folder)}")
            samples.extend(corpus_lib.Sample(path, label, name) for path in found)
        sets[name] = samples
    return sets


def _images_under(root: str, relative: str) -> list[str]:
    """Image files under ``root/relative`` (a POSIX path), as POSIX paths relative to ``root``,
    in ``corpus.image_files`` walk order."""
    return [f"{relative}/{path}" for path in corpus_lib.image_files(os.path.join(root, relative))]


def generalization_protocol(classifier: Classifier, root: str, batch_size: int
                            ) -> tuple[dict, dict, dict[str, Predictions]]:
    """Binary metrics of each set (all its images, as the authors' ~2,000 + ~2,000 sets), and
    their unweighted mean over sets."""
    from dfx_keras.data import pipelines

    source = pipelines.folder_source(root)
    blocks, predictions = {}, {}
    for name, samples in generalization_sets(root).items():
        predictions[name] = predict(classifier, source, samples, batch_size,
                                    description=f"{classifier.name}: generalization set {name}")
        labels, probabilities = predictions[name].labels, predictions[name].probabilities
        blocks[name] = {**binary_metrics(labels, probabilities), "n_real": int(np.sum(labels == REAL)),
                        "n_fake": int(np.sum(labels == FAKE)), **skipped_block(predictions[name])}
    mean = {k: float(np.mean([b[k] for b in blocks.values()])) for k in GENERALIZATION_MEAN_KEYS}
    return blocks, {**mean, "sets": len(blocks)}, predictions


# The leave-generators-out protocol: each held-out folder as a binary test of an unseen generator.
# A held-out fake folder is tested against real images of the test pool, a held-out real folder
# against test-pool fakes (DM and GAN pooled): min(n_held_out, n_other_side) images of each side,
# drawn by a seeded hash (corpus.balanced_sample), so accuracy is balanced and AUC/AP compare the
# unseen images with the kind of images the model must tell them from.
HOLDOUT_MEAN_KEYS = ("accuracy", "precision", "recall", "f1", "auc", "ap")


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


def holdout_protocol(classifier: Classifier, source, sets: dict[str, list[corpus_lib.Sample]],
                     batch_size: int) -> tuple[dict, dict[str, Predictions]]:
    """Binary metrics of every held-out set and their unweighted ``mean`` (``n`` there: the sum)."""
    blocks, predictions = {}, {}
    for name, samples in sets.items():
        predictions[name] = predict(classifier, source, samples, batch_size,
                                    description=f"{classifier.name}: held-out {name}")
        labels = predictions[name].labels
        held = np.array([folder_name(s) == name for s in predictions[name].samples])
        metrics = binary_metrics(labels, predictions[name].probabilities)
        blocks[name] = {**summary(metrics), "n_holdout": int(held.sum()), "n_test_pool": int((~held).sum()),
                        **skipped_block(predictions[name])}
    mean = {k: float(np.mean([b[k] for b in blocks.values()])) for k in HOLDOUT_MEAN_KEYS}
    return {**blocks, "mean": {**mean, "n": sum(b["n"] for b in blocks.values()), "sets": len(blocks)}}, predictions


def evaluate(classifier: Classifier, protocols: Sequence[str], source=None,
             test_samples: Sequence[corpus_lib.Sample] = (), generalization_dir: str | None = None,
             batch_size: int = 32, seed: int = 42, holdout: Sequence[corpus_lib.Sample] = ()
             ) -> tuple[dict, list[tuple[str, str, Predictions]]]:
    """Run ``protocols`` (raw, robustness, generalization, holdout) for one model; ``holdout``:
    the images of the folders a leave-generators-out run kept out (``data.holdout``).

    Returns the results.json blocks and every pass' predictions as ``(protocol, attack,
    Predictions)`` for predictions.csv (attack "none" for clean images; a generalization set's
    name is its samples' architecture).
    """
    results, passes = {"model": {"name": classifier.name, **model_identity(classifier.source_path)}}, []
    if "raw" in protocols:
        results["raw"], clean = raw_protocol(classifier, source, test_samples, batch_size, seed)
        results["per_architecture"] = per_architecture_accuracy(clean.samples, clean.probabilities)
        results.update(calibration_results(classifier, clean))
        passes.append(("raw", "none", clean))
    if "robustness" in protocols:
        results["robustness"], attacked = robustness_protocol(classifier, source, test_samples, batch_size, seed)
        passes.extend(("robustness", key, p) for key, p in attacked.items())
    if "generalization" in protocols:
        results["generalization"], results["generalization_mean"], sets = generalization_protocol(
            classifier, generalization_dir, batch_size)
        passes.extend(("generalization", "none", p) for p in sets.values())
    if "holdout" in protocols:
        sets = holdout_sets(test_samples, holdout, seed)
        results["holdout"], held = holdout_protocol(classifier, source, sets, batch_size)
        passes.extend(("holdout", "none", p) for p in held.values())
    return results, passes


def calibration_results(classifier: Classifier, clean: Predictions) -> dict:
    """``calibration`` (ECE on the test pool before and after the model's temperature) and
    ``thresholds`` (the validation-chosen thresholds' rates on the test pool), for a calibrated
    model; nothing for one without a calibration."""
    if not classifier.calibration:
        return {}
    labels = clean.labels
    return {"calibration": calibration.calibration_block(clean.logits, labels, classifier.temperature),
            "thresholds": thresholds.measured_on_test(classifier.calibration.get("thresholds", {}),
                                                      fake_score(clean.probabilities), labels != REAL)}


def evaluate_models(classifiers: Sequence[Classifier], protocols: Sequence[str], **kwargs
                    ) -> tuple[dict, dict[str, list]]:
    """``evaluate`` for the main model (the first) and each other under its name, as
    results.json keeps the baseline: ``{"raw": ..., "baseline": {"raw": ...}}``.

    Returns the results and the passes by model name (for predictions.csv).
    """
    results, passes = {}, {}
    for i, classifier in enumerate(classifiers):
        blocks, passes[classifier.name] = evaluate(classifier, protocols, **kwargs)
        results.update(blocks) if i == 0 else results.setdefault(classifier.name, blocks)
    return results, passes
