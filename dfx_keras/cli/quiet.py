"""Silence TensorFlow's own log noise in the CLIs unless ``--verbosity`` asks for it.

TensorFlow 2.21 prints its C++ start-up messages (oneDNN, CUDA probing) through absl's C++
logger *before* ``TF_CPP_MIN_LOG_LEVEL`` is applied, so the variable alone no longer silences
them. The CLIs therefore also route the process' native stderr (file descriptor 2) through a
filter that drops TensorFlow's C++ log lines and passes everything else through; Python's own
``sys.stderr`` (tracebacks, absl warnings about skipped images) bypasses the filter.
Call it first thing in a CLI entry point, before TensorFlow is imported (``dfx_keras.cli.run``
does); calling it again does nothing.
"""

import io
import logging
import os
import re
import sys
import threading
import warnings

# "I0000 00:00:1795646122.375556   13630 port.cc:153] ..." and absl's pre-init banner; fatal
# (F) lines still pass.
NATIVE_NOISE = re.compile(rb"^(WARNING: All log messages before absl::InitializeLog|[IWE]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] )")


def _filter_native_stderr() -> None:
    original = os.dup(2)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    sys.stderr = io.TextIOWrapper(io.FileIO(original, "w", closefd=False), line_buffering=True)

    def pump():
        with io.FileIO(read_fd, "r") as pipe:
            for line in io.BufferedReader(pipe):
                if not NATIVE_NOISE.match(line):
                    os.write(original, line)

    threading.Thread(target=pump, name="native-stderr-filter", daemon=True).start()


_filtering = False  # the native stderr filter is installed once per process


def quiet_tensorflow(argv=None) -> None:
    global _filtering
    argv = sys.argv if argv is None else argv
    if _filtering or any(a.startswith(("--verbosity", "-v=", "--v=")) for a in argv):
        return
    _filtering = True
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    # Keras warns that fit(shuffle=True) is ignored for datasets; ours are shuffled in tf.data.
    warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed.*")
    # Datasets that skip unreadable images have an unknown length, which Keras reports as
    # "ran out of data" at the end of every first epoch; the epoch did end normally.
    warnings.filterwarnings("ignore", message=".*Your input ran out of data.*")
    _filter_native_stderr()
