"""evaluate.py and its protocols on tiny untrained models: files, keys, baseline beside the
complete model, generalization sets, SavedModels, unreadable images, flag errors, and the
training augmentation with the same attacks."""

import csv
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import make_corpus, write_image
from PIL import Image

from dfx_keras import config, models

from dfx_keras.evaluation import reports
from dfx_keras.evaluation import classifier
from dfx_keras.evaluation import metrics
from dfx_keras.evaluation import protocols
from dfx_keras.classes import REAL
from dfx_keras.data import attacks, pipelines
from dfx_keras.data import corpus as corpus_lib
from dfx_keras.training import fit, stages

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 32
CHECKER = os.path.join(REPO, "..", "shared", "tools", "check_workdir.py")


def _evaluate_cli(*args, timeout=600):
    return subprocess.run([sys.executable, os.path.join(REPO, "evaluate.py"), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


def _base_models(workdir):
    keras.utils.set_random_seed(0)
    base = [models.build_base_model("tiny", SIZE, None, name=models.base_model_name(c))
            for c in ("dm_generated", "gan_generated", "real")]
    for m in base:
        fit.save_model(m, os.path.join(workdir, "models", f"{m.name}.keras"))
    return base


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A workdir with untrained tiny complete and baseline models, and its corpus in flags.txt."""
    root = tmp_path_factory.mktemp("evaluate")
    data = make_corpus(root / "corpus", per_folder=6)
    work = str(root / "work")
    complete = models.build_complete_model(*_base_models(work))
    fit.save_model(complete, os.path.join(work, "models", "complete.keras"))
    fit.save_model(models.build_baseline_model("tiny", SIZE, None), os.path.join(work, "models", "baseline.keras"))
    with open(os.path.join(work, "flags.txt"), "w") as f:
        f.write(f"--data_dir={data}\n--backbone=tiny\n")
    return work, data


def make_generalization_tree(root, sets=("ProGAN x", "glide")):
    rng = np.random.default_rng(1)
    for name in sets:
        for folder in ("0_real", "1_fake/nested"):
            for i in range(3):
                write_image(os.path.join(root, name, folder, f"{i}.png"), rng.integers(0, 256, (24, 20, 3), np.uint8))
    os.makedirs(os.path.join(root, "README only"))
    return str(root)


@pytest.mark.slow
def test_evaluate_cli_writes_every_output_with_the_baseline_beside(workdir, tmp_path):
    work, _ = workdir
    gen = make_generalization_tree(tmp_path / "gen")
    result = _evaluate_cli(f"--workdir={work}", f"--generalization_dir={gen}", "--batch_size=8")
    assert result.returncode == 0, result.stderr[-3000:]
    out = os.path.join(work, "results")
    results = json.load(open(os.path.join(out, "results.json")))
    for blocks in (results, results["baseline"]):
        assert list(blocks["robustness"]) == list(attacks.ATTACKS)
        for attack in blocks["robustness"].values():
            assert {"accuracy", "precision", "recall", "f1", "n", "auc", "ap", "three_class", "binary"} <= set(attack)
            assert attack["accuracy"] == attack["binary"]["accuracy"]
        assert set(blocks["generalization"]) == {"ProGAN x", "glide"}  # "README only" has no 0_real/1_fake
        assert blocks["generalization"]["glide"]["n_real"] == blocks["generalization"]["glide"]["n_fake"] == 3
        assert {"accuracy", "auc", "ap", "real_f1"} <= set(blocks["generalization_mean"])
    n_test = results["data"]["test_images"]
    assert results["raw"]["three_class_full"]["n"] == n_test > 0
    md = open(os.path.join(out, "results.md")).read()
    assert "baseline binary acc" in md and "complete binary acc" in md and "| glide |" in md
    with open(os.path.join(out, "predictions.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * ((1 + len(attacks.ATTACKS)) * n_test + 12)
    assert {r["attack"] for r in rows} == {"none", *attacks.ATTACKS} and {r["model"] for r in rows} == {"complete",
                                                                                                        "baseline"}
    assert {"path", "label", "architecture", "p_real", "prediction"} <= set(rows[0])
    for name in ("confusion_matrix.png", "confusion_matrix_baseline.png", "accuracy_vs_attack.png"):
        with Image.open(os.path.join(out, name)) as im:
            assert im.format == "PNG" and 600 <= im.width <= 2000 and 300 <= im.height <= 1200
    assert os.path.exists(CHECKER), f"{CHECKER} missing: CI clones the shared folder beside the repo"
    check = subprocess.run([sys.executable, CHECKER, work], capture_output=True, text=True)
    assert "robustness keys" in check.stdout and "FAILED  results.json" not in check.stdout, check.stdout


@pytest.mark.slow
def test_tfds_data_gives_the_folder_results(tfds_demo, workdir, tmp_path):
    corpus_dir, spec = tfds_demo
    work, _ = workdir
    results = {}
    for name, data in (("folder", f"--data_dir={corpus_dir}"), ("tfds", f"--data={spec}")):
        result = _evaluate_cli(f"--workdir={work}", data, "--nobaseline", f"--results_dir={tmp_path / name}")
        assert result.returncode == 0, result.stderr[-3000:]
        results[name] = json.load(open(tmp_path / name / "results.json"))
    assert results["tfds"]["data"]["source"] == spec
    for key in ("raw", "robustness", "per_architecture"):  # same images, same balanced sets: same numbers
        assert results["tfds"][key] == results["folder"][key]


@pytest.mark.parametrize("args,message", [
    ([], "--workdir"),
    (["--workdir=/nonexistent/w"], "--workdir not found"),
    (["--model=/nonexistent/m.keras", "--results_dir=/tmp/x"], "--model not found"),
    (["--protocols=raw,noise"], "--protocols"),
])
def test_flag_errors_are_one_line(args, message):
    result = _evaluate_cli(*args, timeout=120)
    assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr


def test_missing_generalization_dir_and_wrong_layouts_fail_clearly(workdir, tmp_path):
    work, _ = workdir
    result = _evaluate_cli(f"--workdir={work}", "--protocols=generalization", timeout=120)
    assert result.returncode != 0 and "--generalization_dir" in result.stderr
    (tmp_path / "flat").mkdir()
    result = _evaluate_cli(f"--workdir={work}", f"--generalization_dir={tmp_path / 'flat'}",
                           "--protocols=generalization", timeout=120)
    assert result.returncode != 0 and "0_real" in result.stderr and "Traceback" not in result.stderr
    os.makedirs(tmp_path / "g" / "empty" / "0_real")
    os.makedirs(tmp_path / "g" / "empty" / "1_fake")
    with pytest.raises(corpus_lib.CorpusError, match="no images"):
        protocols.generalization_sets(str(tmp_path / "g"))


def test_generalization_sets_read_nested_images_with_binary_labels(tmp_path):
    sets = protocols.generalization_sets(make_generalization_tree(tmp_path / "gen"))
    assert list(sets) == ["ProGAN x", "glide"]
    labels = [s.label for s in sets["glide"]]
    assert labels.count(REAL) == 3 and labels.count(metrics.FAKE) == 3
    assert all(s.architecture == "glide" for s in sets["glide"])
    assert sets["glide"][-1].path.startswith("glide/1_fake/nested/")


def test_unreadable_images_are_skipped_and_counted(workdir, tmp_path, capsys):
    work, _ = workdir
    data = make_corpus(tmp_path / "corpus", per_folder=4)
    corpus = corpus_lib.scan_corpus(data, check=False)
    broken = corpus.samples[0]
    with open(corpus.abspath(broken), "wb") as f:
        f.write(b"not an image")
    clf = classifier.load_classifier(os.path.join(work, "models", "complete.keras"), "complete")
    predictions = protocols.predict(clf, pipelines.FolderSource(data), corpus.samples, batch_size=5)
    assert predictions.skipped == [broken.path]
    # Keras' Progbar prints nothing off a terminal unless its target is reached: closed by hand.
    assert f"{len(corpus.samples) - 1}/{len(corpus.samples)}" in capsys.readouterr().out
    assert len(predictions.samples) == len(predictions.probabilities) == len(corpus.samples) - 1
    block, _ = protocols.evaluate_pass(clf, pipelines.FolderSource(data), corpus.samples, 5, seed=0)
    assert block["skipped"] == 1 and block["skipped_images"] == [broken.path]
    assert f"`{broken.path}`" in reports.results_markdown({"raw": block})  # named in results.md, never silent


class _Served(tf.Module):
    """A SavedModel of another exporter: a bytes signature and a fixed-size float one."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def from_bytes(self, image_bytes):
        images = tf.map_fn(lambda b: pipelines.decode_and_resize(b, SIZE), image_bytes,
                           fn_output_signature=tf.TensorSpec([SIZE, SIZE, 3], tf.float32))
        return {"probabilities": tf.nn.softmax(self.model(images, training=False))}

    @tf.function(input_signature=[tf.TensorSpec([None, SIZE, SIZE, 3], tf.float32)])
    def from_images(self, images):
        return {"probabilities": tf.nn.softmax(self.model(images, training=False))}


def test_saved_model_signatures_give_the_keras_model_probabilities(workdir, tmp_path):
    work, data = workdir
    path = os.path.join(work, "models", "complete.keras")
    served = _Served(models.load_model(path))
    tf.saved_model.save(served, str(tmp_path / "both"), signatures={"serving_default": served.from_bytes,
                                                                    "serving_images": served.from_images})
    tf.saved_model.save(served, str(tmp_path / "bytes"), signatures={"serving_default": served.from_bytes})
    export = pytest.importorskip("dfx_keras.serving.export")  # written beside this module; skip only until it lands
    exported = export.export_saved_model(models.load_model(path), str(tmp_path / "export"))  # any-size images
    samples = corpus_lib.scan_corpus(data, check=False).samples[:10]
    source = pipelines.FolderSource(data)
    keras_model = classifier.load_classifier(path)
    classifiers = [classifier.load_classifier(p) for p in (str(tmp_path / "both"), str(tmp_path / "bytes"), exported)]
    assert [c.image_size for c in (keras_model, *classifiers)] == [SIZE, SIZE, None, SIZE]
    for transform in (None, attacks.ATTACKS["blur_k3"]):  # attacked images reach a bytes model as lossless PNG
        reference = protocols.predict(keras_model, source, samples, 4, transform).probabilities
        for clf in classifiers:
            np.testing.assert_allclose(protocols.predict(clf, source, samples, 4, transform).probabilities,
                                       reference, atol=1e-5)


def test_model_that_is_not_three_class_is_refused(workdir):
    work, _ = workdir
    with pytest.raises(ValueError, match="3-class"):
        classifier.load_classifier(os.path.join(work, "models", "bm_dm.keras"))
    with pytest.raises(FileNotFoundError, match="SavedModel"):
        classifier.load_classifier(work)


def test_augmentation_attacks_training_images_bypasses_the_feature_cache_and_trains_the_baseline(tmp_path):
    data = make_corpus(tmp_path / "corpus", per_folder=12)
    corpus = corpus_lib.scan_corpus(data)
    cfg = config.TrainConfig(workdir=str(tmp_path / "w"), backbone="tiny", weights=None, image_size=SIZE,
                               batch_size=8, epochs=1, verbose=0, augment=("blur",), augment_p=1.0,
                               cache_images=True)
    source = pipelines.FolderSource(data)
    samples = corpus.samples[:8]
    clean = pipelines.image_dataset(source, samples, SIZE, 8, with_paths=True)
    attacked = stages.training_dataset(cfg, source, samples, SIZE, [0] * 8)
    (clean_images, _), (attacked_images, _) = next(iter(clean)), next(iter(attacked))
    # Every image blurred (p=1); the batches hold the same images in another order.
    assert float(tf.reduce_mean(tf.image.total_variation(attacked_images))) < \
        0.9 * float(tf.reduce_mean(tf.image.total_variation(clean_images)))
    _base_models(cfg.workdir)
    summary = stages.train_complete_model(cfg, corpus, source, tf.distribute.get_strategy())
    assert summary["epochs"] == 1 and not os.path.exists(cfg.wd.path("features"))  # trained end to end
    assert stages.train_baseline(cfg, corpus, source, tf.distribute.get_strategy())["epochs"] == 1
    assert classifier.load_classifier(cfg.wd.path("models", "baseline.keras")).image_size == SIZE


def test_augment_flag_rejects_unknown_kinds():
    result = subprocess.run([sys.executable, os.path.join(REPO, "train.py"), "--workdir=/tmp/x", "--data_dir=/tmp",
                             "--augment=jpeg,noise"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode != 0 and "--augment" in result.stderr and "Traceback" not in result.stderr


def test_a_results_dir_that_cannot_be_written_is_refused_before_any_work(workdir, tmp_path):
    work, _ = workdir
    a_file = tmp_path / "results.txt"
    a_file.write_text("not a folder")
    for results, why in ((a_file, "is a file, not a folder"), (a_file / "sub", "cannot be written: Not a directory")):
        result = _evaluate_cli(f"--workdir={work}", f"--results_dir={results}", "--protocols=raw", timeout=120)
        assert result.returncode != 0 and f"--results_dir={results} {why}" in result.stderr
        assert "Traceback" not in result.stderr and "test pool" not in result.stdout  # nothing ran


def _shared_calls(clf):
    """The calls of non-inlined functions in the classifier's traced graph."""
    graph = clf.probabilities.get_concrete_function().graph
    return [op for op in graph.get_operations() if op.type in ("PartitionedCall", "StatefulPartitionedCall")]


def test_the_three_base_models_are_traced_once_with_the_same_probabilities(workdir):
    """``classifier.traced_once``: one non-inlined function for the three base models' shared
    architecture, called on each one's weights; the complete model's own probabilities."""
    complete = models.load_model(os.path.join(workdir[0], "models", "complete.keras"))
    clf = classifier.keras_classifier(complete)
    images = np.random.default_rng(0).uniform(0, 255, (5, SIZE, SIZE, 3)).astype(np.float32)
    expected = tf.nn.softmax(complete(images, training=False)).numpy()
    np.testing.assert_allclose(clf.probabilities(images).numpy(), expected, atol=1e-6)
    calls = _shared_calls(clf)
    assert len(calls) == 3 and len({op.get_attr("f").name for op in calls}) == 1


def test_base_models_of_different_architectures_are_called_as_they_are():
    """Extractors that differ (here one with NPR's input residual) share no trace; same outputs."""
    keras.utils.set_random_seed(0)
    base = [models.build_base_model("tiny", SIZE, None, name=models.base_model_name(c), input_residual=r)
            for c, r in (("dm_generated", "npr"), ("gan_generated", "none"), ("real", "none"))]
    complete = models.build_complete_model(*base)
    clf = classifier.keras_classifier(complete)
    images = np.random.default_rng(1).uniform(0, 255, (4, SIZE, SIZE, 3)).astype(np.float32)
    np.testing.assert_allclose(clf.probabilities(images).numpy(),
                               tf.nn.softmax(complete(images, training=False)).numpy(), atol=1e-6)
    assert _shared_calls(clf) == []


def test_every_protocol_and_ragged_last_batches_reuse_one_traced_function(workdir, tmp_path):
    """One trace per input size for the whole evaluation (raw, 13 attacks, generalization sets of
    another size, batch 1): start-up pays tracing once; a ragged last batch gives the same
    probabilities as the same images alone."""
    work, data = workdir
    clf = classifier.load_classifier(os.path.join(work, "models", "complete.keras"), "complete")
    source = pipelines.FolderSource(data)
    test_samples = protocols.test_data(corpus_lib.scan_corpus(data, check=False))[0]
    batch_size = len(test_samples) - 1  # every pass ends on a batch of one
    _, passes = protocols.evaluate(clf, ["raw", "robustness", "generalization"], source=source,
                                   test_samples=test_samples, batch_size=batch_size,
                                   generalization_dir=make_generalization_tree(tmp_path / "generalization"))
    assert len(passes) == 1 + len(attacks.ATTACKS) + 2
    one_by_one = protocols.predict(clf, source, test_samples, batch_size=1)
    assert clf.probabilities.experimental_get_tracing_count() == 1
    np.testing.assert_allclose(one_by_one.probabilities, passes[0][2].probabilities, atol=1e-5)
