"""Console entry points. Each silences TensorFlow before the CLI module imports it."""

from dfx_keras.quiet import quiet_tensorflow


def train():
    quiet_tensorflow()
    from dfx_keras.train_cli import entry_point

    entry_point()
