"""Train DeepFeatureX Net: ``python train.py --flagfile=dfx_keras/configs/demo.flags`` (see --helpfull)."""

from dfx_keras.cli import train_main

if __name__ == "__main__":
    train_main()
