"""Base-model training step images/s: float32 vs XLA vs mixed precision, as train.py compiles it.

A DenseNet-121 base model at 256 px (random weights), compiled by fit.compile_model
(coupled-L2 Adam, cross-entropy on float32 logits) under each setting, trains on synthetic
batches of --batch_size images per replica: --warmup steps (tracing, XLA compilation), then
--steps timed steps.

  CPU (no GPU visible): float32, float32 + XLA, mixed_bfloat16, mixed_bfloat16 + XLA.
  GPU: MirroredStrategy over all visible GPUs (global batch = batch_size x GPUs): float32,
       mixed_float16, mixed_float16 + XLA (Keras 3 drops XLA on several GPUs, see
       fit.jit_compile; on one GPU it applies).

    python benchmarks/bench_train_step.py [--batch_size=16] [--steps=5] [--warmup=2]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import tensorflow as tf  # noqa: E402

from dfx_keras import (
    config,  # noqa: E402
    models,  # noqa: E402
)
from dfx_keras.training import distribute, fit  # noqa: E402

CPU_SETTINGS = (("float32", False), ("float32", True), ("mixed_bfloat16", False), ("mixed_bfloat16", True))
GPU_SETTINGS = (("float32", False), ("mixed_float16", False), ("mixed_float16", True))


def synthetic_batches(batch_size: int, image_size: int) -> tf.data.Dataset:
    images = tf.random.stateless_uniform((batch_size, image_size, image_size, 3), seed=(1, 2), maxval=255.0)
    labels = tf.constant([0, 1] * (batch_size // 2) + [0] * (batch_size % 2))
    return tf.data.Dataset.from_tensors((images, labels)).repeat()


def images_per_second(args, strategy: tf.distribute.Strategy, precision: str, jit: bool) -> float:
    cfg = config.TrainConfig(workdir="", backbone=args.backbone, weights=None, image_size=args.image_size,
                               precision=precision, jit_compile=jit)
    replicas = strategy.num_replicas_in_sync
    with strategy.scope(), fit.dtype_policy(precision):
        model = fit.compile_model(models.build_base_model(args.backbone, args.image_size, None), cfg, replicas)
    data = synthetic_batches(args.batch_size * replicas, args.image_size)
    model.fit(data, steps_per_epoch=args.warmup, epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(data, steps_per_epoch=args.steps, epochs=1, verbose=0)
    return args.steps * args.batch_size * replicas / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="densenet121")
    parser.add_argument("--image_size", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=16, help="per replica")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    gpus = tf.config.list_logical_devices("GPU")
    strategy = distribute.get_strategy("mirrored") if gpus else tf.distribute.get_strategy()
    settings = GPU_SETTINGS if gpus else CPU_SETTINGS
    device = f"{len(gpus)} GPU(s), MirroredStrategy" if gpus else f"CPU ({os.cpu_count()} cores)"
    print(f"{args.backbone} {args.image_size}px, batch {args.batch_size} per replica, {device}; "
          f"load average before: {os.getloadavg()}")
    rates = {}
    for precision, jit in settings:
        rates[precision, jit] = images_per_second(args, strategy, precision, jit)
        print(f"{precision:<15} XLA {'on ' if jit else 'off'}  {rates[precision, jit]:7.2f} images/s", flush=True)
    baseline = rates["float32", False]
    for (precision, jit), value in rates.items():
        if (precision, jit) != ("float32", False):
            print(f"{precision}{' + XLA' if jit else ''} / float32: {value / baseline:.2f}x")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
