"""Shared fixtures: quiet TensorFlow, two logical CPU devices, small corpora on disk."""

import os
import pathlib
import struct
import subprocess
import sys
import zlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

# Two logical CPU devices, so MirroredStrategy can be tested without GPUs. This must happen
# before TensorFlow initialises its devices, hence at import time of the test session.
_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(_cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)

REPO = pathlib.Path(__file__).resolve().parents[1]
TFDS = pathlib.Path(sys.executable).with_name("tfds")

ARCHITECTURES = {
    "dm_generated": ["Latent Diffusion", "DALL-E MINI"],
    "gan_generated": ["StyleGAN2", "Big-GAN x"],
    "real": ["CelebA", "Others"],
}


def random_image(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def write_image(path, array, fmt=None, **kwargs):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path, format=fmt, **kwargs)


def make_corpus(root, per_folder=8, size=(40, 48), seed=0):
    """A small corpus of random images with a class-dependent pattern a tiny CNN can learn."""
    rng = np.random.default_rng(seed)
    for label, (name, archs) in enumerate(ARCHITECTURES.items()):
        for arch in archs:
            for i in range(per_folder):
                image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                image[label::3, :, :] //= 4  # stripes whose phase is the class
                write_image(os.path.join(root, name, arch, f"img {i:03d}.png"), image)
    return str(root)


def png_declaring(width, height, idat=None):
    """A PNG whose chunk CRCs are all correct, declaring ``width`` x ``height`` in its IHDR, whatever
    its pixel data (``idat``; default: a few compressed rows of zeros) holds."""
    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000) if idat is None else idat)
            + chunk(b"IEND", b""))


@pytest.fixture
def small_corpus(tmp_path):
    return make_corpus(tmp_path / "corpus")


# How a source checkout names the builder to `tfds build` (its folder), and how an installed
# package does (the dataset name and the module that registers it).
BUILDER_FOLDER = ("datasets/dfx_corpus",)
BUILDER_MODULE = ("dfx_corpus", "--imports=dfx_keras.datasets.dfx_corpus")


def run_tfds_build(*args, builder=BUILDER_FOLDER) -> tuple[int, str]:
    """Runs `tfds build <builder> ARGS` from the repo root: (exit code, stdout+stderr).

    The tfds command logs to stdout and draws its progress bars on stderr.
    """
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([str(TFDS), "build", *builder, *args], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    return done.returncode, done.stdout


@pytest.fixture(scope="session")
def tfds_demo(tmp_path_factory):
    """A fresh demo corpus and its `original` config, prepared once per session by the tfds
    command line (test_tfds_training and test_evaluate read it): (corpus folder, tfds spec)."""
    from dfx_keras.data import demo

    root = tmp_path_factory.mktemp("tfds_demo")
    corpus_dir, data_dir = root / "corpus", root / "tfds"
    demo.generate_demo_corpus(str(corpus_dir), images_per_architecture=8, seed=3)
    code, output = run_tfds_build(f"--manual_dir={corpus_dir}", f"--data_dir={data_dir}", "--config=original")
    assert code == 0, output[-3000:]
    return str(corpus_dir), f"tfds:dfx_corpus/original@{data_dir}"
