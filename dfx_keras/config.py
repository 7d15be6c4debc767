"""What each command runs with, as dataclasses: the command-line flags are built from them.

A field's default is the flag's default (``dfx_keras.cli`` reads them from here), so a setting
has one default whether it comes from ``train.py``, a notebook or a test.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import keras

from dfx_keras.backbones import BN_MOMENTUM
from dfx_keras.data.corpus import DEFAULT_MAX_PIXELS
from dfx_keras.workdir import Workdir


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run depends on (the CLI builds it from flags)."""

    workdir: str
    backbone: str = "densenet121"
    weights: str | None = "imagenet"
    image_size: int = 256
    batch_size: int = 32
    epochs: int = 50
    learning_rate: float = 1e-4
    weight_decay: float = 1e-3
    lr_step_epochs: int = 0
    lr_gamma: float = 0.1
    others_fraction: float = 0.04
    others_min_images: int = 0  # every other-class folder gives a base model at least this many (pool-0 size caps it)
    val_fraction: float = 0.2
    seed: int = 42
    max_pixels: int = DEFAULT_MAX_PIXELS  # decompression-bomb limit of the scan and the export
    feature_cache: bool = True
    cache_images: bool = False
    augment: Sequence[str] = ()  # attack kinds of data.attacks.random_augment ("jpeg", "blur"); empty: none
    augment_p: float = 0.5
    precision: str = "float32"  # a Keras dtype policy: float32, mixed_bfloat16 or mixed_float16
    jit_compile: bool | str = "auto"  # XLA; "auto" is Keras' choice (one GPU without tf.distribute only)
    sync_batchnorm: bool = True
    bn_momentum: float = BN_MOMENTUM  # the backbones' BatchNorm momentum (Keras convention)
    frozen_bn: str = "inference"  # models.FROZEN_BN_MODES: the frozen base models' BatchNorm in the complete stage
    overwrite: bool = False
    verbose: int | str = "auto"
    extra_callbacks: Sequence[keras.callbacks.Callback] = ()

    @property
    def wd(self) -> Workdir:
        return Workdir(self.workdir)
