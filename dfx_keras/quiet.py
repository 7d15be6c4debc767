"""Silence TensorFlow's own log noise in the CLIs unless ``--verbosity`` asks for it.

Must run before TensorFlow is imported: the C++ log level is read once, at load time.
"""

import logging
import os
import sys
import warnings


def quiet_tensorflow(argv=None) -> None:
    argv = sys.argv if argv is None else argv
    if any(a.startswith(("--verbosity", "-v=", "--v=")) for a in argv):
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    # Keras warns that fit(shuffle=True) is ignored for datasets; ours are shuffled in tf.data.
    warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed.*")
    # Datasets that skip unreadable images have an unknown length, which Keras reports as
    # "ran out of data" at the end of every first epoch; the epoch did end normally.
    warnings.filterwarnings("ignore", message=".*Your input ran out of data.*")
