"""Predicting on a user's own files with only the exported SavedModel."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import random_image, write_image
import dfx_keras
from dfx_keras import predict
from dfx_keras.evaluation import classifier
from dfx_keras.data import pipelines
from dfx_keras.serving import export, headers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def export_root(tmp_path_factory):
    bms = [dfx_keras.build_base_model("tiny", 32, None, name=n) for n in ("bm_dm", "bm_gan", "bm_real")]
    root = str(tmp_path_factory.mktemp("export"))
    export.export_saved_model(dfx_keras.build_complete_model(*bms), root)
    return root


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
    assert lines[1] == ["x.png", "real", "0.100000", "0.200000", "0.700000", "0.300000", ""]
    assert lines[2] == ["y.txt", "", "", "", "", "", "bad"]
    assert predict.summary(rows) == "2 file(s): 0 dm_generated, 0 gan_generated, 1 real; 1 failed"


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
