"""``python -m dfx_keras.cli predict --model=E/dfx/1 FILE_OR_DIR ...``: classify your own images.

Prints a table (file, class, probabilities, fake_score, base_scores, decision), optionally
writes it as CSV and as one HTML page, and with ``--explain`` (a ``.keras`` model) a Grad-CAM
figure per image (``dfx_keras.predict``); exits 1 when any file could not be classified.
"""

import os

from absl import app, flags

from dfx_keras.config import PredictConfig

FLAGS = flags.FLAGS
D = PredictConfig  # the defaults


def define_flags() -> None:
    flags.DEFINE_string("model", None, "Exported SavedModel: E/<model_name>/<version>, or E/<model_name> for its "
                        "newest version; or a complete.keras file (needed by --explain).", required=True)
    flags.DEFINE_string("csv", D.csv, "Also write the predictions to this CSV file.")
    flags.DEFINE_string("threshold", D.threshold, "Decide fake or real by fake_score > threshold: fpr:RATE takes "
                        "the threshold chosen at calibration for that false-positive rate (fpr:0.01, fpr:0.05), a "
                        "number is used as it is. Default: the export's own (exported with --threshold), else no "
                        "decision.")
    flags.DEFINE_string("explain", D.explain, "Write a Grad-CAM figure per image under this folder, mirroring the "
                        "input paths: where each base model looked for the predicted class. Needs "
                        "--model=FILE.keras.")
    flags.DEFINE_string("report", D.report, "Write one self-contained HTML page (images embedded): thumbnail, "
                        "class, fake_score, base_scores, decision and, with --explain, the heatmaps.")
    flags.DEFINE_integer("batch_size", D.batch_size, "Images sent to the model at once.", lower_bound=1)
    flags.DEFINE_bool("progress", D.progress, "Show a progress bar on stderr when a folder is given.")


def _prepare(cfg: PredictConfig):
    """Files, the predictor and (with ``--explain``) the Grad-CAM model, every output checked
    writable first: a bad flag is one line before any prediction, which it would lose."""
    from dfx_keras import predict
    from dfx_keras.workdir import check_writable_folder

    files = predict.list_images(cfg.inputs)
    for flag, path in (("--csv", cfg.csv), ("--report", cfg.report)):
        if path:
            predict.check_output_file(path, flag)
    if cfg.explain:
        predict.check_explainable(cfg.model)
        check_writable_folder(cfg.explain, "--explain")
    predictor = predict.Predictor(cfg.model, cfg.threshold)
    explainer = None
    if cfg.explain:  # a backbone without its registered feature-map layer: before any prediction
        from dfx_keras.explain import gradcam

        explainer = gradcam.gradcam_model(predictor.keras_model)
    return files, predictor, explainer


def main(argv):
    if len(argv) < 2:
        raise app.UsageError("give one or more image files or folders")
    cfg = PredictConfig(model=FLAGS.model, inputs=argv[1:], csv=FLAGS.csv, batch_size=FLAGS.batch_size,
                        progress=FLAGS.progress, threshold=FLAGS.threshold, explain=FLAGS.explain, report=FLAGS.report)
    from dfx_keras import predict

    try:
        files, predictor, explainer = _prepare(cfg)
    except (FileNotFoundError, ValueError) as e:
        raise app.UsageError(str(e)) from None
    show_bar = cfg.progress and any(os.path.isdir(p) for p in cfg.inputs)
    predictions = predict.predict_files(predictor, files, cfg.batch_size, predict.progress_bar if show_bar else None)
    print(predict.format_table(predictions))
    print(predict.decision_line(predictor.decision))
    print(predict.summary(predictions))
    if cfg.csv:
        predict.write_csv(cfg.csv, predictions)
        print(f"csv: {cfg.csv}")
    heatmaps = {}
    if explainer is not None:
        from dfx_keras.explain import figures

        heatmaps = figures.explain_files(explainer, predictions, cfg.explain, cfg.batch_size)
        print(f"explain: {len(heatmaps)} Grad-CAM figure(s) under {cfg.explain}")
    if cfg.report:
        print(f"report: {predict.write_report(cfg.report, predictor, predictions, heatmaps)}")
    return 1 if any(p.error for p in predictions) else 0
