"""Train DeepFeatureX Net: ``python train.py --flagfile=configs/demo.flags`` (see --helpfull)."""

from dfx_keras.cli import train

if __name__ == "__main__":
    train()
