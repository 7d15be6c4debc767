"""The generator-made corpus script (benchmarks/build_generated_corpus.py): its tiny build.

Two tiny builds run side by side in subprocesses (procedural stand-in photos, a few training
steps of every family, eager); the tests check the layout train.py and evaluate.py read, the
counts, image sizes, byte-identical reruns, the sample grids and build.json. The photo table and
the samplers' arithmetic are checked without training anything.
"""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from benchmarks.generated_corpus import build as build_lib
from benchmarks.generated_corpus import photos as photos_lib
from conftest import REPO
from dfx_keras.evaluation import protocols
from dfx_keras.classes import CLASS_NAMES
from dfx_keras.data import corpus as corpus_lib

SCRIPT = str(REPO / "benchmarks" / "build_generated_corpus.py")
TINY = build_lib.TINY


def run_script(*args, wait=True):
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.Popen([sys.executable, SCRIPT, *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return proc.communicate(timeout=600) + (proc.returncode,) if wait else proc


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory):
    """Two tiny builds with the same seed, run in parallel: their output folders."""
    roots = [str(tmp_path_factory.mktemp("generated") / name) for name in ("a", "b")]
    grids = str(tmp_path_factory.mktemp("grids"))
    procs = [run_script(f"--output={root}", "--config=tiny", "--photos=procedural", f"--grid_dir={grids}",
                        wait=False) for root in roots]
    for proc in procs:
        output, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, output[-3000:]
    return roots, grids


def png_files(folder):
    return sorted(f for f in os.listdir(folder) if f.endswith(".png"))


@pytest.mark.slow
def test_layout_and_counts_are_what_train_and_evaluate_read(two_builds):
    root = two_builds[0][0]
    corpus = corpus_lib.scan_corpus(os.path.join(root, "corpus"))
    assert not corpus.skipped
    by_folder = {}
    for sample in corpus.samples:
        key = (CLASS_NAMES[sample.label], sample.architecture)
        by_folder[key] = by_folder.get(key, 0) + 1
    trained = [f for f in build_lib.FAMILIES if not f.held_back]
    expected = {(f.label, f.name): TINY.fake_per_family for f in trained}
    expected.update({("real", folder): TINY.real_per_folder
                     for folder in (photos_lib.PLASMA, photos_lib.TESTDATA, photos_lib.PYPI)})
    assert by_folder == expected
    assert {label for label, _ in expected} == set(CLASS_NAMES)
    assert len({f.name for f in trained if f.label == "gan_generated"}) >= 3
    assert len({f.name for f in trained if f.label == "dm_generated"}) >= 3

    sets = protocols.generalization_sets(os.path.join(root, "heldout"))
    held = [f for f in build_lib.FAMILIES if f.held_back]
    assert sorted(sets) == sorted(f.name for f in held)
    assert {f.label for f in held} == {"gan_generated", "dm_generated"}
    for name, samples in sets.items():
        labels = [s.label for s in samples]
        real, fake = (protocols.GENERALIZATION_FOLDERS[f] for f in ("0_real", "1_fake"))
        assert labels.count(real) == TINY.heldout_real and labels.count(fake) == TINY.heldout_fake, name

    summary = json.load(open(os.path.join(root, "build.json")))
    assert sum(summary["counts"].values()) == len(corpus.samples) + sum(len(s) for s in sets.values())
    assert set(summary["photos"]["held_back"]) == set(photos_lib.HELD_BACK)
    assert not set(summary["photos"]["held_back"]) & set(summary["photos"]["training"])
    assert set(summary["stages"]) == {f.name for f in build_lib.FAMILIES}


@pytest.mark.slow
def test_images_are_rgb_squares_of_64_to_96_px(two_builds):
    root = two_builds[0][0]
    sizes = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            if name.endswith(".png") and "grids" not in dirpath:
                with Image.open(os.path.join(dirpath, name)) as image:
                    assert image.mode == "RGB" and image.width == image.height, (dirpath, name)
                    sizes.setdefault(os.path.relpath(dirpath, root), set()).add(image.width)
    for family in build_lib.FAMILIES:
        folder = (f"heldout/{family.name}/1_fake" if family.held_back
                  else f"corpus/{family.label}/{family.name}")
        assert sizes[folder] == {family.resolution}
    assert set().union(*sizes.values()) <= set(range(64, 97))
    real = set().union(*(v for k, v in sizes.items() if k.startswith("corpus/real") or k.endswith("0_real")))
    assert real <= set(build_lib.REAL_SIZES)


@pytest.mark.slow
def test_two_builds_are_byte_identical(two_builds):
    (a, b), _ = two_builds
    hashes = [json.load(open(os.path.join(root, "build.json")))["sha256"] for root in (a, b)]
    assert hashes[0] == hashes[1] == build_lib.tree_sha256(a) == build_lib.tree_sha256(b)
    # and the images are not all alike: the generators produced varied samples
    fake = os.path.join(a, "corpus", "gan_generated", "TConv-GAN")
    digests = {hashlib.sha256(open(os.path.join(fake, f), "rb").read()).digest() for f in png_files(fake)}
    assert len(digests) == TINY.fake_per_family


@pytest.mark.slow
def test_grids_and_no_partial_folder_left(two_builds):
    (root, _), grids = two_builds
    expected = {f"{f.name}.png" for f in build_lib.FAMILIES} | {"real.png"}
    assert set(os.listdir(os.path.join(root, "grids"))) == expected
    assert set(os.listdir(grids)) == expected
    rows, cols = build_lib.GRID
    with Image.open(os.path.join(grids, "ResizeConv-GAN.png")) as grid:
        assert grid.size == (cols * (96 + 2), rows * (96 + 2))
    assert not os.path.exists(root + ".partial")


def test_existing_output_is_refused_in_one_line(tmp_path):
    output, _, code = run_script(f"--output={tmp_path}", "--config=tiny", "--photos=procedural")
    assert code != 0
    assert output.strip().splitlines() == [f"error: {tmp_path} exists; pass --overwrite to replace it"]


def test_photo_table_has_30_distinct_pinned_photos_from_allowed_packages():
    names = [name for source in photos_lib.SOURCES for name, _ in source.photos.values()]
    pins = [pin for source in photos_lib.SOURCES for _, pin in source.photos.values()]
    assert len(set(names)) == len(names) and len(set(pins)) == len(pins)
    assert all(len(pin) == 64 and int(pin, 16) >= 0 for pin in pins)
    assert len(set(names) - set(photos_lib.HELD_BACK)) >= 30
    assert set(photos_lib.HELD_BACK) <= set(names)
    specs = {source.spec.split("==")[0].lower() for source in photos_lib.SOURCES}
    reserved = {"mate-backgrounds", "opencv-doc", "palapeli-data", "lomiri-wallpapers", "scikit-image",
                "scikit-learn", "sklearn", "skimage"}
    assert not specs & reserved
    assert all(source.licence for source in photos_lib.SOURCES)


def test_crops_are_seeded_and_sized():
    photos = photos_lib.procedural_photos(9, seed=1)
    train, held = photos_lib.split(photos)
    assert len(held) == len(photos_lib.HELD_BACK) and len(train) == 2
    a = photos_lib.crops(train, 5, 72, np.random.default_rng(3))
    b = photos_lib.crops(train, 5, 72, np.random.default_rng(3))
    assert a.shape == (5, 72, 72, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a[0], a[1])


def test_noise_schedules():
    from benchmarks.generated_corpus import diffusion

    for schedule in ("linear", "scaled_linear", "cosine"):
        betas = diffusion.betas(schedule)
        alpha_bar = np.cumprod(1 - betas)
        assert betas.shape == (diffusion.T,) and np.all(np.diff(betas) >= 0), schedule
        assert alpha_bar[0] > 0.99 and alpha_bar[-1] < 0.05, schedule
    np.testing.assert_allclose(diffusion.betas("linear")[[0, -1]], [1e-4, 0.02])


def test_ddim_with_an_exact_noise_oracle_returns_the_clean_image():
    """A DDIM step from x_t with the true noise lands on x_{t'} of the same x0 and noise."""
    from benchmarks.generated_corpus import diffusion

    model = diffusion.Diffusion("eps", "cosine", 8, 3, 8, 2, mults=(1, 2), graph=False)
    rng = np.random.default_rng(0)
    x0 = rng.uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32)
    eps = rng.standard_normal(x0.shape).astype(np.float32)
    ab = model.alpha_bar
    x_t = np.sqrt(ab[700]) * x0 + np.sqrt(1 - ab[700]) * eps
    x_s = model._ddim_step(x_t, eps, 700, 300, clip=True)
    np.testing.assert_allclose(x_s, np.sqrt(ab[300]) * x0 + np.sqrt(1 - ab[300]) * eps, atol=1e-5)
    np.testing.assert_allclose(model._ddim_step(x_t, eps, 700, -1, clip=True), x0, atol=1e-5)


def test_fingerprint_names_what_a_family_depends_on():
    """A resumed build keeps a family only if config, seed, family and its code are unchanged."""
    family = build_lib.FAMILIES[0]
    same = build_lib.fingerprint(family, TINY, 0)
    assert same == build_lib.fingerprint(family, TINY, 0)
    assert len({same, build_lib.fingerprint(family, TINY, 1), build_lib.fingerprint(family, build_lib.FULL, 0),
                build_lib.fingerprint(build_lib.FAMILIES[1], TINY, 0)}) == 4
