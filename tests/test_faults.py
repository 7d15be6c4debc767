"""Faults a run must survive: a real SIGKILL at the dangerous moments, damaged backups, a CSV log
that disagrees with the backup, two runs on one workdir, killed and concurrent exports.

The dangerous windows last milliseconds, so each killed run is a ``train.py`` (or export)
subprocess whose Keras or TensorFlow save function is wrapped to write its file, cut it in half
and SIGKILL the process: a kill in the middle of that write, whatever layout the code uses.
Reruns call what train.py calls (``run.train``) in this process, which is cheaper.
"""

import csv
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import time

import keras
import pytest
import tensorflow as tf
from conftest import make_corpus

from dfx_keras import config, run
from dfx_keras.serving import export

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--backbone=tiny", "--weights=none", "--image_size=32", "--batch_size=8", "--stage=base",
        "--main_class=real", "--noevaluate"]

# Wrappers installed in the subprocess before train.py runs; KILL_AT is the call that dies.
CUT_AND_KILL = """
def cut_and_kill(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    os.kill(os.getpid(), signal.SIGKILL)
"""
KILL_IN_BACKUP_WRITE = CUT_AND_KILL + """
original = keras.Model.save_weights
backups = []
def save_weights(self, filepath, *args, **kwargs):
    original(self, filepath, *args, **kwargs)
    if "/backup/" in str(filepath):
        backups.append(filepath)
        if len(backups) == KILL_AT:
            cut_and_kill(str(filepath))
keras.Model.save_weights = save_weights
"""
KILL_IN_FINAL_SAVE = CUT_AND_KILL + """
original = keras.Model.save
def save(self, filepath, *args, **kwargs):
    original(self, filepath, *args, **kwargs)
    cut_and_kill(str(filepath))
keras.Model.save = save
"""
WAIT_AFTER_FIRST_EPOCH = """
logged = keras.callbacks.CSVLogger.on_epoch_end
def wait(self, epoch, logs=None):
    logged(self, epoch, logs)
    open(WAITING, "w").close()
    deadline = time.time() + 300
    while not os.path.exists(GO) and time.time() < deadline:
        time.sleep(0.2)
keras.callbacks.CSVLogger.on_epoch_end = wait
"""
SCRIPT = """
import os, signal, sys, time
from dfx_keras.cli.quiet import quiet_tensorflow
quiet_tensorflow()  # first, as train.py does: our warnings reach stderr, TensorFlow's noise does not
import keras
{constants}
{patch}
sys.argv = ["train.py", *{args!r}]
from dfx_keras.cli import run
run("train")
"""


def _script(args, patch="", **constants):
    return textwrap.dedent(SCRIPT).format(patch=patch, args=list(args),
                                          constants="\n".join(f"{k} = {v!r}" for k, v in constants.items()))


def _train(args, patch="", **constants):
    return subprocess.run([sys.executable, "-c", _script(args, patch, **constants)], capture_output=True, text=True,
                          cwd=REPO, timeout=600)


def _epochs(csv_path):
    with open(csv_path, newline="") as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def _config(work, epochs, **kwargs):
    """The TrainConfig that ``TINY`` and ``--epochs`` make train.py build."""
    return config.TrainConfig(workdir=work, backbone="tiny", weights=None, image_size=32, batch_size=8,
                                epochs=epochs, **kwargs)


def _rerun(work, data, epochs):
    """What rerunning the train.py command does, in this process (cheaper than a new one)."""
    return run.train(_config(work, epochs), config.TrainPlan(data, stage="base", main_class="real", evaluate=False))


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("faults") / "corpus", per_folder=12)


def _cli_args(work, data):
    return [f"--workdir={work}", f"--data_dir={data}", *TINY]


@pytest.mark.slow
def test_a_kill_during_the_backup_write_resumes_from_the_previous_epoch(corpus_dir, tmp_path, capsys):
    work = str(tmp_path / "work")
    killed = _train([*_cli_args(work, corpus_dir), "--epochs=3"], KILL_IN_BACKUP_WRITE, KILL_AT=2)  # epoch 2's
    assert killed.returncode == -9, killed.stderr[-3000:]
    capsys.readouterr()
    _rerun(work, corpus_dir, epochs=3)
    printed = capsys.readouterr().out
    assert "Epoch 1/3" not in printed and "Epoch 2/3" in printed  # resumed after epoch 1
    assert _epochs(f"{work}/logs/bm_real.csv") == [0, 1, 2]
    assert os.path.isfile(f"{work}/models/bm_real.keras") and not os.path.exists(f"{work}/backup/bm_real")


@pytest.mark.slow
def test_a_kill_during_the_final_save_keeps_the_trained_stage(corpus_dir, tmp_path, capsys):
    work = str(tmp_path / "work")
    killed = _train([*_cli_args(work, corpus_dir), "--epochs=2"], KILL_IN_FINAL_SAVE)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert not os.path.exists(f"{work}/models/bm_real.keras")
    capsys.readouterr()
    _rerun(work, corpus_dir, epochs=2)
    assert "Epoch " not in capsys.readouterr().out  # nothing retrained: the backup outlived the interrupted save
    assert _epochs(f"{work}/logs/bm_real.csv") == [0, 1]
    assert os.path.isfile(f"{work}/models/bm_real.keras")
    assert [n for n in os.listdir(f"{work}/models") if n.startswith(".")] == []  # the half-written file is gone
    assert json.load(open(f"{work}/logs/stages.json"))["bm_real"]["epochs"] == 2


class Interrupted(Exception):
    pass


class Interrupt(keras.callbacks.Callback):
    def on_train_end(self, logs=None):
        raise Interrupted


@pytest.fixture(scope="module")
def interrupted(corpus_dir, tmp_path_factory):
    """A workdir whose stage was interrupted after its last epoch, before its model was saved."""
    work = str(tmp_path_factory.mktemp("interrupted") / "work")
    with pytest.raises(Interrupted):
        run.train(_config(work, 2, extra_callbacks=[Interrupt()]),
                  config.TrainPlan(corpus_dir, stage="base", main_class="real", evaluate=False))
    assert os.listdir(f"{work}/backup/bm_real") and not os.path.exists(f"{work}/models/bm_real.keras")
    return work


@pytest.mark.slow
def test_a_backup_with_every_file_damaged_is_ignored_with_a_warning(interrupted, corpus_dir, tmp_path, caplog):
    """A kill mid-write used to leave a 0-byte weights file or an empty JSON file: every rerun failed."""
    work = str(tmp_path / "work")
    shutil.copytree(interrupted, work)
    damaged = [os.path.join(root, f) for root, _, files in os.walk(f"{work}/backup") for f in files]
    for path in damaged:
        open(path, "w").close()
    _rerun(work, corpus_dir, epochs=2)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("cannot be used" in w for w in warnings)
    assert any("starts again from its first epoch" in w for w in warnings)
    assert _epochs(f"{work}/logs/bm_real.csv") == [0, 1]
    assert os.path.isfile(f"{work}/models/bm_real.keras")


@pytest.mark.slow
def test_resume_survives_a_csv_log_that_disagrees_with_the_backup(interrupted, corpus_dir, tmp_path):
    work = str(tmp_path / "work")
    shutil.copytree(interrupted, work)
    log = f"{work}/logs/bm_real.csv"
    with open(log) as f:
        header = f.readline()
    with open(log, "w") as f:  # the log lost its rows (as two concurrent runs left it)
        f.write(header)
    _rerun(work, corpus_dir, epochs=2)
    summary = json.load(open(f"{work}/logs/stages.json"))["bm_real"]
    assert summary["epochs"] == 2 and summary["best_epoch"] in (1, 2) and 0 <= summary["val_accuracy"] <= 1
    assert os.path.isfile(f"{work}/models/bm_real.keras")


@pytest.mark.slow
def test_a_second_run_on_a_busy_workdir_says_who_holds_it_and_leaves_it_alone(corpus_dir, tmp_path):
    work = str(tmp_path / "work")
    args = _cli_args(work, corpus_dir)
    waiting, go = str(tmp_path / "waiting"), str(tmp_path / "go")
    first = subprocess.Popen([sys.executable, "-c", _script([*args, "--epochs=2"], WAIT_AFTER_FIRST_EPOCH,
                                                            WAITING=waiting, GO=go)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        deadline = time.time() + 300
        while not os.path.exists(waiting) and first.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert os.path.exists(waiting), first.communicate()[1][-3000:]
        flags_before = open(f"{work}/flags.txt").read()
        second = _train([*args, "--epochs=3"])
        assert second.returncode == 1
        lines = [line for line in second.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: workdir ") and "in use by another run" in lines[0]
        assert f"process {first.pid} on {socket.gethostname()}" in lines[0] and "started 20" in lines[0]
        assert open(f"{work}/flags.txt").read() == flags_before  # the first run's record is untouched
    finally:
        open(go, "w").close()
        out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-3000:]
    assert _epochs(f"{work}/logs/bm_real.csv") == [0, 1]
    with run.owned_workdir(work):  # the lock went with its holder
        pass


# --- exports ---------------------------------------------------------------------------------------

KILL_IN_EXPORT = """
import tensorflow as tf
def save(obj, export_dir, *args, **kwargs):  # killed as it starts writing the SavedModel
    open(os.path.join(export_dir, "saved_model.pb"), "wb").close()
    os.kill(os.getpid(), signal.SIGKILL)
tf.saved_model.save = save
sys.argv = ["export", *{args!r}]
from dfx_keras.cli import run
run("export")
"""


@pytest.fixture(scope="module")
def complete_model():
    import dfx_keras

    bms = [dfx_keras.build_base_model("tiny", 32, None, name=n) for n in ("bm_dm", "bm_gan", "bm_real")]
    return dfx_keras.build_complete_model(*bms)


@pytest.mark.slow
def test_a_killed_export_leaves_nothing_the_next_export_keeps_and_a_live_one_is_left_alone(complete_model,
                                                                                          tmp_path):
    work = tmp_path / "w"
    (work / "models").mkdir(parents=True)
    complete_model.save(work / "models" / "complete.keras")
    script = "import os, signal, sys\n" + KILL_IN_EXPORT.format(args=[f"--workdir={work}"])
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert killed.returncode == -9, killed.stderr[-3000:]
    model_dir = work / "export" / "dfx"
    (left,) = os.listdir(model_dir)
    assert left.startswith(".tmp-")
    host = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())
    live = model_dir / f".tmp-{os.getpid()}-{host}-7-inprogress"  # this process is alive: a concurrent export
    live.mkdir()
    path = export.export_workdir(str(work))
    assert path == str(model_dir / "1")
    assert sorted(os.listdir(model_dir)) == sorted(["1", live.name])


def test_two_exports_at_once_both_land_under_their_own_versions(complete_model, tmp_path, monkeypatch):
    """The other export takes version 1 while this one is being written: this one becomes 2."""
    saved = tf.saved_model.save
    model_dir = tmp_path / "dfx"

    def save_while_another_export_lands(obj, export_dir, *args, **kwargs):
        saved(obj, export_dir, *args, **kwargs)
        (model_dir / "1").mkdir()
        (model_dir / "1" / "saved_model.pb").write_bytes(b"the other export")

    monkeypatch.setattr(tf.saved_model, "save", save_while_another_export_lands)
    path = export.export_saved_model(complete_model, str(tmp_path))
    assert path == str(model_dir / "2") and export.read_metadata(path)["version"] == 2
    assert (model_dir / "1" / "saved_model.pb").read_bytes() == b"the other export"
    assert sorted(os.listdir(model_dir)) == ["1", "2"]
    with pytest.raises(FileExistsError, match="export version 3 already exists"):  # an explicit version: refused
        monkeypatch.setattr(tf.saved_model, "save", lambda obj, export_dir, *a, **k: (
            saved(obj, export_dir, *a, **k), (model_dir / "3").mkdir(), (model_dir / "3" / "x").touch()))
        export.export_saved_model(complete_model, str(tmp_path), version=3)
    assert sorted(os.listdir(model_dir)) == ["1", "2", "3"]
