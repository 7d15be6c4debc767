"""Training and evaluation read a prepared tfds dataset exactly as they read the folder.

The demo corpus is prepared with the `tfds build` command line, then both sources feed the
shared pipeline: every image must come out identical, and train.py must run on --data=tfds:.
"""

import csv
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from dfx_keras.data import corpus as corpus_lib
from dfx_keras.data import pipelines, tfds_source

REPO = pathlib.Path(__file__).resolve().parents[1]


def _images_by_path(source, samples):
    ds = pipelines.image_dataset(source, samples, 32, 16, with_paths=True)
    return {p.decode(): image for images, paths in ds for image, p in zip(images.numpy(), paths.numpy())}


def test_folder_and_tfds_sources_yield_identical_images(tfds_demo):
    corpus_dir, spec = tfds_demo
    folder = corpus_lib.scan_corpus(corpus_dir)
    corpus, source = tfds_source.open_tfds(spec)
    assert sorted(s.path for s in corpus.samples) == sorted(s.path for s in folder.samples)
    for pool in range(3):
        from_tfds = _images_by_path(source, corpus.pool(pool))
        from_folder = _images_by_path(pipelines.FolderSource(corpus_dir), folder.pool(pool))
        assert from_tfds.keys() == from_folder.keys() and from_tfds
        for path, image in from_folder.items():
            np.testing.assert_array_equal(from_tfds[path], image, err_msg=path)


def test_tfds_source_reads_a_subset_across_splits_and_shuffles_with_a_seed(tfds_demo):
    _, spec = tfds_demo
    corpus, source = tfds_source.open_tfds(spec)
    subset = corpus.samples[::3]
    read = lambda seed: [p.decode() for p, _ in source.encoded(subset, shuffle_seed=seed).as_numpy_iterator()]
    assert sorted(read(None)) == sorted(s.path for s in subset)
    assert read(5) == read(5) and sorted(read(5)) == sorted(read(None))
    halves = [[p.decode() for p, _ in source.encoded(
        subset, shuffle_seed=5, select=lambda ds: pipelines.worker_slices(ds, (2, k), 4)).as_numpy_iterator()]
        for k in range(2)]  # two workers' shares: disjoint, together the whole shuffled pass
    assert not set(halves[0]) & set(halves[1]) and sorted(halves[0] + halves[1]) == sorted(read(5))
    assert halves[0][:2] + halves[1][:2] == read(5)[:4]


@pytest.mark.slow
def test_train_cli_on_tfds_data(tfds_demo, tmp_path):
    corpus_dir, spec = tfds_demo
    work = tmp_path / "work"
    result = subprocess.run([sys.executable, "train.py", f"--workdir={work}", f"--data={spec}", "--stage=base",
                             "--main_class=real", "--epochs=1", "--backbone=tiny", "--weights=none",
                             "--image_size=32", "--batch_size=8"], capture_output=True, text=True, cwd=REPO,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (work / "models" / "bm_real.keras").is_file()
    with open(work / "split.csv", newline="") as f:
        pools = {row["image_path"]: int(row["label"]) for row in csv.DictReader(f)}
    assert pools == {s.path: s.pool for s in corpus_lib.scan_corpus(corpus_dir).samples}
