"""tfds' standard builder test, driven by dummy_data/ (see synthetic.write_dummy_data).

The tree has 36 files with an image extension: 3 unreadable ones (empty, truncated, not an
image) are skipped, the 33 others are kept, including RGBA, grayscale, palette, 16-bit, CMYK
JPEG and an 8000x8000 PNG; the counts per split are those of corpus.pool_of.
"""

import pathlib

import tensorflow_datasets as tfds

from . import dfx_corpus_dataset_builder


class DfxCorpusTest(tfds.testing.DatasetBuilderTestCase):
  """Prepares both configs from dummy_data and checks the exact split sizes."""

  DATASET_CLASS = dfx_corpus_dataset_builder.Builder
  # Beside this file, whatever name the builder was imported under (tfds would resolve it
  # through the import name's top-level package, see Builder.pkg_dir_path).
  EXAMPLE_DIR = str(pathlib.Path(__file__).parent / "dummy_data")
  SPLITS = {"train_base": 10, "train_complete": 15, "test": 8}


if __name__ == "__main__":
  tfds.testing.test_main()
