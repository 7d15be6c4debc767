"""What each command runs with, as dataclasses; the command-line flags are built from them.

A field's default is its flag's default (``dfx_keras.cli.flags`` reads them from here), so a
setting has one default whether it comes from ``train.py``, a notebook or a test.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import keras

from dfx_keras.backbones import BN_MOMENTUM
from dfx_keras.data.corpus import DEFAULT_MAX_PIXELS, Sample
from dfx_keras.input_residuals import INPUT_RESIDUALS
from dfx_keras.models import FROZEN_BN_MODES
from dfx_keras.workdir import DEFAULT_MODEL_NAME, Workdir

# Choices of the enumerated settings; the first of each is the default.
STAGES = ("all", "base", "complete", "baseline")
STRATEGIES = ("auto", "mirrored", "one_device", "multi_worker")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
PROTOCOLS = ("raw", "robustness", "generalization", "holdout")
BASE_OBJECTIVES = ("cross_entropy", "contrastive")  # how the base models train (contrastive: DeepFeatureX-SN)
AUGMENT_KINDS = ("jpeg", "blur")  # the kinds of dfx_keras.data.attacks.random_augment
BATCH_SIZE, SEED = 32, 42  # shared by training and evaluation


@dataclasses.dataclass
class TrainConfig:
    """Everything the training stages depend on (train.py builds it from its flags)."""

    workdir: str
    backbone: str = "densenet121"
    weights: str | None = "imagenet"
    image_size: int = 256
    input_residual: str = INPUT_RESIDUALS[0]  # what the backbones see (input_residuals): the image, or NPR
    batch_size: int = BATCH_SIZE
    epochs: int = 50
    learning_rate: float = 1e-4
    weight_decay: float = 1e-3
    lr_step_epochs: int = 0
    lr_gamma: float = 0.1
    others_fraction: float = 0.04
    others_min_images: int = 0  # every other-class folder gives a base model at least this many (pool-0 size caps it)
    val_fraction: float = 0.2
    seed: int = SEED
    max_pixels: int = DEFAULT_MAX_PIXELS  # decompression-bomb limit of the scan and the export
    feature_cache: bool = True
    cache_images: bool = False
    augment: Sequence[str] = ()  # AUGMENT_KINDS of data.attacks.random_augment; empty: none
    augment_p: float = 0.5
    precision: str = PRECISIONS[0]  # a Keras dtype policy
    jit_compile: bool | str = "auto"  # XLA; "auto" is Keras' choice (one GPU without tf.distribute only)
    sync_batchnorm: bool = True
    head_fused_bn: bool = False  # the head's BatchNorm trains through TF's fused kernel (fused_batchnorm)
    bn_momentum: float = BN_MOMENTUM  # the backbones' BatchNorm momentum (Keras convention)
    frozen_bn: str = FROZEN_BN_MODES[0]  # the frozen base models' BatchNorm in the complete stage
    holdout_architectures: Sequence[str] = ()  # "<class>/<folder>" kept out of every stage (data.holdout)
    base_objective: str = BASE_OBJECTIVES[0]
    overwrite: bool = False
    verbose: int | str = "auto"
    extra_callbacks: Sequence[keras.callbacks.Callback] = ()

    @property
    def wd(self) -> Workdir:
        return Workdir(self.workdir)


@dataclasses.dataclass
class TrainPlan:
    """What ``train.py`` runs around the stages: the data, which stages, on which strategy."""

    data_dir: str | None = None
    data: str | None = None  # tfds:NAME/CONFIG[@DATA_DIR] instead of the folder
    stage: str = STAGES[0]
    main_class: str | None = None  # --stage=base: one base model; None: all three
    strategy: str = STRATEGIES[0]
    make_demo_corpus: bool = False
    evaluate: bool = True  # after --stage=all or complete: the raw test
    train_baseline: bool = False  # --stage=all also trains the baseline


@dataclasses.dataclass
class EvaluateConfig:
    """The models to test (name -> path; the first is the main one, the others, such as the
    baseline, are reported beside it), the protocols, and where the data and results are."""

    models: Mapping[str, str]
    protocols: Sequence[str]
    results_dir: str
    data_dir: str | None = None
    data: str | None = None
    generalization_dir: str | None = None
    batch_size: int = BATCH_SIZE
    seed: int = SEED
    holdout: Sequence[Sample] = ()  # the images a leave-generators-out run kept out (its holdout.csv)


@dataclasses.dataclass
class ExportConfig:
    """A ``.keras`` model (a workdir's complete model, or ``model``) to export for TF Serving."""

    workdir: str | None = None
    model: str | None = None
    export_dir: str | None = None  # default W/export
    model_name: str = DEFAULT_MODEL_NAME
    version: int | None = None  # default: the next integer
    max_pixels: int = DEFAULT_MAX_PIXELS
    threshold: str | None = None  # fpr:RATE or a number: adds is_fake


@dataclasses.dataclass
class PredictConfig:
    """Files and folders to classify with an exported model (or a ``.keras`` one, to explain)."""

    model: str
    inputs: Sequence[str]
    csv: str | None = None
    batch_size: int = BATCH_SIZE
    progress: bool = True
    threshold: str | None = None  # default: the export's own, else no decision
    explain: str | None = None  # folder of Grad-CAM figures
    report: str | None = None  # HTML page
