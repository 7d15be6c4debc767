"""Complete stage, 50 epochs: the head on cached features vs end to end through the base models.

Runs the complete stage as train.py does (training.train_complete_model) twice on the same
three DenseNet-121 base models at 256 px (random weights: speed does not depend on them) and
the same complete-pool images of a corpus with the real size mix: once with the feature cache
(the default), once with --nofeature_cache. Each runs --epochs epochs; the 50-epoch time is
extrapolated as fixed cost + 50 x steady epoch time, where the steady epoch time is the median
of the epochs after the first and the fixed cost is everything else (loading, tracing, and for
the cache the one pass through the three backbones). The feature pass is timed on its own
too, which gives the ratio at the corpus' scale (29k complete-pool images), where loading and
tracing no longer count: 50 x end-to-end epoch / (feature pass + 50 x cached epoch), per image.

    python benchmarks/bench_feature_cache.py [--images=150] [--epochs=3] [--backbone=densenet121]
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

from datasets.dfx_corpus.synthetic import write_table_corpus  # noqa: E402
from dfx_keras import models, training  # noqa: E402
from dfx_keras.classes import CLASS_NAMES  # noqa: E402
from dfx_keras.data import corpus as corpus_lib  # noqa: E402
from dfx_keras.data import pipelines  # noqa: E402

EPOCHS_TO_EXTRAPOLATE = 50


class FeaturePassTimer:
    """Adds up the time spent in FeatureCache.features (the one pass through the backbones)."""

    def __init__(self):
        self.seconds, self.original = 0.0, training.FeatureCache.features

        def timed(cache, samples):
            start = time.perf_counter()
            try:
                return self.original(cache, samples)
            finally:
                self.seconds += time.perf_counter() - start

        training.FeatureCache.features = timed


class EpochTimes(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self.start)


def write_base_models(folder: str, backbone: str, image_size: int) -> None:
    os.makedirs(folder, exist_ok=True)
    for name in CLASS_NAMES:
        model_name = models.base_model_name(name)
        training.save_model(models.build_base_model(backbone, image_size, None, name=model_name),
                            os.path.join(folder, f"{model_name}.keras"))


def time_complete_stage(workdir: str, base_models: str, corpus, source, args, feature_cache: bool) -> dict:
    shutil.rmtree(workdir, ignore_errors=True)
    shutil.copytree(base_models, os.path.join(workdir, "models"))
    timer = EpochTimes()
    cfg = training.TrainConfig(workdir=workdir, backbone=args.backbone, weights=None, image_size=args.image_size,
                               batch_size=args.batch_size, epochs=args.epochs, feature_cache=feature_cache,
                               verbose=0, extra_callbacks=[timer])
    start = time.perf_counter()
    summary = training.train_complete_model(cfg, corpus, source, training.get_strategy())
    total = time.perf_counter() - start
    steady = statistics.median(timer.times[1:])
    fixed = total - args.epochs * steady
    return {"total": total, "epochs": timer.times, "steady": steady, "fixed": fixed,
            "extrapolated": fixed + EPOCHS_TO_EXTRAPOLATE * steady,
            "images": summary["train_images"] + summary["val_images"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=150, help="corpus size; 40%% of it is the complete pool")
    parser.add_argument("--epochs", type=int, default=3, help="measured epochs per mode (>= 2)")
    parser.add_argument("--backbone", default="densenet121")
    parser.add_argument("--image_size", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "dfx_bench_feature_cache"))
    args = parser.parse_args()
    root = os.path.join(args.workdir, f"corpus{args.images}")
    if not os.path.isdir(root):
        write_table_corpus(root, args.images)
    corpus, source = corpus_lib.scan_corpus(root), pipelines.FolderSource(root)
    base_models = os.path.join(args.workdir, f"base_models_{args.backbone}_{args.image_size}")
    if not os.path.isdir(base_models):
        write_base_models(base_models, args.backbone, args.image_size)
    print(f"load average before: {os.getloadavg()}")
    feature_pass = FeaturePassTimer()
    runs = {name: time_complete_stage(os.path.join(args.workdir, name), base_models, corpus, source, args, cache)
            for name, cache in (("cached", True), ("end_to_end", False))}
    for name, r in runs.items():
        print(f"{name:<11} {r['images']} images, epochs {[round(t, 1) for t in r['epochs']]} s, "
              f"steady {r['steady']:.2f} s, fixed {r['fixed']:.1f} s, "
              f"{EPOCHS_TO_EXTRAPOLATE} epochs ~ {r['extrapolated']:.0f} s")
    ratio = runs["end_to_end"]["extrapolated"] / runs["cached"]["extrapolated"]
    print(f"end to end / cached, {EPOCHS_TO_EXTRAPOLATE} epochs: {ratio:.1f}x (target >= 20x)")
    print(f"steady epoch, end to end / cached: {runs['end_to_end']['steady'] / runs['cached']['steady']:.1f}x")
    cached, end_to_end = runs["cached"], runs["end_to_end"]
    at_scale = EPOCHS_TO_EXTRAPOLATE * end_to_end["steady"] / (
        feature_pass.seconds + EPOCHS_TO_EXTRAPOLATE * cached["steady"])
    print(f"feature pass: {feature_pass.seconds:.1f} s for {cached['images']} images; at corpus scale (per image, "
          f"no loading or tracing): {at_scale:.1f}x")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
