"""The dfx_corpus tfds builder: splits agree with the folder reader, Beam and plain preparation
agree, odd formats come out as 8-bit RGB, and the `tfds build` command line works end to end.

The builder's own tfds test (DfxCorpusTest, driven by dummy_data/) runs from here too.
"""

import pathlib

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from conftest import BUILDER_MODULE, run_tfds_build
from dfx_keras.datasets.dfx_corpus import dfx_corpus_dataset_builder as builder_lib
from dfx_keras.datasets.dfx_corpus import synthetic
from dfx_keras.datasets.dfx_corpus.dfx_corpus_dataset_builder_test import DfxCorpusTest  # noqa: F401 (collected)
from dfx_keras.classes import CLASS_NAMES
from dfx_keras.data import corpus, tfds_source

REPO = pathlib.Path(__file__).resolve().parents[1]
DUMMY = REPO / "datasets" / "dfx_corpus" / "dummy_data"
SPLIT_OF_POOL = dict(enumerate(builder_lib.SPLIT_NAMES))
BEAM_2_PROCESSES = "runner=DirectRunner,direct_num_workers=2,direct_running_mode=multi_processing"


def prepare(config, data_dir, manual_dir=DUMMY, **download_config):
  builder = builder_lib.Builder(config=config, data_dir=str(data_dir))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(manual_dir), **download_config))
  return builder


def examples_by_file(builder):
  """file name -> (split, label, architecture id, height, width, image bytes of the record)."""
  out = {}
  for split in builder.info.splits:
    ds = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
    for ex in tfds.as_numpy(ds):
      out[ex["file_name"].decode()] = (split, ex["label"], ex["architecture"], ex["height"], ex["width"], ex["image"])
  return out


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds_data")


@pytest.fixture(scope="module")
def prepared(prepared_dir):
  """dummy_data prepared in both configs by the plain (no Beam) path."""
  return {config: prepare(config, prepared_dir) for config in ("original", "r256")}


@pytest.mark.parametrize("config", ["original", "r256"])
def test_splits_agree_with_folder_reader_on_every_file(prepared, config):
  folder = corpus.scan_corpus(str(DUMMY))
  examples = examples_by_file(prepared[config])
  assert {path: split for path, (split, *_) in examples.items()} == {
      s.path: SPLIT_OF_POOL[corpus.pool_of(s.path)] for s in folder.samples}
  names = prepared[config].info.features["architecture"].names
  assert {p: (e[1], names[e[2]]) for p, e in examples.items()} == {
      s.path: (s.label, s.architecture) for s in folder.samples}
  metadata = prepared[config].info.metadata
  assert metadata["skipped_images"] == len(folder.skipped) == 3
  assert sorted(f.split(": ")[0] for f in metadata["skipped_files"]) == sorted(p for p, _ in folder.skipped)


def test_original_stores_rgb8_pngs_byte_for_byte_and_converts_the_rest(prepared):
  examples = examples_by_file(prepared["original"])
  for path, (_, _, _, height, width, png) in examples.items():
    source = (DUMMY / path).read_bytes()
    assert (png == source) == builder_lib._is_rgb8_png(source), path
    image = tf.io.decode_png(png).numpy()
    assert image.shape == (height, width, 3) and image.dtype == np.uint8, path
  assert examples["real/Others/huge 8000x8000.png"][3:5] == (8000, 8000)


def test_r256_images_are_256_and_keep_original_sizes(prepared):
  for path, (_, _, _, height, width, png) in examples_by_file(prepared["r256"]).items():
    assert tf.io.decode_png(png).shape == (256, 256, 3), path
    with builder_lib.Image.open(DUMMY / path) as source:
      assert (height, width) == (source.height, source.width)


@pytest.mark.parametrize("name", ["rgba.png", "grayscale.png", "palette.png", "gray 16-bit.png", "rgb 16-bit.png"])
def test_odd_pngs_become_what_the_folder_reader_decodes(name):
  data = (DUMMY / synthetic.DUMMY_ODD_FOLDER / name).read_bytes()
  png, _, _ = builder_lib.encode_png(data, None)
  np.testing.assert_array_equal(tf.io.decode_png(png).numpy(), tf.io.decode_png(data, channels=3).numpy())


def test_cmyk_jpeg_becomes_rgb():
  png, height, width = builder_lib.encode_png((DUMMY / synthetic.DUMMY_ODD_FOLDER / "cmyk.jpg").read_bytes(), None)
  assert tf.io.decode_png(png).shape == (height, width, 3)


def test_beam_preparation_writes_the_same_examples(prepared, tmp_path):
  beam = prepare("r256", tmp_path, beam_options=tfds.core.lazy_imports.apache_beam.options.pipeline_options
                 .PipelineOptions(["--runner=DirectRunner"]))
  assert examples_by_file(beam) == examples_by_file(prepared["r256"])
  assert beam.info.metadata["skipped_images"] == 3


def test_unknown_architecture_folder_fails_naming_it(tmp_path):
  synthetic.write_table_corpus(tmp_path, total=18, scale=0.02)
  (tmp_path / "dm_generated" / "DALL-E Mini").mkdir()
  (tmp_path / "dm_generated" / "DALL-E Mini" / "a.png").write_bytes((DUMMY / "real" / "loose image.png").read_bytes())
  with pytest.raises(corpus.CorpusError, match=r"dm_generated/DALL-E Mini \(1 image\(s\)\): did you mean 'DALL-E MINI'"):
    prepare("r256", tmp_path / "data", manual_dir=tmp_path)


def test_architecture_under_the_wrong_class_fails():
  samples = [corpus.Sample("real/StyleGAN/a.png", CLASS_NAMES.index("real"), "StyleGAN")]
  with pytest.raises(corpus.CorpusError, match="real/StyleGAN"):
    builder_lib.check_architectures(samples)


def test_missing_class_folder_fails_naming_it(tmp_path):
  (tmp_path / "real").mkdir()
  with pytest.raises(corpus.CorpusError, match="dm_generated, gan_generated"):
    builder_lib.list_corpus(tmp_path)


def test_tfds_source_pairs_each_example_with_its_sample(prepared, prepared_dir):
  splits = tfds_source.load_tfds_samples(f"tfds:dfx_corpus/r256@{prepared_dir}")
  folder = corpus.scan_corpus(str(DUMMY))
  for split, (dataset, samples) in splits.items():
    pool = builder_lib.SPLIT_NAMES.index(split)
    assert sorted(samples, key=lambda s: s.path) == sorted(folder.pool(pool), key=lambda s: s.path)
    assert [ex["file_name"].decode() for ex in tfds.as_numpy(dataset)] == [s.path for s in samples]


def test_tfds_source_says_how_to_prepare(tmp_path):
  with pytest.raises(ValueError, match="tfds build datasets/dfx_corpus"):
    tfds_source.load_tfds_samples("tfds:dfx_corpus/r256", data_dir=str(tmp_path))


@pytest.fixture(scope="module")
def table_corpus(tmp_path_factory):
  """A fresh corpus of 40 small images plus one truncated file."""
  root = tmp_path_factory.mktemp("corpus")
  synthetic.write_table_corpus(root, total=40, scale=0.1, seed=1)
  (root / "real" / "FFHQ" / "cut.png").write_bytes((DUMMY / "dm_generated" / "DALL-E MINI" / "truncated.png").read_bytes())
  return root


def test_tfds_build_command_line_prepares_then_reuses(table_corpus, tmp_path):
  code, output = run_tfds_build(f"--manual_dir={table_corpus}", f"--data_dir={tmp_path}", "--config=r256")
  assert code == 0, output[-3000:]
  assert "skipping unreadable image real/FFHQ/cut.png" in output
  assert "Generating train_base examples" in output  # tfds' progress bar
  ds = tfds.load("dfx_corpus/r256", split="test", data_dir=str(tmp_path))
  assert ds.element_spec["image"].shape == (256, 256, 3)
  listed = {s.path for s in corpus.scan_corpus(str(table_corpus)).samples}
  assert sum(1 for _ in ds) == sum(corpus.pool_of(p) == corpus.TEST_POOL for p in listed)
  files = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}

  # Named as an installed package names it (the wheel ships the builder as dfx_keras.datasets.dfx_corpus).
  code, output = run_tfds_build(f"--manual_dir={table_corpus}", f"--data_dir={tmp_path}", "--config=r256",
                                builder=BUILDER_MODULE)
  assert code == 0 and "Reusing dataset dfx_corpus" in output, output[-3000:]
  assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == files


def test_tfds_build_command_line_with_beam_on_two_processes(table_corpus, tmp_path):
  code, output = run_tfds_build(f"--manual_dir={table_corpus}", f"--data_dir={tmp_path / 'beam'}", "--config=r256",
                                f"--beam_pipeline_options={BEAM_2_PROCESSES}")
  assert code == 0, output[-3000:]
  plain = prepare("r256", tmp_path / "plain", manual_dir=table_corpus)
  beam = tfds.builder("dfx_corpus/r256", data_dir=str(tmp_path / "beam"))
  assert examples_by_file(beam) == examples_by_file(plain)
  assert beam.info.metadata["skipped_files"] == ["real/FFHQ/cut.png: OSError: image file is truncated"]
