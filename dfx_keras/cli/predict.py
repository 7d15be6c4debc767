"""``python -m dfx_keras.cli predict --model=E/dfx/1 FILE_OR_DIR ...``: classify your own images.

Prints a table (file, class, probabilities, fake_score), optionally writes it as CSV
(``dfx_keras.predict``); exits 1 when any file could not be classified.
"""

import os

from absl import app, flags

from dfx_keras.config import PredictConfig

FLAGS = flags.FLAGS
D = PredictConfig  # the defaults


def define_flags() -> None:
    flags.DEFINE_string("model", None, "Exported SavedModel: E/<model_name>/<version>, or E/<model_name> for its "
                        "newest version.", required=True)
    flags.DEFINE_string("csv", D.csv, "Also write the predictions to this CSV file.")
    flags.DEFINE_integer("batch_size", D.batch_size, "Images sent to the model at once.", lower_bound=1)
    flags.DEFINE_bool("progress", D.progress, "Show a progress bar on stderr when a folder is given.")


def main(argv):
    if len(argv) < 2:
        raise app.UsageError("give one or more image files or folders")
    cfg = PredictConfig(model=FLAGS.model, inputs=argv[1:], csv=FLAGS.csv, batch_size=FLAGS.batch_size,
                        progress=FLAGS.progress)
    from dfx_keras import predict

    try:
        files = predict.list_images(cfg.inputs)
        if cfg.csv:  # before the predictions, which it would lose
            predict.check_csv_path(cfg.csv)
        predictor = predict.Predictor(cfg.model)
    except (FileNotFoundError, ValueError) as e:
        raise app.UsageError(str(e)) from None
    show_bar = cfg.progress and any(os.path.isdir(p) for p in cfg.inputs)
    predictions = predict.predict_files(predictor, files, cfg.batch_size, predict.progress_bar if show_bar else None)
    print(predict.format_table(predictions))
    print(predict.summary(predictions))
    if cfg.csv:
        predict.write_csv(cfg.csv, predictions)
        print(f"csv: {cfg.csv}")
    return 1 if any(p.error for p in predictions) else 0
