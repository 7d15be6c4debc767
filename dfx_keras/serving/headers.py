"""An encoded image's format and declared size, read from its header with TensorFlow ops.

The serving signature checks these before decoding anything (decompression bombs), so they are
graph ops, not Python. GIFs are cut to their first frame here too (``gif_first_frame``).
"""

from __future__ import annotations

from typing import Callable

import tensorflow as tf

FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WebP")
GIF = FORMATS.index("GIF")


# --- image headers: declared size without decoding --------------------------------------------

_HEADER_LEN = 32  # every format's size fields lie in the first 30 bytes (WebP VP8: 26-30)
_MAGIC = (((0, b"\xff\xd8\xff"),), ((0, b"\x89PNG\r\n\x1a\n"),), ((0, b"GIF8"),), ((0, b"BM"),),
          ((0, b"RIFF"), (8, b"WEBP")))


def _uint(b: tf.Tensor, start: int, length: int, big_endian: bool = False) -> tf.Tensor:
    """Unsigned integer from ``length`` header bytes."""
    order = range(length) if big_endian else reversed(range(length))
    value = tf.constant(0, tf.int64)
    for i in order:
        value = value * 256 + b[start + i]
    return value


def _abs_int32(value: tf.Tensor) -> tf.Tensor:
    """|x| of a little-endian int32 read as unsigned (BMP heights are negative when top-down)."""
    return tf.abs(tf.where(value >= 2 ** 31, value - 2 ** 32, value))


def _webp_size(b: tf.Tensor) -> tf.Tensor:
    """Canvas [height, width] of the three WebP bitstreams: VP8X, lossless VP8L, lossy VP8."""
    chunk = b[15]  # b"VP8X", b"VP8L" or b"VP8 ": the chunk type's last byte
    vp8l = _uint(b, 21, 4)
    return tf.case([
        (tf.equal(chunk, ord("X")), lambda: tf.stack([_uint(b, 27, 3) + 1, _uint(b, 24, 3) + 1])),
        (tf.equal(chunk, ord("L")), lambda: tf.stack([vp8l // 2 ** 14 % 2 ** 14 + 1, vp8l % 2 ** 14 + 1])),
    ], default=lambda: tf.stack([_uint(b, 28, 2) % 2 ** 14, _uint(b, 26, 2) % 2 ** 14]))


def declared_size(encoded: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(index in ``FORMATS``, or -1 if none; int64 [height, width]) from the header alone.

    Formats are told apart by the magic bytes TensorFlow's ``decode_image`` dispatches on, so
    every image it would decode is measured first. Sizes: JPEG by ``extract_jpeg_shape`` (reads
    the markers up to the frame header, no pixel data), PNG IHDR (big-endian, bytes 16-24), GIF
    logical screen (little-endian, 6-10), BMP info header (int32, 18-26, as TF reads it), WebP
    chunk headers. Strings shorter than the header read as zeros, never out of range.
    """
    head = tf.strings.substr(encoded, 0, _HEADER_LEN) + tf.constant(b"\0" * _HEADER_LEN)
    matches = tf.stack([tf.reduce_all([tf.equal(tf.strings.substr(head, pos, len(m)), m) for pos, m in magic])
                        for magic in _MAGIC])
    index = tf.reduce_max(tf.where(matches, tf.range(len(FORMATS)), -1))
    b = tf.cast(tf.io.decode_raw(tf.strings.substr(head, 0, _HEADER_LEN), tf.uint8), tf.int64)
    b = tf.reshape(b, [_HEADER_LEN])
    branches = [
        lambda: tf.cast(tf.image.extract_jpeg_shape(encoded)[:2], tf.int64),
        lambda: tf.stack([_uint(b, 20, 4, big_endian=True), _uint(b, 16, 4, big_endian=True)]),
        lambda: tf.stack([_uint(b, 8, 2), _uint(b, 6, 2)]),
        lambda: tf.stack([_abs_int32(_uint(b, 22, 4)), _abs_int32(_uint(b, 18, 4))]),
        lambda: _webp_size(b),
        lambda: tf.zeros([2], tf.int64),  # not an image: index -1 selects this last branch
    ]
    return index, tf.switch_case(tf.where(index < 0, len(FORMATS), index), branches)


# --- GIF: only the first frame ------------------------------------------------------------------

_INTRODUCER, _EXTENSION_DATA, _IMAGE_DATA, _FIRST_FRAME_READ, _UNEXPECTED = range(5)


def _color_table_bytes(packed: tf.Tensor) -> tf.Tensor:
    """Size of the colour table a GIF packed-fields byte announces (0 when its flag is off)."""
    return tf.where(packed >= 128, 3 * tf.bitwise.left_shift(2, packed % 8), 0)


def gif_first_frame(encoded: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """The GIF cut after its first image (plus a trailer), and that image's [height, width].

    ``decode_image(expand_animations=False)`` returns the first frame but still decompresses
    every frame into memory: a 740 KB GIF of 400 frames of 1000x1000 costs it 385 MB and 3 s,
    which the header's canvas size does not reveal. Nor does the canvas bound a frame: giflib
    allocates each frame at the size its own descriptor declares. Walking the block structure
    (one loop step per data sub-block of at most 255 bytes, up to the end of the first image)
    finds both. A GIF whose blocks do not parse is returned unchanged, for the decoder to refuse.
    """
    length = tf.strings.length(encoded)

    def byte(pos):
        char = tf.strings.substr(encoded, tf.minimum(pos, length), 1) + b"\0"
        return tf.cast(tf.io.decode_raw(tf.strings.substr(char, 0, 1), tf.uint8)[0], tf.int32)

    def step(pos, state, frame):
        value = byte(pos)

        def introducer():
            image_size = tf.stack([byte(pos + 7) + 256 * byte(pos + 8), byte(pos + 5) + 256 * byte(pos + 6)])
            return tf.case([
                (tf.equal(value, 0x21), lambda: (pos + 2, _EXTENSION_DATA, frame)),
                (tf.equal(value, 0x2C),
                 lambda: (pos + 11 + _color_table_bytes(byte(pos + 9)), _IMAGE_DATA, image_size)),
            ], default=lambda: (pos, _UNEXPECTED, frame))

        def sub_block():  # ``value`` is the sub-block's length; 0 ends the data
            after = tf.where(tf.equal(state, _EXTENSION_DATA), _INTRODUCER, _FIRST_FRAME_READ)
            return pos + 1 + value, tf.where(tf.equal(value, 0), after, state), frame

        return tf.cond(tf.equal(state, _INTRODUCER), introducer, sub_block)

    start = 13 + _color_table_bytes(byte(10))  # header, logical screen descriptor, global table
    pos, state, frame = tf.while_loop(
        lambda pos, state, frame: tf.logical_and(state < _FIRST_FRAME_READ, pos < length),
        step, (start, tf.constant(_INTRODUCER), tf.zeros([2], tf.int32)))
    cut = tf.cond(tf.equal(state, _FIRST_FRAME_READ), lambda: tf.strings.substr(encoded, 0, pos) + b";",
                  lambda: encoded)
    return cut, tf.cast(frame, tf.int64)


# --- refusals ---------------------------------------------------------------------------------------

# Why an image is refused, as data. The serving graph's errors are ``image_bytes[i] is <reason>``,
# the reason filled in by TensorFlow ops (``fill``); ``refusal`` fills the same templates in Python
# for one image, so callers name a refused file without parsing TensorFlow's error text.
NOT_AN_IMAGE = "not a JPEG, PNG, GIF, BMP or WebP image ({} bytes)"
TOO_LARGE = "a {}x{} {} image: {} pixels, over the max_pixels limit of {}; refused before decoding"
UNDECODABLE = "a {} image that could not be decoded (corrupt or truncated data)"


def fill(template: str, *values) -> tf.Tensor:
    """``template.format(*values)`` in TensorFlow ops, broadcasting over vectors: numbers in
    decimal, strings as they are (``tf.strings.format`` would quote them)."""
    parts = template.split("{}")
    pieces = [parts[0]]
    for value, part in zip(values, parts[1:]):
        value = tf.convert_to_tensor(value)
        pieces += [value if value.dtype == tf.string else tf.strings.as_string(value), part]
    return tf.strings.join(pieces)


def measure(encoded: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """``(encoded, format index, [height, width])`` from the header alone: a GIF is cut to its
    first frame, and its size is the larger of its canvas and that frame."""
    fmt, size = declared_size(encoded)
    encoded, frame = tf.cond(tf.equal(fmt, GIF), lambda: gif_first_frame(encoded),
                             lambda: (encoded, tf.zeros([2], tf.int64)))
    return encoded, fmt, tf.maximum(size, frame)  # a GIF frame may be larger than its canvas


def check_header(encoded: tf.Tensor, index: tf.Tensor, max_pixels: int) -> tuple[tf.Tensor, tf.Tensor]:
    """``encoded`` (a GIF cut to its first frame) and its format's index in ``FORMATS``, once
    the format is known and the declared size within ``max_pixels``.

    Failing images raise InvalidArgumentError naming their position in the batch; the checks
    read only headers, so a decompression bomb is refused before any pixel is decoded.
    """
    encoded, fmt, size = measure(encoded)
    pixels = size[0] * size[1]
    prefix = fill("image_bytes[{}] is ", index)
    known = tf.debugging.Assert(fmt >= 0, [prefix + fill(NOT_AN_IMAGE, tf.strings.length(encoded))])
    small = tf.debugging.Assert(pixels <= max_pixels, [prefix + fill(
        TOO_LARGE, size[1], size[0], tf.gather(FORMATS, tf.maximum(fmt, 0)), pixels, max_pixels)])
    with tf.control_dependencies([known, small]):
        return tf.identity(encoded), fmt


def refusal(encoded: bytes, max_pixels: int | None, decode: Callable[[tf.Tensor], tf.Tensor]) -> str | None:
    """Why the serving signature refuses this one image (the reason of its error), or None when
    it passes: the graph's own checks run eagerly, then ``decode`` (the signature's decoder).
    ``max_pixels`` None skips the size check (an export that did not record its limit)."""
    try:
        cut, fmt, size = (t.numpy() for t in measure(tf.constant(encoded)))
    except tf.errors.InvalidArgumentError:  # a JPEG whose data ends before its frame header
        return UNDECODABLE.format("JPEG")
    if fmt < 0:
        return NOT_AN_IMAGE.format(len(encoded))
    pixels = int(size[0]) * int(size[1])
    if max_pixels is not None and pixels > max_pixels:
        return TOO_LARGE.format(size[1], size[0], FORMATS[fmt], pixels, max_pixels)
    try:
        decode(tf.constant(cut))
    except tf.errors.InvalidArgumentError:
        return UNDECODABLE.format(FORMATS[fmt])
    return None
