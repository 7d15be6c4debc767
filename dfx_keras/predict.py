"""``python -m dfx_keras.predict --model=E/dfx/1 FILE_OR_DIR ...``: classify your own images.

Needs only an exported SavedModel (see ``dfx_keras.export``): files are read as bytes and sent
to its ``serving_default`` signature, which checks, decodes and resizes them itself, exactly
as under TF Serving. Prints a table (file, class, probabilities, fake_score) and optionally
writes it as CSV. Folders are searched recursively for image files, with a progress bar.

A batch that the model refuses (a file that is not an image, a decompression bomb) is retried
file by file, so one bad file costs only its own row. TensorFlow is imported only once the
command line is parsed, after the CLI has silenced its start-up logs.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
import sys
from typing import Callable, Iterable, Sequence

from dfx_keras.classes import CLASS_NAMES
from dfx_keras.data import corpus

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


def resolve_model(path: str) -> str:
    """A SavedModel folder, or a TF Serving model folder (``E/dfx``): its newest version."""
    if os.path.exists(os.path.join(path, "saved_model.pb")):
        return path
    from dfx_keras.workdir import export_versions

    found = export_versions(path)
    if not found:
        raise FileNotFoundError(f"no SavedModel at {path} (expected saved_model.pb or version folders 1, 2, ...)")
    return os.path.join(path, str(found[-1]))


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


def reason(message: str) -> str:
    """The one informative line of a TensorFlow error raised by the serving signature.

    Graph errors wrap it in "Graph execution error", node names and op names; our own checks
    say "assertion failed: [image_bytes[i] is ...]" (or "could not be decoded"), where the
    index is dropped here.
    """
    asserted = re.search(r"assertion failed: \[(.*)\]", message)
    if asserted:
        return re.sub(r"^image_bytes\[[\d ]+\] (is )?", "", asserted.group(1))
    noise = re.compile(r"^(Graph execution error|Detected at node|<stack traces|\s*\[\[|\s*$)")
    lines = [line for line in message.splitlines() if not noise.match(line)]
    line = lines[0] if lines else message
    return re.sub(r"^\{\{function_node [^}]*\}\}\s*|\s*\[Op:\w+\].*$", "", line).strip()


class Predictor:
    """The SavedModel's ``serving_default`` signature, fed with encoded files."""

    def __init__(self, model_path: str):
        import tensorflow as tf

        self.path = resolve_model(model_path)
        self._tf = tf
        self._signature = tf.saved_model.load(self.path).signatures["serving_default"]

    def _run(self, files: Sequence[str], encoded: list[bytes]) -> list[Prediction]:
        out = self._signature(image_bytes=self._tf.constant(encoded, self._tf.string))
        return [Prediction(f, name.decode(), tuple(float(p) for p in probs), float(score))
                for f, name, probs, score in zip(files, out["class_name"].numpy(), out["probabilities"].numpy(),
                                                  out["fake_score"].numpy())]

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
        except self._tf.errors.InvalidArgumentError:
            answered = [self._one(f, data) for f, data in zip(readable, encoded)]
        by_file = {p.file: p for p in answered} | failed
        return [by_file[f] for f in files]

    def _one(self, file: str, encoded: bytes) -> Prediction:
        try:
            return self._run([file], [encoded])[0]
        except self._tf.errors.InvalidArgumentError as e:
            return Prediction(file, error=reason(e.message))


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
    from dfx_keras.workdir import check_writable_folder

    if os.path.isdir(path):
        raise ValueError(f"--csv={path} is a folder; give a file name")
    check_writable_folder(os.path.dirname(os.path.abspath(path)), "--csv folder")


def write_csv(path: str, predictions: Iterable[Prediction]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        writer.writerows(p.csv_row() for p in predictions)


# --- command line ---------------------------------------------------------------------------------

def _define_flags():
    from absl import flags

    flags.DEFINE_string("model", None, "Exported SavedModel: E/<model_name>/<version>, or E/<model_name> for its "
                        "newest version.", required=True)
    flags.DEFINE_string("csv", None, "Also write the predictions to this CSV file.")
    flags.DEFINE_integer("batch_size", 32, "Images sent to the model at once.", lower_bound=1)
    flags.DEFINE_bool("progress", True, "Show a progress bar on stderr when a folder is given.")


def main(argv):
    from absl import app, flags

    FLAGS = flags.FLAGS
    if len(argv) < 2:
        raise app.UsageError("give one or more image files or folders")
    try:
        files = list_images(argv[1:])
        if FLAGS.csv:  # before the predictions, which it would lose
            check_csv_path(FLAGS.csv)
        predictor = Predictor(FLAGS.model)
    except (FileNotFoundError, ValueError) as e:
        raise app.UsageError(str(e)) from None
    show_bar = FLAGS.progress and any(os.path.isdir(p) for p in argv[1:])
    predictions = predict_files(predictor, files, FLAGS.batch_size, progress_bar if show_bar else None)
    print(format_table(predictions))
    print(summary(predictions))
    if FLAGS.csv:
        write_csv(FLAGS.csv, predictions)
        print(f"csv: {FLAGS.csv}")
    return 1 if any(p.error for p in predictions) else 0


def entry_point():
    from absl import app

    _define_flags()
    app.run(main)


if __name__ == "__main__":
    from dfx_keras.cli import predict

    predict()
