"""A model as evaluate and predict see it: a ``Classifier``, from a ``.keras`` file or a SavedModel.

How it wants its inputs (float images of one size, or encoded bytes) and a batch ->
probabilities function. A Keras model, a SavedModel's float-image signature and its bytes
signature then run through the same batched ``protocols.predict``; ``dfx_keras.predict`` feeds
the bytes signature the user's files. A TF Serving model folder (``E/dfx``) means its newest
version.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

from dfx_keras.calibration import calibration_of
from dfx_keras.classes import CLASS_NAMES, NUM_CLASSES
from dfx_keras.workdir import export_versions


@dataclasses.dataclass(frozen=True)
class Classifier:
    """A model as the protocols see it.

    ``image_size``: the side of the square float images in [0, 255] it takes (the pipeline
    resizes to it); None when it takes encoded image bytes and resizes itself (a SavedModel's
    ``serving_default``). ``probabilities``: batch -> (B, 3) *uncalibrated* probabilities, a
    compiled function. ``calibration``: the model's ``calibrate.fit`` (temperature, thresholds)
    when it has one; ``protocols.predict`` divides the logits by its temperature, as the export
    does. ``outputs`` (bytes classifiers): batch -> every output of the serving signature
    (calibrated ``probabilities``, ``fake_score``, ``logits``, ``base_scores``, ``is_fake``),
    what ``dfx_keras.predict`` shows. ``keras_model``: the Keras model behind it, if any
    (Grad-CAM needs its layers).
    """

    name: str
    image_size: int | None
    probabilities: Callable
    source_path: str = ""
    max_pixels: int | None = None  # a SavedModel's decompression-bomb limit, as its export recorded it
    calibration: dict | None = None
    outputs: Callable | None = None
    keras_model: object = None

    @property
    def temperature(self) -> float:
        return float(self.calibration["temperature"]) if self.calibration else 1.0


def keras_classifier(model, name: str = "model", source_path: str = "", calibration: dict | None = None,
                     encoded: bool = False) -> Classifier:
    """A 3-class Keras model (images in [0, 255] -> logits), compiled once for any batch size.
    ``encoded``: wrapped in the export's serving module in memory (bytes checked, decoded and
    resized as under TF Serving; the same outputs, calibrated by ``calibration``)."""
    import tensorflow as tf

    if model.output_shape[-1] != NUM_CLASSES:
        raise ValueError(f"{source_path or model.name} outputs {model.output_shape[-1]} values; evaluation needs a "
                         f"3-class model ({', '.join(CLASS_NAMES)}), e.g. complete.keras or baseline.keras")
    size = model.input_shape[1]
    from dfx_keras.serving.module import class_outputs

    if encoded:
        from dfx_keras.serving.module import ServingModule

        module = ServingModule(model, temperature=(calibration or {}).get("temperature", 1.0))
        return _signature_classifier(lambda batch: module.serve_bytes(image_bytes=tf.cast(batch, tf.string)), name,
                                     None, source_path, module.max_pixels, calibration, keras_model=model)
    forward = traced_once(model)
    fn = tf.function(lambda images: class_outputs(forward(images))["probabilities"],
                     input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])
    return Classifier(name, size, fn, source_path, calibration=calibration, keras_model=model)


def traced_once(model) -> Callable:
    """images -> logits for inference, with a complete model's three base models traced once.

    They share one architecture: called through the model, a trace builds each of their ops
    three times and Grappler optimises all three copies (10,772 ops for three DenseNet-121;
    tracing and the first call 6.8 s of evaluate's 13.9 s start-up). Here one non-inlined
    ``tf.function`` runs the first extractor's layers on each extractor's weights
    (``stateless_call``): 1,996 ops, 3.7 s, the same probabilities (benchmarks/RESULTS.md).
    Any other model (a baseline; extractors whose architectures differ) is called as it is.
    """
    import json

    import keras
    import tensorflow as tf

    from dfx_keras import models

    def architecture(layer) -> list:
        """Its leaf layers' classes and configs, in order, names left out (Keras numbers the
        auto-named ones: ``input_layer``, ``input_layer_1``, ...)."""
        if isinstance(layer, keras.Model):
            return [leaf for inner in layer.layers for leaf in architecture(inner)]
        return [(type(layer).__name__, json.dumps({**layer.get_config(), "name": None}, sort_keys=True, default=str))]

    extractors = models.base_feature_extractors(model) if models.is_complete_model(model) else []
    first = architecture(extractors[0]) if len(extractors) == 3 else None
    if first is None or any(architecture(e) != first for e in extractors[1:]):
        return lambda images: model(images, training=False)
    template, head = extractors[0], models.head_of(model)

    @tf.function(autograph=False, reduce_retracing=True, experimental_attributes={"_noinline": True})
    def features(trainable, non_trainable, images):
        outputs, _ = template.stateless_call(trainable, non_trainable, images, training=False)
        return models.extractor_features(outputs)

    def forward(images):
        columns = [features([v.value for v in e.trainable_variables], [v.value for v in e.non_trainable_variables],
                            images) for e in extractors]
        return head(tf.stack(columns, axis=-1), training=False)  # = models.stack_features, on tensors

    return forward


def _signature_classifier(signature: Callable, name: str, image_size: int | None, path: str, max_pixels: int | None,
                          calibration: dict | None, keras_model=None) -> Classifier:
    """A classifier around a serving signature (batch -> outputs): its ``probabilities`` are the
    uncalibrated ones (softmax of ``logits`` when it serves them, as calibrated exports do)."""
    import tensorflow as tf

    def uncalibrated(batch):
        outputs = signature(batch)
        return tf.nn.softmax(outputs["logits"], axis=-1) if "logits" in outputs else outputs["probabilities"]

    return Classifier(name, image_size, tf.function(uncalibrated, reduce_retracing=True), path, max_pixels,
                      calibration, signature, keras_model)


def saved_model_classifier(path: str, name: str = "model", encoded: bool = False) -> Classifier:
    """An exported SavedModel, through its float-image signature ``serving_images`` when the
    image size is known (fixed in the signature, or recorded by ``serving.export``): the
    pipeline's resized images go in as they are, and the signature's own resize to that same
    size changes nothing. Otherwise, or with ``encoded``, ``serving_default`` on encoded bytes
    (it checks, decodes and resizes itself, as under TF Serving)."""
    import tensorflow as tf

    loaded = tf.saved_model.load(path)
    image_size = None if encoded else _float_signature_size(loaded, path)
    signature_name = "serving_images" if image_size else "serving_default"
    if signature_name not in loaded.signatures:
        raise ValueError(f"{path} has neither a usable serving_images nor a serving_default signature "
                         f"(found: {', '.join(loaded.signatures) or 'none'})")
    signature = loaded.signatures[signature_name]
    if "probabilities" not in signature.structured_outputs:
        raise ValueError(f"signature {signature_name} of {path} has no 'probabilities' output")
    (key, spec), = signature.structured_input_signature[1].items()

    def outputs(batch):
        return signature(**{key: tf.cast(batch, spec.dtype)})

    outputs.loaded_model = loaded  # keeps the loaded object (and its variables) alive with the function
    recorded = metadata(path)
    # A calibrated export serves calibrated probabilities and the raw ``logits`` beside them.
    calibration = recorded.get("calibration") if "logits" in signature.structured_outputs else None
    return _signature_classifier(outputs, name, image_size, path, recorded.get("max_pixels"), calibration)


def _float_signature_size(loaded, path: str) -> int | None:
    """The square image size ``serving_images`` takes, or None (no such signature, or its size
    is free and the export recorded none)."""
    if "serving_images" not in loaded.signatures:
        return None
    (spec,) = loaded.signatures["serving_images"].structured_input_signature[1].values()
    if spec.shape[1] is not None and spec.shape[1] == spec.shape[2]:
        return int(spec.shape[1])
    try:
        return int(metadata(path)["image_size"])
    except (KeyError, ValueError, TypeError):
        return None


def metadata(path: str) -> dict:
    """What ``serving.export`` recorded beside a SavedModel (empty for another exporter's)."""
    from dfx_keras.serving.export import read_metadata

    try:
        return read_metadata(path)
    except (OSError, ValueError):
        return {}


def resolve_saved_model(path: str) -> str:
    """A SavedModel folder, or a TF Serving model folder (``E/dfx``): its newest version."""
    if os.path.exists(os.path.join(path, "saved_model.pb")):
        return path
    found = export_versions(path)
    if not found:
        raise FileNotFoundError(f"no SavedModel at {path} (expected saved_model.pb or version folders 1, 2, ...)")
    return os.path.join(path, str(found[-1]))


def load_classifier(path: str, name: str = "model", encoded: bool = False) -> Classifier:
    """A ``.keras`` file, a SavedModel folder or a TF Serving model folder (its newest version),
    with a clear error for anything else. ``encoded``: a SavedModel's bytes signature, or a
    ``.keras`` model in the export's serving module (``keras_classifier``)."""
    if os.path.isdir(path) and (os.path.isfile(os.path.join(path, "saved_model.pb")) or export_versions(path)):
        return saved_model_classifier(resolve_saved_model(path), name, encoded)
    if os.path.isfile(path) and path.endswith(".keras"):
        from dfx_keras import models

        return keras_classifier(models.load_model(path), name, path, calibration_of(path), encoded)
    raise FileNotFoundError(f"no model at {path}: expected a .keras file or a SavedModel folder "
                            "(one holding saved_model.pb, e.g. W/export/dfx/1, or W/export/dfx for its newest version)")


def model_identity(path: str) -> dict:
    """Path and modification time of a model file or folder: results of a model retrained
    since are told apart from the current ones (see ``reports.write_results_json``)."""
    if not path or not os.path.exists(path):
        return {"path": path}
    return {"path": os.path.abspath(path), "modified": os.path.getmtime(path)}
