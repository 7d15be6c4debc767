"""SavedModel export for TensorFlow Serving: ``export/<model_name>/<version>/``, with its warmup file.

Exports are written to a hidden temporary folder beside the version folder and renamed when
complete: TF Serving never sees half an export, and an existing version is never replaced.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil

import numpy as np
import tensorflow as tf
from absl import logging

from dfx_keras import __version__, thresholds
from dfx_keras.calibration import calibration_of
from dfx_keras.classes import CLASS_NAMES
from dfx_keras.data.corpus import DEFAULT_MAX_PIXELS
from dfx_keras.serving.module import BYTES_INPUT, IMAGES_INPUT, SIGNATURE_BYTES, SIGNATURE_IMAGES, ServingModule
from dfx_keras.workdir import (COMPLETE, DEFAULT_MODEL_NAME, Workdir, atomic_write, export_versions,
                               calibration_path, file_sha256, make_temporary_folder, remove_dead_temporaries)

METADATA_FILE = "dfx_export.json"
WARMUP_FILE = "tf_serving_warmup_requests"


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

def directory_size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


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


def export_saved_model(model, export_root: str, model_name: str = DEFAULT_MODEL_NAME, version: int | None = None,
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
    remove_dead_temporaries(model_dir)  # what killed exports left
    renumber = version is None
    version = (export_versions(model_dir) or [0])[-1] + 1 if renumber else version
    if version < 1:
        raise ValueError(f"export versions are positive integers, got {version}")
    if os.path.exists(os.path.join(model_dir, str(version))):
        raise _version_exists(model_dir, version)
    tmp = make_temporary_folder(model_dir, str(version))
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
        version = export_versions(model_dir)[-1] + 1
        path = os.path.join(tmp, "assets.extra", METADATA_FILE)
        atomic_write(path, json.dumps({**read_metadata(tmp), "version": version}, indent=2))


def export_workdir(workdir: str, export_dir: str | None = None, model_name: str = DEFAULT_MODEL_NAME, version: int | None = None,
                   max_pixels: int = DEFAULT_MAX_PIXELS, model_path: str | None = None, reuse: bool = False,
                   threshold: str | None = None) -> str:
    """Export the workdir's complete model (or ``model_path``) under ``export_dir`` (W/export),
    calibrated by the ``calibration.json`` fitted to that file, with ``is_fake`` when a
    ``threshold`` is given (``fpr:0.01`` or a number; see ``thresholds.resolve``).

    ``reuse`` (train.py) returns the newest export instead when it was made from the same
    model file, pixel limit and calibration, so rerunning a finished training does not pile up copies.
    """
    wd = Workdir(workdir) if workdir else None
    model_path = model_path or wd.model(COMPLETE)
    if not os.path.exists(model_path):
        raise FileNotFoundError(f"no model to export: {model_path} (train the complete model first)")
    model_dir = os.path.join(export_dir, model_name) if export_dir else wd.export(model_name)
    sha256 = file_sha256(model_path)
    calibration = calibration_of(model_path)
    chosen = thresholds.resolve(threshold, calibration) if threshold else None
    existing = export_versions(model_dir) if reuse and version is None else []
    if existing:
        latest = os.path.join(model_dir, str(existing[-1]))
        recorded = read_metadata(latest)
        if (recorded.get("source_sha256") == sha256 and recorded.get("max_pixels") == max_pixels
                and recorded.get("calibration") == calibration and recorded.get("threshold") == chosen):
            return latest
    if calibration is None:
        logging.warning("%s has no calibration fitted to it (%s): exported uncalibrated (temperature 1); train.py "
                        "--stage=complete on its workdir fits one", model_path, calibration_path(model_path))
    from dfx_keras import models

    return export_saved_model(models.load_model(model_path), os.path.dirname(model_dir), model_name, version, max_pixels,
                              source=os.path.abspath(model_path), source_sha256=sha256, calibration=calibration,
                              threshold=chosen)
