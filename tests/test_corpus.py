"""Corpus scan, pool assignment, subsets and bad files (no model involved)."""

import csv
import json
import os
import random
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from absl import logging
from PIL import Image

from conftest import make_corpus, png_declaring, write_image
from dfx_keras.data import corpus as c
from dfx_keras.datasets.dfx_corpus import synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _paths(n, seed=0):
    rng = random.Random(seed)
    archs = {"dm_generated": ["Glide", "DALL-E 2"], "gan_generated": ["StyleGAN", "AttGAN"], "real": ["FFHQ"]}
    out = []
    for i in range(n):
        nature = rng.choice(list(archs))
        out.append(f"{nature}/{rng.choice(archs[nature])}/{i:05d}_{rng.getrandbits(32):08x}.png")
    return out


def test_pool_shares_are_near_40_40_20():
    counts = Counter(c.pool_of(p) for p in _paths(2000))
    shares = [counts[k] / 2000 for k in range(3)]
    assert all(abs(s - e) < 0.02 for s, e in zip(shares, (0.4, 0.4, 0.2))), shares


def test_pool_assignment_is_pinned():
    """The hash is part of the contract: a change would move images between train and test."""
    paths = ["real/FFHQ/00001.png", "dm_generated/Glide/a b.png", "gan_generated/StyleGAN2/seed0001.png",
             "real/Others/x.jpg", "dm_generated/DALL-E MINI/0.png", "gan_generated/AttGAN/1.png"]
    assert [c.pool_of(p) for p in paths] == [0, 0, 1, 2, 2, 1]


def test_split_is_identical_across_scans_with_shuffled_file_order(tmp_path):
    """Two copies of a corpus written in different file orders get the same pools."""
    rng = np.random.default_rng(0)
    files = [(f"{n}/{a}/{i:03d}.png", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
             for n in ("dm_generated", "gan_generated", "real") for a in ("A x", "B-y") for i in range(30)]
    splits = []
    for copy, order_seed in (("one", 1), ("two", 2)):
        shuffled = files[:]
        random.Random(order_seed).shuffle(shuffled)
        for rel, image in shuffled:
            write_image(str(tmp_path / copy / rel), image)
        corpus = c.scan_corpus(str(tmp_path / copy))
        c.write_split_csv(corpus.samples, str(tmp_path / f"{copy}.csv"))
        splits.append(c.read_split_csv(str(tmp_path / f"{copy}.csv")))
    assert splits[0] == splits[1] and len(splits[0]) == len(files)
    with open(tmp_path / "one.csv", newline="") as f:
        assert next(csv.reader(f)) == ["label", "image_path", "model"]


def test_scan_labels_architectures_and_extensions(tmp_path):
    root = make_corpus(tmp_path / "c", per_folder=2)
    write_image(str(tmp_path / "c/real/CelebA/upper.JPG"), np.zeros((8, 8, 3), np.uint8), fmt="JPEG")
    write_image(str(tmp_path / "c/real/CelebA/x.webp"), np.zeros((8, 8, 3), np.uint8), fmt="WEBP")
    (tmp_path / "c/real/CelebA/notes.txt").write_text("not an image, not scanned")
    corpus = c.scan_corpus(root)
    assert len(corpus.samples) == 6 * 2 + 2 and not corpus.skipped
    assert corpus.architectures() == sorted(["Latent Diffusion", "DALL-E MINI", "StyleGAN2", "Big-GAN x", "CelebA", "Others"])
    upper = next(s for s in corpus.samples if s.path.endswith("upper.JPG"))
    assert (upper.label, upper.architecture) == (2, "CelebA")


def test_wrong_layout_fails_with_a_clear_message(tmp_path):
    (tmp_path / "dm_generated").mkdir()
    with pytest.raises(c.CorpusError, match="lacks the class folder.*gan_generated, real"):
        c.list_images(str(tmp_path))
    with pytest.raises(c.CorpusError, match="not found"):
        c.list_images(str(tmp_path / "nope"))
    (tmp_path / "gan_generated").mkdir(), (tmp_path / "real").mkdir()
    with pytest.raises(c.CorpusError, match="no images"):
        c.list_images(str(tmp_path))


def _bad_and_odd_files(root):
    """Every odd-but-valid format, and every kind of corrupt file, in one architecture folder."""
    folder = os.path.join(root, "real", "Others")
    rgb = np.random.default_rng(1).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    write_image(f"{folder}/rgba.png", np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)]))
    write_image(f"{folder}/gray.png", rgb[..., 0])
    Image.fromarray(rgb).convert("P").save(f"{folder}/palette.png")
    Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)).save(f"{folder}/sixteen.png")
    Image.fromarray(rgb).convert("CMYK").save(f"{folder}/cmyk.jpg")
    open(f"{folder}/zero.png", "wb").close()
    with open(f"{folder}/text.png", "w") as f:
        f.write("this is not a PNG")
    good = open(f"{folder}/rgba.png", "rb").read()
    with open(f"{folder}/truncated.png", "wb") as f:
        f.write(good[: len(good) // 2])
    write_image(f"{folder}/rgb.jpg", rgb, fmt="JPEG")
    jpeg = open(f"{folder}/rgb.jpg", "rb").read()
    with open(f"{folder}/truncated.jpg", "wb") as f:
        f.write(jpeg[: len(jpeg) // 2])
    return {"zero.png", "text.png", "truncated.png", "truncated.jpg"}, \
        {"rgba.png", "gray.png", "palette.png", "sixteen.png", "cmyk.jpg", "rgb.jpg"}


def test_corrupt_files_are_skipped_with_one_warning_each_and_odd_formats_kept(tmp_path, monkeypatch):
    root = make_corpus(tmp_path / "c", per_folder=2)
    corrupt, odd = _bad_and_odd_files(root)
    warnings = []
    monkeypatch.setattr(logging, "warning", lambda msg, *args: warnings.append(msg % args))
    corpus = c.scan_corpus(root)
    assert {os.path.basename(p) for p, _ in corpus.skipped} == corrupt
    assert odd <= {os.path.basename(s.path) for s in corpus.samples}
    per_file = [w for w in warnings if w.startswith("skipping unreadable image")]
    assert len(per_file) == len(corrupt) and all(any(n in w for w in per_file) for n in corrupt)
    assert any(f"skipped {len(corrupt)} unreadable image(s)" in w for w in warnings)


def test_odd_formats_decode_to_8bit_rgb(tmp_path):
    import tensorflow as tf

    from dfx_keras.data.pipelines import decode_image

    _, odd = _bad_and_odd_files(str(tmp_path))
    for name in odd:
        image = decode_image(tf.io.read_file(str(tmp_path / "real/Others" / name))).numpy()
        assert image.shape == (24, 32, 3) and image.dtype == np.float32, name
        assert 0 <= image.min() and image.max() <= 255 and image.std() > 10, name
    sixteen = decode_image(tf.io.read_file(str(tmp_path / "real/Others/sixteen.png"))).numpy()
    gray = decode_image(tf.io.read_file(str(tmp_path / "real/Others/gray.png"))).numpy()
    np.testing.assert_allclose(sixteen, gray, atol=1)  # 16-bit scaled down, not clipped


def _folder_samples(counts):
    return [c.Sample(f"{c_name}/{arch}/{i}.png", label, arch)
            for (label, c_name, arch), n in counts.items() for i in range(n)]


def test_base_model_subset_keeps_the_main_class_and_a_fraction_of_every_other_folder():
    counts = {(0, "dm_generated", "Glide"): 400, (0, "dm_generated", "LDM"): 300,
              (1, "gan_generated", "StyleGAN"): 500, (1, "gan_generated", "ProGAN"): 20,
              (2, "real", "FFHQ"): 1000}
    samples = _folder_samples(counts)
    subset = c.base_model_subset(samples, main_class=0, others_fraction=0.04)
    got = Counter((s.label, s.architecture) for s in subset)
    assert got == {(0, "Glide"): 400, (0, "LDM"): 300, (1, "StyleGAN"): 20, (1, "ProGAN"): 1, (2, "FFHQ"): 40}
    assert c.base_model_subset(samples, 0, 0.04) == subset  # deterministic
    assert c.fraction_others(subset, 0) == pytest.approx(61 / 761)


def test_others_share_on_the_full_corpus_table_matches_the_paper():
    table = {0: [3421, 1000, 2000, 4000, 5000], 1: [6005, 2600, 1047, 4000, 3367, 1000, 6848, 4705, 7000, 1000],
             2: [5135, 4981, 9225]}
    pool0 = {label: [round(0.4 * n) for n in sizes] for label, sizes in table.items()}
    for main, expected in ((0, 0.129), (1, 0.036), (2, 0.099)):
        others = sum(c.folder_quota(n, 0.04) for label, sizes in pool0.items() if label != main for n in sizes)
        mains = sum(pool0[main])
        assert others / (others + mains) == pytest.approx(expected, abs=0.003)


def test_holdouts_and_class_weights():
    samples = _folder_samples({(0, "dm_generated", "a"): 100, (1, "gan_generated", "b"): 300, (2, "real", "c"): 200})
    train, val = c.holdout_split(samples, 0.2, salt="x")
    assert len(train) + len(val) == 600 and abs(len(val) - 120) < 25
    assert not {s.path for s in train} & {s.path for s in val}
    train, val = c.balanced_holdout(samples, 0.2, salt="y")
    assert Counter(s.label for s in val) == {0: 20, 1: 20, 2: 20} and len(train) == 540
    w = c.class_weights(samples)
    assert w == pytest.approx({0: 1 - 100 / 600, 1: 0.5, 2: 1 - 200 / 600})


def test_others_min_images_raises_every_other_folder_to_n_capped_by_its_size():
    counts = {(0, "dm_generated", "Glide"): 400, (1, "gan_generated", "StyleGAN"): 500,
              (1, "gan_generated", "ProGAN"): 20, (2, "real", "FFHQ"): 1000}
    samples = _folder_samples(counts)
    plain = c.base_model_subset(samples, main_class=0, others_fraction=0.04)
    raised = c.base_model_subset(samples, main_class=0, others_fraction=0.04, others_min_images=30)
    assert Counter((s.label, s.architecture) for s in raised) == {
        (0, "Glide"): 400, (1, "StyleGAN"): 30, (1, "ProGAN"): 20, (2, "FFHQ"): 40}  # 4% of FFHQ is already 40
    assert set(plain) < set(raised)  # the same images first (hash order), then more
    assert c.folder_quota(500, 0.0, min_images=7) == 7 and c.folder_quota(500, 0.0) == 0


def _table_pool0() -> dict:
    """The corpus table's folders at their expected pool-0 sizes (40% of each)."""
    return {(c.CLASS_NAMES.index(name), name, arch): round(c.POOL_SHARES[0] * n)
            for arch, (name, n, _) in synthetic.CORPUS_TABLE.items()}


def _training_counts(pool0: dict, main: int, **subset_kwargs) -> dict:
    subset = c.base_model_subset(_folder_samples(pool0), main, 0.04, **subset_kwargs)
    train, _ = c.holdout_split(subset, 0.2, salt="val")
    counts = c.base_model_counts(train, main)
    assert counts["main_images"] + counts["other_images"] == len(train) == sum(counts["folder_images"].values())
    return counts


def test_few_negatives_warning_fires_on_a_small_corpus_and_not_on_the_72k_corpus():
    for main in range(3):  # the paper's corpus: hundreds of negatives per base model
        counts = _training_counts(_table_pool0(), main)
        assert 400 < counts["other_images"] < 800, counts["other_images"]
        assert c.few_others_warning("bm", counts["other_images"]) is None
    # A demo-sized corpus (3 folders per class, 300 images each: 120 in pool 0): a handful of negatives.
    small = {(label, name, f"arch {k}"): 120 for label, name in enumerate(c.CLASS_NAMES) for k in range(3)}
    for main in range(3):
        counts = _training_counts(small, main)
        assert counts["other_images"] < 40 and counts["main_images"] > 250
        warning = c.few_others_warning("bm_x", counts["other_images"])
        assert warning.startswith(f"bm_x: only {counts['other_images']} training images of other classes")
        assert "--others_min_images" in warning and "\n" not in warning
        raised = _training_counts(small, main, others_min_images=40)
        assert raised["other_images"] >= 0.7 * 6 * 40  # 80% of 6 folders x 40 stay in training


SCAN = """
import json, sys
from dfx_keras.data import corpus
scanned = corpus.scan_corpus(sys.argv[1])
print(json.dumps({"samples": [s.path for s in scanned.samples], "skipped": [p for p, _ in scanned.skipped],
                  "unreadable": [p for p, _ in getattr(scanned, "unreadable", [])]}))
"""


def test_folders_and_files_the_process_cannot_read_are_reported_not_dropped(tmp_path):
    root = make_corpus(tmp_path / "c", per_folder=3)
    os.chmod(tmp_path / "c" / "real" / "Others", 0)
    os.chmod(tmp_path / "c" / "real" / "CelebA" / "img 000.png", 0)
    # Root reads anything: the scan runs without the capabilities that bypass file permissions.
    unprivileged = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    result = subprocess.run([*unprivileged, sys.executable, "-c", SCAN, root], capture_output=True, text=True,
                            cwd=REPO, env={**os.environ, "PYTHONPATH": REPO}, timeout=120)
    os.chmod(tmp_path / "c" / "real" / "Others", 0o755)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["unreadable"] == ["real/Others"] and "cannot read folder" in result.stderr
    assert found["skipped"] == ["real/CelebA/img 000.png"]
    assert len(found["samples"]) == 6 * 3 - 3 - 1


def test_special_files_named_like_images_are_never_read(tmp_path):
    root = make_corpus(tmp_path / "c", per_folder=2)
    os.mkfifo(tmp_path / "c" / "real" / "CelebA" / "pipe.png")  # reading it would block forever
    corpus = c.scan_corpus(root, check=False)  # evaluate.py's scan: no file is opened
    assert "real/CelebA/pipe.png" not in {s.path for s in corpus.samples} and len(corpus.samples) == 12
    assert corpus.unreadable == [("real/CelebA/pipe.png", "not a regular file")]


def test_one_decompression_bomb_limit_for_the_scan_and_the_serving_signature(tmp_path):
    from dfx_keras.serving import module as serving_module

    root = make_corpus(tmp_path / "c", per_folder=2)
    (tmp_path / "c" / "real" / "CelebA" / "bomb.png").write_bytes(png_declaring(16000, 16000))  # 256 MP, CRCs right
    write_image(str(tmp_path / "c" / "real" / "CelebA" / "big.png"), np.zeros((100, 100, 3), np.uint8))
    reasons = dict(c.scan_corpus(root).skipped)
    assert list(reasons) == ["real/CelebA/bomb.png"]  # Pillow's own guard let it through (it stops at 537 MP)
    assert "16000x16000 image: 256000000 pixels, over the max_pixels limit of 100000000" in reasons["real/CelebA/bomb.png"]
    assert serving_module.DEFAULT_MAX_PIXELS == c.DEFAULT_MAX_PIXELS == 100_000_000
    tight = c.scan_corpus(root, max_pixels=5000)  # --max_pixels: the 100x100 image is over it, 40x48 ones are not
    assert sorted(dict(tight.skipped)) == ["real/CelebA/big.png", "real/CelebA/bomb.png"]
    assert len(tight.samples) == 12
