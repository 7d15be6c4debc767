"""The corpus as a prepared tfds dataset (``datasets/dfx_corpus``), for the training pipelines.

``--data=tfds:dfx_corpus/r256`` reads the prepared splits instead of the folder. The splits are
the folder reader's pools (train_base = pool 0, train_complete = 1, test = 2), and each split
comes with its ``corpus.Sample`` list so the subset logic of ``corpus`` works unchanged.

Only prepared data is read (tfds rebuilds the builder from the files), so this module does not
import the builder; prepare with ``tfds build datasets/dfx_corpus --manual_dir=CORPUS``.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf
import tensorflow_datasets as tfds

from dfx_keras.data.corpus import Sample

SPEC_PREFIX = "tfds:"


class TfdsSplit(NamedTuple):
  """One split: its examples (dicts of image, label, architecture, file_name, height, width)
  and the matching samples, in the same order."""

  dataset: tf.data.Dataset
  samples: list[Sample]


def parse_spec(spec: str, data_dir: str | None = None) -> tuple[str, str | None]:
  """``tfds:NAME/CONFIG[@DATA_DIR]`` -> (NAME/CONFIG, data dir); the spec's DATA_DIR wins."""
  if not spec.startswith(SPEC_PREFIX) or len(spec) == len(SPEC_PREFIX):
    raise ValueError(f"expected tfds:NAME/CONFIG[@DATA_DIR], e.g. tfds:dfx_corpus/r256; got {spec!r}")
  name, _, spec_dir = spec[len(SPEC_PREFIX):].partition("@")
  return name, spec_dir or data_dir


def load_tfds_samples(spec: str, data_dir: str | None = None) -> dict[str, TfdsSplit]:
  """Every split of a prepared dataset: its tf.data.Dataset and its Samples, in dataset order.

  Files are read in order (shuffle_files=False), so the order is fixed as long as tf.data stays
  deterministic (the default). The Samples take one pass over the records, without decoding
  images; shuffle downstream, after pairing.
  """
  name, data_dir = parse_spec(spec, data_dir)
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise ValueError(f"{name} is not prepared under {data_dir or tfds.core.constants.DATA_DIR}; prepare it with "
                     f"`tfds build datasets/dfx_corpus --manual_dir=CORPUS [--data_dir=DIR]`") from None
  if not builder.is_prepared():
    raise ValueError(f"{name} is not prepared in {builder.data_dir}; run `tfds build datasets/dfx_corpus "
                     f"--manual_dir=CORPUS --config={builder.builder_config.name}`")
  architectures = builder.info.features["architecture"]
  return {split: TfdsSplit(builder.as_dataset(split=split, shuffle_files=False),
                           _samples(builder, split, architectures.int2str))
          for split in builder.info.splits}


def _samples(builder: tfds.core.DatasetBuilder, split: str, architecture_name) -> list[Sample]:
  """The split's samples from its metadata fields; images are skipped, not decoded."""
  metadata = builder.as_dataset(split=split, shuffle_files=False,
                                decoders={"image": tfds.decode.SkipDecoding()})
  metadata = metadata.map(lambda ex: (ex["file_name"], ex["label"], ex["architecture"]),
                          num_parallel_calls=tf.data.AUTOTUNE).batch(1024)
  return [Sample(path.decode("utf-8"), int(label), architecture_name(int(architecture)))
          for paths, labels, archs in tfds.as_numpy(metadata)
          for path, label, architecture in zip(paths, labels, archs)]
