"""Shared fixtures: quiet TensorFlow, two logical CPU devices, small corpora on disk."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

# Two logical CPU devices, so MirroredStrategy can be tested without GPUs. This must happen
# before TensorFlow initialises its devices, hence at import time of the test session.
_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(_cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)

ARCHITECTURES = {
    "dm_generated": ["Latent Diffusion", "DALL-E MINI"],
    "gan_generated": ["StyleGAN2", "Big-GAN x"],
    "real": ["CelebA", "Others"],
}


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


@pytest.fixture
def small_corpus(tmp_path):
    return make_corpus(tmp_path / "corpus")
