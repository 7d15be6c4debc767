"""SavedModel export for TensorFlow Serving: ``export/<model_name>/<version>/``.

Written like tensorflow/models ``official/vision/serving/export_base.py``: a ``tf.Module``
holds the complete model's weights and two ``tf.function`` signatures, so the export runs
where only TensorFlow is installed (no ``dfx_keras``, no ``keras_cv``, no Keras model code):

- ``serving_default``: ``image_bytes`` (tf.string [batch], JPEG/PNG/BMP/GIF/WebP). Each image's
  header is checked against ``max_pixels`` *before* it is decoded (decompression bombs), then
  it is decoded and resized by the very functions training uses
  (``pipelines.decode_and_resize``).
- ``serving_images``: ``images`` (float32 [batch, H, W, 3] in [0, 255], any H, W), resized
  inside the same way.

Both return ``probabilities`` [B, 3], ``class_id`` [B], ``class_name`` [B] and ``fake_score``
[B] = 1 - p(real), calibrated by the workdir's temperature (``models/calibration.json``) baked
into the graph; ``logits`` [B, 3], the uncalibrated values; ``base_scores`` [B, 3], each base
model's probability of its own main class (DM, GAN, REAL); and, exported with ``--threshold``,
``is_fake`` [B] = ``fake_score > threshold``. The threshold, the temperature and how both were
chosen are recorded in ``assets.extra/dfx_export.json``. The backbones' normalisation is a
layer of the model, so it is in the graph.

Exports are written to a hidden temporary folder beside the version folder and renamed when
complete: TF Serving never sees half an export, and an existing version is never replaced.

``python -m dfx_keras.export --workdir=W`` exports ``W/models/complete.keras``.
"""

from __future__ import annotations

if __name__ == "__main__":  # python -m dfx_keras.export: silence TensorFlow before it loads
    from dfx_keras.quiet import quiet_tensorflow

    quiet_tensorflow()

import datetime  # noqa: E402
import functools  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import logging  # noqa: E402

from dfx_keras import __version__, durable  # noqa: E402
from dfx_keras.classes import CLASS_NAMES, NUM_CLASSES, REAL  # noqa: E402
from dfx_keras.data import pipelines  # noqa: E402
from dfx_keras.data.corpus import DEFAULT_MAX_PIXELS  # noqa: E402  the corpus scan's limit too
SIGNATURE_BYTES, SIGNATURE_IMAGES = "serving_default", "serving_images"
BYTES_INPUT, IMAGES_INPUT = "image_bytes", "images"
OUTPUTS = ("probabilities", "class_id", "class_name", "fake_score")  # every export's, as before calibration
DETECTOR_OUTPUTS = ("logits", "base_scores")  # added by calibration and the base models' heads
DECISION_OUTPUT = "is_fake"  # with --threshold
METADATA_FILE = "dfx_export.json"
WARMUP_FILE = "tf_serving_warmup_requests"
FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WebP")
GIF = FORMATS.index("GIF")
# Images of one request decoded at once (tf.map_fn's graph default, made explicit): peak memory
# is about this many times 15 bytes (uint8 + float32) per pixel of the largest images.
DECODE_PARALLELISM = 10


# --- image headers: declared size without decoding --------------------------------------------

_HEADER_LEN = 32  # every format's size fields lie in the first 30 bytes (WebP VP8: 26-30)
# Magic bytes TensorFlow's DecodeImage dispatches on, in ``FORMATS`` order: (offset, bytes)...
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


# --- the serving module -------------------------------------------------------------------------

def _checked(encoded: tf.Tensor, index: tf.Tensor, max_pixels: int) -> tuple[tf.Tensor, tf.Tensor]:
    """``encoded`` (a GIF cut to its first frame) and its format's index in ``FORMATS``, once
    the format is known and the declared size within ``max_pixels``.

    Failing images raise InvalidArgumentError naming their position in the batch; the checks
    read only headers, so a decompression bomb is refused before any pixel is decoded.
    """
    fmt, size = declared_size(encoded)
    encoded, frame = tf.cond(tf.equal(fmt, GIF), lambda: gif_first_frame(encoded),
                             lambda: (encoded, tf.zeros([2], tf.int64)))
    size = tf.maximum(size, frame)  # a GIF frame may be larger than its canvas
    pixels = size[0] * size[1]
    known = tf.debugging.Assert(fmt >= 0, [tf.strings.format(
        "image_bytes[{}] is not a JPEG, PNG, GIF, BMP or WebP image ({} bytes)",
        (index, tf.strings.length(encoded)))])
    small = tf.debugging.Assert(pixels <= max_pixels, [tf.strings.join([  # format() would quote the name
        tf.strings.format("image_bytes[{}] is a {}x{} ", (index, size[1], size[0])),
        tf.gather(FORMATS, tf.maximum(fmt, 0)),
        tf.strings.format(" image: {} pixels, over the max_pixels limit of {}; refused before decoding",
                          (pixels, max_pixels))])])
    with tf.control_dependencies([known, small]):
        return tf.identity(encoded), fmt


def _outputs(detected: dict[str, tf.Tensor], temperature: float, threshold: float | None) -> dict[str, tf.Tensor]:
    """The signatures' outputs from the detector model's ``logits`` (and ``base_scores``):
    probabilities of ``logits / temperature``; ``is_fake`` when a threshold is set."""
    logits = detected["logits"]
    probabilities = tf.nn.softmax(logits / temperature, axis=-1)
    class_id = tf.argmax(probabilities, axis=-1)
    outputs = {"probabilities": probabilities, "class_id": class_id,
               "class_name": tf.gather(tf.constant(CLASS_NAMES), class_id),
               "fake_score": 1.0 - probabilities[:, REAL], "logits": logits, **detected}
    if threshold is not None:
        outputs[DECISION_OUTPUT] = outputs["fake_score"] > threshold
    return outputs


class ServingModule(tf.Module):
    """The complete model's weights and its two serving signatures.

    Only the weights are tracked (``model_variables``), not the Keras model object: a head
    compiled for training carries optimizer slots that would triple the export's size. They
    are tracked as the ``tf.Variable`` inside each Keras variable: tracking the Keras
    variables themselves saves a model that ``tf.saved_model.load`` runs but session-based
    loaders (TF Serving, ``saved_model_cli run``) fail on with "Could not find variable".
    Control flow is written with TF ops (``map_fn``, ``cond``, ``while_loop``), so the
    signatures are traced without AutoGraph.
    """

    def __init__(self, model, max_pixels: int = DEFAULT_MAX_PIXELS, temperature: float = 1.0,
                 threshold: float | None = None):
        from dfx_keras import models

        super().__init__(name="dfx_serving")
        self.image_size = int(model.input_shape[1])
        self.max_pixels = int(max_pixels)
        self.temperature, self.threshold = float(temperature), threshold
        self.model_variables = [weight.value for weight in model.weights]
        detector = models.detector_model(model)  # the complete model's layers: the same weights
        detected = DETECTOR_OUTPUTS if models.has_base_outputs(model) else DETECTOR_OUTPUTS[:1]
        self.output_names = (*OUTPUTS, *detected, *([DECISION_OUTPUT] if threshold is not None else ()))
        self._model = functools.partial(detector, training=False)

    def _classify(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        """Outputs for a batch of model-size images; an empty batch gets empty outputs.

        The model is not run on an empty batch: TF's oneDNN ``Conv2D`` on CPU returns its
        input unchanged for batch 0 (depth 3, not the filter count) and the next layer fails.
        """
        detected = tf.cond(tf.size(images) > 0,
                           lambda: {k: tf.cast(v, tf.float32) for k, v in self._model(images).items()},
                           lambda: {k: tf.zeros([0, NUM_CLASSES]) for k in self.output_names if k in DETECTOR_OUTPUTS})
        return _outputs(detected, self.temperature, self.threshold)

    def _decoded(self, encoded: tf.Tensor, formats: tf.Tensor) -> tf.Tensor:
        """Decode and resize each image, ``DECODE_PARALLELISM`` at a time, naming any that fails.

        A decode error inside ``tf.map_fn`` fails the request without saying which image failed
        (``jpeg::Uncompress failed``). Decoded in a tf.data pipeline with ``ignore_errors``, the
        images that failed are those whose indices did not come out.
        """
        count = tf.size(encoded, out_type=tf.int64)
        decoded = tf.data.Dataset.from_tensor_slices((tf.range(count), encoded)).map(
            lambda i, e: (i, pipelines.decode_and_resize(e, self.image_size)),
            num_parallel_calls=DECODE_PARALLELISM, deterministic=True).ignore_errors()
        empty = (tf.zeros([0], tf.int64), tf.zeros([0, self.image_size, self.image_size, 3]))
        indices, images = decoded.batch(tf.maximum(count, 1)).reduce(empty, lambda _, batch: batch)
        failed = tf.sparse.to_dense(tf.sets.difference(tf.range(count)[None], indices[None]))[0]
        named = tf.strings.join(["image_bytes[", tf.strings.as_string(failed), "] is a ",
                                 tf.gather(FORMATS, tf.gather(formats, failed)),
                                 " image that could not be decoded (corrupt or truncated data)"])
        all_decoded = tf.debugging.Assert(tf.equal(tf.size(failed), 0), [tf.strings.reduce_join(named, separator="; ")])
        with tf.control_dependencies([all_decoded]):
            return tf.identity(images)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=BYTES_INPUT)], autograph=False)
    def serve_bytes(self, image_bytes):
        """Encoded images -> class outputs: every header checked, then each image decoded (sizes differ)."""
        checked, formats = tf.map_fn(lambda args: _checked(*args, self.max_pixels),
                                     (image_bytes, tf.range(tf.size(image_bytes, out_type=tf.int64))),
                                     fn_output_signature=(tf.string, tf.int32))
        return self._classify(self._decoded(checked, formats))

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name=IMAGES_INPUT)],
                 autograph=False)
    def serve_images(self, images):
        """Float RGB images in [0, 255] of any size -> class outputs (resized as in training)."""
        return self._classify(pipelines.resize(images, self.image_size))

    def signatures(self) -> dict:
        return {SIGNATURE_BYTES: self.serve_bytes, SIGNATURE_IMAGES: self.serve_images}


# --- TF Serving warmup ----------------------------------------------------------------------------

def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes(out + bytes([value]))


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def prediction_log(model_name: str, signature: str, inputs: dict[str, np.ndarray]) -> bytes:
    """A serialized ``tensorflow.serving.PredictionLog`` holding one ``PredictRequest``.

    Encoded by hand (PredictionLog.predict_log=6 > PredictLog.request=1 > PredictRequest:
    model_spec=1 {name=1, signature_name=3}, inputs=2 map<string, TensorProto>) so exporting
    needs no tensorflow-serving-api; a test parses it with the real message classes.
    """
    spec = _field(1, model_name.encode()) + _field(3, signature.encode())
    entries = b"".join(_field(2, _field(1, key.encode()) + _field(2, tf.make_tensor_proto(value).SerializeToString()))
                       for key, value in inputs.items())
    return _field(6, _field(1, _field(1, spec) + entries))


def warmup_image(image_size: int) -> np.ndarray:
    """A smooth colour gradient, a plausible image for warming up."""
    ramp = np.linspace(0, 255, image_size, dtype=np.float32)
    return np.stack(np.broadcast_arrays(ramp[:, None], ramp[None, :], ramp[::-1, None]), axis=-1)


def write_warmup(path: str, model_name: str, image_size: int) -> None:
    """TF Serving's warmup file: one request per signature, run when the model loads."""
    image = warmup_image(image_size)
    png = tf.io.encode_png(image.astype(np.uint8)).numpy()
    with tf.io.TFRecordWriter(path) as writer:
        writer.write(prediction_log(model_name, SIGNATURE_BYTES, {BYTES_INPUT: np.array([png], object)}))
        writer.write(prediction_log(model_name, SIGNATURE_IMAGES, {IMAGES_INPUT: image[None]}))


# --- versioned, atomic export ---------------------------------------------------------------------

def versions(model_dir: str) -> list[int]:
    """The integer version folders under ``model_dir`` (TF Serving ignores anything else)."""
    if not os.path.isdir(model_dir):
        return []
    return sorted(int(d) for d in os.listdir(model_dir) if d.isdigit() and os.path.isdir(os.path.join(model_dir, d)))


def directory_size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_metadata(export_path: str) -> dict:
    """What ``export_saved_model`` recorded in ``assets.extra/dfx_export.json``."""
    with open(os.path.join(export_path, "assets.extra", METADATA_FILE)) as f:
        return json.load(f)


def _write_extras(path: str, module: ServingModule, model_name: str, version: int, source: str | None,
                  source_sha256: str | None = None, calibration: dict | None = None,
                  threshold: dict | None = None) -> None:
    """``dfx_export.json`` (what the export is, where it came from, its temperature and
    threshold with their provenance) and the TF Serving warmup requests."""
    extra = os.path.join(path, "assets.extra")
    os.makedirs(extra)
    metadata = {
        "model_name": model_name, "version": version, "max_pixels": module.max_pixels,
        "image_size": module.image_size, "class_names": list(CLASS_NAMES),
        "signatures": {SIGNATURE_BYTES: BYTES_INPUT, SIGNATURE_IMAGES: IMAGES_INPUT},
        "outputs": list(module.output_names), "temperature": module.temperature,
        "calibration": calibration, "threshold": threshold,
        "decision": (f"is_fake = fake_score > {threshold['threshold']!r}" if threshold else None),
        "source": source, "source_sha256": source_sha256 or (file_sha256(source) if source else None),
        "dfx_keras": __version__, "tensorflow": tf.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    with open(os.path.join(extra, METADATA_FILE), "w") as f:
        json.dump(metadata, f, indent=2)
    write_warmup(os.path.join(extra, WARMUP_FILE), model_name, module.image_size)


def export_saved_model(model, export_root: str, model_name: str = "dfx", version: int | None = None,
                       max_pixels: int = DEFAULT_MAX_PIXELS, source: str | None = None,
                       source_sha256: str | None = None, calibration: dict | None = None,
                       threshold: dict | None = None) -> str:
    """Write ``export_root/model_name/<version>/`` and return its path.

    ``version`` None takes the next integer (the one after, if a concurrent export takes it
    first). The SavedModel is written to a hidden temporary folder in the same parent, named
    after its writing process, and renamed when complete, so TF Serving never loads half an
    export; the temporary folders of killed exports are removed. An existing version is
    refused, never replaced. ``source``, the ``.keras`` file the model came from, is recorded
    with its hash (``source_sha256`` when the caller has it). ``calibration`` (``calibrate.fit``)
    bakes its temperature into the graph; ``threshold`` (``thresholds.resolve``) adds ``is_fake``.
    """
    model_dir = os.path.join(export_root, model_name)
    os.makedirs(model_dir, exist_ok=True)
    durable.remove_dead_temporaries(model_dir)  # what killed exports left
    renumber = version is None
    version = (versions(model_dir) or [0])[-1] + 1 if renumber else version
    if version < 1:
        raise ValueError(f"export versions are positive integers, got {version}")
    if os.path.exists(os.path.join(model_dir, str(version))):
        raise _version_exists(model_dir, version)
    tmp = durable.make_temporary_folder(model_dir, str(version))
    try:
        module = ServingModule(model, max_pixels, (calibration or {}).get("temperature", 1.0),
                               threshold["threshold"] if threshold else None)
        tf.saved_model.save(module, tmp, signatures=module.signatures())
        _write_extras(tmp, module, model_name, version, source, source_sha256, calibration, threshold)
        return _publish(tmp, model_dir, version, renumber)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _version_exists(model_dir: str, version: int) -> FileExistsError:
    return FileExistsError(f"export version {version} already exists: {os.path.join(model_dir, str(version))}; "
                           "choose another --version or omit it to take the next one")


def _publish(tmp: str, model_dir: str, version: int, renumber: bool) -> str:
    """Rename the finished export ``tmp`` to its version folder. When a concurrent export took
    that version meanwhile, ``renumber`` takes the next free one (rewriting the version in the
    metadata first); otherwise the version asked for is refused."""
    while True:
        final = os.path.join(model_dir, str(version))
        if not os.path.exists(final):  # rename() would replace an empty folder
            try:
                os.rename(tmp, final)
                return final
            except OSError:
                if not os.path.exists(final):
                    raise
        if not renumber:
            raise _version_exists(model_dir, version)
        version = versions(model_dir)[-1] + 1
        path = os.path.join(tmp, "assets.extra", METADATA_FILE)
        durable.atomic_write(path, json.dumps({**read_metadata(tmp), "version": version}, indent=2))


def export_workdir(workdir: str, export_dir: str | None = None, model_name: str = "dfx", version: int | None = None,
                   max_pixels: int = DEFAULT_MAX_PIXELS, model_path: str | None = None, reuse: bool = False,
                   threshold: str | None = None) -> str:
    """Export the workdir's complete model (or ``model_path``) under ``export_dir`` (W/export),
    calibrated by the ``calibration.json`` fitted to that file, with ``is_fake`` when a
    ``threshold`` is given (``fpr:0.01`` or a number; see ``thresholds.resolve``).

    ``reuse`` (train.py) returns the newest export instead when it was made from the same
    model file, pixel limit and calibration, so rerunning a finished training does not pile up copies.
    """
    from dfx_keras import calibrate, thresholds

    model_path = model_path or os.path.join(workdir, "models", "complete.keras")
    if not os.path.exists(model_path):
        raise FileNotFoundError(f"no model to export: {model_path} (train the complete model first)")
    model_dir = os.path.join(export_dir or os.path.join(workdir, "export"), model_name)
    sha256 = file_sha256(model_path)
    calibration = calibrate.calibration_of(model_path)
    chosen = thresholds.resolve(threshold, calibration) if threshold else None
    existing = versions(model_dir) if reuse and version is None else []
    if existing:
        latest = os.path.join(model_dir, str(existing[-1]))
        recorded = read_metadata(latest)
        if (recorded.get("source_sha256") == sha256 and recorded.get("max_pixels") == max_pixels
                and recorded.get("calibration") == calibration and recorded.get("threshold") == chosen):
            return latest
    if calibration is None:
        logging.warning("%s has no calibration fitted to it (%s): exported uncalibrated (temperature 1); train.py "
                        "--stage=complete on its workdir fits one", model_path, calibrate.calibration_path(model_path))
    from dfx_keras import models

    return export_saved_model(models.load_model(model_path), os.path.dirname(model_dir), model_name, version, max_pixels,
                              source=os.path.abspath(model_path), source_sha256=sha256, calibration=calibration,
                              threshold=chosen)


# --- command line ---------------------------------------------------------------------------------

def _define_flags():
    from absl import flags

    flags.DEFINE_string("workdir", None, "Training workdir: exports W/models/complete.keras to W/export.")
    flags.DEFINE_string("model", None, "Export this .keras file instead of the workdir's complete model.")
    flags.DEFINE_string("export_dir", None, "Root of the TF Serving layout <export_dir>/<model_name>/<version>; "
                        "default W/export.")
    flags.DEFINE_string("model_name", "dfx", "Model name: the folder under --export_dir, as TF Serving names it.")
    flags.DEFINE_integer("version", None, "Version folder to write (an existing one is refused); default: the "
                         "next integer.", lower_bound=1)
    flags.DEFINE_string("threshold", None, "Add an is_fake output (fake_score > threshold): fpr:RATE takes the "
                        "threshold chosen at calibration for that false-positive rate on the validation real images "
                        "(fpr:0.01 or fpr:0.05), a number is used as it is. Recorded in assets.extra/dfx_export.json.")
    flags.DEFINE_integer("max_pixels", DEFAULT_MAX_PIXELS, "Largest width x height an encoded image may declare; "
                         "larger ones are refused before decoding (decompression bombs).", lower_bound=1)


def main(argv):
    from absl import app, flags

    FLAGS = flags.FLAGS
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.workdir and not (FLAGS.model and FLAGS.export_dir):
        raise app.UsageError("give --workdir=W (or --model=FILE.keras with --export_dir=DIR)")
    try:
        path = export_workdir(FLAGS.workdir, FLAGS.export_dir, FLAGS.model_name, FLAGS.version, FLAGS.max_pixels,
                              FLAGS.model, threshold=FLAGS.threshold)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        raise app.UsageError(str(e)) from None
    print(f"exported {path} ({directory_size(path) / 2 ** 20:.1f} MiB)")
    metadata = read_metadata(path)
    print(f"temperature {metadata['temperature']:.4g}; outputs: {', '.join(metadata['outputs'])}")
    if metadata["threshold"]:
        print(f"{metadata['decision']} ({metadata['threshold']['chosen_by']})")


def entry_point():
    from absl import app

    _define_flags()
    app.run(main)


if __name__ == "__main__":
    entry_point()  # already quiet: see the top of this file
