"""Preparation throughput of the dfx_corpus tfds builder, and its disk size per config.

Generates (once) a corpus whose mix of architectures and image sizes follows the corpus table
(datasets/dfx_corpus/synthetic.py: 178x218/216, 256, 512 and 1024 px PNGs), then prepares
  r256 with the plain generator, r256 with Beam's DirectRunner on 2 processes, and original,
timing each download_and_prepare call (TensorFlow's import and corpus generation excluded).
Disk sizes are measured per architecture and extrapolated to the 72,334 images of the table.

    python benchmarks/bench_tfds_prepare.py [--images=300] [--workdir=/tmp/dfx_bench]
"""

from __future__ import annotations

import argparse
import collections
import os
import pathlib
import shutil
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from dfx_keras.datasets.dfx_corpus import dfx_corpus_dataset_builder as builder_lib  # noqa: E402
from dfx_keras.datasets.dfx_corpus import synthetic  # noqa: E402

TARGET_IMAGES_PER_S = 20.0
BEAM_FLAGS = ["--runner=DirectRunner", "--direct_num_workers=2", "--direct_running_mode=multi_processing"]


def ensure_corpus(root: pathlib.Path, images: int) -> int:
  """Writes the synthetic corpus unless one of that size is there; returns its image count."""
  marker = root / f".complete-{images}"
  if not marker.exists():
    shutil.rmtree(root, ignore_errors=True)
    print(f"generating a {images}-image corpus in {root} ...", flush=True)
    synthetic.write_table_corpus(root, total=images)
    marker.touch()
  return sum(1 for p in root.rglob("*.png"))


def prepare(config: str, corpus: pathlib.Path, data_dir: pathlib.Path, beam: bool) -> tuple[tfds.core.DatasetBuilder, float, float]:
  """Prepares one config from scratch; returns the builder, wall seconds and this process' CPU seconds.

  CPU seconds say what the work costs when other jobs share the cores (Beam's worker
  processes are not counted in them).
  """
  shutil.rmtree(data_dir, ignore_errors=True)
  options = {}
  if beam:
    options["beam_options"] = tfds.core.lazy_imports.apache_beam.options.pipeline_options.PipelineOptions(BEAM_FLAGS)
  builder = builder_lib.Builder(config=config, data_dir=str(data_dir))
  wall, cpu = time.perf_counter(), time.process_time()
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(corpus), **options))
  return builder, time.perf_counter() - wall, time.process_time() - cpu


def bytes_per_architecture(builder: tfds.core.DatasetBuilder) -> dict[str, float]:
  """Mean size of one serialized example per architecture, from the written TFRecords."""
  sizes = collections.defaultdict(list)
  names = builder.info.features["architecture"].names
  for path in pathlib.Path(builder.data_dir).glob("*.tfrecord-*"):
    for record in tf.data.TFRecordDataset(str(path)):
      example = tf.train.Example.FromString(record.numpy())
      architecture = names[example.features.feature["architecture"].int64_list.value[0]]
      sizes[architecture].append(len(record.numpy()) + 16)  # + TFRecord framing
  return {a: sum(s) / len(s) for a, s in sizes.items()}


def source_bytes_per_architecture(corpus: pathlib.Path) -> dict[str, float]:
  sizes = collections.defaultdict(list)
  for path in corpus.rglob("*.png"):
    sizes[path.parent.name].append(path.stat().st_size)
  return {a: sum(s) / len(s) for a, s in sizes.items()}


def extrapolate(per_architecture: dict[str, float]) -> float:
  """Bytes for the full corpus: mean size per architecture times its image count in the table."""
  return sum(per_architecture[a] * count for a, (_, count, _) in synthetic.CORPUS_TABLE.items())


def gib(n: float) -> str:
  return f"{n / 2**30:.2f} GiB"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--images", type=int, default=300, help="images in the generated corpus")
  parser.add_argument("--workdir", default="/tmp/dfx_bench", help="corpus and prepared data go here")
  args = parser.parse_args()
  work = pathlib.Path(args.workdir)
  corpus = work / "corpus"
  n = ensure_corpus(corpus, args.images)
  print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; corpus: {n} PNGs in {corpus}",
        flush=True)

  r256, plain_s, plain_cpu = prepare("r256", corpus, work / "data_r256", beam=False)
  print(f"r256 plain generator      : {n / plain_s:6.1f} images/s ({plain_s:.1f} s; "
        f"{n / plain_cpu:.1f} images per CPU-second)", flush=True)
  _, beam_s, _ = prepare("r256", corpus, work / "data_beam", beam=True)
  print(f"r256 Beam DirectRunner x2 : {n / beam_s:6.1f} images/s ({beam_s:.1f} s)", flush=True)
  original, original_s, original_cpu = prepare("original", corpus, work / "data_original", beam=False)
  print(f"original plain generator  : {n / original_s:6.1f} images/s ({original_s:.1f} s; "
        f"{n / original_cpu:.1f} images per CPU-second)", flush=True)
  print(f"ratio r256 plain / target {TARGET_IMAGES_PER_S:.0f} images/s: {n / plain_s / TARGET_IMAGES_PER_S:.2f}x; "
        f"Beam x2 / plain: {plain_s / beam_s:.2f}x; load average now {os.getloadavg()[0]:.1f}")

  print(f"disk, extrapolated to the table's {synthetic.CORPUS_SIZE:,} images "
        f"(measured: corpus {gib(sum(p.stat().st_size for p in corpus.rglob('*.png')))} for {n} images):")
  print(f"  corpus folder (PNG)   : {gib(extrapolate(source_bytes_per_architecture(corpus)))}")
  for name, builder in (("original", original), ("r256", r256)):
    measured = sum(p.stat().st_size for p in pathlib.Path(builder.data_dir).iterdir())
    print(f"  dfx_corpus/{name:9s}: {gib(extrapolate(bytes_per_architecture(builder)))} "
          f"(measured {measured / 2**20:.1f} MiB)")


if __name__ == "__main__":
  main()
