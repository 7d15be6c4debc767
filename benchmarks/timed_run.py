"""Run a tree's ``train.py`` or ``evaluate.py`` with timers on its stages and epochs (for bench_small_run.py).

    PYTHONPATH=TREE python benchmarks/timed_run.py TIMINGS.json TREE/train.py [flags...]

Imports whatever ``dfx_keras`` is on ``PYTHONPATH`` (this tree's, or an older commit's
worktree), wraps its stage functions (the names of this tree and of issue 15's start commit)
and ``keras.Model.fit`` with wall-clock timers, runs the script as ``__main__`` and writes
what it measured to TIMINGS.json, also when the script exits with an error:

    {"stages": [{"stage": "train_base_model", "arg": "dm_generated", "start": s, "seconds": s}, ...],
     "fits": [{"model": "bm_dm", "start": s, "epochs": [s, s, ...]}, ...], "exit": code}

Times are ``time.perf_counter()`` seconds since this process started its timers; the
instrumentation adds a few microseconds per epoch and nothing per step.
"""

import functools
import importlib
import json
import os
import runpy
import sys
import time

T0 = time.perf_counter()
STAGE_FUNCTIONS = {  # module -> functions timed, in this tree and at issue 15's start commit (4f367e2)
    "dfx_keras.training.stages": ("train_base_model", "train_complete_model", "train_baseline"),
    "dfx_keras.training": ("train_base_model", "train_complete_model", "train_baseline"),
    "dfx_keras.run": ("evaluate_raw", "calibrate_complete", "evaluate"),
    "dfx_keras.serving.export": ("export_workdir",),
    "dfx_keras.export": ("export_workdir",),
}


def _now() -> float:
    return time.perf_counter() - T0


def _timed(function, record: list):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        start = _now()
        try:
            return function(*args, **kwargs)
        finally:
            main_class = args[3] if function.__name__ == "train_base_model" and len(args) > 3 else None
            record.append({"stage": function.__name__, "arg": main_class, "start": start, "seconds": _now() - start})
    return wrapper


def instrument(record: dict) -> None:
    """Wrap the stage functions that exist in the imported ``dfx_keras``, and ``keras.Model.fit``."""
    import keras

    for module_name, names in STAGE_FUNCTIONS.items():
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        for name in names:
            function = getattr(module, name, None)
            if callable(function) and getattr(function, "__module__", None) == module_name:
                setattr(module, name, _timed(function, record["stages"]))

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self, entry):
            super().__init__()
            self.entry, self.started = entry, None

        def on_epoch_begin(self, epoch, logs=None):
            self.started = _now()

        def on_epoch_end(self, epoch, logs=None):
            self.entry["epochs"].append(_now() - self.started)

    fit = keras.Model.fit

    @functools.wraps(fit)
    def timed_fit(model, *args, callbacks=None, **kwargs):
        entry = {"model": model.name, "start": _now(), "epochs": []}
        record["fits"].append(entry)
        return fit(model, *args, callbacks=[*(callbacks or []), EpochTimer(entry)], **kwargs)

    keras.Model.fit = timed_fit


def main() -> None:
    out, script, *flags = sys.argv[1:]
    record = {"stages": [], "fits": [], "exit": None}
    instrument(record)
    sys.argv = [script, *flags]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    try:
        runpy.run_path(script, run_name="__main__")
        record["exit"] = 0
    except SystemExit as e:
        record["exit"] = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        record["total"] = _now()
        with open(out + ".tmp", "w") as f:
            json.dump(record, f, indent=1)
        os.replace(out + ".tmp", out)
    sys.exit(record["exit"])


if __name__ == "__main__":
    main()
