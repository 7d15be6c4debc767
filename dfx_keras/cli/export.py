"""``python -m dfx_keras.cli export --workdir=W``: export ``W/models/complete.keras`` for TF Serving.

Writes ``<export_dir>/<model_name>/<version>/`` (``dfx_keras.serving.export``).
"""

from absl import app, flags

from dfx_keras.config import ExportConfig

FLAGS = flags.FLAGS
D = ExportConfig  # the defaults


def define_flags() -> None:
    flags.DEFINE_string("workdir", D.workdir, "Training workdir: exports W/models/complete.keras to W/export.")
    flags.DEFINE_string("model", D.model, "Export this .keras file instead of the workdir's complete model.")
    flags.DEFINE_string("export_dir", D.export_dir, "Root of the TF Serving layout "
                        "<export_dir>/<model_name>/<version>; default W/export.")
    flags.DEFINE_string("model_name", D.model_name, "Model name: the folder under --export_dir, as TF Serving "
                        "names it.")
    flags.DEFINE_integer("version", D.version, "Version folder to write (an existing one is refused); default: "
                         "the next integer.", lower_bound=1)
    flags.DEFINE_string("threshold", D.threshold, "Add an is_fake output (fake_score > threshold): fpr:RATE takes "
                        "the threshold chosen at calibration for that false-positive rate on the validation real "
                        "images (fpr:0.01 or fpr:0.05), a number is used as it is. Recorded in "
                        "assets.extra/dfx_export.json.")
    flags.DEFINE_integer("max_pixels", D.max_pixels, "Largest width x height an encoded image may declare; "
                         "larger ones are refused before decoding (decompression bombs).", lower_bound=1)


def config_from_flags() -> ExportConfig:
    if not FLAGS.workdir and not (FLAGS.model and FLAGS.export_dir):
        raise app.UsageError("give --workdir=W (or --model=FILE.keras with --export_dir=DIR)")
    return ExportConfig(workdir=FLAGS.workdir, model=FLAGS.model, export_dir=FLAGS.export_dir,
                        model_name=FLAGS.model_name, version=FLAGS.version, max_pixels=FLAGS.max_pixels,
                        threshold=FLAGS.threshold)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    cfg = config_from_flags()
    from dfx_keras.serving import export

    try:
        path = export.export_workdir(cfg.workdir, cfg.export_dir, cfg.model_name, cfg.version, cfg.max_pixels,
                                     cfg.model, threshold=cfg.threshold)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        raise app.UsageError(str(e)) from None
    print(f"exported {path} ({export.directory_size(path) / 2 ** 20:.1f} MiB)")
    metadata = export.read_metadata(path)
    print(f"temperature {metadata['temperature']:.4g}; outputs: {', '.join(metadata['outputs'])}")
    if metadata["threshold"]:
        print(f"{metadata['decision']} ({metadata['threshold']['chosen_by']})")
