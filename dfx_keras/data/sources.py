"""The one entry point to the data: a corpus and the source that reads its images.

``--data_dir=FOLDER`` reads the folder (``pipelines.folder_source``); ``--data=tfds:NAME/CONFIG``
a prepared tfds dataset (``tfds_source``), whose splits are the folder's pools. Training and
evaluation both open their data here.
"""

from __future__ import annotations

from dfx_keras.data import corpus as corpus_lib
from dfx_keras.data import pipelines


def open_corpus(data_dir: str | None, data: str | None = None, check: bool = True,
                max_pixels: int = corpus_lib.DEFAULT_MAX_PIXELS):
    """``(corpus, source)`` of a folder, or of a prepared tfds dataset when ``data`` is given.

    A folder is scanned with ``check`` (each file opened, unreadable ones skipped with a
    warning; larger than ``max_pixels`` counts as unreadable) or only listed; a tfds dataset
    was checked when it was prepared.
    """
    if data:
        from dfx_keras.data import tfds_source  # imports tensorflow_datasets: only when asked for

        return tfds_source.open_tfds(data)
    return corpus_lib.scan_corpus(data_dir, check=check, max_pixels=max_pixels), pipelines.folder_source(data_dir)
