"""Predicting on a user's own files with only the exported SavedModel (or the .keras model):
table, CSV, decision, base scores, Grad-CAM figures and the HTML report."""

import csv
import html.parser
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import random_image, write_image
import dfx_keras
from dfx_keras import calibration, predict, thresholds
from dfx_keras.evaluation import calibrate, classifier
from dfx_keras.explain import figures
from dfx_keras.data import pipelines
from dfx_keras.serving import export, headers
from dfx_keras.workdir import calibration_path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A workdir with a tiny complete model, a calibration fitted to it (T = 2, thresholds of
    made-up validation scores) and an export with ``--threshold=fpr:0.05``."""
    bms = [dfx_keras.build_base_model("tiny", 32, None, name=n) for n in ("bm_dm", "bm_gan", "bm_real")]
    work = tmp_path_factory.mktemp("work")
    (work / "models").mkdir()
    model_file = str(work / "models" / "complete.keras")
    dfx_keras.build_complete_model(*bms).save(model_file)
    chosen = thresholds.choose_thresholds(np.linspace(0.2, 0.8, 400))
    calibration.write(calibration_path(model_file), {"model_sha256": export.file_sha256(model_file),
                                                               "temperature": 2.0, "thresholds": chosen})
    export.export_workdir(str(work), threshold="fpr:0.05")
    return work


@pytest.fixture(scope="module")
def export_root(workdir):
    return str(workdir / "export")


@pytest.fixture(scope="module")
def predictor(export_root):
    return predict.Predictor(os.path.join(export_root, "dfx"))


@pytest.fixture
def folder(tmp_path):
    """Images of four formats in nested folders, plus a text file, garbage and a PNG bomb."""
    root = tmp_path / "photos"
    write_image(root / "a.png", random_image(40, 50, 0))
    write_image(root / "B.JPG", random_image(300, 200, 1), "JPEG")
    write_image(root / "sub" / "c.gif", random_image(20, 20, 2))
    write_image(root / "sub" / "deeper" / "d.webp", random_image(64, 48, 3))
    (root / "notes.txt").write_text("not an image")
    (root / "sub" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    png = bytearray((root / "a.png").read_bytes())
    png[16:24] = (30000).to_bytes(4, "big") * 2  # IHDR declares 30000x30000
    (root / "sub" / "bomb.png").write_bytes(bytes(png))
    return root


def test_resolve_model_takes_the_newest_version(export_root, tmp_path):
    assert classifier.resolve_saved_model(os.path.join(export_root, "dfx")) == os.path.join(export_root, "dfx", "1")
    assert classifier.resolve_saved_model(os.path.join(export_root, "dfx", "1")) == os.path.join(export_root, "dfx", "1")
    with pytest.raises(FileNotFoundError, match="no SavedModel"):
        classifier.resolve_saved_model(str(tmp_path))


def test_list_images_walks_folders_by_extension_and_keeps_explicit_files(folder):
    files = predict.list_images([str(folder), str(folder / "notes.txt")])
    names = [os.path.relpath(f, folder) for f in files]
    assert names == ["B.JPG", "a.png", "sub/bomb.png", "sub/broken.png", "sub/c.gif", "sub/deeper/d.webp",
                     "notes.txt"]
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        predict.list_images([str(folder / "missing.png")])


def test_bad_files_get_their_own_error_and_the_rest_is_answered(predictor, folder):
    files = predict.list_images([str(folder), str(folder / "notes.txt")]) + [str(folder / "gone.png")]
    seen = []
    results = predict.predict_files(predictor, files, batch_size=3, progress=lambda done, total: seen.append(done))
    assert [r.file for r in results] == files and seen == [3, 6, 8]
    by_name = {os.path.basename(r.file): r for r in results}
    bomb = by_name["bomb.png"].error
    assert "30000x30000 PNG image" in bomb and "refused before decoding" in bomb
    assert by_name["notes.txt"].error == "not a JPEG, PNG, GIF, BMP or WebP image (12 bytes)"
    assert by_name["broken.png"].error and by_name["gone.png"].error.startswith("cannot read")
    good = [r for r in results if not r.error]
    assert {os.path.basename(r.file) for r in good} == {"a.png", "B.JPG", "c.gif", "d.webp"}
    signature = tf.saved_model.load(predictor.path).signatures["serving_default"]
    for r in good:
        out = signature(image_bytes=tf.constant([open(r.file, "rb").read()]))
        np.testing.assert_allclose(r.probabilities, out["probabilities"].numpy()[0], atol=1e-6)
        assert r.class_name == out["class_name"].numpy()[0].decode()
        assert r.fake_score == pytest.approx(1 - r.probabilities[2], abs=1e-6)


def test_a_refused_file_gets_the_reason_the_serving_graph_gives(predictor, folder):
    """The reasons are data (``serving.headers``): the signature's error and ``refusal`` fill the
    same template, so predict names a refused file without parsing TensorFlow's error text."""
    signature = tf.saved_model.load(predictor.path).signatures["serving_default"]
    for name in ("notes.txt", "sub/bomb.png", "sub/broken.png"):
        data = (folder / name).read_bytes()
        reason = headers.refusal(data, predictor.classifier.max_pixels, pipelines.decode_uint8)
        with pytest.raises(tf.errors.InvalidArgumentError) as error:
            signature(image_bytes=tf.constant([data]))
        assert reason and f"image_bytes[0] is {reason}" in error.value.message
    assert headers.refusal((folder / "a.png").read_bytes(), predictor.classifier.max_pixels,
                           pipelines.decode_uint8) is None
    no_frame_header = b"\xff\xd8\xff\xe0" + b"\0" * 40  # the one case the graph cannot name (docs/serving.md)
    assert headers.refusal(no_frame_header, None, pipelines.decode_uint8) == headers.UNDECODABLE.format("JPEG")


def test_table_and_csv(tmp_path):
    rows = [predict.Prediction("x.png", "real", (0.1, 0.2, 0.7), 0.3), predict.Prediction("y.txt", error="bad")]
    table = predict.format_table(rows).splitlines()
    assert table[0].split() == ["file", "class", *dfx_keras.CLASS_NAMES, "fake_score"]
    assert table[1].split() == ["x.png", "real", "0.1000", "0.2000", "0.7000", "0.3000"]
    assert table[2].split() == ["y.txt", "error:", "bad"]
    predict.write_csv(str(tmp_path / "p.csv"), rows)
    with open(tmp_path / "p.csv") as f:
        lines = list(csv.reader(f))
    assert lines[0] == list(predict.CSV_COLUMNS)
    assert lines[1] == ["x.png", "real", "0.100000", "0.200000", "0.700000", "0.300000", "", "", "", "", ""]
    assert lines[2] == ["y.txt", "", "", "", "", "", "bad", "", "", "", ""]
    assert predict.summary(rows) == "2 file(s): 0 dm_generated, 0 gan_generated, 1 real; 1 failed"


def test_table_and_csv_with_base_scores_and_decision(tmp_path):
    rows = [predict.Prediction("x.png", "dm_generated", (0.6, 0.3, 0.1), 0.9, "", (0.2, 0.95, 0.1), True)]
    table = predict.format_table(rows).splitlines()
    assert table[0].split()[-4:] == ["base_dm", "base_gan", "base_real", "decision"]
    assert table[1].split()[-4:] == ["0.2000", "0.9500", "0.1000", "fake"]  # the GAN specialist fired, DM said
    predict.write_csv(str(tmp_path / "p.csv"), rows)
    with open(tmp_path / "p.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert (row["base_gan"], row["is_fake"], row["error"]) == ("0.950000", "true", "")
    decision = thresholds.resolve("fpr:0.01", {"thresholds": thresholds.choose_thresholds(np.arange(1000) / 1000)})
    assert predict.decision_line(decision) == ("decision: fake if fake_score > 0.989 (fpr:0.01: false-positive rate "
                                               "0.01 on 1000 validation real images)")
    assert predict.decision_line(None).startswith("decision: none (no threshold")


def test_saved_model_and_keras_model_give_the_same_answers_and_decisions(workdir, export_root, folder):
    files = [str(folder / "a.png"), str(folder / "B.JPG")]
    served = predict.predict_files(predict.Predictor(os.path.join(export_root, "dfx")), files)
    keras_file = str(workdir / "models" / "complete.keras")
    from_keras = predict.Predictor(keras_file, threshold="fpr:0.05")
    assert from_keras.keras_model is not None and from_keras.decision["threshold"] == pytest.approx(0.77, abs=0.002)
    for a, b in zip(served, predict.predict_files(from_keras, files)):
        np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-5)
        np.testing.assert_allclose(a.base_scores, b.base_scores, atol=1e-5)
        assert len(a.base_scores) == 3 and a.is_fake == b.is_fake == (a.fake_score > from_keras.decision["threshold"])
    signature = tf.saved_model.load(os.path.join(export_root, "dfx", "1")).signatures["serving_default"]
    out = signature(image_bytes=tf.constant([open(files[0], "rb").read()]))
    np.testing.assert_allclose(served[0].base_scores, out["base_scores"].numpy()[0], atol=1e-6)
    # Probabilities are calibrated (T = 2): softmax(logits / 2).
    np.testing.assert_allclose(served[0].probabilities, tf.nn.softmax(out["logits"][0] / 2.0).numpy(), atol=1e-6)
    unthresholded = predict.Predictor(keras_file)
    assert unthresholded.decision is None and predict.predict_files(unthresholded, files[:1])[0].is_fake is None


def test_mirrored_paths_never_collide(tmp_path):
    files = ["/data/a/x.png", "/data/b/x.png", "/data/a/x.jpg", "/data/a/deep/y.webp"]
    out = figures.mirrored_paths(files, "/out")
    assert out == {"/data/a/x.png": "/out/a/x.png.png", "/data/b/x.png": "/out/b/x.png.png",
                   "/data/a/x.jpg": "/out/a/x.jpg.png", "/data/a/deep/y.webp": "/out/a/deep/y.webp.png"}
    assert figures.mirrored_paths(["only.png"], "/out") == {"only.png": "/out/only.png.png"}


def test_a_saved_model_cannot_be_explained_and_says_which_model_can(workdir, export_root):
    with pytest.raises(ValueError, match=r"--explain needs the Keras model: a SavedModel alone cannot be explained"
                                         r".*pass --model=.*/models/complete.keras$"):
        predict.check_explainable(os.path.join(export_root, "dfx"))
    predict.check_explainable(str(workdir / "models" / "complete.keras"))


class ReportParser(html.parser.HTMLParser):
    """Rows of the report: data-file -> {data-column: text}, and the images of each row."""

    def __init__(self):
        super().__init__()
        self.rows, self.images, self._row, self._column = {}, {}, None, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr" and "prediction" in attrs.get("class", ""):
            self._row = attrs["data-file"]
            self.rows[self._row], self.images[self._row] = {}, []
        elif tag == "tr" and attrs.get("class") == "explanation":  # the heatmaps, in a row below their file's
            self._row = attrs["data-file"]
        elif tag == "td" and self._row is not None and "data-column" in attrs:
            self._column = attrs["data-column"]
            self.rows[self._row][self._column] = ""
        elif tag == "img" and self._row is not None:
            self.images[self._row].append((attrs["class"], attrs["src"][:22]))
        elif tag in ("link", "script") or (tag == "img" and not attrs.get("src", "").startswith("data:")):
            raise AssertionError(f"the page loads something: <{tag} {attrs}>")

    def handle_endtag(self, tag):
        if tag == "td":
            self._column = None
        elif tag == "tr":
            self._row = None

    def handle_data(self, data):
        if self._column is not None:
            self.rows[self._row][self._column] += data


def test_cli_on_a_folder_prints_a_table_and_writes_csv(export_root, folder, tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out_csv = tmp_path / "out.csv"
    result = subprocess.run([sys.executable, "-m", "dfx_keras.cli", "predict", f"--model={export_root}/dfx", str(folder),
                             f"--csv={out_csv}"], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert result.returncode == 1, result.stderr[-2000:]  # some files failed
    assert "6 file(s):" in result.stdout and "; 2 failed" in result.stdout
    assert "error: a 30000x30000 PNG image" in result.stdout
    assert "6/6 images" in result.stderr  # the progress bar
    with open(out_csv) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and sum(bool(r["error"]) for r in rows) == 2
    assert all(r["class"] in dfx_keras.CLASS_NAMES for r in rows if not r["error"])


def test_a_fifo_named_like_an_image_is_never_read(folder, capsys):
    """Reading one would block forever: under a folder it is skipped with a warning, by name refused."""
    os.mkfifo(folder / "sub" / "pipe.png")
    files = predict.list_images([str(folder)])
    assert str(folder / "sub" / "pipe.png") not in files and len(files) == 6
    with pytest.raises(FileNotFoundError, match="not a regular file: .*pipe.png"):
        predict.list_images([str(folder / "sub" / "pipe.png")])


@pytest.mark.slow
def test_cli_report_and_explain_with_the_keras_model(workdir, folder, tmp_path):
    """One HTML page: one row per input, every value equal to the CSV's; Grad-CAM figures mirror the inputs."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out_csv, report, figures = tmp_path / "out.csv", tmp_path / "report.html", tmp_path / "cams"
    result = subprocess.run([sys.executable, "-m", "dfx_keras.cli", "predict", f"--model={workdir}/models/complete.keras",
                             str(folder), f"--csv={out_csv}", f"--report={report}", f"--explain={figures}",
                             "--threshold=fpr:0.01"], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert result.returncode == 1, result.stderr[-2000:]  # some files failed
    assert "decision: fake if fake_score > " in result.stdout and "(fpr:0.01: false-positive rate 0.01 on 400" in result.stdout
    with open(out_csv) as f:
        rows = {r["file"]: r for r in csv.DictReader(f)}
    parser = ReportParser()
    parser.feed(report.read_text())
    assert set(parser.rows) == set(rows) and len(rows) == 6
    for file, row in rows.items():
        assert parser.rows[file] == row
        kinds = [kind for kind, _ in parser.images[file]]
        assert kinds == ([] if row["error"] else ["thumbnail", "heatmap"])
        assert all(src.startswith("data:image/png;base64,") for _, src in parser.images[file])
    good = sorted(os.path.relpath(f, folder) + ".png" for f, r in rows.items() if not r["error"])
    written = sorted(os.path.relpath(os.path.join(d, n), figures) for d, _, names in os.walk(figures) for n in names)
    assert written == good == ["B.JPG.png", "a.png.png", "sub/c.gif.png", "sub/deeper/d.webp.png"]
    assert all(r["is_fake"] in ("true", "false") for r in rows.values() if not r["error"])


def test_the_report_has_one_row_per_input_with_the_csv_values(predictor, folder, tmp_path):
    write_image(folder / "odd <name> & 'quotes'.png", random_image(30, 30, 5))
    files = predict.list_images([str(folder)])
    predictions = predict.predict_files(predictor, files)
    predict.write_csv(str(tmp_path / "p.csv"), predictions)
    page = predict.write_report(str(tmp_path / "r.html"), predictor, predictions, {})
    with open(tmp_path / "p.csv") as f:
        rows = {r["file"]: r for r in csv.DictReader(f)}
    parser = ReportParser()
    with open(page) as f:
        text = f.read()
    parser.feed(text)
    assert list(parser.rows) == files and len(files) == 7
    for file in files:
        assert parser.rows[file] == rows[file]
        assert [kind for kind, _ in parser.images[file]] == ([] if rows[file]["error"] else ["thumbnail"])
    assert "decision: fake if fake_score &gt; " in text and "(fpr:0.05: false-positive rate 0.05 on 400" in text
