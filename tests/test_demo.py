"""The procedural demo corpus: layout, determinism, fairness between classes, CLI, scanning."""

import collections
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from dfx_keras.classes import CLASS_NAMES
from dfx_keras.data import corpus, demo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PER_ARCH = 6
# Each scene is rendered once per class, so the class means differ only by what the rendering
# does to them (measured: < 1.2 levels of 255 over seeds 0-7 at 6 images per folder).
MEAN_TOLERANCE = 2.5


def _images(root):
    """{(class, architecture): [uint8 arrays in file order]}."""
    out = collections.defaultdict(list)
    for class_name in CLASS_NAMES:
        for arch in sorted(os.listdir(os.path.join(root, class_name))):
            folder = os.path.join(root, class_name, arch)
            for name in sorted(os.listdir(folder)):
                out[(class_name, arch)].append(np.asarray(Image.open(os.path.join(folder, name))))
    return out


def _files(root):
    """{relative path: bytes} of every file, the marker included."""
    found = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, root)] = f.read()
    return found


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("demo"))
    demo.generate_demo_corpus(root, PER_ARCH, seed=0)
    return root


def test_layout_and_counts(tmp_path):
    counts = demo.generate_demo_corpus(str(tmp_path), 3, seed=0)
    expected = {(c, spec.name): 3 for c in CLASS_NAMES for spec in demo.ARCHITECTURES[c]}
    assert counts == expected and len(counts) == 9
    assert sorted(os.listdir(tmp_path)) == sorted([*CLASS_NAMES, demo.MARKER_FILE])
    for (class_name, arch), n in counts.items():
        folder = tmp_path / class_name / arch
        assert sorted(os.listdir(folder)) == [f"{i:05d}.png" for i in range(n)]
    names = [arch for _, arch in counts]
    assert any(" " in a for a in names) and any("-" in a for a in names)
    marker = json.loads((tmp_path / demo.MARKER_FILE).read_text())
    assert marker["images_per_architecture"] == 3 and marker["seed"] == 0


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    a, b, c = (str(tmp_path / n) for n in "abc")
    demo.generate_demo_corpus(a, 2, seed=5)
    demo.generate_demo_corpus(b, 2, seed=5)
    demo.generate_demo_corpus(c, 2, seed=6)
    files_a, files_c = _files(a), _files(c)
    assert files_a == _files(b)
    assert files_a.keys() == files_c.keys()
    assert all(files_a[k] != files_c[k] for k in files_a if k.endswith(".png"))


def test_sizes_vary_and_are_shared_by_the_classes(demo_root):
    images = _images(demo_root)
    sizes = {c: collections.Counter(im.shape for (cls, _), ims in images.items() if cls == c for im in ims)
             for c in CLASS_NAMES}
    assert len(sizes["real"]) >= 3
    assert sizes["dm_generated"] == sizes["gan_generated"] == sizes["real"]
    assert all(shape[:2] in demo.IMAGE_SIZES and shape[2] == 3 for s in sizes.values() for shape in s)


def test_classes_have_the_same_brightness_and_colour(demo_root):
    images = _images(demo_root)
    means = np.array([np.mean([im.reshape(-1, 3).mean(0) for (cls, _), ims in images.items() if cls == c
                               for im in ims], axis=0) for c in CLASS_NAMES])
    colour_gap = np.abs(means[:, None] - means[None]).max()
    brightness = means.mean(axis=1)
    assert colour_gap < MEAN_TOLERANCE, means
    assert np.ptp(brightness) < MEAN_TOLERANCE, brightness


def test_traces_survive_the_resize_to_64(demo_root):
    """High-frequency energy after the demo's resize: DM images are clean, the others are not."""
    energy = {}
    for key, ims in _images(demo_root).items():
        small = np.stack([tf.image.resize(im, (64, 64), antialias=True).numpy().mean(axis=-1) for im in ims])
        centre = small[:, 1:-1, 1:-1]
        lap = 4 * centre - small[:, :-2, 1:-1] - small[:, 2:, 1:-1] - small[:, 1:-1, :-2] - small[:, 1:-1, 2:]
        energy[key] = np.median(np.abs(lap), axis=(1, 2))
    dm = np.concatenate([e for (c, _), e in energy.items() if c == "dm_generated"])
    others = np.concatenate([e for (c, _), e in energy.items() if c != "dm_generated"])
    assert dm.max() * 2.5 < others.min(), (dm.max(), others.min())


def test_rerun_with_fewer_images_leaves_no_stale_files(tmp_path):
    demo.generate_demo_corpus(str(tmp_path), 3, seed=0)
    counts = demo.generate_demo_corpus(str(tmp_path), 1, seed=0)
    assert len(corpus.list_images(str(tmp_path))) == sum(counts.values()) == 9


def test_ensure_reuses_only_a_complete_matching_corpus(tmp_path):
    root = str(tmp_path)
    assert demo.ensure_demo_corpus(root, 2, seed=1)[1] is True
    assert demo.ensure_demo_corpus(root, 2, seed=1)[1] is False
    assert demo.ensure_demo_corpus(root, 2, seed=2)[1] is True
    os.remove(os.path.join(root, "real", demo.ARCHITECTURES["real"][0].name, "00001.png"))
    assert demo.ensure_demo_corpus(root, 2, seed=2)[1] is True
    assert demo.existing_demo_corpus(root, 2, seed=2) is not None


def test_refuses_a_folder_with_other_data(tmp_path):
    (tmp_path / "real" / "MyCamera").mkdir(parents=True)
    with pytest.raises(ValueError, match="real/MyCamera"):
        demo.generate_demo_corpus(str(tmp_path), 1)


def test_never_touches_a_real_corpus_with_the_same_folder_names(tmp_path):
    """The demo uses the corpus table's names; a real corpus (no marker) is still refused."""
    (tmp_path / "real" / "CelebA").mkdir(parents=True)
    (tmp_path / "real" / "CelebA" / "000001.png").write_bytes(b"user data")
    with pytest.raises(ValueError, match="real/CelebA"):
        demo.ensure_demo_corpus(str(tmp_path), 1)
    assert (tmp_path / "real" / "CelebA" / "000001.png").read_bytes() == b"user data"


def test_scan_corpus_reads_everything(demo_root):
    scanned = corpus.scan_corpus(demo_root)
    assert scanned.skipped == []
    assert len(scanned.samples) == 9 * PER_ARCH
    assert scanned.architectures() == sorted(s.name for specs in demo.ARCHITECTURES.values() for s in specs)
    assert collections.Counter(s.label for s in scanned.samples) == {0: 3 * PER_ARCH, 1: 3 * PER_ARCH, 2: 3 * PER_ARCH}


def _cli(*args):
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "dfx_keras.cli", "demo_corpus", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_generates_then_reuses(tmp_path):
    out = str(tmp_path / "corpus")
    first = _cli(f"--out={out}", "--images_per_architecture=2", "--seed=3")
    assert first.returncode == 0, first.stderr
    assert out in first.stdout and "generated" in first.stdout and "18 images" in first.stdout
    assert "real/CelebA: 2" in first.stdout
    png = os.path.join(out, "gan_generated", "StyleGAN", "00000.png")
    stamp = os.stat(png).st_mtime_ns
    second = _cli(f"--out={out}", "--images_per_architecture=2", "--seed=3")
    assert second.returncode == 0 and "reused" in second.stdout
    assert os.stat(png).st_mtime_ns == stamp
    assert demo.existing_demo_corpus(out, 2, seed=3) is not None


def test_cli_errors_are_one_line(tmp_path):
    missing = _cli("--images_per_architecture=2")
    assert missing.returncode != 0 and "--out" in missing.stderr
    (tmp_path / "real" / "CelebA").mkdir(parents=True)
    foreign = _cli(f"--out={tmp_path}")
    assert foreign.returncode == 1
    assert foreign.stderr.strip().splitlines() == [
        f"cannot write the demo corpus: {tmp_path} already holds other data (real/CelebA); "
        "write the demo corpus to its own folder"]


def _user_files(root):
    """A user's own images in a copy of the demo corpus: one beside the demo's, one in a subfolder."""
    files = {os.path.join(root, "real", "FFHQ", "my_own_photo.png"): b"",
             os.path.join(root, "real", "FFHQ", "sub", "mine2.png"): b""}
    for i, path in enumerate(files):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(np.full((20, 30, 3), 40 * i, np.uint8)).save(path)
        files[path] = open(path, "rb").read()
    return files


def test_images_a_user_added_survive_every_rerun_and_are_part_of_the_corpus(tmp_path):
    root = str(tmp_path)
    demo.ensure_demo_corpus(root, 2, seed=0)
    mine = _user_files(root)
    for size, seed in ((2, 0), (3, 0), (1, 4)):  # reused, then regenerated with more, then fewer images
        counts, _ = demo.ensure_demo_corpus(root, size, seed)
        assert {p: open(p, "rb").read() for p in mine} == mine
        paths = {s.path for s in corpus.list_images(root)}
        assert {"real/FFHQ/my_own_photo.png", "real/FFHQ/sub/mine2.png"} <= paths
        assert len(paths) == sum(counts.values()) + 2 == 9 * size + 2  # no stale demo file either
    assert demo.ensure_demo_corpus(root, 1, seed=4)[1] is False  # the user's files do not make it incomplete


def test_a_user_file_where_the_demo_writes_is_refused_and_kept(tmp_path):
    root = str(tmp_path)
    demo.ensure_demo_corpus(root, 2, seed=0)
    theirs = tmp_path / "real" / "FFHQ" / "00002.png"  # where a 3-image demo would write
    theirs.write_bytes(b"not the demo's")
    edited = tmp_path / "real" / "CelebA" / "00001.png"  # a demo file the user replaced with their own
    edited.write_bytes(b"edited by the user")
    with pytest.raises(ValueError, match=r"2 file\(s\) that the demo did not write .*real/CelebA/00001.png"):
        demo.ensure_demo_corpus(root, 3, seed=1)
    assert theirs.read_bytes() == b"not the demo's" and edited.read_bytes() == b"edited by the user"
    theirs.unlink()
    demo.ensure_demo_corpus(root, 1, seed=1)  # fewer images: the edited file is the user's now, and stays
    assert edited.read_bytes() == b"edited by the user"
