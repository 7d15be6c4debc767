"""The corpus as a prepared tfds dataset (``datasets/dfx_corpus``), for the training pipelines.

``--data=tfds:dfx_corpus/r256`` reads the prepared splits instead of the folder. The splits are
the folder reader's pools (train_base = pool 0, train_complete = 1, test = 2), and each split
comes with its ``corpus.Sample`` list so the subset logic of ``corpus`` works unchanged.

Only prepared data is read (tfds rebuilds the builder from the files), so this module does not
import the builder; prepare with ``tfds build datasets/dfx_corpus --manual_dir=CORPUS``.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Sequence

import tensorflow as tf
import tensorflow_datasets as tfds

from dfx_keras.data import pipelines
from dfx_keras.data.corpus import SPLIT_NAMES, Corpus, Sample

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


def load_tfds_samples(spec: str, data_dir: str | None = None, decode_images: bool = True) -> dict[str, TfdsSplit]:
    """Every split of a prepared dataset: its tf.data.Dataset and its Samples, in dataset order.

    Files are read in order (shuffle_files=False), so the order is fixed as long as tf.data stays
    deterministic (the default). The Samples take one pass over the records, without decoding
    images; shuffle downstream, after pairing. ``decode_images=False`` leaves ``image`` as the
    stored encoded bytes (what the training pipelines decode themselves).
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
    decoders = None if decode_images else {"image": tfds.decode.SkipDecoding()}
    return {split: TfdsSplit(builder.as_dataset(split=split, shuffle_files=False, decoders=decoders),
                             _samples(builder, split, architectures.int2str))
            for split in builder.info.splits}


def _samples(builder: tfds.core.DatasetBuilder, split: str, architecture_name) -> list[Sample]:
    """The split's samples from its metadata fields; images are skipped, not decoded."""
    metadata = builder.as_dataset(split=split, shuffle_files=False,
                                  decoders={"image": tfds.decode.SkipDecoding()})
    metadata = metadata.map(lambda ex: (ex["file_name"], ex["label"], ex["architecture"]),
                            num_parallel_calls=tf.data.AUTOTUNE).batch(1024)
    return [Sample(path.decode("utf-8"), int(label), architecture_name(int(architecture)))
            for paths, labels, archs in tfds.as_numpy(pipelines.finish(metadata))
            for path, label, architecture in zip(paths, labels, archs)]


class TfdsSource:
    """A pipelines source over prepared splits: ``(file_name, encoded image)`` of given samples.

    Each sample is read from the split of its pool; images stay encoded (PNG bytes) until the
    shared ``pipelines`` decode, so folder and tfds runs decode and resize identically.
    Shuffling happens after the read, in a bounded buffer (a full-corpus buffer of encoded
    images would not fit in memory), so the order differs from a folder run's.
    """

    SHUFFLE_BUFFER = 4096

    def __init__(self, splits: dict[str, TfdsSplit]):
        self.splits = splits

    def encoded(self, samples: Sequence[Sample], shuffle_seed: int | None = None,
                select: Callable[[tf.data.Dataset], tf.data.Dataset] | None = None) -> tf.data.Dataset:
        """``(file_name, encoded image)``: one pass in record order, shuffled given a seed;
        ``select`` picks from the records (a worker's share) before they reach the decoder."""
        wanted = pipelines.lookup_table(samples, [1] * len(samples), tf.int32)
        splits = [self.splits[SPLIT_NAMES[pool]].dataset for pool in sorted({s.pool for s in samples})]
        ds = functools.reduce(tf.data.Dataset.concatenate, splits)
        ds = ds.filter(lambda ex: wanted.lookup(ex["file_name"]) > 0)
        ds = ds.map(lambda ex: (ex["file_name"], ex["image"]), num_parallel_calls=tf.data.AUTOTUNE)
        if shuffle_seed is not None:
            ds = ds.shuffle(min(len(samples), self.SHUFFLE_BUFFER), seed=shuffle_seed, reshuffle_each_iteration=True)
        return select(ds) if select is not None else ds


def open_tfds(spec: str) -> tuple[Corpus, TfdsSource]:
    """The corpus (every split's samples) and a source reading its images, from a tfds spec."""
    splits = load_tfds_samples(spec, decode_images=False)
    return Corpus(spec, [s for split in splits.values() for s in split.samples]), TfdsSource(splits)
