"""The serving module: the complete model's weights and its two signatures.

Written like tensorflow/models ``official/vision/serving/export_base.py``: a ``tf.Module``
holds the complete model's weights and two ``tf.function`` signatures, so the export runs
where only TensorFlow is installed (no ``dfx_keras``, no ``keras_cv``, no Keras model code):

- ``serving_default``: ``image_bytes`` (tf.string [batch], JPEG/PNG/BMP/GIF/WebP). Each image's
  header is checked against ``max_pixels`` *before* it is decoded (decompression bombs,
  ``serving.headers``), then it is decoded and resized by the very functions training uses
  (``pipelines.decode_and_resize``).
- ``serving_images``: ``images`` (float32 [batch, H, W, 3] in [0, 255], any H, W), resized
  inside the same way.

Both return ``probabilities`` [B, 3], ``class_id`` [B], ``class_name`` [B] and ``fake_score``
[B] = 1 - p(real), calibrated by the workdir's temperature (``models/calibration.json``) baked
into the graph; ``logits`` [B, 3], the uncalibrated values; ``base_scores`` [B, 3], each base
model's probability of its own main class (DM, GAN, REAL); and, exported with ``--threshold``,
``is_fake`` [B] = ``fake_score > threshold``. The backbones' normalisation is a layer of the
model, so it is in the graph.
"""

from __future__ import annotations

import functools

import tensorflow as tf

from dfx_keras import models
from dfx_keras.classes import CLASS_NAMES, NUM_CLASSES, fake_score
from dfx_keras.data import pipelines
from dfx_keras.data.corpus import DEFAULT_MAX_PIXELS  # the corpus scan's limit too
from dfx_keras.serving.headers import FORMATS, UNDECODABLE, check_header, fill

SIGNATURE_BYTES, SIGNATURE_IMAGES = "serving_default", "serving_images"
BYTES_INPUT, IMAGES_INPUT = "image_bytes", "images"
OUTPUTS = ("probabilities", "class_id", "class_name", "fake_score")  # every export's, as before calibration
DETECTOR_OUTPUTS = ("logits", "base_scores")  # added by calibration and the base models' heads
DECISION_OUTPUT = "is_fake"  # with --threshold
# Images of one request decoded at once (tf.map_fn's graph default, made explicit): peak memory
# is about this many times 15 bytes (uint8 + float32) per pixel of the largest images.
DECODE_PARALLELISM = 10


def class_outputs(logits: tf.Tensor, temperature: float = 1.0) -> dict[str, tf.Tensor]:
    """The signatures' class outputs from the complete model's logits: probabilities of
    ``logits / temperature``, computed once."""
    probabilities = tf.nn.softmax(logits / temperature, axis=-1)  # x / 1.0 is exact: no special case
    class_id = tf.argmax(probabilities, axis=-1)
    return {"probabilities": probabilities, "class_id": class_id,
            "class_name": tf.gather(tf.constant(CLASS_NAMES), class_id),
            "fake_score": fake_score(probabilities)}


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
        outputs = {**class_outputs(detected["logits"], self.temperature), **detected}
        if self.threshold is not None:
            outputs[DECISION_OUTPUT] = outputs["fake_score"] > self.threshold
        return outputs

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
        # tf.data rewrites each request's pipeline graph before running it; nothing in these two
        # steps gains from that (3.5 ms of a 13 ms pipeline per request, measured).
        options = tf.data.Options()
        options.experimental_optimization.apply_default_optimizations = False
        decoded = pipelines.without_autotuning(decoded, options)
        empty = (tf.zeros([0], tf.int64), tf.zeros([0, self.image_size, self.image_size, 3]))
        indices, images = decoded.batch(tf.maximum(count, 1)).reduce(empty, lambda _, batch: batch)
        failed = tf.sparse.to_dense(tf.sets.difference(tf.range(count)[None], indices[None]))[0]
        named = fill("image_bytes[{}] is " + UNDECODABLE, failed, tf.gather(FORMATS, tf.gather(formats, failed)))
        all_decoded = tf.debugging.Assert(tf.equal(tf.size(failed), 0), [tf.strings.reduce_join(named, separator="; ")])
        with tf.control_dependencies([all_decoded]):
            return tf.identity(images)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=BYTES_INPUT)], autograph=False)
    def serve_bytes(self, image_bytes):
        """Encoded images -> class outputs: every header checked, then each image decoded (sizes differ)."""
        checked, formats = tf.map_fn(lambda args: check_header(*args, self.max_pixels),
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
