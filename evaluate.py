"""Evaluate DeepFeatureX Net: ``python evaluate.py --workdir=W`` (see --helpfull)."""

from dfx_keras.evaluate_cli import entry_point

if __name__ == "__main__":
    entry_point()
