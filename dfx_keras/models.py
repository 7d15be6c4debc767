"""The DeepFeatureX Net models: base models, the Conv1D head and the complete model.

All three are Keras functional models, so ``summary()`` shows their parts, they save as
``.keras`` files and load with ``safe_mode=True``. Inputs are float RGB images in [0, 255] at
the model's square size; each model normalises inside (see ``backbones``).
"""

from __future__ import annotations

import keras
from keras import layers

from dfx_keras import backbones
from dfx_keras.fused_batchnorm import FusedBatchNormalization
from dfx_keras.input_residuals import INPUT_RESIDUALS, residual_layer
from dfx_keras.classes import NUM_CLASSES, base_model_name  # noqa: F401  models.base_model_name names the Keras models

FEATURES_LAYER = "features"
LOGITS_LAYER = "logits"
IMAGE_INPUT = "image"
PREPROCESSING_LAYER = "preprocessing"
INPUT_RESIDUAL_LAYER = "input_residual"

# The head of DESIGN.md 1.3: (filters, kernel, stride); every conv pads 1 on both sides.
HEAD_CONVS = ((16, 7, 2), (64, 5, 2), (256, 3, 1), (512, 3, 1), (1024, 3, 1))
# PyTorch BatchNorm1d defaults: momentum 0.1 there is 0.9 in Keras' convention.
BN_MOMENTUM, BN_EPSILON = 0.9, 1e-5
# How the frozen base models' BatchNorm runs while the complete model trains (set_frozen_batchnorm).
FROZEN_BN_MODES = ("inference", "reference")


def build_feature_extractor(backbone: str, image_size: int | None = None, weights: str | None = None,
                            name: str = "feature_extractor", bn_momentum: float = backbones.BN_MOMENTUM,
                            input_residual: str = INPUT_RESIDUALS[0]) -> keras.Model:
    """Image -> backbone preprocessing -> [input residual] -> backbone -> ``features``: a base
    model before its head (the Siamese branch of a contrastive base model)."""
    return keras.Model(*_image_to_features(backbone, image_size, weights, bn_momentum, input_residual), name=name)


def _image_to_features(backbone: str, image_size: int | None, weights: str | None, bn_momentum: float,
                       input_residual: str):
    """Input and ``features`` tensors of a backbone with the preprocessing its weights expect in
    front, then ``input_residual`` (``input_residuals``) on the normalised image: the scale the
    backbone's first conv expects."""
    image_size = image_size or backbones.get_backbone(backbone).default_image_size
    residual = residual_layer(input_residual, image_size, INPUT_RESIDUAL_LAYER)
    inputs = keras.Input((image_size, image_size, 3), name=IMAGE_INPUT)
    mode = backbones.preprocessing_mode(backbone, weights)
    x = backbones.BackbonePreprocessing(mode, name=PREPROCESSING_LAYER)(inputs)
    x = residual(x) if residual else x
    x = backbones.build_backbone(backbone, image_size, weights, bn_momentum)(x)
    return inputs, layers.Identity(name=FEATURES_LAYER)(x)


def backbone_input(extractor: keras.Model, image: keras.KerasTensor) -> keras.KerasTensor:
    """What a base model (or its extractor) feeds its backbone for ``image``, through its own
    layers: the preprocessing, then the input residual if it has one."""
    x = extractor.get_layer(PREPROCESSING_LAYER)(image)
    if any(layer.name == INPUT_RESIDUAL_LAYER for layer in extractor.layers):
        x = extractor.get_layer(INPUT_RESIDUAL_LAYER)(x)
    return x


def build_base_model(backbone: str, image_size: int | None = None, weights: str | None = None,
                     name: str = "base_model", bn_momentum: float = backbones.BN_MOMENTUM,
                     input_residual: str = INPUT_RESIDUALS[0]) -> keras.Model:
    """Image -> backbone preprocessing -> [input residual] -> backbone -> ``features`` -> Dense 2 logits.

    Output index 1 is the base model's main class, 0 the rest.
    """
    inputs, features = _image_to_features(backbone, image_size, weights, bn_momentum, input_residual)
    logits = layers.Dense(2, name=LOGITS_LAYER, dtype="float32")(features)
    return keras.Model(inputs, logits, name=name)


def feature_extractor(base_model: keras.Model) -> keras.Model:
    """The base model as the complete model nests it: image -> [pooled features (B, D), its own
    output (B, 2)].

    The complete model stacks only the features; the base model's output stays in the nested
    model (same weights, so ``complete.keras`` carries it) for ``detector_model``'s
    ``base_scores``: which specialist fired. Any base model whose output is (B, 2) scores with
    index 1 its main class fits (a Dense head, or the contrastive objective's negative distances
    to its stored [rest, main] centroids).
    """
    return keras.Model(base_model.input, [base_model.get_layer(FEATURES_LAYER).output, base_model.output],
                       name=f"{base_model.name}_features")


def extractor_features(extractor_output):
    """The features of an extractor's output: a complete model saved before the extractors kept
    their base model's output (a bare tensor) loads too."""
    return extractor_output[0] if isinstance(extractor_output, (list, tuple)) else extractor_output


def build_head(feature_dim: int, name: str = "head", fused_bn: bool = False) -> keras.Model:
    """The Conv1D head: stacked features (B, D, 3) -> 3 logits, exactly as DESIGN.md 1.3.

    PyTorch's ``padding=1`` is an explicit one-sample zero pad on both sides followed by a
    ``valid`` convolution; Keras' ``same`` pads asymmetrically at stride 2 and differs.
    Order per block: conv -> ReLU -> BatchNorm (none after the last conv). ``fused_bn`` trains
    the BatchNorm layers through TensorFlow's fused kernel (``fused_batchnorm``: same results
    to float tolerance, not bit for bit, so off by default).
    """
    batch_norm = FusedBatchNormalization if fused_bn else layers.BatchNormalization
    inputs = keras.Input((feature_dim, 3), name="stacked_features")
    x = inputs
    for i, (filters, kernel, stride) in enumerate(HEAD_CONVS, start=1):
        x = layers.ZeroPadding1D(1, name=f"pad{i}")(x)
        x = layers.Conv1D(filters, kernel, strides=stride, padding="valid", name=f"conv{i}")(x)
        x = layers.ReLU(name=f"relu{i}")(x)
        if i < len(HEAD_CONVS):
            x = batch_norm(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=f"bn{i}")(x)
    x = layers.GlobalAveragePooling1D(name="pool")(x)
    logits = layers.Dense(NUM_CLASSES, name=LOGITS_LAYER, dtype="float32")(x)
    return keras.Model(inputs, logits, name=name)


def stack_features(features: list) -> keras.KerasTensor:
    """(B, D) x 3 -> (B, D, 3): one channel per base model, in the order DM, GAN, REAL."""
    dim = features[0].shape[-1]
    columns = [layers.Reshape((dim, 1), name=f"column_{n}")(f) for n, f in zip(("dm", "gan", "real"), features)]
    return layers.Concatenate(axis=-1, name="stacked_features")(columns)


def build_complete_model(bm_dm: keras.Model, bm_gan: keras.Model, bm_real: keras.Model,
                         head: keras.Model | None = None, name: str = "complete",
                         frozen_bn: str = "inference") -> keras.Model:
    """One image input -> three frozen base-model feature extractors -> stacked -> head.

    The extractors are frozen (``trainable=False``), which in Keras 3 also runs their
    BatchNorm layers in inference mode: the features are fixed and can be cached. With
    ``frozen_bn="reference"`` their BatchNorm runs as in the reference's training loop
    instead (see ``set_frozen_batchnorm``).
    """
    shapes = {tuple(m.input_shape[1:]) for m in (bm_dm, bm_gan, bm_real)}
    if len(shapes) != 1:
        raise ValueError(f"base models disagree on their input shape: {sorted(shapes)}")
    inputs = keras.Input(shapes.pop(), name=IMAGE_INPUT)
    features = []
    for base in (bm_dm, bm_gan, bm_real):
        features.append(feature_extractor(base)(inputs)[0])
    dims = {f.shape[-1] for f in features}
    if len(dims) != 1:
        raise ValueError(f"base models disagree on their feature size: {sorted(dims)}")
    head = head or build_head(dims.pop())
    logits = head(stack_features(features))
    complete = keras.Model(inputs, logits, name=name)
    set_frozen_batchnorm(complete, frozen_bn)
    return complete


def base_feature_extractors(complete: keras.Model) -> list[keras.Model]:
    """The base models' feature extractors inside a complete model: its nested models but the head."""
    head = head_of(complete)
    return [layer for layer in complete.layers if isinstance(layer, keras.Model) and layer is not head]


def set_frozen_batchnorm(complete: keras.Model, mode: str) -> None:
    """How the frozen base models' BatchNorm layers behave when the complete model trains.

    ``inference`` (the default): normalise with the saved running statistics, never update
    them; the features are fixed. ``reference``: as in the reference's training loop, which
    left the whole model in training mode: normalise with batch statistics and update the
    running statistics, while no backbone weight (gamma and beta included) is trained.
    Keras 3 BatchNorm uses batch statistics only when called in training *and* ``trainable``,
    so those layers are made trainable again, but every one of their variables is marked
    non-trainable: a model's trainable weights are collected variable by variable, so the
    optimizer never sees them. Variable flags are not saved: set ``inference`` before saving,
    so the ``.keras`` file holds a plainly frozen model (with the drifted statistics).

    Each BatchNorm layer is set by itself: on the TensorFlow backend ``model.trainable = False``
    on a model that is already frozen is skipped as a no-op assignment, so it would not reach
    layers made trainable inside it.
    """
    if mode not in FROZEN_BN_MODES:
        raise ValueError(f"unknown frozen_bn mode {mode!r}; expected one of {FROZEN_BN_MODES}")
    for extractor in base_feature_extractors(complete):
        extractor.trainable = False
        for layer in backbones.nested_layers(extractor):
            if isinstance(layer, layers.BatchNormalization):
                layer.trainable = mode == "reference"
                for variable in layer.weights:
                    variable.trainable = False


def build_baseline_model(backbone: str, image_size: int | None = None, weights: str | None = None,
                         bn_momentum: float = backbones.BN_MOMENTUM,
                         input_residual: str = INPUT_RESIDUALS[0]) -> keras.Model:
    """The paper's comparison: one backbone fine-tuned directly as a 3-class classifier
    (``input_residual`` as the base models')."""
    inputs, features = _image_to_features(backbone, image_size, weights, bn_momentum, input_residual)
    logits = layers.Dense(NUM_CLASSES, name=LOGITS_LAYER, dtype="float32")(features)
    return keras.Model(inputs, logits, name="baseline")


def backbone_of(extractor: keras.Model) -> keras.Model:
    """The backbone nested in a base model (or its extractor): its one nested model."""
    (backbone,) = [layer for layer in extractor.layers if isinstance(layer, keras.Model)]
    return backbone


def is_complete_model(model: keras.Model) -> bool:
    """A complete model (base models and a head), not a baseline or a base model."""
    return any(layer.name == "head" for layer in model.layers)


def has_base_outputs(complete: keras.Model) -> bool:
    """Whether the complete model's extractors keep their base models' outputs (complete models
    saved before they did have features only; other models have no base models)."""
    return is_complete_model(complete) and all(len(e.outputs) == 2 for e in base_feature_extractors(complete))


def detector_model(complete: keras.Model) -> keras.Model:
    """The complete model with everything a detector reports, from one forward pass:
    image -> ``{"logits": (B, 3), "base_scores": (B, 3)}``.

    ``base_scores`` are each base model's probability of its own main class (softmax of its
    output, index 1), in the order DM, GAN, REAL. The model is rebuilt from the complete
    model's own layers (shared weights), so the backbones run once; a complete model without
    the base outputs (``has_base_outputs``), or any other 3-class model (the baseline), gives
    ``logits`` only.
    """
    if not is_complete_model(complete):
        return keras.Model(complete.input, {"logits": complete.output}, name=f"{complete.name}_detector")
    inputs = keras.Input(complete.input_shape[1:], name=IMAGE_INPUT)
    outputs = [extractor(inputs) for extractor in base_feature_extractors(complete)]
    logits = head_of(complete)(stack_features([extractor_features(o) for o in outputs]))
    if not has_base_outputs(complete):
        return keras.Model(inputs, {"logits": logits}, name=f"{complete.name}_detector")
    scores = [layers.Softmax(name=f"base_softmax_{i}")(o[1]) for i, o in enumerate(outputs)]
    base_scores = layers.Concatenate(name="base_scores")([s[:, 1:2] for s in scores])
    return keras.Model(inputs, {"logits": logits, "base_scores": base_scores}, name=f"{complete.name}_detector")


def head_of(complete: keras.Model) -> keras.Model:
    """The head submodel of a complete model."""
    return complete.get_layer("head")


def load_model(path: str) -> keras.Model:
    """Load a ``.keras`` file of this project with ``safe_mode=True`` (no Lambda, no pickles).

    Uncompiled: loaded models are frozen parts, evaluated or exported, never trained further
    (interrupted training resumes from its ``training.backup`` state). Compiling a
    ``mixed_float16`` model rebuilds its loss-scale optimizer as a plain one and warns that it
    skipped the saved optimizer's variables.
    """
    from dfx_keras import contrastive, optimizers  # noqa: F401  register the centroid head and the optimizer

    prime_keras_skipset_cache()
    return keras.models.load_model(path, safe_mode=True, compile=False)


# The object kinds whose attribute skip sets Keras' saving walks a model with (``_obj_type()``).
SKIPSET_KINDS = ("Operation", "Layer", "Functional", "Sequential")


def prime_keras_skipset_cache() -> None:
    """Fill the cache Keras 3 (3.15) means to keep of ``saving_lib.get_attr_skipset``.

    It reads the cache under ``saving_attr_skiplist_<kind>`` but writes it under
    ``saving_attr_skipset_<kind>``, so it never hits: loading (and saving) builds a reference
    ``Layer()`` and lists its ``dir()`` once per layer, ~1,300 times for a complete model of
    three DenseNet-121, about a fifth of the load time. The sets are the ones Keras computes;
    the cache lives in Keras' per-thread global state (``clear_session`` empties it), hence a
    call per load. ``tests/test_models.py`` pins the mismatch: when Keras fixes it, drop this.
    """
    try:  # private modules: a Keras that moves them loads models the slow way, never fails
        from keras.src.backend.common import global_state
        from keras.src.saving import saving_lib
    except ImportError:
        return
    for kind in SKIPSET_KINDS:
        key = f"saving_attr_skiplist_{kind}"
        if global_state.get_global_attribute(key) is None:
            global_state.set_global_attribute(key, saving_lib.get_attr_skipset(kind))


def uncompiled_copy(model: keras.Model) -> keras.Model:
    """``model``'s layers and weights without its training state, for nesting in a model that
    is saved: a nested compiled model brings its compile settings and optimizer into the file,
    and loading compiles it again (``compile=False`` applies to the outer model only)."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy
