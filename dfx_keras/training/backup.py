"""A training stage's state on disk, so that a stage killed at any moment resumes where it was.

Keras' ``BackupAndRestore`` rewrites one weights file and one JSON file in place at every
epoch: a kill while it writes leaves a 0-byte ``latest.weights.h5`` (every rerun then fails in
h5py) or an empty ``training_metadata.json``. Here every finished epoch is a *generation*, a
folder ``epoch-NNNN/`` written under a temporary name and renamed when complete
(``workdir.atomic_write``):

    model.weights.h5   the model's and the optimizer's variables after that epoch
    best.weights.h5    the weights of the best epoch so far (a hard link to the checkpoint)
    state.json         epochs finished, and the metrics of the best one

The two newest generations are kept. One that cannot be read is skipped with a warning and the
older one used, or the stage starts over. Restoring also puts back the best checkpoint of that
generation and cuts the CSV log to the epochs it had finished, so a stage's files agree with
each other whatever a kill interrupted; the summary of a stage comes from ``state.json``, never
from the log.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
from typing import Callable

import keras
from absl import logging

from dfx_keras.workdir import atomic_write

GENERATION = re.compile(r"^epoch-(\d+)$")
WEIGHTS, BEST, STATE = "model.weights.h5", "best.weights.h5", "state.json"
KEEP = 2  # generations kept: the newest, and one to fall back on


def _link(src: str, dst: str) -> None:
    """A hard link (no copy of the weights), or a copy where the file system has no links."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def cut_log(csv_path: str, epochs: int) -> None:
    """Keep the CSV log's rows of the first ``epochs`` epochs: a kill after an epoch's row was
    logged but before its generation was complete leaves a row that the rerun logs again."""
    if not os.path.exists(csv_path):
        return
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        fields = reader.fieldnames
    kept = [r for r in rows if (r.get("epoch") or "").isdigit() and int(r["epoch"]) < epochs]
    if fields and kept != rows:
        def write(tmp):
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fields)
                writer.writeheader()
                writer.writerows(kept)

        atomic_write(csv_path, write)


class StageBackup(keras.callbacks.Callback):
    """Saves the best checkpoint and a generation at the end of every epoch; ``restore`` before
    ``fit`` (with ``initial_epoch=epochs_done``).

    Put it after the ``CSVLogger`` in the callback list, so an epoch's generation exists only
    once its log row does.
    """

    def __init__(self, folder: str, best_path: str, csv_path: str):
        super().__init__()
        self.folder, self.best_path, self.csv_path = folder, best_path, csv_path
        self.epochs_done = 0
        self.best: dict | None = None  # the logs of the epoch with the lowest val_loss, and its "epoch"

    def generations(self) -> list[str]:
        """Generation folders, newest first."""
        names = os.listdir(self.folder) if os.path.isdir(self.folder) else []
        numbered = sorted(((int(m[1]), n) for n in names if (m := GENERATION.match(n))), reverse=True)
        return [os.path.join(self.folder, n) for _, n in numbered]

    def restore(self, new_model: Callable[[], keras.Model]) -> keras.Model:
        """A model (from ``new_model``, called in the strategy's scope) in the state of the newest
        readable generation; without one, a new model, and the stage's checkpoint and log cleared."""
        had_backup = os.path.isdir(self.folder) and bool(os.listdir(self.folder))
        for generation in self.generations():
            model = new_model()
            try:
                self._load(model, generation)
                return model
            except (OSError, ValueError, KeyError, TypeError) as e:
                logging.warning("backup %s cannot be used (%s: %s): removed", generation, type(e).__name__, e)
                shutil.rmtree(generation, ignore_errors=True)
        if had_backup:
            logging.warning("no usable backup in %s: the stage starts again from its first epoch", self.folder)
        shutil.rmtree(self.folder, ignore_errors=True)
        self.epochs_done, self.best = 0, None
        for path in (self.best_path, self.csv_path):
            if os.path.exists(path):
                os.remove(path)
        return new_model()

    def _load(self, model: keras.Model, generation: str) -> None:
        with open(os.path.join(generation, STATE)) as f:
            state = json.load(f)
        epochs, best = int(state["epochs"]), state["best"]
        model.optimizer.build(model.trainable_variables)  # its variables are in the weights file
        model.load_weights(os.path.join(generation, WEIGHTS))
        if best is not None:
            atomic_write(self.best_path, lambda tmp: _link(os.path.join(generation, BEST), tmp))
        cut_log(self.csv_path, epochs)
        self.epochs_done, self.best = epochs, best
        logging.info("resuming from %s: %d epoch(s) done", generation, epochs)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        loss = logs.get("val_loss")
        if loss is not None and math.isfinite(loss) and (self.best is None or loss < self.best["val_loss"]):
            atomic_write(self.best_path, self.model.save_weights)
            self.best = {"epoch": epoch, **{k: float(v) for k, v in logs.items()}}
        self.epochs_done = epoch + 1
        os.makedirs(self.folder, exist_ok=True)
        atomic_write(os.path.join(self.folder, f"epoch-{self.epochs_done:04d}"), self._write_generation)
        for old in self.generations()[KEEP:]:
            shutil.rmtree(old, ignore_errors=True)

    def _write_generation(self, folder: str) -> None:
        os.makedirs(folder)
        self.model.save_weights(os.path.join(folder, WEIGHTS))
        if self.best is not None:
            _link(self.best_path, os.path.join(folder, BEST))
        with open(os.path.join(folder, STATE), "w") as f:
            json.dump({"epochs": self.epochs_done, "best": self.best}, f, indent=2)

    def summary(self) -> dict:
        """Epochs trained and the best epoch's metrics (what ``logs/stages.json`` records)."""
        best = self.best
        return {"epochs": self.epochs_done, "best_epoch": best["epoch"] + 1, "val_loss": best["val_loss"],
                "val_accuracy": best["val_accuracy"], "train_accuracy": best["accuracy"]}
