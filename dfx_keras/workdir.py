"""A workdir and its files: every path of its layout, the one atomic write, its lock, and the
readers of what a run left there.

Layout (``--workdir=W``)::

    W/split.csv                  the pool of every image (the reference's guidance.csv)
    W/flags.txt                  train.py's resolved flags, reusable as a flagfile
    W/models/<stage>.keras       bm_dm, bm_gan, bm_real, complete, baseline
    W/logs/stages.json           each finished stage's summary (the closing table reads it)
    W/logs/<stage>.csv, <stage>/ each stage's CSV log and TensorBoard events
    W/checkpoints/<stage>.best.weights.h5, W/backup/<stage>/   a running stage's state
    W/features/<key>.npz         the complete stage's cached base-model features
    W/results/                   evaluation outputs (results.json, results.md, ...)
    W/export/<model_name>/<version>/   SavedModels for TensorFlow Serving
    W/.lock                      held by the run that owns the workdir

Files that survive a kill: atomic writes, leftovers of dead writers, one owner per workdir.
A process can die at any instruction (kill -9, the OOM killer, a preempted VM). What it was
writing must then be either the old complete file or the new complete one, never a mix:
``atomic_write`` writes under a temporary name in the same folder, flushes it to disk and
renames it over the target (a rename within one file system is atomic). Temporary names carry
the writer's host and process id, so ``remove_dead_temporaries`` can clear what a killed writer
left without touching what a live one is writing. ``exclusive_lock`` lets one process own a
folder; the kernel releases its ``flock`` when the owner dies, so a kill leaves no stale lock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import datetime
import errno
import fcntl
import json
import os
import re
import shutil
import socket
import tempfile
from typing import Callable, Iterator

from absl import logging

from dfx_keras.classes import CLASS_NAMES, base_model_name

_TEMPORARY = re.compile(r"^\.tmp-(?P<pid>\d+)-(?P<host>[A-Za-z0-9]*)-")


def _host() -> str:
    """This machine's name reduced to letters and digits (temporary names split on '-')."""
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())


def temporary_name(name: str) -> str:
    """A hidden name for a file or folder being written as ``name``, tagged with its writer.

    The name ends with ``name``, so extensions that libraries insist on (``.keras``,
    ``.weights.h5``) are kept.
    """
    return f".tmp-{os.getpid()}-{_host()}-{name}"


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: str) -> None:
    """Flush a file, or every file and folder under a folder, to disk."""
    if os.path.isdir(path):
        for root, _, files in os.walk(path):
            for name in files:
                _fsync(os.path.join(root, name))
            _fsync(root)
    else:
        _fsync(path)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def atomic_write(path: str, content: str | bytes | Callable[[str], None]) -> None:
    """Write ``path`` so that a crash at any moment leaves the old file or the new one.

    ``content`` is text, bytes, or a function that writes a file (or a folder) at the path it
    is given. An existing folder at ``path`` is replaced only when empty (rename semantics).
    What killed writers left in the folder is removed first.
    """
    folder, name = os.path.split(os.path.abspath(path))
    remove_dead_temporaries(folder)
    tmp = os.path.join(folder, temporary_name(name))
    try:
        if callable(content):
            content(tmp)
        else:
            with open(tmp, "wb" if isinstance(content, bytes) else "w") as f:
                f.write(content)
        _fsync_tree(tmp)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    _fsync(folder)


def make_temporary_folder(parent: str, name: str) -> str:
    """A new empty hidden folder in ``parent`` for writing ``name`` (``atomic_write``'s naming,
    plus a random part), for writers that pick their final name only when done."""
    return tempfile.mkdtemp(prefix=temporary_name(f"{name}-"), dir=parent)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def remove_dead_temporaries(folder: str) -> list[str]:
    """Delete the temporary files and folders in ``folder`` whose writer died (this host only:
    another machine's process cannot be checked, so its temporaries are left alone). Returns
    the names removed."""
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(folder):
            match = _TEMPORARY.match(name)
            if match and match["host"] == _host() and not _alive(int(match["pid"])):
                _remove(os.path.join(folder, name))
                removed.append(name)
    if removed:
        logging.warning("removed %d unfinished write(s) of killed processes in %s: %s", len(removed), folder,
                        ", ".join(removed))
    return removed


class InUseError(RuntimeError):
    """Another live process holds the lock (the message says which)."""


@contextlib.contextmanager
def exclusive_lock(path: str, what: str) -> Iterator[None]:
    """Own ``what`` while the block runs, through an ``flock`` on ``path`` (created if missing).

    The lock file holds its owner (process id, host, start time) for the message another
    process gets: InUseError. It is never deleted: removing a lock file lets two processes lock
    two different files of the same name.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            owner = os.pread(fd, 1024, 0).decode(errors="replace").strip() or "details not recorded yet"
            raise InUseError(f"{what} is in use by another run ({owner}); wait for it to finish or "
                             "choose another folder") from None
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}, started {started}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def check_writable_folder(path: str, flag: str) -> None:
    """Make sure ``path`` is (or can be created as) a folder this process can write, before any
    long work whose results would go there; raise ValueError naming ``flag`` otherwise."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except FileExistsError:
        raise ValueError(f"{flag}={path} is a file, not a folder") from None
    except OSError as e:
        raise ValueError(f"{flag}={path} cannot be written: {e.strerror or e}") from None


# --- the layout ------------------------------------------------------------------------------

MODELS, LOGS, RESULTS, EXPORT, FEATURES = "models", "logs", "results", "export", "features"
BACKUP, CHECKPOINTS = "backup", "checkpoints"
SPLIT_CSV, HOLDOUT_CSV, FLAGS_TXT, STAGES_JSON, LOCK_FILE = "split.csv", "holdout.csv", "flags.txt", "stages.json", ".lock"
CALIBRATION_JSON = "calibration.json"  # beside the model file it was fitted to: models/calibration.json
COMPLETE, BASELINE = "complete", "baseline"  # the stages besides the base models (and results.json keys)
DEFAULT_MODEL_NAME = "dfx"  # export/<model_name>/, as TF Serving names a model
DATA_FLAGS = ("data_dir", "data")  # the flags of flags.txt that locate the corpus


def export_versions(model_dir: str) -> list[int]:
    """The integer version folders under a TF Serving model folder ``E/<model_name>`` (TF
    Serving ignores anything else), ascending."""
    if not os.path.isdir(model_dir):
        return []
    return sorted(int(d) for d in os.listdir(model_dir) if d.isdigit() and os.path.isdir(os.path.join(model_dir, d)))


def calibration_path(model_path: str) -> str:
    """Where a model file's calibration lives: ``calibration.json`` beside it."""
    return os.path.join(os.path.dirname(os.path.abspath(model_path)), CALIBRATION_JSON)


def file_sha256(path: str) -> str:
    """The file's SHA-256: what an export and a calibration record of the model they came from."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class Workdir:
    """The folder of one training run: where each of its files lives, and what it holds."""

    root: str

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    # paths
    @property
    def split_csv(self) -> str:
        return self.path(SPLIT_CSV)

    @property
    def holdout_csv(self) -> str:
        return self.path(HOLDOUT_CSV)

    @property
    def flags_txt(self) -> str:
        return self.path(FLAGS_TXT)

    @property
    def stages_json(self) -> str:
        return self.path(LOGS, STAGES_JSON)

    @property
    def features(self) -> str:
        return self.path(FEATURES)

    @property
    def lock_file(self) -> str:
        return self.path(LOCK_FILE)

    def model(self, stage: str) -> str:
        return self.path(MODELS, f"{stage}.keras")

    def log_csv(self, stage: str) -> str:
        return self.path(LOGS, f"{stage}.csv")

    def tensorboard(self, stage: str) -> str:
        return self.path(LOGS, stage)

    def backup(self, stage: str) -> str:
        return self.path(BACKUP, stage)

    def checkpoint(self, stage: str) -> str:
        return self.path(CHECKPOINTS, f"{stage}.best.weights.h5")

    def results(self, *parts: str) -> str:
        return self.path(RESULTS, *parts)

    def export(self, model_name: str | None = None) -> str:
        """``W/export``, or the TF Serving model folder ``W/export/<model_name>``."""
        return self.path(EXPORT, *([model_name] if model_name else []))

    # ownership
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Own the workdir while the block runs (``exclusive_lock``); a second owner gets InUseError."""
        os.makedirs(self.root, exist_ok=True)
        with exclusive_lock(self.lock_file, f"workdir {self.root}"):
            yield

    # readers and writers of what a run leaves
    def base_model_paths(self) -> list[str]:
        """The three base models' files, in the order DM, GAN, REAL; FileNotFoundError names
        those not trained yet."""
        paths = [self.model(base_model_name(c)) for c in CLASS_NAMES]
        missing = [p for p in paths if not os.path.exists(p)]
        if missing:
            raise FileNotFoundError(f"train the base models first; missing: {', '.join(missing)}")
        return paths

    def has_models(self) -> bool:
        """Whether any stage has left its ``.keras`` model here."""
        folder = self.path(MODELS)
        return os.path.isdir(folder) and any(f.endswith(".keras") for f in os.listdir(folder))

    def stage_summaries(self) -> dict:
        """``logs/stages.json``: stage name -> summary of its best epoch."""
        if not os.path.exists(self.stages_json):
            return {}
        with open(self.stages_json) as f:
            return json.load(f)

    def record_stage(self, stage: str, summary: dict) -> None:
        """Add (or replace) a stage's summary in ``logs/stages.json``."""
        stages = self.stage_summaries()
        stages[stage] = summary
        os.makedirs(os.path.dirname(self.stages_json), exist_ok=True)
        atomic_write(self.stages_json, json.dumps(stages, indent=2))

    def recorded_data_flags(self) -> dict[str, str]:
        """``data_dir`` / ``data`` as train.py recorded them in ``flags.txt``."""
        if not os.path.exists(self.flags_txt):
            return {}
        found = {}
        with open(self.flags_txt) as f:
            for line in f:
                name, _, value = line.strip().lstrip("-").partition("=")
                if name in DATA_FLAGS and value:
                    found[name] = value
        return found
