"""Training stages end to end on tiny models: CLI, resume, MirroredStrategy, flag errors."""

import csv
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from conftest import make_corpus
from dfx_keras import run, training
from dfx_keras.data import corpus as corpus_lib
from dfx_keras.data import pipelines

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
    result = _train_cli(f"--workdir={work}", f"--data_dir={data}", "--epochs=2", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("bm_dm", "bm_gan", "bm_real", "complete"):
        assert os.path.isfile(f"{work}/models/{name}.keras")
        assert _csv_epochs(f"{work}/logs/{name}.csv") == [0, 1]
        assert os.path.isdir(f"{work}/logs/{name}")  # TensorBoard
    flags_txt = open(f"{work}/flags.txt").read()
    assert "--backbone=tiny" in flags_txt and "--epochs=2" in flags_txt
    results = json.load(open(f"{work}/results/results.json"))
    for block in ("three_class", "binary"):
        assert {"accuracy", "precision", "recall", "f1", "n"} <= set(results["raw"][block])
    assert 0 <= results["raw"]["three_class"]["accuracy"] <= 1
    assert "test (balanced): 3-class accuracy" in result.stdout and "bm_real" in result.stdout
    assert "I0000" not in result.stderr and "cuInit" not in result.stderr  # TensorFlow's noise is off
    checker = os.path.join(REPO, "..", "shared", "tools", "check_workdir.py")  # the team's contract check
    if os.path.exists(checker):
        check = subprocess.run([sys.executable, checker, work], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout

    again = _train_cli(f"--workdir={work}", f"--data_dir={data}", "--epochs=2", *TINY)
    assert again.returncode == 0 and "Epoch 1/" not in again.stdout  # finished stages are skipped


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


def test_a_state_dict_that_does_not_fit_stops_train_py_in_one_line(tmp_path):
    """Detected when the first base model is built, after the corpus scan."""
    from safetensors.numpy import save_file

    save_file({"x": np.zeros(1, np.float32)}, str(tmp_path / "other.safetensors"))
    data = make_corpus(tmp_path / "corpus", per_folder=16)
    result = _train_cli(f"--workdir={tmp_path}/w", f"--data_dir={data}", "--backbone=resnet18", "--image_size=32",
                        f"--weights=torchvision:{tmp_path}/other.safetensors", timeout=300)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "does not fit resnet18 (torchvision layout): missing tensors: conv1.weight, bn1.weight" in result.stderr
    assert "unexpected tensors: x" in result.stderr


KILLED_RUN = textwrap.dedent("""
    import os, signal, sys, keras
    sys.path.insert(0, {tests!r})
    import conftest  # two logical CPUs, quiet TensorFlow
    from dfx_keras import training
    from dfx_keras.data import corpus as corpus_lib, pipelines

    class Kill(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == {kill_after}:
                os.kill(os.getpid(), signal.SIGKILL)

    cfg = training.TrainConfig(workdir={work!r}, backbone="tiny", weights=None, image_size=32, batch_size=8,
                               epochs=4, verbose=0, extra_callbacks=[Kill()] if {kill} else [])
    corpus = corpus_lib.scan_corpus({data!r})
    training.train_base_model(cfg, corpus, pipelines.FolderSource({data!r}), "real", training.get_strategy())
""")


@pytest.mark.slow
def test_killed_training_resumes_at_the_next_epoch(tmp_path):
    data = make_corpus(tmp_path / "corpus", per_folder=16)
    work = str(tmp_path / "work")
    script = lambda kill: KILLED_RUN.format(tests=os.path.dirname(__file__), kill_after=1, work=work, data=data,
                                            kill=kill)
    killed = subprocess.run([sys.executable, "-c", script(True)], capture_output=True, text=True, cwd=REPO)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert _csv_epochs(f"{work}/logs/bm_real.csv") == [0, 1]
    assert not os.path.exists(f"{work}/models/bm_real.keras")
    resumed = subprocess.run([sys.executable, "-c", script(False)], capture_output=True, text=True, cwd=REPO)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _csv_epochs(f"{work}/logs/bm_real.csv") == [0, 1, 2, 3]  # continued at epoch 2, ended at 4
    assert os.path.isfile(f"{work}/models/bm_real.keras")


@pytest.mark.slow
def test_base_and_complete_stages_under_mirrored_strategy_on_two_cpus(tmp_path):
    strategy = training.get_strategy("mirrored")
    assert strategy.num_replicas_in_sync == 2
    data = make_corpus(tmp_path / "corpus", per_folder=16)
    cfg = training.TrainConfig(workdir=str(tmp_path / "w"), backbone="tiny", weights=None, image_size=32,
                               batch_size=8, epochs=1, verbose=0)
    corpus = corpus_lib.scan_corpus(data)
    source = pipelines.FolderSource(data)
    for name in ("dm_generated", "gan_generated", "real"):
        assert training.train_base_model(cfg, corpus, source, name, strategy)["epochs"] == 1
    summary = training.train_complete_model(cfg, corpus, source, strategy)
    assert summary["epochs"] == 1 and os.path.isfile(cfg.path("models", "complete.keras"))
    results = run.evaluate_raw(cfg, corpus, source)
    assert results["raw"]["three_class"]["n"] > 0
    assert not tf.distribute.has_strategy()
