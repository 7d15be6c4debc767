"""``python -m dfx_keras.predict --model=E/dfx/1 FILE_OR_DIR ...``: classify your own images.

Needs only an exported SavedModel (see ``dfx_keras.export``): files are read as bytes and sent
to its ``serving_default`` signature, which checks, decodes and resizes them itself, exactly
as under TF Serving. A ``.keras`` complete model works too: it is wrapped in the export's own
serving module in memory (the same outputs, calibrated by its ``calibration.json``), and only
it can be explained (``--explain``: Grad-CAM needs the model's layers, a SavedModel has a graph).
Prints a table (file, class, probabilities, fake_score, base_scores and, with a threshold, the
decision) and optionally writes it as CSV and as one HTML page (``--report``). Folders are
searched recursively for image files, with a progress bar.

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

from dfx_keras.classes import CLASS_NAMES, SHORT_NAMES
from dfx_keras.data import corpus

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


def resolve_model(path: str) -> str:
    """A SavedModel folder, or a TF Serving model folder (``E/dfx``): its newest version."""
    if os.path.exists(os.path.join(path, "saved_model.pb")):
        return path
    from dfx_keras.export import versions  # imports TensorFlow: not at module level

    found = versions(path)
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
    """A model's ``serving_default`` signature, fed with encoded files: a SavedModel's, or the
    export's serving module around a ``.keras`` complete model (``keras_model`` then holds it).

    ``threshold`` (``fpr:RATE`` or a number, see ``thresholds.resolve``) sets the decision; by
    default an export's own ``is_fake`` threshold is used, and without one there is no decision.
    ``decision`` holds the threshold in use and its provenance.
    """

    def __init__(self, model_path: str, threshold: str | None = None):
        import tensorflow as tf

        from dfx_keras import thresholds

        self._tf = tf
        self.keras_model = None
        if model_path.endswith(".keras") and os.path.isfile(model_path):
            self.path, calibration, baked = model_path, self._load_keras(model_path), None
        else:
            self.path = resolve_model(model_path)
            self._signature = tf.saved_model.load(self.path).signatures["serving_default"]
            metadata = saved_model_metadata(self.path)
            calibration, baked = metadata.get("calibration"), metadata.get("threshold")
        self.decision = thresholds.resolve(threshold, calibration) if threshold else baked
        self._use_served_decision = self.decision is not None and self.decision is baked

    def _load_keras(self, path: str) -> dict | None:
        """Wrap a ``.keras`` complete model in the export's serving module; returns its calibration."""
        from dfx_keras import calibrate, models
        from dfx_keras.export import ServingModule

        self.keras_model = models.load_model(path)
        calibration = calibrate.calibration_of(path)
        self._module = ServingModule(self.keras_model, temperature=(calibration or {}).get("temperature", 1.0))
        self._signature = self._module.serve_bytes  # a tf.function method holds its module weakly
        return calibration

    def _run(self, files: Sequence[str], encoded: list[bytes]) -> list[Prediction]:
        out = {k: v.numpy() for k, v in self._signature(image_bytes=self._tf.constant(encoded, self._tf.string)).items()}
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
        except self._tf.errors.InvalidArgumentError:
            answered = [self._one(f, data) for f, data in zip(readable, encoded)]
        by_file = {p.file: p for p in answered} | failed
        return [by_file[f] for f in files]

    def _one(self, file: str, encoded: bytes) -> Prediction:
        try:
            return self._run([file], [encoded])[0]
        except self._tf.errors.InvalidArgumentError as e:
            return Prediction(file, error=reason(e.message))


def saved_model_metadata(path: str) -> dict:
    """The export's ``dfx_export.json``, or {} for a SavedModel made elsewhere."""
    from dfx_keras.export import read_metadata

    try:
        return read_metadata(path)
    except (OSError, ValueError):
        return {}


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
    from dfx_keras.durable import check_writable_folder

    if os.path.isdir(path):
        raise ValueError(f"{flag}={path} is a folder; give a file name")
    check_writable_folder(os.path.dirname(os.path.abspath(path)), f"{flag} folder")


def check_explainable(model_path: str) -> None:
    """``--explain`` needs the layers of a ``.keras`` model; a SavedModel is refused in one line
    naming the model it was exported from."""
    if model_path.endswith(".keras"):
        return
    source = saved_model_metadata(resolve_model(model_path)).get("source") or "the complete.keras it was exported from"
    raise ValueError(f"--explain needs the Keras model: a SavedModel alone cannot be explained (Grad-CAM reads the "
                     f"backbones' layers, an export holds only a graph); pass --model={source}")


def write_report(path: str, predictor: Predictor, predictions: Sequence[Prediction],
                 heatmaps: dict[str, bytes]) -> str:
    """The HTML page of ``predictions``: thumbnails, every CSV column, and the heatmaps."""
    from dfx_keras import explain, html_report

    notes = [f"model: {predictor.path}", decision_line(predictor.decision), summary(predictions)]
    return html_report.write(path, [p.csv_dict() for p in predictions], REPORT_COLUMNS, explain.thumbnails(predictions),
                             heatmaps, "dfx_keras predictions", notes)


def write_csv(path: str, predictions: Iterable[Prediction]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        writer.writerows(p.csv_row() for p in predictions)


# --- command line ---------------------------------------------------------------------------------

def _define_flags():
    from absl import flags

    flags.DEFINE_string("model", None, "Exported SavedModel: E/<model_name>/<version>, or E/<model_name> for its "
                        "newest version; or a complete.keras file (needed by --explain).", required=True)
    flags.DEFINE_string("csv", None, "Also write the predictions to this CSV file.")
    flags.DEFINE_string("threshold", None, "Decide fake or real by fake_score > threshold: fpr:RATE takes the "
                        "threshold chosen at calibration for that false-positive rate (fpr:0.01, fpr:0.05), a number "
                        "is used as it is. Default: the export's own (exported with --threshold), else no decision.")
    flags.DEFINE_string("explain", None, "Write a Grad-CAM figure per image under this folder, mirroring the input "
                        "paths: where each base model looked for the predicted class. Needs --model=FILE.keras.")
    flags.DEFINE_string("report", None, "Write one self-contained HTML page (images embedded): thumbnail, class, "
                        "fake_score, base_scores, decision and, with --explain, the heatmaps.")
    flags.DEFINE_integer("batch_size", 32, "Images sent to the model at once.", lower_bound=1)
    flags.DEFINE_bool("progress", True, "Show a progress bar on stderr when a folder is given.")


def main(argv):
    from absl import app, flags

    FLAGS = flags.FLAGS
    if len(argv) < 2:
        raise app.UsageError("give one or more image files or folders")
    try:
        files = list_images(argv[1:])
        for flag in ("csv", "report"):  # before the predictions, which they would lose
            if getattr(FLAGS, flag):
                check_output_file(getattr(FLAGS, flag), f"--{flag}")
        if FLAGS.explain:
            check_explainable(FLAGS.model)
            from dfx_keras.durable import check_writable_folder

            check_writable_folder(FLAGS.explain, "--explain")
        predictor = Predictor(FLAGS.model, FLAGS.threshold)
        if FLAGS.explain:  # a backbone without its registered feature-map layer: before any prediction
            from dfx_keras import gradcam

            explainer = gradcam.gradcam_model(predictor.keras_model)
    except (FileNotFoundError, ValueError) as e:
        raise app.UsageError(str(e)) from None
    show_bar = FLAGS.progress and any(os.path.isdir(p) for p in argv[1:])
    predictions = predict_files(predictor, files, FLAGS.batch_size, progress_bar if show_bar else None)
    print(format_table(predictions))
    print(decision_line(predictor.decision))
    print(summary(predictions))
    if FLAGS.csv:
        write_csv(FLAGS.csv, predictions)
        print(f"csv: {FLAGS.csv}")
    heatmaps = {}
    if FLAGS.explain:
        from dfx_keras import explain

        heatmaps = explain.explain_files(explainer, predictions, FLAGS.explain, FLAGS.batch_size)
        print(f"explain: {len(heatmaps)} Grad-CAM figure(s) under {FLAGS.explain}")
    if FLAGS.report:
        print(f"report: {write_report(FLAGS.report, predictor, predictions, heatmaps)}")
    return 1 if any(p.error for p in predictions) else 0


def entry_point():
    from absl import app

    _define_flags()
    app.run(main)


if __name__ == "__main__":
    from dfx_keras.cli import predict

    predict()
