"""Complete stage, 50 epochs: the head on cached features vs end to end through the base models.

Runs the complete stage as train.py does (stages.train_complete_model) twice on the same
three DenseNet-121 base models at 256 px (random weights: speed does not depend on them) and
the same complete-pool images of a corpus with the real size mix: once with the feature cache
(the default), once with --nofeature_cache. Each runs --epochs epochs; the 50-epoch time is
extrapolated as fixed cost + 50 x steady epoch time, where the steady epoch time is the fastest
epoch after the first (other jobs on a shared machine only slow epochs down) and the fixed cost
is everything else (loading, tracing, and for the cache the one pass through the three
backbones). A second, warm feature pass over the same images is timed on its own, which gives
the ratio at the corpus' scale (29k complete-pool images), where loading, tracing and kernel
set-up no longer count: 50 x end-to-end epoch / (warm feature pass + 50 x cached epoch); in
wall-clock time and in process CPU time, which other jobs disturb much less.

    python benchmarks/bench_feature_cache.py [--images=150] [--epochs=4] [--precision=float32]

--precision sets train.py's --precision for both runs: the head trains under it, the base
models stay float32 (they are loaded as trained).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.python.profiler import model_analyzer, option_builder  # noqa: E402

from benchmarks.bench_tfds_prepare import ensure_corpus  # noqa: E402
from dfx_keras import (
    config,  # noqa: E402
    models,  # noqa: E402
)
from dfx_keras.classes import CLASS_NAMES  # noqa: E402
from dfx_keras.data import corpus as corpus_lib  # noqa: E402
from dfx_keras.data import pipelines  # noqa: E402
from dfx_keras.training import distribute, feature_cache, fit, stages  # noqa: E402
from dfx_keras.workdir import Workdir  # noqa: E402

EPOCHS_TO_EXTRAPOLATE = 50


def clock() -> np.ndarray:
    """(wall seconds, process CPU seconds) now."""
    return np.array([time.perf_counter(), time.process_time()])


class FeaturePassTimer:
    """Adds up the (wall, CPU) time spent in FeatureCache.features (the pass through the backbones)."""

    def __init__(self):
        self.spent, original = np.zeros(2), feature_cache.FeatureCache.features

        def timed(cache, samples):
            start = clock()
            try:
                return original(cache, samples)
            finally:
                self.spent += clock() - start

        feature_cache.FeatureCache.features = timed


class EpochTimes(keras.callbacks.Callback):
    """(wall, CPU) seconds of every epoch."""

    def on_train_begin(self, logs=None):
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = clock()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(clock() - self.start)


def write_base_models(folder: str, backbone: str, image_size: int) -> None:
    os.makedirs(folder, exist_ok=True)
    for name in CLASS_NAMES:
        model_name = models.base_model_name(name)
        fit.save_model(models.build_base_model(backbone, image_size, None, name=model_name),
                            os.path.join(folder, f"{model_name}.keras"))


def time_complete_stage(workdir: str, base_models: str, corpus, source, args, feature_cache: bool) -> dict:
    shutil.rmtree(workdir, ignore_errors=True)
    shutil.copytree(base_models, os.path.join(workdir, "models"))
    timer = EpochTimes()
    cfg = config.TrainConfig(workdir=workdir, backbone=args.backbone, weights=None, image_size=args.image_size,
                               batch_size=args.batch_size, epochs=args.epochs, feature_cache=feature_cache,
                               precision=args.precision, verbose=0, extra_callbacks=[timer])
    start = clock()
    summary = stages.train_complete_model(cfg, corpus, source, distribute.get_strategy())
    total = clock() - start
    later = np.array(timer.times[1:])
    steady = np.array([later[:, 0].min(), statistics.median(later[:, 1])])  # fastest wall, median CPU
    fixed = total - args.epochs * steady
    return {"epochs": [round(float(t), 1) for t, _ in timer.times], "steady": steady, "fixed": fixed,
            "extrapolated": fixed + EPOCHS_TO_EXTRAPOLATE * steady,
            "images": summary["train_images"] + summary["val_images"]}


def warm_feature_pass(workdir: str, corpus, source, args) -> np.ndarray:
    """(wall, CPU) seconds of a second pass of the cache's feature extractor over the stage's images."""
    train, val, _ = stages.complete_split(corpus, config.TrainConfig(workdir).val_fraction)
    frozen = models.build_complete_model(*stages.load_base_models(Workdir(workdir)))
    cache = feature_cache.FeatureCache(Workdir(workdir).features, frozen, source, args.image_size, args.batch_size,
                                       write=False)
    cache.features(train + val)
    start = clock()
    cache.features(train + val)
    return clock() - start


def forward_macs(model: keras.Model) -> float:
    """Multiply-accumulates of one image's forward pass (TensorFlow's graph profiler)."""
    spec = tf.TensorSpec([1, *model.input_shape[1:]], tf.float32)
    graph = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec).graph
    options = {**option_builder.ProfileOptionBuilder.float_operation(), "output": "none"}
    tf.get_logger().setLevel("ERROR")  # the profiler's TF1 deprecation notices
    return model_analyzer.profile(graph, options=options).total_float_ops / 2


def flop_ceiling(base_models: str) -> tuple[float, float, float, float]:
    """The ratios arithmetic alone allows, on any hardware: (backbone GMAC, head GMAC, per epoch,
    50 epochs). Per image, an end-to-end epoch costs three backbone forward passes plus a head
    training step (~3 forward passes: forward, input and weight gradients); a cached epoch the
    head step only; the feature pass the three backbones once. Image decoding is left out."""
    base = models.load_model(os.path.join(base_models, f"{models.base_model_name(CLASS_NAMES[0])}.keras"))
    features = base.get_layer(models.FEATURES_LAYER).output
    backbones = 3 * forward_macs(keras.Model(base.input, features))
    head = 3 * forward_macs(models.build_head(features.shape[-1]))
    return (backbones / 3e9, head / 3e9, (backbones + head) / head,
            EPOCHS_TO_EXTRAPOLATE * (backbones + head) / (backbones + EPOCHS_TO_EXTRAPOLATE * head))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=150, help="corpus size; 40%% of it is the complete pool")
    parser.add_argument("--epochs", type=int, default=4, help="measured epochs per mode (>= 2)")
    parser.add_argument("--backbone", default="densenet121")
    parser.add_argument("--image_size", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--precision", default="float32", choices=["float32", "mixed_bfloat16", "mixed_float16"])
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "dfx_bench_feature_cache"))
    args = parser.parse_args()
    root = os.path.join(args.workdir, f"corpus{args.images}")
    ensure_corpus(pathlib.Path(root), args.images)
    corpus, source = corpus_lib.scan_corpus(root), pipelines.FolderSource(root)
    base_models = os.path.join(args.workdir, f"base_models_{args.backbone}_{args.image_size}")
    if not os.path.isdir(base_models):
        write_base_models(base_models, args.backbone, args.image_size)
    print(f"{args.backbone} {args.image_size}px, batch {args.batch_size}, head in {args.precision}; "
          f"load average before: {os.getloadavg()}")
    feature_pass = FeaturePassTimer()
    runs = {name: time_complete_stage(os.path.join(args.workdir, name), base_models, corpus, source, args, cache)
            for name, cache in (("cached", True), ("end_to_end", False))}
    for name, r in runs.items():
        print(f"{name:<11} {r['images']} images, epochs {r['epochs']} s; steady epoch {r['steady'][0]:.2f} s "
              f"({r['steady'][1]:.2f} CPU s), fixed {r['fixed'][0]:.1f} s, "
              f"{EPOCHS_TO_EXTRAPOLATE} epochs ~ {r['extrapolated'][0]:.0f} s")
    cached, end_to_end = runs["cached"], runs["end_to_end"]
    first_pass = feature_pass.spent.copy()
    warm = warm_feature_pass(os.path.join(args.workdir, "cached"), corpus, source, args)
    extrapolated = end_to_end["extrapolated"] / cached["extrapolated"]
    at_scale = EPOCHS_TO_EXTRAPOLATE * end_to_end["steady"] / (warm + EPOCHS_TO_EXTRAPOLATE * cached["steady"])
    per_epoch = end_to_end["steady"] / cached["steady"]
    print(f"feature pass over {cached['images']} images: {first_pass[0]:.1f} s ({first_pass[1]:.1f} CPU s) "
          f"in the run, {warm[0]:.1f} s ({warm[1]:.1f} CPU s) warm")
    print(f"end to end / cached, {EPOCHS_TO_EXTRAPOLATE} epochs, this run: {extrapolated[0]:.1f}x "
          f"(CPU time {extrapolated[1]:.1f}x; target >= 20x)")
    print(f"end to end / cached, {EPOCHS_TO_EXTRAPOLATE} epochs, at corpus scale: {at_scale[0]:.1f}x "
          f"(CPU time {at_scale[1]:.1f}x)")
    print(f"steady epoch, end to end / cached: {per_epoch[0]:.1f}x (CPU time {per_epoch[1]:.1f}x)")
    backbone, head, epoch_ceiling, run_ceiling = flop_ceiling(base_models)
    print(f"arithmetic ceiling: backbone {backbone:.3f} GMAC and head {head:.3f} GMAC forward per image, so "
          f"end to end / cached <= {epoch_ceiling:.1f}x per epoch and {run_ceiling:.1f}x for "
          f"{EPOCHS_TO_EXTRAPOLATE} epochs in multiply-adds")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
