"""Classify your own files with an exported model: files -> classifier -> table / CSV.

Needs only an exported SavedModel (see ``dfx_keras.serving``): files are read as bytes and sent
to its ``serving_default`` signature (``evaluation.classifier``, as evaluate.py loads models),
which checks, decodes and resizes them itself, exactly as under TF Serving. A ``.keras``
complete model works too: the classifier wraps it in the export's own serving module in memory
(the same outputs, calibrated by its ``calibration.json``), and only it can be explained
(``--explain``: Grad-CAM needs the model's layers, a SavedModel has a graph). Prints a table
(file, class, probabilities, fake_score, base_scores and, with a threshold, the decision) and
optionally writes it as CSV and as one HTML page (``--report``). Folders are searched
recursively for image files (``corpus.image_files``, the one folder walk).

A batch that the model refuses (a file that is not an image, a decompression bomb) is retried
file by file, so one bad file costs only its own row, named by ``serving.headers.refusal``.
The command line is ``dfx_keras.cli.predict``.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import sys
from typing import Callable, Iterable, Sequence

import numpy as np
import tensorflow as tf

from dfx_keras import thresholds
from dfx_keras.classes import CLASS_NAMES, SHORT_NAMES
from dfx_keras.data import corpus, pipelines
from dfx_keras.evaluation import classifier
from dfx_keras.serving import headers
from dfx_keras.workdir import atomic_write, check_writable_folder

IMAGE_EXTENSIONS = (*corpus.IMAGE_EXTENSIONS, ".gif")  # the serving signature also decodes GIF
BASE_COLUMNS = tuple(f"base_{SHORT_NAMES[name]}" for name in CLASS_NAMES)
# New columns go after the old ones, so readers of the first columns by position still work.
CSV_COLUMNS = ("file", "class", *(f"p_{name}" for name in CLASS_NAMES), "fake_score", "error", *BASE_COLUMNS,
               "is_fake")
# The report shows the answer first: class, decision, scores, then the probabilities.
REPORT_COLUMNS = ("file", "class", "is_fake", "fake_score", *BASE_COLUMNS, *(f"p_{name}" for name in CLASS_NAMES),
                  "error")


@dataclasses.dataclass
class Prediction:
    """One file's answer: a class, probabilities, each base model's score and (with a
    threshold) the decision; or the reason it has none."""

    file: str
    class_name: str = ""
    probabilities: tuple[float, ...] = ()
    fake_score: float = float("nan")
    error: str = ""
    base_scores: tuple[float, ...] = ()
    is_fake: bool | None = None

    def csv_row(self) -> list:
        probabilities = [f"{p:.6f}" for p in self.probabilities] or [""] * len(CLASS_NAMES)
        score = "" if self.error else f"{self.fake_score:.6f}"
        base = [f"{b:.6f}" for b in self.base_scores] or [""] * len(CLASS_NAMES)
        decision = "" if self.is_fake is None else str(self.is_fake).lower()
        return [self.file, self.class_name, *probabilities, score, self.error, *base, decision]

    def csv_dict(self) -> dict[str, str]:
        return dict(zip(CSV_COLUMNS, self.csv_row()))


def list_images(paths: Sequence[str]) -> list[str]:
    """Files as given, and the image files (by extension) found under folders, sorted.

    Only regular files are read: a FIFO or a device named like an image would block forever
    (one under a folder is skipped with a warning, one given by name is refused).
    """
    files = []
    for path in paths:
        if os.path.isdir(path):
            files.extend(sorted(os.path.join(path, rel) for rel in corpus.image_files(path, IMAGE_EXTENSIONS)))
        elif os.path.isfile(path):
            files.append(path)
        elif os.path.exists(path):
            raise FileNotFoundError(f"not a regular file: {path}")
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    return files


class Predictor:
    """A model's ``serving_default`` signature through ``classifier.load_classifier``, fed with
    encoded files: a SavedModel's, or the export's serving module around a ``.keras`` complete
    model (``keras_model`` then holds it); ``path`` is the model (version folder) used.

    ``threshold`` (``fpr:RATE`` or a number, see ``thresholds.resolve``) sets the decision; by
    default an export's own ``is_fake`` threshold is used, and without one there is no decision.
    ``decision`` holds the threshold in use and its provenance.
    """

    def __init__(self, model_path: str, threshold: str | None = None):
        self.classifier = classifier.load_classifier(model_path, encoded=True)
        self.path = self.classifier.source_path
        self.keras_model = self.classifier.keras_model
        baked = classifier.metadata(self.path).get("threshold") if self.keras_model is None else None
        self.decision = thresholds.resolve(threshold, self.classifier.calibration) if threshold else baked
        self._use_served_decision = self.decision is not None and self.decision is baked

    def _run(self, files: Sequence[str], encoded: list[bytes]) -> list[Prediction]:
        out = {k: np.asarray(v) for k, v in self.classifier.outputs(np.array(encoded, object)).items()}
        n = len(files)
        base = out.get("base_scores", [()] * n)
        if self._use_served_decision:
            decisions = [bool(d) for d in out["is_fake"]]
        elif self.decision is not None:
            decisions = [bool(score > self.decision["threshold"]) for score in out["fake_score"]]
        else:
            decisions = [None] * n
        return [Prediction(f, name.decode(), tuple(float(p) for p in probs), float(score), "",
                           tuple(float(b) for b in bases), decision)
                for f, name, probs, score, bases, decision in zip(files, out["class_name"], out["probabilities"],
                                                                  out["fake_score"], base, decisions)]

    def predict(self, files: Sequence[str]) -> list[Prediction]:
        """One batch of files; files the model refuses get their error instead of a class."""
        readable, encoded, failed = [], [], {}
        for f in files:
            try:
                with open(f, "rb") as stream:
                    encoded.append(stream.read())
                readable.append(f)
            except OSError as e:
                failed[f] = Prediction(f, error=f"cannot read: {e.strerror}")
        try:
            answered = self._run(readable, encoded) if readable else []
        except tf.errors.InvalidArgumentError:
            answered = [self._one(f, data) for f, data in zip(readable, encoded)]
        by_file = {p.file: p for p in answered} | failed
        return [by_file[f] for f in files]

    def _one(self, file: str, encoded: bytes) -> Prediction:
        """One file alone; refused, it gets the reason the serving graph's checks give."""
        try:
            return self._run([file], [encoded])[0]
        except tf.errors.InvalidArgumentError as e:
            why = headers.refusal(encoded, self.classifier.max_pixels, pipelines.decode_uint8)
            return Prediction(file, error=why or f"refused by the model ({type(e).__name__})")


def predict_files(predictor: Predictor, files: Sequence[str], batch_size: int = 32,
                  progress: Callable[[int, int], None] | None = None) -> list[Prediction]:
    """Predictions for ``files`` in batches, in order; ``progress(done, total)`` after each."""
    results = []
    for start in range(0, len(files), batch_size):
        results.extend(predictor.predict(files[start:start + batch_size]))
        if progress:
            progress(len(results), len(files))
    return results


def progress_bar(done: int, total: int, width: int = 30) -> None:
    filled = width * done // max(total, 1)
    end = "\n" if done >= total else ""
    print(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} images", end=end, file=sys.stderr, flush=True)


def format_table(predictions: Iterable[Prediction]) -> str:
    """A fixed-width table: file, class, one probability column per class, fake_score, then each
    base model's score and the decision when the model gives them."""
    predictions = list(predictions)
    width = max([len("file")] + [len(p.file) for p in predictions])
    with_base = any(p.base_scores for p in predictions)
    with_decision = any(p.is_fake is not None for p in predictions)
    header = (f"{'file':<{width}}  {'class':<13} " + " ".join(f"{n:>13}" for n in CLASS_NAMES) + f" {'fake_score':>10}"
              + ("".join(f" {c:>9}" for c in BASE_COLUMNS) if with_base else "")
              + (f" {'decision':>8}" if with_decision else ""))
    lines = [header]
    for p in predictions:
        if p.error:
            lines.append(f"{p.file:<{width}}  error: {p.error}")
            continue
        probabilities = " ".join(f"{v:>13.4f}" for v in p.probabilities)
        line = f"{p.file:<{width}}  {p.class_name:<13} {probabilities} {p.fake_score:>10.4f}"
        if with_base:
            line += "".join(f" {b:>9.4f}" for b in p.base_scores) if p.base_scores else f" {'':>9}" * 3
        if with_decision:
            line += f" {'fake' if p.is_fake else 'real':>8}"
        lines.append(line)
    return "\n".join(lines)


def decision_line(decision: dict | None) -> str:
    """What the decision column means: the threshold in use and how it was chosen."""
    if decision is None:
        return "decision: none (no threshold: give --threshold=fpr:0.01, fpr:0.05 or a fake_score value)"
    return f"decision: fake if fake_score > {decision['threshold']:.6g} ({decision['spec']}: {decision['chosen_by']})"


def summary(predictions: Sequence[Prediction]) -> str:
    counts = {name: sum(p.class_name == name for p in predictions) for name in CLASS_NAMES}
    failed = sum(bool(p.error) for p in predictions)
    return f"{len(predictions)} file(s): " + ", ".join(f"{n} {name}" for name, n in counts.items()) + \
        f"; {failed} failed"


def check_output_file(path: str, flag: str = "--csv") -> None:
    """Raise ValueError unless a file can be written at ``path`` (given by ``flag``)."""
    if os.path.isdir(path):
        raise ValueError(f"{flag}={path} is a folder; give a file name")
    check_writable_folder(os.path.dirname(os.path.abspath(path)), f"{flag} folder")


def check_explainable(model_path: str) -> None:
    """``--explain`` needs the layers of a ``.keras`` model; a SavedModel is refused in one line
    naming the model it was exported from."""
    if model_path.endswith(".keras"):
        return
    source = (classifier.metadata(classifier.resolve_saved_model(model_path)).get("source")
              or "the complete.keras it was exported from")
    raise ValueError(f"--explain needs the Keras model: a SavedModel alone cannot be explained (Grad-CAM reads the "
                     f"backbones' layers, an export holds only a graph); pass --model={source}")


def write_report(path: str, predictor: Predictor, predictions: Sequence[Prediction],
                 heatmaps: dict[str, bytes]) -> str:
    """The HTML page of ``predictions``: thumbnails, every CSV column, and the heatmaps."""
    from dfx_keras.explain import figures, html_report

    notes = [f"model: {predictor.path}", decision_line(predictor.decision), summary(predictions)]
    return html_report.write(path, [p.csv_dict() for p in predictions], REPORT_COLUMNS, figures.thumbnails(predictions),
                             heatmaps, "dfx_keras predictions", notes)


def write_csv(path: str, predictions: Iterable[Prediction]) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(CSV_COLUMNS)
            writer.writerows(p.csv_row() for p in predictions)

    atomic_write(path, write)
