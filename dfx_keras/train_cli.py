"""``python train.py --flagfile=FILE``: every stage of DeepFeatureX Net, then evaluation and export.

Checks the flags and the data location before any heavy work, writes the resolved flags to
``workdir/flags.txt``, runs the requested stages (finished ones are skipped, interrupted ones
resume) and prints where everything landed.
"""

import os
import sys
import time

from absl import app, flags, logging

from dfx_keras import flags as dfx_flags

dfx_flags.define_train_flags()
FLAGS = flags.FLAGS


def _check_flags() -> None:
    """One clear line for each mistake a user can make, before TensorFlow builds anything."""
    from dfx_keras import backbones, durable

    backbones.check_weights(FLAGS.backbone, FLAGS.weights)
    if not FLAGS.data_dir and not FLAGS.data:
        raise app.UsageError("give the corpus with --data_dir=FOLDER (or --data=tfds:dfx_corpus/CONFIG)")
    if FLAGS.data_dir and not FLAGS.make_demo_corpus and not os.path.isdir(FLAGS.data_dir):
        raise app.UsageError(f"--data_dir not found: {FLAGS.data_dir}")
    durable.check_writable_folder(FLAGS.workdir, "--workdir")


def write_flags(path: str) -> None:
    """The resolved flags of this run, reusable as a flagfile."""
    module_flags = FLAGS.get_flags_for_module(dfx_flags.__name__)
    tmp = f"{path}.{os.getpid()}.tmp"  # the workers of a multi-worker run all write the same file
    with open(tmp, "w") as f:
        f.write("\n".join(flag.serialize() for flag in module_flags if flag.value is not None) + "\n")
    os.replace(tmp, path)


def config_from_flags():
    from dfx_keras.training import TrainConfig

    return TrainConfig(
        workdir=FLAGS.workdir, backbone=FLAGS.backbone, weights=FLAGS.weights, image_size=FLAGS.image_size,
        batch_size=FLAGS.batch_size, epochs=FLAGS.epochs, learning_rate=FLAGS.learning_rate,
        weight_decay=FLAGS.weight_decay, lr_step_epochs=FLAGS.lr_step_epochs, lr_gamma=FLAGS.lr_gamma,
        others_fraction=FLAGS.others_fraction, others_min_images=FLAGS.others_min_images,
        val_fraction=FLAGS.val_fraction, seed=FLAGS.seed, max_pixels=FLAGS.max_pixels,
        feature_cache=FLAGS.feature_cache, cache_images=FLAGS.cache_images, augment=tuple(FLAGS.augment),
        augment_p=FLAGS.augment_p, precision=FLAGS.precision,
        jit_compile="auto" if FLAGS.jit_compile is None else FLAGS.jit_compile,
        sync_batchnorm=FLAGS.sync_batchnorm, bn_momentum=FLAGS.bn_momentum, frozen_bn=FLAGS.frozen_bn,
        overwrite=FLAGS.overwrite)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        _check_flags()
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    from dfx_keras import run

    start = time.time()
    from dfx_keras.backbones import WeightsError
    from dfx_keras.data.corpus import CorpusError
    from dfx_keras.durable import InUseError
    from dfx_keras.training import SettingsError

    try:
        with run.owned_workdir(FLAGS.workdir, FLAGS.strategy):  # before flags.txt: a second run must not rewrite it
            write_flags(os.path.join(FLAGS.workdir, "flags.txt"))
            outcome = run.train(config_from_flags(), data_dir=FLAGS.data_dir, data=FLAGS.data, stage=FLAGS.stage,
                                main_class=FLAGS.main_class, strategy=FLAGS.strategy,
                                make_demo_corpus=FLAGS.make_demo_corpus, evaluate=FLAGS.evaluate,
                                train_baseline=FLAGS.train_baseline)
    except (CorpusError, FileNotFoundError, SettingsError, WeightsError, InUseError) as e:
        sys.exit(f"error: {e}")
    run.print_summary(outcome, time.time() - start)


def entry_point():
    app.run(main)


if __name__ == "__main__":
    entry_point()
