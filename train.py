"""Train DeepFeatureX Net: ``python train.py --flagfile=configs/demo.flags`` (see --helpfull)."""

from dfx_keras.train_cli import entry_point

if __name__ == "__main__":
    entry_point()
