"""dfx_corpus dataset: importing this package registers the builder with tfds."""

from .dfx_corpus_dataset_builder import Builder
