"""Leave-generators-out: architecture folders kept out of every stage, to measure unseen generators.

``train.py --holdout_architectures=gan_generated/StyleGAN2,...`` removes those folders from the
scanned corpus before any pool is used, so no base model, complete model, baseline, validation
set or test-pool protocol sees them; their images are listed in the workdir's ``holdout.csv``
(the columns of ``split.csv``, label ``holdout``) and ``evaluate.py`` reports each folder as a
binary set (``evaluation.protocols.holdout_protocol``). Plain Python, like ``corpus``.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from typing import Iterable, Sequence

from dfx_keras.classes import CLASS_NAMES
from dfx_keras.data.corpus import SPLIT_COLUMNS, Corpus, CorpusError, Sample, write_split_csv
from dfx_keras.workdir import Workdir

HOLDOUT_LABEL = "holdout"


def folder_name(sample: Sample) -> str:
    """``<class>/<architecture>``: how a held-out folder is named on the command line and in results."""
    return f"{CLASS_NAMES[sample.label]}/{sample.architecture}"


def normalize(names: Iterable[str]) -> list[str]:
    """Strip blanks and slashes, drop empties and repeats, keep the order given."""
    cleaned = (name.strip().strip("/") for name in names)
    return list(dict.fromkeys(name for name in cleaned if name))


def folders_on_disk(data_dir: str) -> list[str]:
    """Every ``<class>/<folder>`` of a corpus folder, from two directory listings (no image opened)."""
    found = []
    for name in CLASS_NAMES:
        class_dir = os.path.join(data_dir, name)
        if os.path.isdir(class_dir):
            found += [f"{name}/{d}" for d in sorted(os.listdir(class_dir)) if os.path.isdir(os.path.join(class_dir, d))]
    return found


def check_names(names: Sequence[str], existing: Sequence[str]) -> None:
    """One line naming the folders that do not exist and listing those that do; and no class may
    lose every folder (its base model and the 3-class head would have nothing to learn)."""
    unknown = [n for n in names if n not in existing]
    if unknown:
        raise CorpusError(f"--holdout_architectures: no folder {', '.join(unknown)}; the corpus has "
                          f"{', '.join(existing) or 'no <class>/<folder> folders'}")
    for class_name in CLASS_NAMES:
        folders = [f for f in existing if f.startswith(f"{class_name}/")]
        if folders and set(folders) <= set(names):
            raise CorpusError(f"--holdout_architectures holds out every folder of {class_name} "
                              f"({', '.join(folders)}): keep at least one to train on")


def split_holdout(corpus: Corpus, names: Sequence[str]) -> tuple[Corpus, list[Sample]]:
    """The corpus without the held-out folders (checked against its samples), and their images."""
    if not names:
        return corpus, []
    check_names(names, sorted({folder_name(s) for s in corpus.samples}))
    wanted = set(names)
    held = [s for s in corpus.samples if folder_name(s) in wanted]
    return dataclasses.replace(corpus, samples=[s for s in corpus.samples if folder_name(s) not in wanted]), held


def write_holdout_csv(samples: Sequence[Sample], path: str) -> None:
    """The held-out images in ``split.csv``'s columns, label ``holdout``."""
    write_split_csv(samples, path, label=HOLDOUT_LABEL)


def read_holdout_csv(path: str) -> list[Sample]:
    """The samples a ``holdout.csv`` lists (class from the path's first folder); [] without the file."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != SPLIT_COLUMNS:
            raise CorpusError(f"{path}: expected the columns {','.join(SPLIT_COLUMNS)}, found {reader.fieldnames}")
        rows = list(reader)
    samples = []
    for row in rows:
        class_name = row["image_path"].split("/", 1)[0]
        if class_name not in CLASS_NAMES:
            raise CorpusError(f"{path}: {row['image_path']} is not under a class folder ({', '.join(CLASS_NAMES)})")
        samples.append(Sample(row["image_path"], CLASS_NAMES.index(class_name), row["model"]))
    return samples


def held_out_folders(samples: Iterable[Sample]) -> list[str]:
    """The ``<class>/<folder>`` names of held-out samples, sorted."""
    return sorted({folder_name(s) for s in samples})


def without_folders(corpus: Corpus, folders: Sequence[str]) -> Corpus:
    """The corpus without any image of ``folders`` (evaluate.py: the test pool of a holdout workdir)."""
    drop = set(folders)
    return dataclasses.replace(corpus, samples=[s for s in corpus.samples if folder_name(s) not in drop])


def check_workdir_holdout(wd: Workdir, names: Sequence[str]) -> None:
    """A workdir's models were trained without its held-out folders: a run that holds out other
    folders would mix models that saw them with models that did not. One line, before any work,
    while the workdir has models (``--overwrite`` retrains only the stages a run names)."""
    recorded = held_out_folders(read_holdout_csv(wd.holdout_csv))
    if wd.has_models() and recorded != sorted(names):
        raise CorpusError(f"{wd.root} holds models trained holding out {', '.join(recorded) or 'no folder'}; this run "
                          f"holds out {', '.join(sorted(names)) or 'no folder'}: use another --workdir")


def record_holdout(wd: Workdir, held: Sequence[Sample]) -> None:
    """Write ``holdout.csv``, or remove a stale one when nothing is held out."""
    path = wd.holdout_csv
    if held:
        write_holdout_csv(held, path)
    elif os.path.exists(path):
        os.remove(path)
