"""Reading prepared dfx_corpus/r256 vs decoding and resizing the PNG folder, side by side.

Both are training-style tf.data pipelines ending in float32 batches of 32 256x256 images:
  tfds   : dfx_corpus/r256 records -> decode PNG (tfds) -> float32 -> batch 32
  folder : read file -> decode PNG -> resize 256x256 bilinear antialias -> batch 32
with parallel maps (AUTOTUNE) and prefetch in both. Each is warmed up by one pass (file cache),
then timed over whole passes for at least --seconds; they alternate twice so that load from
other jobs on the machine hits both alike.

    python benchmarks/bench_tfds_read.py [--workdir=/tmp/dfx_bench] [--images=300]

Uses the corpus and dfx_corpus/r256 that bench_tfds_prepare.py leaves in --workdir (made here
when missing).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from benchmarks.bench_input_pipeline import bare_map, consume, rate  # noqa: E402
from benchmarks.bench_tfds_prepare import ensure_corpus, prepare  # noqa: E402
from dfx_keras.datasets.dfx_corpus import dfx_corpus_dataset_builder as builder_lib  # noqa: E402
from dfx_keras.data import corpus as corpus_lib  # noqa: E402

BATCH = 32
TARGET_RATIO = 4.0
ALL_SPLITS = "+".join(builder_lib.SPLIT_NAMES)


def tfds_pipeline(builder: tfds.core.DatasetBuilder) -> tf.data.Dataset:
  ds = builder.as_dataset(split=ALL_SPLITS, shuffle_files=False)
  ds = ds.map(lambda ex: tf.cast(ex["image"], tf.float32), num_parallel_calls=tf.data.AUTOTUNE)
  return ds.batch(BATCH).prefetch(tf.data.AUTOTUNE)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--images", type=int, default=300, help="images in the generated corpus")
  parser.add_argument("--workdir", default="/tmp/dfx_bench", help="corpus and prepared data")
  parser.add_argument("--seconds", type=float, default=5.0, help="minimum timed seconds per measurement")
  args = parser.parse_args()
  work = pathlib.Path(args.workdir)
  corpus = work / "corpus"
  ensure_corpus(corpus, args.images)
  builder = builder_lib.Builder(config="r256", data_dir=str(work / "data_r256"))
  if not builder.is_prepared():
    builder = prepare("r256", corpus, work / "data_r256", beam=False)[0]
  folder = corpus_lib.scan_corpus(str(corpus), check=False)
  paths = [folder.abspath(s) for s in folder.samples]
  pipelines = {"tfds r256": tfds_pipeline(builder), "folder PNG": bare_map(paths)}
  print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
        f"{len(paths)} images; batch {BATCH}", flush=True)

  for ds in pipelines.values():
    consume(ds)  # warm-up pass
  rates = {name: [] for name in pipelines}
  for _ in range(2):
    for name, ds in pipelines.items():
      rates[name].append(rate(lambda: consume(ds), args.seconds)[0])
      print(f"  {name:10s}: {rates[name][-1]:7.1f} images/s", flush=True)
  best = {name: max(r) for name, r in rates.items()}
  ratio = best["tfds r256"] / best["folder PNG"]
  print(f"tfds r256 {best['tfds r256']:.1f} images/s, folder PNG {best['folder PNG']:.1f} images/s: "
        f"ratio {ratio:.2f}x (target >= {TARGET_RATIO:.0f}x); load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
  main()
