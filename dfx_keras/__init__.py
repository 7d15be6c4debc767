"""DeepFeatureX Net in TensorFlow/Keras: is an image diffusion-made, GAN-made or real?

The public API: class names and the three model builders of DESIGN.md section 2. They are
imported lazily, so that ``import dfx_keras`` (and the CLIs' first lines) stay light and the
CLIs can silence TensorFlow's C++ logging before TensorFlow loads.
"""

import importlib

__version__ = "0.1.0"
_API = {"CLASS_NAMES": "dfx_keras.classes", "build_base_model": "dfx_keras.models",
        "build_complete_model": "dfx_keras.models", "build_head": "dfx_keras.models"}
__all__ = list(_API)


def __getattr__(name):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'dfx_keras' has no attribute {name!r}")
