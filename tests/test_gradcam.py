"""Grad-CAM of the complete model: on a model trained to find a planted patch, each heatmap's
mean peaks on the patch."""

import keras
import numpy as np
import pytest

from dfx_keras import models
from dfx_keras.explain import gradcam

SIZE, PATCH = 48, 8


def planted(n, seed):
    """Noise images; every other one (class DM) holds a red PATCH x PATCH square at a random place."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, SIZE, SIZE, 3)).astype("float32")
    labels = np.where(np.arange(n) % 2 == 0, 0, 2)
    corners = rng.integers(0, SIZE - PATCH + 1, (n, 2))
    for image, label, (row, col) in zip(images, labels, corners):
        if label == 0:
            image[row:row + PATCH, col:col + PATCH] = (255, 0, 0)
    return images, labels, corners


@pytest.fixture(scope="module")
def patch_finder():
    """A complete model of three tiny base models, trained end to end (backbones included) to
    tell patch images (DM) from plain noise (REAL)."""
    keras.utils.set_random_seed(0)
    complete = models.build_complete_model(*[models.build_base_model("tiny", SIZE, name=n)
                                             for n in ("bm_dm", "bm_gan", "bm_real")])
    for extractor in models.base_feature_extractors(complete):
        extractor.trainable = True
    complete.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    images, labels, _ = planted(384, 0)
    complete.fit(images, labels, epochs=6, batch_size=32, verbose=0)
    return complete


@pytest.mark.slow
def test_the_heatmap_peak_falls_on_the_planted_patch(patch_finder):
    images, labels, corners = planted(60, 1)
    assert np.mean(patch_finder.predict(images, verbose=0).argmax(axis=1) == labels) >= 0.9
    model = gradcam.gradcam_model(patch_finder)
    with_patch = np.nonzero(labels == 0)[0]
    class_ids, maps = gradcam.heatmaps(model, images[with_patch])
    assert maps.shape == (len(with_patch), 3, SIZE // 8, SIZE // 8)  # one map per base model, at 1/8 resolution
    assert maps.min() >= 0 and maps.max() <= 1 + 1e-6  # normalised
    hits = 0
    for maps_of_one, (row, col) in zip(maps, corners[with_patch]):
        mean = gradcam.upsample(maps_of_one.mean(axis=0), SIZE)
        peak_row, peak_col = np.unravel_index(mean.argmax(), mean.shape)
        # within the patch, or the feature-map cell (8 pixels) around it
        hits += row - 4 <= peak_row < row + PATCH + 4 and col - 4 <= peak_col < col + PATCH + 4
    # a peak drawn at random would land there about 11% of the time ((8 + 8)^2 of 48^2 pixels)
    assert hits >= 0.8 * len(with_patch), f"{hits} of {len(with_patch)} peaks on the patch"
    assert (class_ids == 0).mean() >= 0.9  # the predicted class is explained by default


def test_the_figure_is_a_png_of_five_panels(patch_finder):
    images, _, _ = planted(2, 2)
    class_ids, maps = gradcam.heatmaps(gradcam.gradcam_model(patch_finder), images[:1])
    png = gradcam.figure_png(images[0], maps[0], int(class_ids[0]))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image
    import io

    with Image.open(io.BytesIO(png)) as figure:
        assert figure.width > 4 * figure.height  # side by side: the image, three base models, the mean
