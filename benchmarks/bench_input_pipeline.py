"""Input pipeline images/s: the training pipeline vs a reference-style loop vs a bare tf.data map.

All three turn PNGs with the corpus' size mix (datasets/dfx_corpus/synthetic.py's table:
178x218, 216, 256, 512 and 1024 px) into normalised float32 256x256 images:

  reference : PIL open -> convert RGB -> resize 256x256 bilinear -> /255, ImageNet mean/std,
              one image at a time, one process (the reference code's Dataset without workers)
  pipeline  : pipelines.image_dataset, what training feeds the models (parallel read + decode
              + antialiased resize, targets, batch 32, prefetch); the ImageNet normalisation
              is the models' first layer and runs on the accelerator with the model
  pipeline+norm : the same followed by that normalisation layer in the input pipeline
  bare      : read -> decode PNG -> antialiased resize, parallel map, batch 32, prefetch

Each is warmed up by one pass (file cache, tracing), then timed over whole passes for at least
--seconds; they alternate --rounds times so load from other jobs hits them alike, and the best
round counts. Also prints the process CPU time per image (all threads), which other jobs on
the machine disturb much less than wall-clock rates. Prints the load average before and
after: measure on an idle machine.

    python benchmarks/bench_input_pipeline.py [--images=300] [--seconds=3] [--rounds=6]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.bench_tfds_prepare import ensure_corpus  # noqa: E402
from dfx_keras.backbones import BackbonePreprocessing  # noqa: E402
from dfx_keras.data import corpus as corpus_lib  # noqa: E402
from dfx_keras.data import pipelines  # noqa: E402

SIZE, BATCH = 256, 32
MEAN, STD = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)


def reference_loop(paths: list[str]) -> int:
    for path in paths:
        image = Image.open(path).convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR)
        (np.asarray(image, np.float32) / 255.0 - MEAN) / STD
    return len(paths)


def consume(ds: tf.data.Dataset) -> int:
    return sum(int(tf.shape(batch[0] if isinstance(batch, tuple) else batch)[0]) for batch in ds)


def training_pipeline(root: str, samples) -> tf.data.Dataset:
    return pipelines.image_dataset(pipelines.FolderSource(root), samples, SIZE, BATCH,
                                   targets=[s.label for s in samples])


def normalised(ds: tf.data.Dataset) -> tf.data.Dataset:
    normalise = BackbonePreprocessing("torch")  # DenseNet's, as in the models
    return ds.map(lambda images, labels: (normalise(images), labels), num_parallel_calls=tf.data.AUTOTUNE)


def bare_map(paths: list[str]) -> tf.data.Dataset:
    """The floor: parallel read, PNG decode and antialiased resize, nothing else (also the
    folder side of bench_tfds_read.py)."""
    def load(path):
        image = tf.io.decode_png(tf.io.read_file(path), channels=3)
        return tf.image.resize(image, (SIZE, SIZE), method="bilinear", antialias=True)

    ds = tf.data.Dataset.from_tensor_slices(paths).map(load, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(BATCH).prefetch(tf.data.AUTOTUNE)


def rate(run, seconds: float) -> tuple[float, float]:
    """Whole passes of ``run()`` (which returns the images it produced) for >= seconds:
    images per second and CPU milliseconds per image."""
    images, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        images += run()
    return images / (time.perf_counter() - start), 1000 * (time.process_time() - cpu_start) / images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "dfx_bench_input"))
    args = parser.parse_args()
    root = os.path.join(args.workdir, f"corpus{args.images}")
    ensure_corpus(pathlib.Path(root), args.images)
    samples = corpus_lib.scan_corpus(root).samples
    paths = [os.path.join(root, s.path) for s in samples]
    runs = {
        "reference": lambda: reference_loop(paths),
        "pipeline": lambda ds=training_pipeline(root, samples): consume(ds),
        "pipeline+norm": lambda ds=normalised(training_pipeline(root, samples)): consume(ds),
        "bare": lambda ds=bare_map(paths): consume(ds),
    }
    print(f"{len(paths)} PNGs, load average before: {os.getloadavg()}")
    for run in runs.values():
        run()  # warm-up pass
    best, cpu_ms = {name: 0.0 for name in runs}, {name: float("inf") for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            images_per_s, ms_per_image = rate(run, args.seconds)
            best[name], cpu_ms[name] = max(best[name], images_per_s), min(cpu_ms[name], ms_per_image)
    for name in runs:
        print(f"{name:<14} {best[name]:8.1f} images/s  {cpu_ms[name]:6.2f} CPU ms/image")
    print(f"pipeline / reference: {best['pipeline'] / best['reference']:.2f}x (target >= 2.5x); "
          f"pipeline+norm / reference: {best['pipeline+norm'] / best['reference']:.2f}x")
    print(f"pipeline / bare map:  {best['pipeline'] / best['bare']:.2f} (target >= 0.90); "
          f"in CPU time per image: {cpu_ms['bare'] / cpu_ms['pipeline']:.2f}")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
