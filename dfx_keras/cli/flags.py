"""absl flags of train.py and evaluate.py, their defaults taken from ``dfx_keras.config``.

Values that can be checked without touching data (names, ranges, enums) are validated by
absl at parse time, so a typo fails with one line before TensorFlow builds anything. All are
defined here (``write_flags`` records this module's flags in flags.txt).
"""

from absl import flags

from dfx_keras.backbones import BACKBONES
from dfx_keras.classes import CLASS_NAMES
from dfx_keras.config import (AUGMENT_KINDS, BASE_OBJECTIVES, BATCH_SIZE, PRECISIONS, PROTOCOLS, SEED, STAGES,
                              STRATEGIES, TrainConfig, TrainPlan)
from dfx_keras.input_residuals import INPUT_RESIDUALS, check_input_residual
from dfx_keras.models import FROZEN_BN_MODES

T = TrainConfig  # the defaults of train.py's settings


def define_common_flags():
    """Flags that locate the work and the data; both CLIs use them."""
    flags.DEFINE_string("workdir", None, "Folder for models, split.csv, logs, results and exports.")
    flags.DEFINE_string("data_dir", None, "Corpus root: <data_dir>/{dm_generated,gan_generated,real}/<architecture>/<image>.")
    flags.DEFINE_string("data", None, "Alternative data source: 'tfds:dfx_corpus/<config>' reads a prepared tfds "
                        "dataset instead of --data_dir (optionally 'tfds:NAME/CONFIG@TFDS_DATA_DIR').")
    flags.DEFINE_integer("batch_size", BATCH_SIZE, "Global batch size, split across replicas (per replica: "
                         "batch_size / replicas).", lower_bound=1)
    flags.DEFINE_integer("seed", SEED, "Seed for initialisation, shuffling and balanced test sampling.")
    flags.DEFINE_enum("strategy", TrainPlan.strategy, STRATEGIES, "Distribution strategy: auto uses MirroredStrategy when "
                      "more than one GPU is visible; multi_worker reads TF_CONFIG.")


def define_train_flags():
    """Flags of train.py (the paper's reference settings are the defaults)."""
    define_common_flags()
    flags.DEFINE_enum("stage", TrainPlan.stage, STAGES, "What to train: all (three base models, complete model, evaluation, "
                      "export), base (one base model, see --main_class), complete, or baseline.")
    flags.DEFINE_enum("main_class", TrainPlan.main_class, CLASS_NAMES, "Main class of the base model for --stage=base; "
                      "omitted: all three.")
    flags.DEFINE_enum("backbone", T.backbone, list(BACKBONES), "Backbone of the base models (and the baseline).")
    flags.DEFINE_string("weights", T.weights, "Backbone initialisation: imagenet (Keras' published weights, "
                        "downloaded by Keras), torchvision:FILE (torchvision's ImageNet state dict, .pth with torch "
                        "installed or a .safetensors copy: the reference's starting point; torchvision's layout and "
                        "ImageNet mean/std), none, or the path of a Keras weights file (offline users).")
    flags.DEFINE_integer("image_size", T.image_size, "Square model input; whole images are squashed to it.", lower_bound=16)
    flags.DEFINE_enum("input_residual", T.input_residual, INPUT_RESIDUALS, "What the backbone of each base model "
                      "(and of the baseline) sees: none (the image, as the paper) or npr (Neighbouring Pixel "
                      "Relationships, Tan et al., CVPR 2024: each pixel of the normalised image minus the top-left "
                      "pixel of its 2x2 cell, scaled by 2/3 as the authors' code; it keeps the traces generators' "
                      "up-sampling leaves and drops the content. No weights; needs an even --image_size). The layer "
                      "is inside the saved models: evaluate.py, export and predict need nothing more.")
    flags.register_multi_flags_validator(["input_residual", "image_size"], _input_residual_fits,
                                         "--input_residual does not fit --image_size")
    flags.DEFINE_integer("epochs", T.epochs, "Epochs per stage; the checkpoint with the lowest validation loss is kept.",
                         lower_bound=1)
    flags.DEFINE_float("learning_rate", T.learning_rate, "Adam learning rate (for the global batch size).", lower_bound=0.0)
    flags.DEFINE_float("weight_decay", T.weight_decay, "Coupled L2 added to the gradients (PyTorch Adam's weight_decay).",
                       lower_bound=0.0)
    flags.DEFINE_integer("lr_step_epochs", T.lr_step_epochs, "If > 0, multiply the learning rate by --lr_gamma every this many "
                         "epochs (PyTorch StepLR); 0 keeps it constant as the reference.", lower_bound=0)
    flags.DEFINE_float("lr_gamma", T.lr_gamma, "StepLR factor.", lower_bound=0.0)
    flags.DEFINE_float("others_fraction", T.others_fraction, "Share of every other-class architecture folder added to a base "
                       "model's training set.", lower_bound=0.0, upper_bound=1.0)
    flags.DEFINE_integer("others_min_images", T.others_min_images, "Every other-class architecture folder gives a base model at least "
                         "this many of its pool-0 images (all of them if it has fewer). 0 keeps the paper's plain "
                         "--others_fraction, made for a corpus of tens of thousands of images; on a small corpus "
                         "that leaves a few dozen negatives per base model (train.py warns).", lower_bound=0)
    flags.DEFINE_float("val_fraction", T.val_fraction, "Validation share of each training set (base models: random; "
                       "complete model: per class, of the smallest class).", lower_bound=0.0, upper_bound=0.9)
    flags.DEFINE_bool("feature_cache", T.feature_cache, "Complete stage: compute the frozen base models' features once and "
                      "train the head on them (--nofeature_cache trains end to end on images).")
    flags.DEFINE_bool("cache_images", T.cache_images, "Keep resized images in memory after the first epoch (small corpora).")
    flags.DEFINE_bool("overwrite", T.overwrite, "Retrain stages whose model already exists in the workdir.")
    flags.DEFINE_bool("make_demo_corpus", TrainPlan.make_demo_corpus, "Generate the procedural demo corpus in --data_dir if it is not "
                      "there (no downloads).")
    flags.DEFINE_integer("max_pixels", T.max_pixels, "Decompression-bomb limit: the largest width x height "
                         "an image may declare. The corpus scan skips larger images (one warning each) and the "
                         "exported SavedModel refuses them before decoding.", lower_bound=1)
    flags.DEFINE_bool("evaluate", TrainPlan.evaluate, "After --stage=all, evaluate the complete model on the test pool.")
    flags.DEFINE_list("augment", list(T.augment), "Training augmentation with the test attacks, as the follow-up paper: any of "
                      f"{','.join(AUGMENT_KINDS)} (e.g. --augment=jpeg,blur); empty: none, as the reference. "
                      "Applies to the base, complete (end to end: the feature cache is bypassed) and baseline stages.")
    flags.register_validator("augment", lambda kinds: set(kinds) <= set(AUGMENT_KINDS),
                             f"--augment takes a comma-separated list of {', '.join(AUGMENT_KINDS)}")
    flags.DEFINE_float("augment_p", T.augment_p, "Share of training images attacked when --augment is set (JPEG quality "
                       "50-99 or Gaussian blur kernel 3-15, sigma 4).", lower_bound=0.0, upper_bound=1.0)
    flags.DEFINE_enum("precision", T.precision, PRECISIONS, "Keras dtype policy of the trained models: float32 "
                      "(the reference), mixed_float16 (NVIDIA GPUs, with loss scaling) or mixed_bfloat16 (TPUs, "
                      "recent GPUs and CPUs). Logits and loss stay float32. See docs/scaling.md.")
    flags.DEFINE_bool("jit_compile", None, "XLA-compile the training and validation steps. Unset: Keras' choice "
                      "(on for one GPU, off on CPUs); --jit_compile forces it on, --nojit_compile off. Always off "
                      "on several replicas (Keras 3 cannot XLA-compile under tf.distribute).")
    flags.DEFINE_bool("head_fused_bn", T.head_fused_bn, "Train the head's BatchNorm layers through TensorFlow's fused "
                      "kernel (oneDNN / cuDNN) instead of Keras' separate ops: the same head to float tolerance, "
                      "not bit for bit. Pays with --precision=mixed_bfloat16 on CPU (see benchmarks/RESULTS.md).")
    flags.DEFINE_bool("sync_batchnorm", T.sync_batchnorm, "With several replicas, BatchNorm uses the statistics of the global "
                      "batch, so results do not depend on the number of GPUs; --nosync_batchnorm uses each "
                      "replica's slice (less communication; keep >= 16 images per replica).")
    flags.DEFINE_float("bn_momentum", T.bn_momentum, "Momentum of the backbones' BatchNorm running statistics, in "
                       "Keras' convention (running = m * running + (1 - m) * batch). The default is PyTorch's "
                       "momentum 0.1, as in the reference's torchvision backbones; keras.applications' own 0.99 "
                       "leaves the statistics of a short or from-scratch run near their initial values, and the "
                       "model then predicts one class in inference mode.", lower_bound=0.0, upper_bound=1.0)
    flags.DEFINE_enum("frozen_bn", T.frozen_bn, FROZEN_BN_MODES, "How the frozen base models' BatchNorm runs "
                      "while the complete model trains: inference (running statistics, fixed features; the "
                      "feature cache applies) or reference (batch statistics, running statistics updated, as "
                      "the reference's training loop; no backbone weight is trained; trains end to end, and "
                      "complete.keras then holds statistics that differ from models/bm_*.keras).")
    flags.DEFINE_bool("train_baseline", TrainPlan.train_baseline, "With --stage=all, also train the single-backbone baseline "
                      "(--stage=baseline) after the complete model, and report its test accuracy beside the "
                      "complete model's. Not part of the paper's recipe.")
    flags.DEFINE_list("holdout_architectures", list(T.holdout_architectures), "Leave generators out: <class>/<folder> names (e.g. "
                      "gan_generated/StyleGAN2,dm_generated/Glide) kept out of every stage (base models, complete "
                      "model, baseline, validation sets, test pool). Their images are listed in <workdir>/holdout.csv "
                      "and evaluate.py reports each folder as a binary set against test-pool images of the other side "
                      "(results.json \"holdout\").")
    flags.DEFINE_enum("base_objective", T.base_objective, BASE_OBJECTIVES, "How the base models train: "
                      "cross_entropy (DeepFeatureX Net: a main-vs-rest head on the deliberately unbalanced set) or "
                      "contrastive (DeepFeatureX-SN: balanced main-vs-rest pairs, contrastive loss on the pooled "
                      "features with margin 2; the model keeps its main and rest feature centroids as its head). "
                      "Same optimizer and schedule flags; the complete model is unchanged.")
    flags.mark_flag_as_required("workdir")


def _input_residual_fits(values: dict) -> bool:
    """absl validator: NPR's 2x2 cells need an even image size (the error names both flags)."""
    try:
        check_input_residual(values["input_residual"], values["image_size"])
    except ValueError as e:
        raise flags.ValidationError(str(e)) from None
    return True


def define_evaluate_flags():
    """Flags of evaluate.py; the data flags are the common ones (a workdir's own by default)."""
    define_common_flags()
    flags.DEFINE_string("model", None, "Evaluate this .keras model or SavedModel folder instead of the workdir's "
                        "models/complete.keras.")
    flags.DEFINE_list("protocols", None, f"Test protocols among {','.join(PROTOCOLS)}; default: every one that "
                      "has data (generalization needs --generalization_dir).")
    flags.register_validator("protocols", lambda names: names is None or (names and set(names) <= set(PROTOCOLS)),
                             f"--protocols takes a comma-separated list of {', '.join(PROTOCOLS)}")
    flags.DEFINE_string("generalization_dir", None, "Folder whose subfolders <set>/0_real/ and <set>/1_fake/ hold "
                        "images of generators never seen in training; binary metrics per set and their mean.")
    flags.DEFINE_bool("baseline", True, "Also evaluate the workdir's models/baseline.keras when it exists "
                      "(train it with train.py --stage=baseline) and show it beside the complete model.")
    flags.DEFINE_string("results_dir", None, "Where the results go; default <workdir>/results (with --model: "
                        "<workdir>/results/<model name>).")
