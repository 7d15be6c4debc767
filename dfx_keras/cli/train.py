"""``python train.py --flagfile=FILE``: every stage of DeepFeatureX Net, then evaluation and export.

Checks the flags and the data location before any heavy work, writes the resolved flags to
``workdir/flags.txt``, runs the requested stages (``run.train``: finished ones are skipped,
interrupted ones resume) and prints where everything landed.
"""

import dataclasses
import os
import sys
import time

from absl import app, flags, logging

from dfx_keras import backbones
from dfx_keras.cli import flags as dfx_flags
from dfx_keras.config import TrainConfig, TrainPlan
from dfx_keras.data.corpus import CorpusError
from dfx_keras.training.distribute import SettingsError
from dfx_keras.workdir import BASELINE, COMPLETE, InUseError, Workdir, atomic_write, check_writable_folder

FLAGS = flags.FLAGS


def define_flags() -> None:
    dfx_flags.define_train_flags()


def _check_flags() -> None:
    """One clear line for each mistake a user can make, before TensorFlow builds anything."""
    backbones.check_weights(FLAGS.backbone, FLAGS.weights)
    if not FLAGS.data_dir and not FLAGS.data:
        raise app.UsageError("give the corpus with --data_dir=FOLDER (or --data=tfds:dfx_corpus/CONFIG)")
    if FLAGS.data_dir and not FLAGS.make_demo_corpus and not os.path.isdir(FLAGS.data_dir):
        raise app.UsageError(f"--data_dir not found: {FLAGS.data_dir}")
    check_writable_folder(FLAGS.workdir, "--workdir")


def write_flags(path: str) -> None:
    """The resolved flags of this run, reusable as a flagfile."""
    module_flags = FLAGS.get_flags_for_module(dfx_flags.__name__)
    atomic_write(path, "\n".join(flag.serialize() for flag in module_flags if flag.value is not None) + "\n")


def _from_flags(config_class, **overrides):
    """A config dataclass whose fields take the values of the flags of the same names."""
    values = {f.name: FLAGS[f.name].value for f in dataclasses.fields(config_class) if f.name in FLAGS}
    return config_class(**{**values, **overrides})


def config_from_flags() -> TrainConfig:
    return _from_flags(TrainConfig, augment=tuple(FLAGS.augment),
                       jit_compile="auto" if FLAGS.jit_compile is None else FLAGS.jit_compile)


def plan_from_flags() -> TrainPlan:
    return _from_flags(TrainPlan)


def print_summary(outcome: dict, seconds: float) -> None:
    """The closing table: each stage's validation accuracy (and a base model's training
    images of its main class and of the others), the test accuracies, the paths."""
    workdir = Workdir(outcome["workdir"])
    print(f"\n{'stage':<10} {'epochs':>6} {'best':>5} {'val_acc':>8} {'val_loss':>9} {'main':>6} {'others':>6}  model")
    for name, s in outcome["stages"].items():
        print(f"{name:<10} {s['epochs']:>6} {s['best_epoch']:>5} {s['val_accuracy']:>8.4f} {s['val_loss']:>9.4f} "
              f"{s.get('main_images', ''):>6} {s.get('other_images', ''):>6}  {workdir.model(name)}")
    if outcome["stages"].get("complete", {}).get("frozen_bn") == "reference":
        print("complete.keras trained with --frozen_bn=reference: its base models' BatchNorm statistics have drifted "
              "and differ from models/bm_*.keras")
    results = outcome.get("results", {})
    if results.get("raw"):
        print(f"\n{'test (balanced)':<16} {'3-class':>8} {'binary':>8} {'AUC':>8}  n (3-class / binary)")
        baseline = results.get(BASELINE, {}).get("raw")
        for name, raw in [(COMPLETE, results["raw"])] + ([(BASELINE, baseline)] if baseline else []):
            print(f"{name:<16} {raw['three_class']['accuracy']:>8.4f} {raw['binary']['accuracy']:>8.4f} "
                  f"{raw['binary']['auc']:>8.4f}  {raw['three_class']['n']} / {raw['binary']['n']}")
        print(f"results: {outcome['results_path']}")
    if outcome.get("export_path"):
        print(f"SavedModel for TF Serving: {outcome['export_path']}")
    print(f"done in {seconds / 60:.1f} min; workdir {workdir.root}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        _check_flags()
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    from dfx_keras import run  # the training stack loads only once the flags are known to be sound

    start = time.time()
    try:
        with run.owned_workdir(FLAGS.workdir, FLAGS.strategy):  # before flags.txt: a second run must not rewrite it
            write_flags(Workdir(FLAGS.workdir).flags_txt)
            outcome = run.train(config_from_flags(), plan_from_flags())
    except (CorpusError, FileNotFoundError, SettingsError, backbones.WeightsError, InUseError) as e:
        sys.exit(f"error: {e}")
    print_summary(outcome, time.time() - start)
