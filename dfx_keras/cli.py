"""Console entry points (and the root train.py / evaluate.py scripts).

Each silences TensorFlow's start-up noise first, then imports its CLI module, which imports
TensorFlow: the order matters, since TensorFlow reads its log settings once, at load time.
"""

import importlib
import sys

from dfx_keras.quiet import quiet_tensorflow


def _run(module: str) -> None:
    quiet_tensorflow()
    importlib.import_module(module).entry_point()


def train():
    _run("dfx_keras.train_cli")


def demo():
    """``dfx-demo [--flag=value ...]``: train.py with the shipped demo recipe, from any folder
    (an installed wheel has no configs/ folder to point ``--flagfile`` at); flags given after
    it override the recipe's."""
    from dfx_keras import configs

    sys.argv[1:1] = [f"--flagfile={configs.flagfile('demo')}"]
    train()


def evaluate():
    _run("dfx_keras.evaluate_cli")


def export():
    _run("dfx_keras.export")


def predict():
    _run("dfx_keras.predict")
