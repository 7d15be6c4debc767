"""``python evaluate.py --workdir=W``: the paper's test protocols for a trained model, as files.

Evaluates ``W/models/complete.keras`` (and ``W/models/baseline.keras`` beside it when present),
or any ``--model``, on the test pool of the workdir's corpus (``--data_dir``/``--data``, else
the one recorded in ``W/flags.txt``): raw, robustness to attacks, generalization to unseen
generators. Writes results.json, results.md, predictions.csv and PNG plots. Every path and
value is checked before a model is loaded.
"""

import os
import sys
import time

from absl import app, flags, logging

from dfx_keras.cli import flags as dfx_flags
from dfx_keras.config import EvaluateConfig
from dfx_keras.data.corpus import CorpusError
from dfx_keras.workdir import BASELINE, COMPLETE, Workdir, check_writable_folder

FLAGS = flags.FLAGS


def define_flags() -> None:
    dfx_flags.define_evaluate_flags()


def model_paths() -> dict[str, str]:
    """Name -> path of the models to evaluate: ``--model``, or the workdir's complete model and
    its baseline (when present and ``--baseline``)."""
    if FLAGS.model:
        name = os.path.splitext(os.path.basename(os.path.normpath(FLAGS.model)))[0]
        return {"model" if name.isdigit() else name: FLAGS.model}
    wd = Workdir(FLAGS.workdir)
    paths = {COMPLETE: wd.model(COMPLETE)}
    if not os.path.exists(paths[COMPLETE]):
        raise app.UsageError(f"{paths[COMPLETE]} not found: train the workdir first (python train.py "
                             f"--workdir={FLAGS.workdir} ...) or give --model=PATH")
    if FLAGS.baseline and os.path.exists(wd.model(BASELINE)):
        paths[BASELINE] = wd.model(BASELINE)
    return paths


def protocols(has_test_data: bool) -> list[str]:
    """``--protocols``, or every protocol that has data."""
    if FLAGS.protocols:
        wanted = list(dict.fromkeys(FLAGS.protocols))
        if "generalization" in wanted and not FLAGS.generalization_dir:
            raise app.UsageError("--protocols=generalization needs --generalization_dir=FOLDER")
        if {"raw", "robustness"} & set(wanted) and not has_test_data:
            raise app.UsageError("the raw and robustness protocols need the test data: give --data_dir=FOLDER "
                                 "(or --data=tfds:dfx_corpus/CONFIG)")
        return wanted
    found = (["raw", "robustness"] if has_test_data else []) + (["generalization"] if FLAGS.generalization_dir else [])
    if not found:
        raise app.UsageError("nothing to evaluate on: give --data_dir=FOLDER (the corpus, or a workdir whose "
                             "flags.txt names it) and/or --generalization_dir=FOLDER")
    return found


def results_dir(names: list[str]) -> str:
    if FLAGS.results_dir:
        return FLAGS.results_dir
    if not FLAGS.workdir:
        raise app.UsageError("give --results_dir=FOLDER (or --workdir) for the results of --model")
    return Workdir(FLAGS.workdir).results(*([names[0]] if FLAGS.model else []))


def config_from_flags() -> EvaluateConfig:
    """Everything a user can get wrong, as one line each, before any model is loaded."""
    if not FLAGS.workdir and not FLAGS.model:
        raise app.UsageError("give --workdir=W (evaluates W/models/complete.keras) or --model=PATH")
    if FLAGS.workdir and not os.path.isdir(FLAGS.workdir):
        raise app.UsageError(f"--workdir not found: {FLAGS.workdir}")
    if FLAGS.model and not os.path.exists(FLAGS.model):
        raise app.UsageError(f"--model not found: {FLAGS.model}")
    data = {k: getattr(FLAGS, k) for k in ("data_dir", "data") if getattr(FLAGS, k)}
    if not data and FLAGS.workdir:
        data = Workdir(FLAGS.workdir).recorded_data_flags()
    if data.get("data_dir") and not data.get("data") and not os.path.isdir(data["data_dir"]):
        raise app.UsageError(f"--data_dir not found: {data['data_dir']}")
    if FLAGS.generalization_dir and not os.path.isdir(FLAGS.generalization_dir):
        raise app.UsageError(f"--generalization_dir not found: {FLAGS.generalization_dir}")
    paths = model_paths()
    cfg = EvaluateConfig(models=paths, protocols=protocols(bool(data)), results_dir=results_dir(list(paths)),
                         data_dir=data.get("data_dir"), data=data.get("data"),
                         generalization_dir=FLAGS.generalization_dir, batch_size=FLAGS.batch_size, seed=FLAGS.seed)
    try:  # the results of hours of protocols must have somewhere to go
        check_writable_folder(cfg.results_dir, "--results_dir")
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    return cfg


def print_summary(written: dict, seconds: float) -> None:
    from dfx_keras.evaluation import reports

    results = reports.read_results(os.path.dirname(written["json"]))
    for name, blocks in reports.models_of(results).items():
        parts = []
        if "raw" in blocks:
            raw = blocks["raw"]
            parts.append(f"raw 3-class {raw['three_class']['accuracy']:.4f}, binary {raw['binary']['accuracy']:.4f}")
        for key in ("jpeg_qf50", "blur_k7"):
            if key in blocks.get("robustness", {}):
                parts.append(f"{key} binary {blocks['robustness'][key]['accuracy']:.4f}")
        if "generalization_mean" in blocks:
            parts.append(f"generalization mean {blocks['generalization_mean']['accuracy']:.4f}")
        print(f"{name}: " + "; ".join(parts))
    print(f"results in {os.path.dirname(written['json'])}: " +
          ", ".join(os.path.basename(p) for p in [written["json"], written["markdown"], written["csv"],
                                                   *written["plots"]]))
    print(f"done in {seconds:.0f} s")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    cfg = config_from_flags()
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    from dfx_keras import run  # the evaluation stack loads only once the flags are known to be sound

    start = time.time()
    try:
        _, written = run.evaluate(cfg)
    except (CorpusError, FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
    print_summary(written, time.time() - start)
