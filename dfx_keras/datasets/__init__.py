"""tensorflow-datasets builders shipped with the package (``dfx_keras.datasets.dfx_corpus``).

In the source tree a builder lives where ``tfds new`` puts it, ``datasets/<name>/`` at the top
(``tfds build datasets/dfx_corpus``); setup.cfg installs that folder here, so the wheel adds no
top-level ``datasets`` package, which would overwrite Hugging Face's. From an installed package:
``tfds build dfx_corpus --imports=dfx_keras.datasets.dfx_corpus --manual_dir=CORPUS``.
"""
