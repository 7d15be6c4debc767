"""Test protocols and metrics (DESIGN.md 1.5): raw, robustness to attacks, generalization.

Metric blocks are plain dicts with at least ``accuracy``, ``precision``, ``recall``, ``f1`` and
``n`` (macro averages), plus ``auc`` and ``ap`` in binary blocks, so they go straight into
``results.json``. Undefined values (no positives, empty sets) are NaN, written as ``null``.

Models are seen through a ``Classifier``: how it wants its inputs (float images of one size, or
encoded bytes) and a batch -> probabilities function. A Keras model, a SavedModel's float-image
signature and its bytes signature then run through the same batched ``predict``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Callable, Mapping, Sequence

import numpy as np
from absl import logging

from dfx_keras import calibration, thresholds
from dfx_keras.classes import CLASS_NAMES, DM, GAN, NUM_CLASSES, REAL
from dfx_keras.data import corpus as corpus_lib

BASELINE = "baseline"  # the comparison model's name and its key in results.json
FAKE = -1  # label of generalization fakes: their generator type (DM or GAN) is unknown
GENERALIZATION_FOLDERS = {"0_real": REAL, "1_fake": FAKE}
SUMMARY_KEYS = ("accuracy", "precision", "recall", "f1", "n", "auc", "ap")
GENERALIZATION_MEAN_KEYS = ("accuracy", "precision", "recall", "f1", "real_precision", "real_recall", "real_f1", "auc",
                            "ap")


def label_name(label: int) -> str:
    return "fake" if label == FAKE else CLASS_NAMES[label]


# --- metrics ---------------------------------------------------------------------------------

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
    fake_score = 1.0 - probabilities[:, REAL]
    return {**block, "real_precision": real["precision"], "real_recall": real["recall"], "real_f1": real["f1"],
            "auc": roc_auc(~is_real, fake_score), "ap": average_precision(~is_real, fake_score)}


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


# --- models ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Classifier:
    """A model as the protocols see it.

    ``image_size``: the side of the square float images in [0, 255] it takes (the pipeline
    resizes to it); None when it takes encoded image bytes and resizes itself (a SavedModel's
    ``serving_default``). ``probabilities``: batch -> (B, 3) *uncalibrated* probabilities, a
    compiled function. ``calibration``: the model's ``calibrate.fit`` (temperature, thresholds)
    when it has one; ``predict`` divides the logits by its temperature, as the export does.
    """

    name: str
    image_size: int | None
    probabilities: Callable
    source_path: str = ""
    calibration: dict | None = None

    @property
    def temperature(self) -> float:
        return float(self.calibration["temperature"]) if self.calibration else 1.0


def keras_classifier(model, name: str = "model", source_path: str = "") -> Classifier:
    """A 3-class Keras model (images in [0, 255] -> logits), compiled once for any batch size."""
    import tensorflow as tf

    if model.output_shape[-1] != NUM_CLASSES:
        raise ValueError(f"{source_path or model.name} outputs {model.output_shape[-1]} values; evaluation needs a "
                         f"3-class model ({', '.join(CLASS_NAMES)}), e.g. complete.keras or baseline.keras")
    size = model.input_shape[1]
    fn = tf.function(lambda images: tf.nn.softmax(model(images, training=False), axis=-1),
                     input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])
    return Classifier(name, size, fn, source_path)


def saved_model_classifier(path: str, name: str = "model") -> Classifier:
    """An exported SavedModel, through its float-image signature ``serving_images`` when the
    image size is known (fixed in the signature, or recorded by ``dfx_keras.export``): the
    pipeline's resized images go in as they are, and the signature's own resize to that same
    size changes nothing. Otherwise ``serving_default`` on encoded bytes (it resizes itself)."""
    import tensorflow as tf

    from dfx_keras.export import read_metadata

    loaded = tf.saved_model.load(path)
    image_size = _float_signature_size(loaded, path)
    signature_name = "serving_images" if image_size else "serving_default"
    if signature_name not in loaded.signatures:
        raise ValueError(f"{path} has neither a usable serving_images nor a serving_default signature "
                         f"(found: {', '.join(loaded.signatures) or 'none'})")
    signature = loaded.signatures[signature_name]
    if "probabilities" not in signature.structured_outputs:
        raise ValueError(f"signature {signature_name} of {path} has no 'probabilities' output")
    (key, spec), = signature.structured_input_signature[1].items()
    # Calibrated exports serve calibrated probabilities and the raw ``logits`` beside them.
    calibrated = "logits" in signature.structured_outputs
    fn = tf.function(lambda batch: _uncalibrated(signature(**{key: tf.cast(batch, spec.dtype)}), calibrated))
    fn.loaded_model = loaded  # keeps the loaded object (and its variables) alive with the function
    try:
        calibration = read_metadata(path).get("calibration") if calibrated else None
    except (OSError, ValueError):
        calibration = None
    return Classifier(name, image_size, fn, path, calibration)


def _uncalibrated(outputs: Mapping, calibrated: bool):
    import tensorflow as tf

    return tf.nn.softmax(outputs["logits"], axis=-1) if calibrated else outputs["probabilities"]


def _float_signature_size(loaded, path: str) -> int | None:
    """The square image size ``serving_images`` takes, or None (no such signature, or its size
    is free and the export recorded none)."""
    if "serving_images" not in loaded.signatures:
        return None
    (spec,) = loaded.signatures["serving_images"].structured_input_signature[1].values()
    if spec.shape[1] is not None and spec.shape[1] == spec.shape[2]:
        return int(spec.shape[1])
    from dfx_keras.export import read_metadata

    try:
        return int(read_metadata(path)["image_size"])
    except (OSError, KeyError, ValueError):
        return None


def load_classifier(path: str, name: str = "model") -> Classifier:
    """A ``.keras`` file or a SavedModel folder, with a clear error for anything else."""
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "saved_model.pb")):
        return saved_model_classifier(path, name)
    if os.path.isfile(path) and path.endswith(".keras"):
        from dfx_keras import calibrate, models

        classifier = keras_classifier(models.load_model(path), name, path)
        return dataclasses.replace(classifier, calibration=calibrate.calibration_of(path))
    raise FileNotFoundError(f"no model at {path}: expected a .keras file or a SavedModel folder "
                            "(one holding saved_model.pb, e.g. W/export/dfx/1)")


# --- prediction ------------------------------------------------------------------------------

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
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


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


# --- protocols -------------------------------------------------------------------------------

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


def evaluate(classifier: Classifier, protocols: Sequence[str], source=None,
             test_samples: Sequence[corpus_lib.Sample] = (), generalization_dir: str | None = None,
             batch_size: int = 32, seed: int = 42) -> tuple[dict, list[tuple[str, str, Predictions]]]:
    """Run ``protocols`` (raw, robustness, generalization) for one model.

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
    return results, passes


def calibration_results(classifier: Classifier, clean: Predictions) -> dict:
    """``calibration`` (ECE on the test pool before and after the model's temperature) and
    ``thresholds`` (the validation-chosen thresholds' rates on the test pool), for a calibrated
    model; nothing for one without a calibration."""
    if not classifier.calibration:
        return {}
    labels = clean.labels
    fake_score = 1.0 - clean.probabilities[:, REAL]
    return {"calibration": calibration.calibration_block(clean.logits, labels, classifier.temperature),
            "thresholds": thresholds.measured_on_test(classifier.calibration.get("thresholds", {}), fake_score,
                                                      labels != REAL)}


def model_identity(path: str) -> dict:
    """Path and modification time of a model file or folder: results of a model retrained
    since are told apart from the current ones (see ``reports.write_results_json``)."""
    if not path or not os.path.exists(path):
        return {"path": path}
    return {"path": os.path.abspath(path), "modified": os.path.getmtime(path)}


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
