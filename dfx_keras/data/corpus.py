"""The corpus on disk: scan the folder layout, check the files, assign pools, select subsets.

Layout: ``<root>/{dm_generated,gan_generated,real}/<architecture>/<image>``. Everything here
is plain Python (no TensorFlow), so the tfds builder, the training pipelines and the
evaluation protocols all share one definition of labels, pools and subsets.

Pools are assigned by a stable hash of the path relative to the root, so the split is the same
on every machine, whatever the file order, and does not move when images are added or removed.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import functools
import hashlib
import os
import posixpath
from collections import Counter, defaultdict
from typing import Iterable, Sequence

from absl import logging
from PIL import Image

from dfx_keras.classes import CLASS_NAMES, NUM_CLASSES
from dfx_keras.workdir import atomic_write

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
POOL_SHARES = (0.4, 0.4, 0.2)  # base models, complete model, test
BASE_POOL, COMPLETE_POOL, TEST_POOL = range(3)
# The tfds split of each pool, indexed by pool (the builder and the tfds reader share it).
SPLIT_NAMES = ("train_base", "train_complete", "test")
UNSPECIFIED_ARCHITECTURE = "unspecified"
SPLIT_COLUMNS = ("label", "image_path", "model")

# The decompression-bomb limit (width x height) of the corpus scan and of the exported SavedModel
# (--max_pixels): an 8000x8000 photo (64 MP) passes, a 20000x20000 PNG bomb (400 MP, a few KB on
# disk, 1.2 GB as uint8 RGB and 4.8 GB as float32) is refused. The real corpus tops out at 1 MP.
DEFAULT_MAX_PIXELS = 100_000_000
# Pillow's own guard (it raises at twice this) stays above any sensible limit: ours is checked
# explicitly in check_image.
Image.MAX_IMAGE_PIXELS = 16384 * 16384


# The paper's corpus (DESIGN.md 1.1): class folder -> architecture folder -> images. The tfds
# builder's architecture labels and the benchmarks' synthetic corpus are derived from it.
PAPER_CORPUS = {
    "dm_generated": {"DALL-E 2": 3421, "DALL-E MINI": 1000, "Glide": 2000, "Latent Diffusion": 4000,
                     "Stable Diffusion": 5000},
    "gan_generated": {"AttGAN": 6005, "BigGAN": 2600, "CycleGAN": 1047, "GauGAN": 4000, "GDWCT": 3367,
                      "ProGAN": 1000, "StarGAN": 6848, "StyleGAN": 4705, "StyleGAN2": 7000, "StyleGAN3": 1000},
    "real": {"CelebA": 5135, "FFHQ": 4981, "Others": 9225},
}


class CorpusError(ValueError):
    """The corpus folder does not have the expected layout."""


@dataclasses.dataclass(frozen=True)
class Sample:
    """One image: its path relative to the corpus root (POSIX), class id and architecture."""

    path: str
    label: int
    architecture: str

    @functools.cached_property
    def pool(self) -> int:
        """Computed once per sample (cached in the instance dict: not a field, so it takes no
        part in ==, hash or repr)."""
        return pool_of(self.path)


@dataclasses.dataclass
class Corpus:
    """A scanned corpus: the readable samples, the image files skipped with the reason, and the
    folders (or special files) that could not be read at all."""

    root: str
    samples: list[Sample]
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    unreadable: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def without(self, samples: Sequence[Sample], reason: str) -> "Corpus":
        """This corpus with ``samples`` moved to ``skipped`` (one warning each)."""
        for s in samples:
            logging.warning("skipping image %s (%s)", s.path, reason)
        dropped = {s.path for s in samples}
        return dataclasses.replace(self, samples=[s for s in self.samples if s.path not in dropped],
                                   skipped=self.skipped + [(s.path, reason) for s in samples])

    def pool(self, pool: int) -> list[Sample]:
        return [s for s in self.samples if s.pool == pool]

    def abspath(self, sample: Sample) -> str:
        return os.path.join(self.root, *sample.path.split("/"))

    def architectures(self) -> list[str]:
        return sorted({s.architecture for s in self.samples})


def unit_hash(text: str, salt: str) -> float:
    """A number in [0, 1) from SHA-256 of ``salt:text``: uniform, stable across machines."""
    digest = hashlib.sha256(f"{salt}:{text}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def pool_of(relpath: str) -> int:
    """Pool of an image (0 base models, 1 complete model, 2 test) from its relative path."""
    u = unit_hash(relpath, "dfx-pool-v1")
    return BASE_POOL if u < POOL_SHARES[0] else COMPLETE_POOL if u < POOL_SHARES[0] + POOL_SHARES[1] else TEST_POOL


def image_files(folder: str, extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
                unreadable: list[tuple[str, str]] | None = None) -> list[str]:
    """Image files under ``folder`` as POSIX paths relative to it, in walk order: each folder's
    files sorted by name, then its subfolders sorted by name (not a plain sort by path).

    Only regular files are listed: reading a FIFO or a device named like an image would block.
    A folder that cannot be listed (permissions, I/O errors) is never left out silently, as
    ``os.walk`` would by default: each such folder and special file gets a warning and is
    appended to ``unreadable`` as (path relative to ``folder``, reason).
    """
    problems = unreadable if unreadable is not None else []

    def folder_error(error: OSError) -> None:
        logging.warning("cannot read folder %s (%s): the images in it are left out", error.filename, error.strerror)
        problems.append((os.path.relpath(error.filename, folder).replace(os.sep, "/"),
                         f"folder cannot be read: {error.strerror}"))

    files = []
    for dirpath, dirnames, filenames in os.walk(folder, onerror=folder_error):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, folder)
        for filename in sorted(filenames):
            if filename.lower().endswith(extensions):
                rel = (filename if rel_dir == "." else os.path.join(rel_dir, filename)).replace(os.sep, "/")
                if os.path.isfile(os.path.join(dirpath, filename)):
                    files.append(rel)
                else:
                    logging.warning("skipping %s: not a regular file", os.path.join(dirpath, filename))
                    problems.append((rel, "not a regular file"))
    return files


def list_images(root: str, unreadable: list[tuple[str, str]] | None = None) -> list[Sample]:
    """All image files under the three class folders, in walk order (``image_files``); no file is opened.

    Raises CorpusError naming what is missing when the layout is wrong. Folders and special
    files that cannot be read are appended to ``unreadable`` (paths relative to ``root``).
    """
    if not os.path.isdir(root):
        raise CorpusError(f"corpus folder not found: {root}")
    missing = [c for c in CLASS_NAMES if not os.path.isdir(os.path.join(root, c))]
    if missing:
        found = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        raise CorpusError(
            f"{root} lacks the class folder(s) {', '.join(missing)}; expected "
            f"{', '.join(CLASS_NAMES)} each holding one folder per architecture (found: {found or 'none'})")
    samples = []
    for label, name in enumerate(CLASS_NAMES):
        problems = []
        for rel in image_files(os.path.join(root, name), unreadable=problems):
            folder, sep, _ = rel.partition("/")
            samples.append(Sample(f"{name}/{rel}", label, folder if sep else UNSPECIFIED_ARCHITECTURE))
        if unreadable is not None:
            unreadable.extend((posixpath.normpath(f"{name}/{path}"), why) for path, why in problems)
    if not samples:
        raise CorpusError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}/{{{','.join(CLASS_NAMES)}}}")
    return samples


def check_image(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> str | None:
    """Why an image file cannot be used, or None when it decodes.

    Catches what would otherwise fail deep inside a tf.data pipeline: empty files, files that
    are not images, truncated data, decompression bombs (over ``max_pixels``, from the header).
    PNGs are checked by their chunk CRCs (no decompression: a full decode is 30x slower, and
    ``pipelines.undecodable`` finds the rest), JPEGs by a draft-mode decode at 1/8 scale, other
    formats by a full decode.
    """
    try:
        if os.path.getsize(path) == 0:
            return "empty file"
        with Image.open(path) as im:
            if im.width * im.height > max_pixels:
                return (f"{im.width}x{im.height} image: {im.width * im.height} pixels, over the max_pixels limit of "
                        f"{max_pixels} (decompression bomb guard)")
            if im.format == "PNG":
                im.verify()
            else:
                if im.format == "JPEG":
                    im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
                im.load()
    except Exception as e:  # PIL raises many types for bad files; all mean "unusable".
        return f"{type(e).__name__}: {e}"
    return None


def scan_corpus(root: str, check: bool = True, workers: int | None = None,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> Corpus:
    """List the corpus and, with ``check``, drop unreadable files with one warning each."""
    unreadable = []
    samples = list_images(root, unreadable)
    if not check:
        return Corpus(root, samples, unreadable=unreadable)
    paths = [os.path.join(root, *s.path.split("/")) for s in samples]
    with concurrent.futures.ThreadPoolExecutor(workers or min(8, (os.cpu_count() or 1) * 2)) as pool:
        errors = list(pool.map(functools.partial(check_image, max_pixels=max_pixels), paths))
    kept, skipped = [], []
    for sample, error in zip(samples, errors):
        if error is None:
            kept.append(sample)
        else:
            logging.warning("skipping unreadable image %s (%s)", sample.path, error)
            skipped.append((sample.path, error))
    if skipped:
        logging.warning("skipped %d unreadable image(s) of %d under %s", len(skipped), len(samples), root)
    if not kept:
        raise CorpusError(f"none of the {len(samples)} image files under {root} could be read")
    return Corpus(root, kept, skipped, unreadable)


def write_split_csv(samples: Iterable[Sample], path: str) -> None:
    """Write the pool assignment as the reference's guidance.csv (label=pool, image_path, model)."""
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(SPLIT_COLUMNS)
            writer.writerows([s.pool, s.path, s.architecture] for s in samples)

    atomic_write(path, write)


def read_split_csv(path: str) -> dict[str, int]:
    """Map image_path -> pool from a split/guidance CSV."""
    with open(path, newline="") as f:
        return {row["image_path"]: int(row["label"]) for row in csv.DictReader(f)}


def _first_by_hash(samples: Sequence[Sample], count: int, salt: str) -> list[Sample]:
    return sorted(samples, key=lambda s: unit_hash(s.path, salt))[:count]


def by_folder(samples: Iterable[Sample]) -> dict[tuple[int, str], list[Sample]]:
    """Group samples by (class id, architecture folder)."""
    groups = defaultdict(list)
    for s in samples:
        groups[(s.label, s.architecture)].append(s)
    return dict(groups)


def folder_quota(count: int, fraction: float, min_images: int = 0) -> int:
    """Images an "others" folder of ``count`` images contributes: round(fraction*count), at
    least one when ``fraction`` > 0 and at least ``min_images``, at most ``count``."""
    floor = max(1 if fraction > 0 else 0, min_images)
    return min(count, max(floor, round(fraction * count)))


def base_model_subset(samples: Iterable[Sample], main_class: int, others_fraction: float,
                      salt: str = "others", others_min_images: int = 0) -> list[Sample]:
    """The deliberately unbalanced set of one base model, from pool-0 samples.

    All images of ``main_class``, plus ``others_fraction`` of every architecture folder of the
    other classes (at least one image per folder, so every generator is seen, and at least
    ``others_min_images`` while the folder has them), chosen by hash.
    """
    chosen = []
    for (label, _), group in sorted(by_folder(samples).items()):
        if label == main_class:
            chosen.extend(group)
        else:
            chosen.extend(_first_by_hash(group, folder_quota(len(group), others_fraction, others_min_images), salt))
    return sorted(chosen, key=lambda s: s.path)


def holdout_split(samples: Sequence[Sample], val_fraction: float, salt: str) -> tuple[list[Sample], list[Sample]]:
    """Random (hash-ordered) train/validation split: round(val_fraction * n) images, at least
    one when there are two or more; the base models use 80/20."""
    count = round(val_fraction * len(samples))
    if val_fraction > 0 and len(samples) >= 2:
        count = max(1, count)
    val_paths = {s.path for s in _first_by_hash(samples, count, salt)}
    return [s for s in samples if s.path not in val_paths], [s for s in samples if s.path in val_paths]


def balanced_holdout(samples: Sequence[Sample], fraction: float, salt: str) -> tuple[list[Sample], list[Sample]]:
    """Validation of the complete model: ``fraction`` of the smallest class count, per class."""
    counts = Counter(s.label for s in samples)
    per_class = int(fraction * min(counts[c] for c in range(NUM_CLASSES))) if len(counts) == NUM_CLASSES else 0
    val = []
    for c in range(NUM_CLASSES):
        val.extend(_first_by_hash([s for s in samples if s.label == c], per_class, salt))
    val_paths = {s.path for s in val}
    return [s for s in samples if s.path not in val_paths], sorted(val, key=lambda s: s.path)


def class_weights(samples: Sequence[Sample]) -> dict[int, float]:
    """The complete model's loss weights: 1 - share of each class."""
    counts = Counter(s.label for s in samples)
    total = max(1, len(samples))
    return {c: 1.0 - counts[c] / total for c in range(NUM_CLASSES)}


def balanced_sample(samples: Sequence[Sample], per_class: int | None, seed: int,
                    groups: Sequence[Sequence[int]] = ((0,), (1,), (2,))) -> list[Sample]:
    """Seeded class-balanced subset: ``per_class`` images from each group of class ids.

    ``per_class=None`` takes the smallest group's size (the reference's balanced test sets).
    """
    members = [[s for s in samples if s.label in g] for g in groups]
    n = min(len(m) for m in members) if per_class is None else per_class
    out = []
    for i, m in enumerate(members):
        out.extend(_first_by_hash(m, min(n, len(m)), f"balanced-{seed}-{i}"))
    return sorted(out, key=lambda s: s.path)


def fraction_others(samples: Sequence[Sample], main_class: int) -> float:
    """Share of images not of ``main_class`` (BM-DM ~12.9% on the full corpus)."""
    return sum(s.label != main_class for s in samples) / max(1, len(samples))


# Fewest training "others" (negatives) a base model should get before train.py warns. The 4%
# rule gives each base model 450 to 734 of them on the paper's 72k corpus (BM-GAN fewest). On
# small corpora, measured with the demo recipe: with 5 to 30 negatives per base model the complete
# model fell below the single-backbone baseline (demo corpora of 540 and 2,700 images, and a
# 2,850-image corpus of real photos and generator outputs, DESIGN.md 1.3b); with 90 to 150
# (--others_min_images) it matched or beat it. 100 lies between the two and far below the paper's.
FEW_OTHERS = 100


def base_model_counts(train: Sequence[Sample], main_class: int) -> dict:
    """What a base model trains on: ``main_images``, ``other_images`` and images per
    ``<class>/<folder>`` (``folder_images``), for logs/stages.json and the closing table."""
    folders = Counter(f"{CLASS_NAMES[s.label]}/{s.architecture}" for s in train)
    others = sum(s.label != main_class for s in train)
    return {"main_images": len(train) - others, "other_images": others, "folder_images": dict(sorted(folders.items()))}


def few_others_warning(name: str, other_images: int) -> str | None:
    """One line for a base model with fewer than ``FEW_OTHERS`` training negatives, naming the
    flag that raises them; None when it has enough."""
    if other_images >= FEW_OTHERS:
        return None
    return (f"{name}: only {other_images} training images of other classes (the paper's 4% rule gives 450 or more "
            f"on its 72k corpus); consider --others_min_images=N (at least N from each other-class folder)")


