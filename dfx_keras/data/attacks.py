"""Robustness attacks (DESIGN.md 1.5) as TensorFlow ops, and the training augmentation.

Every function takes ONE image: float32, shape (H, W, 3), values in [0, 255], at its original
resolution, and works in graph mode (inside ``tf.data.Dataset.map``) with unknown H and W.

The reference built its attacked test sets offline (DeepFeatureX-SN ``scripts/prep/filters.py``):
OpenCV on the uint8 image, saved as PNG; PIL for JPEG. These ops reproduce those files, so every
attack returns whole grey levels in float32, rounded and saturated as OpenCV's uint8 output is:

- ``jpeg``: PIL ``save(format="jpeg", quality=q, subsampling=0)`` then decode: bit-exact.
- ``gaussian_blur``: ``cv2.GaussianBlur(img, (k, k), 4)`` on uint8: bit-exact. The reference
  wrote ``cv2.GaussianBlur(img, (k, k), cv2.BORDER_DEFAULT)``: sigma 4 is the value of
  ``BORDER_DEFAULT`` passed as sigmaX; the border is OpenCV's default, BORDER_REFLECT_101.
- ``scale``: ``cv2.resize(img, (int(w*f), int(h*f)), interpolation=cv2.INTER_AREA)``: within
  half a grey level before rounding (float sums in a different order).
- ``flip_both``: ``cv2.flip(img, -1)``: exact.
- ``rotate``: ``cv2.warpAffine(img, cv2.getRotationMatrix2D((w/2, h/2), deg, 1), (w, h))``:
  exact bilinear; OpenCV 5 agrees within half a grey level, OpenCV 4 quantises source
  coordinates to 1/32 pixel and differs by a few grey levels on sharp edges.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import tensorflow as tf

JPEG_QUALITIES = (90, 80, 70, 60, 50)
BLUR_KERNELS = (3, 7, 15)
BLUR_SIGMA = 4.0
RANDOM_JPEG_QUALITIES = tuple(range(50, 100))
RANDOM_BLUR_KERNELS = tuple(range(3, 16, 2))


def _to_levels(image):
    """Rounds half up and saturates to [0, 255], as OpenCV's fixed-point uint8 results."""
    return tf.clip_by_value(tf.floor(image + 0.5), 0.0, 255.0)


def jpeg(image, quality):
    """JPEG re-encoding at `quality` with 4:4:4 chroma, as PIL ``subsampling=0``.

    TensorFlow and Pillow both use libjpeg(-turbo) with the standard tables, so the decoded
    pixels equal PIL's. The decoder must use the accurate integer DCT (PIL's choice):
    TensorFlow's default, INTEGER_FAST, is off by up to 4 grey levels. (``tf.image.
    adjust_jpeg_quality`` takes a tensor quality but always subsamples chroma 4:2:0.)
    """
    if not (isinstance(quality, int) and 0 <= quality <= 100):
        raise ValueError(f"JPEG quality must be an int in [0, 100], got {quality!r}")
    pixels = tf.cast(_to_levels(image), tf.uint8)
    encoded = tf.io.encode_jpeg(pixels, quality=quality, chroma_downsampling=False)
    decoded = tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE")
    return tf.ensure_shape(tf.cast(decoded, tf.float32), image.shape)


def opencv_gaussian_taps(kernel_size, sigma=BLUR_SIGMA):
    """The 1-D taps OpenCV's GaussianBlur uses on uint8 images, in steps of 1/256.

    For uint8, OpenCV (4.x and 5.x) blurs in fixed point with the normalised Gaussian rounded
    to 8 fractional bits by error diffusion from the outside in, the centre tap taking the
    remainder so the taps sum to exactly 1 (``getGaussianKernelFixedPoint_ED``). These taps
    differ from the exact Gaussian by up to 1/256 each, i.e. up to 1.4 grey levels after blurring.
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"blur kernel size must be odd and positive, got {kernel_size}")
    if sigma <= 0:
        raise ValueError(f"blur sigma must be positive, got {sigma}")
    radius = kernel_size // 2
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    gaussian = np.exp(-offsets**2 / (2.0 * sigma**2))
    gaussian /= gaussian.sum()
    taps = np.zeros(kernel_size, np.int64)
    error = 0.0
    for i in range(radius):
        wanted = gaussian[i] * 256.0 + error
        taps[i] = taps[-1 - i] = np.rint(wanted)
        error = wanted - taps[i]
    taps[radius] = 256 - 2 * taps[:radius].sum()
    return taps / 256.0


def _separable_blur(image, taps, radius):
    """Reflect-101 padding by `radius`, then the 1-D `taps` along rows and columns.

    `taps` may be longer than 2*radius+1 only if zero outside; with taps in 1/256 steps and
    integer pixels every partial sum is exact in float32, whatever the summation order, so
    rounding half up reproduces OpenCV's fixed-point result bit for bit.
    """
    padded = tf.pad(image, [[radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    taps = tf.cast(taps, tf.float32)
    across = tf.tile(tf.reshape(taps, [1, -1, 1, 1]), [1, 1, 3, 1])
    down = tf.tile(tf.reshape(taps, [-1, 1, 1, 1]), [1, 1, 3, 1])
    blurred = tf.nn.depthwise_conv2d(padded[None], across, [1, 1, 1, 1], "VALID")
    blurred = tf.nn.depthwise_conv2d(blurred, down, [1, 1, 1, 1], "VALID")
    return _to_levels(blurred[0])


def gaussian_blur(image, kernel_size, sigma=BLUR_SIGMA):
    """``cv2.GaussianBlur(img, (k, k), sigma)`` on a uint8 image, bit-exact.

    Border BORDER_REFLECT_101 (OpenCV's default), so H and W must exceed kernel_size // 2.
    """
    taps = opencv_gaussian_taps(kernel_size, sigma)
    return _separable_blur(image, taps, kernel_size // 2)


def _area_taps(size, new_size):
    """Source indices and weights of OpenCV INTER_AREA when shrinking (``resizeArea``).

    Output pixel d averages the source interval [d*s, (d+1)*s), s = size/new_size, each source
    pixel weighted by its overlap; the last cell, cut by the border, is averaged over what it
    covers. For s = 2 this is the 2x2 mean.
    """
    size_f, new_f = tf.cast(size, tf.float64), tf.cast(new_size, tf.float64)
    step = size_f / new_f
    start = tf.range(new_f, dtype=tf.float64) * step
    count = tf.cast(tf.math.ceil(step), tf.int32) + 1
    indices = tf.cast(tf.floor(start), tf.int32)[:, None] + tf.range(count)[None, :]
    position = tf.cast(indices, tf.float64)
    overlap = tf.clip_by_value(
        tf.minimum(start[:, None] + step, position + 1.0) - tf.maximum(start[:, None], position),
        0.0, 1.0)
    weights = overlap / tf.minimum(step, size_f - start)[:, None]
    return tf.minimum(indices, size - 1), tf.cast(weights, tf.float32)


def _enlarge_taps(size, new_size):
    """Source indices and weights of OpenCV INTER_AREA when enlarging.

    OpenCV enlarges with its bilinear machinery but area-style weights: for output pixel d,
    sx = floor(d/f) and the weight of sx+1 is frac((d+1) - (sx+1)*f), taken as 0 when that is
    <= 0. For an integer factor every weight is 0: INTER_AREA enlarging by 2 is pixel
    replication (nearest neighbour), not a smooth interpolation.
    """
    size_f, new_f = tf.cast(size, tf.float64), tf.cast(new_size, tf.float64)
    position = tf.range(new_f, dtype=tf.float64)
    first = tf.floor(position * size_f / new_f)
    frac = tf.cast(position + 1.0 - (first + 1.0) * new_f / size_f, tf.float32)
    frac = tf.where(frac <= 0.0, 0.0, frac - tf.floor(frac))
    last = tf.cast(size - 1, tf.float64)
    frac = tf.where(first >= last, 0.0, frac)
    first = tf.cast(tf.minimum(first, last), tf.int32)
    indices = tf.stack([first, tf.minimum(first + 1, size - 1)], axis=1)
    return indices, tf.stack([1.0 - frac, frac], axis=1)


def _resample(image, axis, indices, weights):
    """Weighted sum of source rows (axis 0) or columns (axis 1): out[d] = sum_k w[d,k] x[i[d,k]]."""
    gathered = tf.gather(image, indices, axis=axis)
    weights = weights[:, :, None, None] if axis == 0 else weights[None, :, :, None]
    return tf.reduce_sum(gathered * weights, axis=axis + 1)


def scale(image, factor):
    """Rescaling by `factor` with OpenCV INTER_AREA, as the reference's call.

    The reference passes the size: ``cv2.resize(img, (int(w*f), int(h*f)), INTER_AREA)``, so
    the output is floor(H*f) x floor(W*f). (The ``fx=f`` form rounds the size half to even and,
    for odd sizes at f = 0.5, keeps exact 2x2 cells instead of cells of width W/floor(W/2):
    a different image.) Shrinking averages areas; enlarging is OpenCV's area-style bilinear,
    pixel replication for f = 2.
    """
    if not factor > 0:
        raise ValueError(f"scale factor must be positive, got {factor}")
    taps = _area_taps if factor <= 1 else _enlarge_taps
    shape = tf.shape(image)
    for axis in (0, 1):
        new_size = tf.cast(tf.floor(tf.cast(shape[axis], tf.float64) * factor), tf.int32)
        image = _resample(image, axis, *taps(shape[axis], new_size))
    return _to_levels(image)


def flip_both(image):
    """Flip on both axes (``cv2.flip(img, -1)``), i.e. a 180 degree rotation."""
    return tf.reverse(image, axis=[0, 1])


def rotate(image, degrees):
    """Rotation by `degrees` (counter-clockwise if positive) about (W/2, H/2), same canvas.

    As the reference: ``cv2.getRotationMatrix2D((w/2, h/2), degrees, 1)`` then ``warpAffine``
    with bilinear sampling and a constant black border (pixels near the edge blend with black).
    The centre is (W/2, H/2), half a pixel off the geometric centre ((W-1)/2, (H-1)/2).
    """
    shape = tf.shape(image)
    center_y = tf.cast(shape[0], tf.float64) / 2.0
    center_x = tf.cast(shape[1], tf.float64) / 2.0
    theta = tf.cast(degrees, tf.float64) * (math.pi / 180.0)
    cos, sin = tf.cos(theta), tf.sin(theta)
    # Output pixel (x, y) samples the input at the point rotated back by -degrees.
    zero = tf.zeros([], tf.float64)
    transform = tf.stack([cos, -sin, (1.0 - cos) * center_x + sin * center_y,
                          sin, cos, (1.0 - cos) * center_y - sin * center_x, zero, zero])
    rotated = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=tf.cast(transform[None], tf.float32),
        output_shape=shape[:2], fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")
    return _to_levels(rotated[0])


ATTACKS = {
    **{f"jpeg_qf{q}": functools.partial(jpeg, quality=q) for q in JPEG_QUALITIES},
    **{f"blur_k{k}": functools.partial(gaussian_blur, kernel_size=k) for k in BLUR_KERNELS},
    "scale_50": functools.partial(scale, factor=0.5),
    "scale_200": functools.partial(scale, factor=2.0),
    "flip_both": flip_both,
    "rotate_45": functools.partial(rotate, degrees=45),
    "rotate_135": functools.partial(rotate, degrees=135),
}
"""Contract attack keys (DESIGN.md 2) -> image -> image, in the reference's order."""

ATTACK_GROUPS = {
    "jpeg": [(q, f"jpeg_qf{q}") for q in JPEG_QUALITIES],
    "blur": [(k, f"blur_k{k}") for k in BLUR_KERNELS],
}
"""Attacks with a strength, for accuracy-vs-strength plots: group -> [(strength, key)]."""


def get_attack(name):
    """The attack called `name`; a ValueError lists the valid names."""
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; valid attacks: {', '.join(ATTACKS)}")
    return ATTACKS[name]


def _random_jpeg(image, seed):
    """JPEG at a quality uniform in [50, 100): one branch per quality, because TensorFlow's
    only tensor-quality encoder subsamples chroma and the attacks use 4:4:4."""
    index = tf.random.stateless_uniform([], seed, 0, len(RANDOM_JPEG_QUALITIES), tf.int32)
    branches = [functools.partial(jpeg, image, q) for q in RANDOM_JPEG_QUALITIES]
    return tf.switch_case(index, branches)


def _random_blur(image, seed):
    """OpenCV-style blur, sigma 4, kernel uniform in {3, 5, ..., 15}: the taps of every size,
    zero-padded to 15, share one padding of 7 (reflected pixels beyond a kernel's radius get
    zero weight, so the result equals padding by that radius)."""
    radius = RANDOM_BLUR_KERNELS[-1] // 2
    table = np.stack([np.pad(opencv_gaussian_taps(k), radius - k // 2)
                      for k in RANDOM_BLUR_KERNELS])
    index = tf.random.stateless_uniform([], seed, 0, len(RANDOM_BLUR_KERNELS), tf.int32)
    return _separable_blur(image, tf.gather(tf.constant(table, tf.float32), index), radius)


_RANDOM_ATTACKS = {"jpeg": _random_jpeg, "blur": _random_blur}


def random_augment(image, kinds=("jpeg", "blur"), p=0.5, seed=None):
    """Training augmentation of the follow-up paper: attack a share `p` of the images.

    With probability `p`, one kind drawn uniformly from `kinds` is applied at a random
    strength: JPEG (4:4:4) at quality uniform in [50, 100), or Gaussian blur with sigma 4 and a
    kernel uniform in {3, 5, ..., 15}; otherwise the image is returned unchanged. Images need
    H, W >= 8 for the blur.

    `seed`: None draws fresh randomness (stateful, not reproducible); a shape-[2] integer
    tensor makes the result a function of (image, seed). In tf.data give each element its own
    seed, e.g. ``tf.data.Dataset.zip((ds, tf.data.Dataset.random(seed=s).batch(2)))``.
    """
    unknown = [kind for kind in kinds if kind not in _RANDOM_ATTACKS]
    if unknown or not kinds:
        raise ValueError(f"augmentation kinds must be among {sorted(_RANDOM_ATTACKS)}, "
                         f"got {list(kinds)}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"augmentation probability must be in [0, 1], got {p}")
    if seed is None:
        seed = tf.random.uniform([2], maxval=tf.int32.max, dtype=tf.int32)
    apply_seed, kind_seed, strength_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 3))
    apply = tf.random.stateless_uniform([], apply_seed) < p
    kind = tf.random.stateless_uniform([], kind_seed, 0, len(kinds), tf.int32)
    branches = [functools.partial(_RANDOM_ATTACKS[k], image, strength_seed) for k in kinds]
    return tf.cond(apply, lambda: tf.switch_case(kind, branches), lambda: tf.identity(image))
