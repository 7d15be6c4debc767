"""Class names and their order, shared by every part of the project.

The order is the sorted folder names of the corpus (``dm_generated``=0, ``gan_generated``=1,
``real``=2), as in the reference code, so class ids agree with ``guidance.csv`` files.
"""

CLASS_NAMES = ("dm_generated", "gan_generated", "real")
DM, GAN, REAL = range(3)
NUM_CLASSES = len(CLASS_NAMES)

# Short names used for the base models' files (models/bm_<short>.keras) and logs.
SHORT_NAMES = {"dm_generated": "dm", "gan_generated": "gan", "real": "real"}


def class_id(name: str) -> int:
    """Id of a class name; raises ValueError listing the valid names."""
    try:
        return CLASS_NAMES.index(name)
    except ValueError:
        raise ValueError(f"unknown class {name!r}; expected one of {', '.join(CLASS_NAMES)}") from None


def base_model_name(main_class: str) -> str:
    """``bm_dm``, ``bm_gan`` or ``bm_real``: the model, file and stage name of a base model."""
    return f"bm_{SHORT_NAMES[main_class]}"


def fake_score(probabilities):
    """``1 - p(real)``: how fake an image looks, for (..., 3) probabilities (NumPy or TensorFlow)."""
    return 1.0 - probabilities[..., REAL]
