"""Evaluate DeepFeatureX Net: ``python evaluate.py --workdir=W`` (see --helpfull)."""

from dfx_keras.cli import evaluate_main

if __name__ == "__main__":
    evaluate_main()
