"""The exported SavedModel vs the Keras model's ``predict``, same images, same run, CPU.

    python benchmarks/bench_serving.py [--backbone=tiny] [--image_size=64] [--model=FILE.keras]

Builds a complete model (random weights; speed does not depend on them) or loads ``--model``,
exports it to a temporary folder, and times on the same PNG images (--source_size square,
random content):
  single : one image per call, --singles calls -> latency p50 / p95 (ms)
  batch  : --batch_size images per call, --batches calls -> throughput (images/s)
for three paths:
  keras predict : ``decode_and_resize`` (eager) + ``model.predict`` + softmax, as a Python user
                  would call the Keras model
  sm bytes      : ``serving_default`` on the encoded PNGs (decode + resize + model in the graph,
                  what TF Serving runs)
  sm images     : ``serving_images`` on the same decoded, resized float images
  keras tf.function : the Keras model wrapped in ``tf.function`` on those float images: the
                  best a Python caller of the Keras model can do, for reference
Paths are interleaved round by round (--rounds) so load from other jobs hits all alike; each is
warmed up first. Targets: the SavedModel is not slower than Keras (ratio >= 1.0) and its
batch throughput is >= 3x its single-image throughput. Also prints the export's size.
"""

from __future__ import annotations

import os
import pathlib
import platform
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402

import dfx_keras  # noqa: E402
from dfx_keras import models  # noqa: E402
from dfx_keras.serving import export  # noqa: E402
from dfx_keras.serving import module as serving_module  # noqa: E402
from dfx_keras.data import pipelines  # noqa: E402

flags.DEFINE_string("backbone", "tiny", "Backbone of the three base models when no --model is given.")
flags.DEFINE_integer("image_size", None, "Model input size; default: the backbone's.")
flags.DEFINE_string("model", None, "Benchmark this complete model (.keras) instead of a fresh one.")
flags.DEFINE_integer("source_size", 256, "Side of the encoded test images (PNG).")
flags.DEFINE_integer("singles", 40, "Single-image calls per path and round.")
flags.DEFINE_integer("batches", 3, "Batched calls per path and round.")
flags.DEFINE_integer("batch_size", 32, "Images per batched call.")
flags.DEFINE_integer("rounds", 2, "Rounds; the paths alternate within each.")
FLAGS = flags.FLAGS


def build_model():
    if FLAGS.model:
        return models.load_model(FLAGS.model)
    bms = [dfx_keras.build_base_model(FLAGS.backbone, FLAGS.image_size, None, name=n)
           for n in ("bm_dm", "bm_gan", "bm_real")]
    return dfx_keras.build_complete_model(*bms)


def test_images(n: int, size: int) -> list[bytes]:
    """Smooth random images (so PNG compresses as photos do, not as noise)."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        small = rng.integers(0, 256, (size // 16, size // 16, 3)).astype(np.float32)
        image = tf.image.resize(small, (size, size), method="bicubic")
        out.append(tf.io.encode_png(tf.cast(tf.clip_by_value(image, 0, 255), tf.uint8)).numpy())
    return out


def paths(model, signatures, pngs: list[bytes], image_size: int) -> dict:
    """name -> function(list of image indices) -> probabilities."""
    resized = [pipelines.decode_and_resize(p, image_size) for p in pngs]  # decoded once, for the image paths

    def keras_predict(indices):
        images = np.stack([pipelines.decode_and_resize(pngs[i], image_size).numpy() for i in indices])
        return tf.nn.softmax(model.predict(images, batch_size=len(indices), verbose=0)).numpy()

    compiled = tf.function(lambda images: tf.nn.softmax(model(images, training=False)))

    def keras_function(indices):
        return compiled(tf.stack([resized[i] for i in indices])).numpy()

    def sm_bytes(indices):
        encoded = tf.constant([pngs[i] for i in indices])
        return signatures[serving_module.SIGNATURE_BYTES](image_bytes=encoded)["probabilities"].numpy()

    def sm_images(indices):
        images = tf.stack([resized[i] for i in indices])
        return signatures[serving_module.SIGNATURE_IMAGES](images=images)["probabilities"].numpy()

    return {"keras predict": keras_predict, "keras tf.function": keras_function, "sm bytes": sm_bytes,
            "sm images": sm_images}


def timed(fn, arg) -> float:
    start = time.perf_counter()
    fn(arg)
    return time.perf_counter() - start


def run(fns: dict, n_images: int) -> dict:
    batch = list(range(FLAGS.batch_size))
    for fn in fns.values():  # warm-up: tracing, oneDNN primitive caches
        for _ in range(2):
            fn([0]), fn(batch)
    singles = {name: [] for name in fns}
    batches = {name: [] for name in fns}
    for _ in range(FLAGS.rounds):
        for name, fn in fns.items():
            singles[name] += [timed(fn, [i % n_images]) for i in range(FLAGS.singles)]
            batches[name] += [timed(fn, batch) for _ in range(FLAGS.batches)]
    return {name: {"p50_ms": 1e3 * np.percentile(singles[name], 50), "p95_ms": 1e3 * np.percentile(singles[name], 95),
                   "single_ips": 1 / np.median(singles[name]),
                   "batch_ips": len(batch) / np.median(batches[name])} for name in fns}


def report(stats: dict, size_mib: float, image_size: int) -> None:
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s), "
          f"TensorFlow {tf.__version__}, CPU only")
    print(f"model: {FLAGS.model or FLAGS.backbone} at {image_size}x{image_size}, "
          f"source PNGs {FLAGS.source_size}x{FLAGS.source_size}; export size {size_mib:.1f} MiB\n")
    print(f"| path | p50 ms | p95 ms | batch-1 img/s | batch-{FLAGS.batch_size} img/s | batch / single |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, s in stats.items():
        print(f"| {name} | {s['p50_ms']:.1f} | {s['p95_ms']:.1f} | {s['single_ips']:.1f} | {s['batch_ips']:.1f} | "
              f"{s['batch_ips'] / s['single_ips']:.1f}x |")
    keras = stats["keras predict"]
    for name in ("keras tf.function", "sm bytes", "sm images"):
        s = stats[name]
        print(f"{name} vs keras predict: single-image speed ratio {keras['p50_ms'] / s['p50_ms']:.2f}, "
              f"batch throughput ratio {s['batch_ips'] / keras['batch_ips']:.2f} (target >= 1.0)")
    print(f"sm bytes batch-{FLAGS.batch_size} / batch-1 throughput: "
          f"{stats['sm bytes']['batch_ips'] / stats['sm bytes']['single_ips']:.1f}x (target >= 3)")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    model = build_model()
    image_size = int(model.input_shape[1])
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        path = export.export_saved_model(model, tmp)
        print(f"exported in {time.perf_counter() - start:.1f} s")
        size_mib = export.directory_size(path) / 2 ** 20
        signatures = tf.saved_model.load(path).signatures
        pngs = test_images(max(FLAGS.batch_size, 8), FLAGS.source_size)
        fns = paths(model, signatures, pngs, image_size)
        reference = fns["keras predict"]([0, 1, 2, 3])
        for name in ("keras tf.function", "sm bytes", "sm images"):  # the paths compute the same thing
            np.testing.assert_allclose(fns[name]([0, 1, 2, 3]), reference, atol=1e-5)
        report(run(fns, len(pngs)), size_mib, image_size)


if __name__ == "__main__":
    app.run(main)
