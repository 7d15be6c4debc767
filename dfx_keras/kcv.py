"""The one module that touches keras-cv (unmaintained): JPEG/blur augmentation as Keras layers.

keras-cv is imported lazily, inside functions, so ``import dfx_keras`` never loads it.
For augmentation that matches the test attacks exactly (4:4:4 JPEG, OpenCV's blur), prefer
``dfx_keras.data.attacks.random_augment``; this module is for users who want Keras layers.

Traps of keras-cv 0.9 measured here, and what the wrappers do about them:

- ``RandomJpegQuality`` expects floats in [0, 1]: on [0, 255] images it silently returns values
  clipped to [0, 1] (``tf.image.adjust_jpeg_quality`` converts with ``convert_image_dtype``,
  which assumes [0, 1]). The wrapper divides by 255 around it. It also always subsamples
  chroma 4:2:0, unlike the 4:4:4 attacks; that is left as is.
- ``RandomGaussianBlur`` keeps the range but pads with zeros ("SAME" convolution): a flat
  image of 100 comes back with corners near 31 for a 15-tap kernel of sigma 4. The wrapper
  reflects the border first (as OpenCV's BORDER_REFLECT_101) and crops back.
- ``RandomApply`` decides with a Python ``if`` on a tensor: on a single image inside
  ``tf.data`` map (graph mode) it raises OperatorNotAllowedInGraphError; on batches it runs
  through ``tf.map_fn``, which AutoGraph converts. So map the augmenter over batches.
"""

from __future__ import annotations

import functools

JPEG_QUALITY_RANGE = (50, 100)
BLUR_KERNEL_SIZE = 15
BLUR_SIGMA_RANGE = (0.8, 4.0)  # about the blur of kernels 3 ... 15 at sigma 4


@functools.cache
def _layer_classes():
    """The keras-cv subclasses, defined on first use so that keras-cv loads only then."""
    import keras_cv
    import tensorflow as tf

    class RandomJpegQuality255(keras_cv.layers.RandomJpegQuality):
        """``RandomJpegQuality`` for images in [0, 255]: rescaled to [0, 1] around it."""

        def augment_image(self, image, transformation=None, **kwargs):
            return super().augment_image(image / 255.0, transformation) * 255.0

    class RandomGaussianBlurReflect(keras_cv.layers.RandomGaussianBlur):
        """``RandomGaussianBlur`` with a reflected border instead of zeros."""

        def augment_image(self, image, transformation=None, **kwargs):
            pad_y, pad_x = self.y // 2, self.x // 2
            padded = tf.pad(image, [[pad_y, pad_y], [pad_x, pad_x], [0, 0]], mode="REFLECT")
            blurred = super().augment_image(padded, transformation)
            shape = tf.shape(image)
            return blurred[pad_y:pad_y + shape[0], pad_x:pad_x + shape[1]]

    return RandomJpegQuality255, RandomGaussianBlurReflect


def keras_cv_augmenter(kinds=("jpeg", "blur"), p=0.5, seed=None):
    """A keras-cv layer that, with probability `p` per image, applies one of `kinds`.

    Images in [0, 255], batched (B, H, W, 3): in tf.data, ``ds.batch(n).map(augmenter)``
    (a single image works eagerly only, see the module notes). "jpeg": quality uniform in [50, 100)
    (4:2:0 chroma); "blur": 15-tap Gaussian, sigma uniform in [0.8, 4], reflected border.
    Meant for tf.data pipelines, after resizing (so that images batch); not for saving.
    """
    choices = {"jpeg", "blur"}
    if not kinds or set(kinds) - choices:
        raise ValueError(f"augmentation kinds must be among {sorted(choices)}, "
                         f"got {list(kinds)}")
    import keras_cv

    jpeg_class, blur_class = _layer_classes()
    make = {"jpeg": lambda: jpeg_class(factor=JPEG_QUALITY_RANGE, seed=seed),
            "blur": lambda: blur_class(kernel_size=BLUR_KERNEL_SIZE, factor=BLUR_SIGMA_RANGE,
                                       seed=seed)}
    layers = [make[kind]() for kind in kinds]
    chosen = layers[0] if len(layers) == 1 else keras_cv.layers.RandomChoice(layers, seed=seed)
    return keras_cv.layers.RandomApply(chosen, rate=p, seed=seed)
