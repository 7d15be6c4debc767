"""Training stages end to end on tiny models: CLI, resume, MirroredStrategy, flag errors."""

import csv
import json
import os
import subprocess
import sys
import textwrap
from collections import Counter

import numpy as np
import pytest
import tensorflow as tf
from conftest import make_corpus

from dfx_keras import config, run
from dfx_keras.classes import class_id
from dfx_keras.data import corpus as corpus_lib
from dfx_keras.data import pipelines
from dfx_keras.training import distribute, stages

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--backbone=tiny", "--weights=none", "--image_size=32", "--batch_size=8"]


def _train_cli(*args, timeout=600):
    return subprocess.run([sys.executable, os.path.join(REPO, "train.py"), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def _csv_epochs(path):
    with open(path, newline="") as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


@pytest.mark.slow
def test_train_cli_runs_every_stage_and_honours_the_workdir_contract(tmp_path):
    data = make_corpus(tmp_path / "corpus", per_folder=16)
    work = str(tmp_path / "work")
    result = _train_cli(f"--workdir={work}", f"--data_dir={data}", "--epochs=2", "--train_baseline", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("bm_dm", "bm_gan", "bm_real", "complete", "baseline"):
        assert os.path.isfile(f"{work}/models/{name}.keras")
        assert _csv_epochs(f"{work}/logs/{name}.csv") == [0, 1]
        assert os.path.isdir(f"{work}/logs/{name}")  # TensorBoard
    flags_txt = open(f"{work}/flags.txt").read()
    assert "--backbone=tiny" in flags_txt and "--epochs=2" in flags_txt
    results = json.load(open(f"{work}/results/results.json"))
    for block in ("three_class", "binary"):
        assert {"accuracy", "precision", "recall", "f1", "n"} <= set(results["raw"][block])
    three_class = results["raw"]["three_class"]
    confusion = np.array(three_class["confusion_matrix"])
    assert confusion.sum() == three_class["n"] > 0
    assert three_class["accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum())
    assert "bm_real" in result.stdout
    test_table = result.stdout[result.stdout.index("test (balanced)"):].splitlines()
    assert [line.split()[0] for line in test_table[1:3]] == ["complete", "baseline"]  # side by side
    assert results["baseline"]["raw"]["three_class"]["n"] == results["raw"]["three_class"]["n"]
    # Calibrated after the complete stage (on its validation split), reported on the test pool.
    calibration = json.load(open(f"{work}/models/calibration.json"))
    assert 0.05 <= calibration["temperature"] <= 20 and set(calibration["thresholds"]) == {"fpr_0.01", "fpr_0.05"}
    assert results["calibration"]["temperature"] == calibration["temperature"]
    assert {"ece_before", "ece_after", "bins"} <= set(results["calibration"])
    for key in ("fpr_0.01", "fpr_0.05"):
        assert set(results["thresholds"][key]) >= {"threshold", "tpr", "fpr"}
        assert results["thresholds"][key]["threshold"] == calibration["thresholds"][key]["threshold"]
    assert "calibration" not in results["baseline"]  # calibration.json belongs to complete.keras
    for plot in ("reliability.png", "roc.png"):
        assert os.path.getsize(f"{work}/results/{plot}") > 10_000
    exported = json.load(open(f"{work}/export/dfx/1/assets.extra/dfx_export.json"))
    assert exported["temperature"] == calibration["temperature"]
    assert exported["outputs"][-2:] == ["logits", "base_scores"]
    stages = json.load(open(f"{work}/logs/stages.json"))
    for name in ("bm_dm", "bm_gan", "bm_real"):
        s = stages[name]
        assert s["main_images"] + s["other_images"] == s["train_images"] == sum(s["folder_images"].values())
        assert f"{name}: only {s['other_images']} training images of other classes" in result.stderr
        assert f"{s['main_images']:>6} {s['other_images']:>6}" in result.stdout  # the closing table's columns
    assert result.stderr.count("--others_min_images") == 3  # one line per base model
    assert "I0000" not in result.stderr and "cuInit" not in result.stderr  # TensorFlow's noise is off
    checker = os.path.join(REPO, "..", "shared", "tools", "check_workdir.py")  # the team's contract check
    assert os.path.exists(checker), f"{checker} missing: CI clones the shared folder beside the repo"
    check = subprocess.run([sys.executable, checker, work], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout

    os.remove(f"{work}/models/calibration.json")
    again = _train_cli(f"--workdir={work}", f"--data_dir={data}", "--epochs=2", *TINY)
    assert again.returncode == 0 and "Epoch 1/" not in again.stdout  # finished stages are skipped
    assert json.load(open(f"{work}/models/calibration.json")) == calibration  # a missing calibration is fitted again


@pytest.mark.parametrize("args,message", [
    (["--backbone=resnet9000"], "resnet9000"),
    (["--backbone=tiny", "--weights=imagenet"], "--weights=none"),
    (["--backbone=vit_b16"], "vit_b16 has no ImageNet weights published by Keras (--weights=imagenet); use "
                             "--weights=torchvision:FILE"),
    (["--backbone=resnet18", "--weights=torchvision:/no/such.pth"], "file not found: /no/such.pth"),
    (["--weights=/no/such/file.h5"], "not found: /no/such/file.h5"),
    (["--data_dir=/no/such/corpus"], "--data_dir not found"),
    (["--epochs=0"], "epochs"),
])
def test_bad_flags_fail_with_one_clear_line(tmp_path, args, message):
    result = _train_cli(f"--workdir={tmp_path}/w", "--data_dir=/tmp", *args, timeout=120)
    assert result.returncode != 0 and message in result.stderr
    assert "Traceback" not in result.stderr


def test_others_min_images_reaches_the_base_model_sets(tmp_path):
    """Each other-class folder gives at least N pool-0 images (all it has when fewer)."""
    data = make_corpus(tmp_path / "corpus", per_folder=40)
    corpus, source = corpus_lib.scan_corpus(data), pipelines.FolderSource(data)

    def other_folders(**overrides):
        cfg = config.TrainConfig(workdir=str(tmp_path / "w"), backbone="tiny", weights=None, image_size=32,
                                   batch_size=8, **overrides)
        _, _, train, val = stages.base_model_data(cfg, corpus, source, "real")
        return Counter((s.label, s.architecture) for s in train + val if s.label != class_id("real"))

    pool0 = Counter((s.label, s.architecture) for s in corpus.pool(corpus_lib.BASE_POOL) if s.label != class_id("real"))
    assert other_folders() == {folder: 1 for folder in pool0}  # 4% of about 16 images
    assert other_folders(others_min_images=16) == {folder: min(16, n) for folder, n in pool0.items()}
    assert min(pool0.values()) < 16 < max(pool0.values())  # both the floor and the cap apply


KILLED_RUN = textwrap.dedent("""
    import os, signal, sys, keras
    sys.path.insert(0, {tests!r})
    import conftest  # two logical CPUs, quiet TensorFlow
    from dfx_keras import config
    from dfx_keras.training import distribute, stages
    from dfx_keras.data import corpus as corpus_lib, pipelines

    class Kill(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == {kill_after}:
                os.kill(os.getpid(), signal.SIGKILL)

    cfg = config.TrainConfig(workdir={work!r}, backbone="tiny", weights=None, image_size=32, batch_size=8,
                             epochs=4, verbose=0, extra_callbacks=[Kill()] if {kill} else [],
                             base_objective={objective!r})
    corpus = corpus_lib.scan_corpus({data!r})
    stages.train_base_models(cfg, corpus, pipelines.FolderSource({data!r}), ["gan_generated", "real"],
                             distribute.get_strategy())
""")


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["cross_entropy", "contrastive"])
def test_killed_training_resumes_at_the_next_epoch(tmp_path, objective):
    """Killed after bm_gan's second epoch: the rerun resumes bm_gan at its third, then trains
    bm_real on bm_gan's compiled model (``training.reuse``)."""
    data = make_corpus(tmp_path / "corpus", per_folder=16)
    work = str(tmp_path / "work")
    script = lambda kill: KILLED_RUN.format(tests=os.path.dirname(__file__), kill_after=1, work=work, data=data,
                                            kill=kill, objective=objective)
    killed = subprocess.run([sys.executable, "-c", script(True)], capture_output=True, text=True, cwd=REPO)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert _csv_epochs(f"{work}/logs/bm_gan.csv") == [0, 1]
    assert not os.path.exists(f"{work}/models/bm_gan.keras") and not os.path.exists(f"{work}/logs/bm_real.csv")
    resumed = subprocess.run([sys.executable, "-c", script(False)], capture_output=True, text=True, cwd=REPO)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _csv_epochs(f"{work}/logs/bm_gan.csv") == [0, 1, 2, 3]  # continued at epoch 2, ended at 4
    assert _csv_epochs(f"{work}/logs/bm_real.csv") == [0, 1, 2, 3]  # then bm_real on bm_gan's compiled model
    assert os.path.isfile(f"{work}/models/bm_gan.keras") and os.path.isfile(f"{work}/models/bm_real.keras")


@pytest.mark.slow
def test_base_and_complete_stages_under_mirrored_strategy_on_two_cpus(tmp_path):
    strategy = distribute.get_strategy("mirrored")
    assert strategy.num_replicas_in_sync == 2
    data = make_corpus(tmp_path / "corpus", per_folder=16)
    cfg = config.TrainConfig(workdir=str(tmp_path / "w"), backbone="tiny", weights=None, image_size=32,
                               batch_size=8, epochs=1, verbose=0)
    corpus = corpus_lib.scan_corpus(data)
    source = pipelines.FolderSource(data)
    stages.train_base_models(cfg, corpus, source, ("dm_generated", "gan_generated", "real"), strategy)
    assert [s["epochs"] for s in cfg.wd.stage_summaries().values()] == [1, 1, 1]
    summary = stages.train_complete_model(cfg, corpus, source, strategy)
    assert summary["epochs"] == 1 and os.path.isfile(cfg.wd.path("models", "complete.keras"))
    results = run.evaluate_raw(cfg, corpus, source)
    assert results["raw"]["three_class"]["n"] > 0
    assert not tf.distribute.has_strategy()


def _not_weights(tmp_path, name):
    """A file named like weights that holds none: garbage, or an HDF5 file cut short."""
    import h5py

    path = tmp_path / f"{name}.weights.h5"
    if name == "garbage":
        path.write_bytes(b"not HDF5 at all")
    else:
        with h5py.File(path, "w") as f:
            f.create_dataset("kernel", data=np.zeros((256, 256), np.float32))
        path.write_bytes(path.read_bytes()[:1000])
    return path


@pytest.mark.parametrize("case", ["workdir_is_a_file", "imagenet_offline", "garbage_weights", "truncated_weights",
                                  "torchvision_misfit", "demo_pointed_at_a_users_corpus"])
def test_mistakes_that_used_to_end_in_tracebacks_are_one_line_before_the_corpus_scan(tmp_path, case):
    data = make_corpus(tmp_path / "corpus", per_folder=2)
    work, dense = f"--workdir={tmp_path / 'w'}", ["--backbone=densenet121", "--image_size=32", "--batch_size=8"]
    not_weights = "is not a weights file of the densenet121 backbone at 32x32"
    if case == "workdir_is_a_file":  # a usage error: the line comes after the script's one-line description
        (tmp_path / "a_file").write_text("")
        args, message = [f"--workdir={tmp_path / 'a_file'}", f"--data_dir={data}", *TINY], [
            f"--workdir={tmp_path / 'a_file'} is a file, not a folder"]
    elif case == "imagenet_offline":
        args, message = [work, f"--data_dir={data}", *dense, "--weights=imagenet"], [
            "error: the ImageNet weights of densenet121 could not be downloaded", "--weights=PATH"]
    elif case.endswith("_weights"):
        path = _not_weights(tmp_path, case.split("_")[0])
        args, message = [work, f"--data_dir={data}", *dense, f"--weights={path}"], [f"error: --weights={path} {not_weights}"]
    elif case == "torchvision_misfit":  # a state dict of another model
        from safetensors.numpy import save_file

        path = tmp_path / "other.safetensors"
        save_file({"x": np.zeros(1, np.float32)}, str(path))
        args = [work, f"--data_dir={data}", "--backbone=resnet18", "--image_size=32", "--batch_size=8",
                f"--weights=torchvision:{path}"]
        message = [f"error: {path} does not fit resnet18 (torchvision layout): missing tensors: conv1.weight, "
                   "bn1.weight", "unexpected tensors: x"]
    else:  # what the demo flagfile does, with --data_dir pointed at a user's corpus
        args, message = [work, f"--data_dir={data}", "--make_demo_corpus", *TINY], [f"error: {data} already holds other data"]
    result = subprocess.run([sys.executable, os.path.join(REPO, "train.py"), *args], capture_output=True, text=True,
                            timeout=300, cwd=REPO, env={**os.environ, "KERAS_HOME": str(tmp_path / "keras_home")})
    lines = [line for line in result.stderr.splitlines() if line.strip()]  # KERAS_HOME: no cached ImageNet weights
    assert result.returncode == 1 and all(m in lines[-1] for m in message), result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "corpus:" not in result.stdout
    assert len(lines) == (1 if message[0].startswith("error:") else 2), lines
