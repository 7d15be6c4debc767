"""``predict --explain=DIR`` and the report's pictures: per-file Grad-CAM figures and thumbnails.

Files are decoded and resized by the functions the serving signature uses, so the heatmaps
explain the very input the prediction was made on. Figures mirror the input paths under DIR
(``DIR/<path relative to the inputs' common folder>.png``): files of the same name in different
folders never overwrite each other, and ``x.jpg`` beside ``x.png`` gives ``x.jpg.png`` and
``x.png.png``.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from dfx_keras.classes import CLASS_NAMES
from dfx_keras.workdir import atomic_write

THUMBNAIL_SIZE = 128


def mirrored_paths(files: Sequence[str], out_dir: str, suffix: str = ".png") -> dict[str, str]:
    """Output path of each input file under ``out_dir``, mirroring the inputs' folder tree."""
    if not files:
        return {}
    absolute = [os.path.abspath(f) for f in files]
    root = os.path.commonpath([os.path.dirname(a) for a in absolute])
    return {f: os.path.join(out_dir, os.path.relpath(a, root) + suffix) for f, a in zip(files, absolute)}


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def explain_files(model, predictions: Sequence, out_dir: str | None, batch_size: int = 16) -> dict[str, bytes]:
    """Grad-CAM figures (PNG bytes) of the predicted class for every answered prediction, by
    ``model`` (``gradcam.gradcam_model``), written under ``out_dir`` as ``mirrored_paths`` says
    when it is given. Returns file -> PNG bytes."""
    from dfx_keras.explain import gradcam
    from dfx_keras.data import pipelines

    size = int(model.input_shape[1])
    answered = [p for p in predictions if not p.error]
    targets = mirrored_paths([p.file for p in answered], out_dir) if out_dir else {}
    figures = {}
    for start in range(0, len(answered), batch_size):
        batch = answered[start:start + batch_size]
        images = np.stack([pipelines.decode_and_resize(_read(p.file), size).numpy() for p in batch])
        class_ids, maps = gradcam.heatmaps(model, images, np.array([CLASS_NAMES.index(p.class_name) for p in batch]))
        for p, image, class_maps, class_id in zip(batch, images, maps, class_ids):
            figures[p.file] = gradcam.figure_png(image, class_maps, int(class_id))
            if p.file in targets:
                os.makedirs(os.path.dirname(targets[p.file]), exist_ok=True)
                atomic_write(targets[p.file], figures[p.file])
    return figures


def thumbnails(predictions: Sequence, size: int = THUMBNAIL_SIZE) -> dict[str, bytes]:
    """A PNG thumbnail (longest side ``size``, aspect kept) of every answered prediction's file."""
    import tensorflow as tf

    from dfx_keras.data import pipelines

    out = {}
    for p in predictions:
        if p.error:
            continue
        image = pipelines.decode_uint8(_read(p.file))
        small = tf.image.resize(image, (size, size), preserve_aspect_ratio=True, antialias=True)
        out[p.file] = tf.io.encode_png(tf.cast(tf.round(small), tf.uint8)).numpy()
    return out
