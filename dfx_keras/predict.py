"""Classify your own files with an exported model: files -> classifier -> table / CSV.

Needs only an exported SavedModel (see ``dfx_keras.serving``): files are read as bytes and sent
to its ``serving_default`` signature (``evaluation.classifier``, as evaluate.py loads models),
which checks, decodes and resizes them itself, exactly as under TF Serving. Folders are
searched recursively for image files (``corpus.image_files``, the one folder walk).

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

from dfx_keras.classes import CLASS_NAMES, fake_score
from dfx_keras.data import corpus, pipelines
from dfx_keras.evaluation import classifier
from dfx_keras.serving import headers
from dfx_keras.workdir import atomic_write, check_writable_folder

IMAGE_EXTENSIONS = (*corpus.IMAGE_EXTENSIONS, ".gif")  # the serving signature also decodes GIF
CSV_COLUMNS = ("file", "class", *(f"p_{name}" for name in CLASS_NAMES), "fake_score", "error")


@dataclasses.dataclass
class Prediction:
    """One file's answer: a class and probabilities, or the reason it has none."""

    file: str
    class_name: str = ""
    probabilities: tuple[float, ...] = ()
    fake_score: float = float("nan")
    error: str = ""

    def csv_row(self) -> list:
        probabilities = [f"{p:.6f}" for p in self.probabilities] or [""] * len(CLASS_NAMES)
        score = "" if self.error else f"{self.fake_score:.6f}"
        return [self.file, self.class_name, *probabilities, score, self.error]


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
    """An exported SavedModel's ``serving_default`` signature (``classifier.load_classifier``),
    fed with encoded files; ``path`` is the version folder used."""

    def __init__(self, model_path: str):
        self.classifier = classifier.load_classifier(model_path, encoded=True)
        self.path = self.classifier.source_path

    def _run(self, files: Sequence[str], encoded: list[bytes]) -> list[Prediction]:
        probabilities = np.asarray(self.classifier.probabilities(np.array(encoded, object)))
        return [Prediction(f, CLASS_NAMES[int(np.argmax(p))], tuple(float(v) for v in p), float(fake_score(p)))
                for f, p in zip(files, probabilities)]

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
    """A fixed-width table: file, class, one probability column per class, fake_score."""
    predictions = list(predictions)
    width = max([len("file")] + [len(p.file) for p in predictions])
    header = f"{'file':<{width}}  {'class':<13} " + " ".join(f"{n:>13}" for n in CLASS_NAMES) + f" {'fake_score':>10}"
    lines = [header]
    for p in predictions:
        if p.error:
            lines.append(f"{p.file:<{width}}  error: {p.error}")
        else:
            probabilities = " ".join(f"{v:>13.4f}" for v in p.probabilities)
            lines.append(f"{p.file:<{width}}  {p.class_name:<13} {probabilities} {p.fake_score:>10.4f}")
    return "\n".join(lines)


def summary(predictions: Sequence[Prediction]) -> str:
    counts = {name: sum(p.class_name == name for p in predictions) for name in CLASS_NAMES}
    failed = sum(bool(p.error) for p in predictions)
    return f"{len(predictions)} file(s): " + ", ".join(f"{n} {name}" for name, n in counts.items()) + \
        f"; {failed} failed"


def check_csv_path(path: str) -> None:
    """Raise ValueError unless a CSV file can be written at ``path``."""
    if os.path.isdir(path):
        raise ValueError(f"--csv={path} is a folder; give a file name")
    check_writable_folder(os.path.dirname(os.path.abspath(path)), "--csv folder")


def write_csv(path: str, predictions: Iterable[Prediction]) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(CSV_COLUMNS)
            writer.writerows(p.csv_row() for p in predictions)

    atomic_write(path, write)
