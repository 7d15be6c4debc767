"""Console entry points (and the root train.py / evaluate.py scripts).

Each silences TensorFlow's start-up noise first, then imports its CLI module, which imports
TensorFlow: the order matters, since TensorFlow reads its log settings once, at load time.
"""

import importlib

from dfx_keras.quiet import quiet_tensorflow


def _run(module: str) -> None:
    quiet_tensorflow()
    importlib.import_module(module).entry_point()


def train():
    _run("dfx_keras.train_cli")


def evaluate():
    _run("dfx_keras.evaluate_cli")


def export():
    _run("dfx_keras.export")


def predict():
    _run("dfx_keras.predict")
