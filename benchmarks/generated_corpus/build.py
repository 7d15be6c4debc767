"""Build the corpus: crop the photos, train every generator family, write the layout.

Output (``root``)::

    corpus/{dm_generated,gan_generated,real}/<architecture>/<nnnn>.png   the training corpus
    heldout/<family>/{0_real,1_fake}/<nnnn>.png                           generalization sets
    grids/<family>.png                                                    samples of each family
    build.json                                                            what was built, how long

Everything is seeded and TensorFlow runs with op determinism, so two builds with the same
config, seed and photos are byte-identical (``build.json``'s ``sha256`` covers ``corpus/`` and
``heldout/``; only its timings differ). The tree is written under ``<root>.partial`` and renamed
at the end: an interrupted build leaves no half corpus at ``root``. Each family is seeded on its
own, so its images do not depend on the others: a rerun resumes an interrupted build, keeping
the families whose ``done/<family>.json`` marker carries the same fingerprint (config, seed,
family and the source of the code that trains it) and rebuilding the rest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from typing import Callable

import numpy as np
from absl import logging
from PIL import Image

from benchmarks.generated_corpus import photos as photos_lib
from dfx_keras.classes import CLASS_NAMES

DM, GAN, REAL = CLASS_NAMES
REAL_SIZES = (64, 72, 80, 88, 96)  # real crops come in every size the generators use
GRID = (4, 6)  # rows, columns of each sample grid


@dataclasses.dataclass(frozen=True)
class Config:
    """Sizes and training lengths; ``FULL`` is the benchmark corpus, ``TINY`` the test's."""

    name: str
    real_per_folder: int
    fake_per_family: int
    heldout_real: int
    heldout_fake: int
    train_crops: int  # crops each generator trains on
    gan_steps: int
    dm_steps: int
    ae_steps: int
    batch_size: int
    width: int  # base channel count of every network
    sampler_steps: dict  # sampler -> number of steps
    graph: bool = True  # tf.function the steps (a tiny build's few steps cost less eagerly)


FULL = Config("full", real_per_folder=300, fake_per_family=300, heldout_real=250, heldout_fake=250,
              train_crops=4000, gan_steps=1000, dm_steps=1500, ae_steps=400, batch_size=16, width=24,
              sampler_steps={"ancestral": 50, "ddim": 25, "plms": 20, "heun": 10})
TINY = Config("tiny", real_per_folder=3, fake_per_family=3, heldout_real=3, heldout_fake=3,
              train_crops=16, gan_steps=2, dm_steps=2, ae_steps=2, batch_size=4, width=8,
              sampler_steps={"ancestral": 3, "ddim": 3, "plms": 3, "heun": 3}, graph=False)
CONFIGS = {c.name: c for c in (FULL, TINY)}


@dataclasses.dataclass(frozen=True)
class Family:
    """One generator family: its folder (or generalization set) name, class, output size."""

    name: str
    label: str
    resolution: int
    held_back: bool
    what: str  # what sets it apart, for build.json and the README
    narrow: bool = False  # two thirds of the base width: keeps the 80-96 px networks' cost in budget

    def width(self, config: Config) -> int:
        """Channel count: a multiple of 8 (the U-Net's GroupNorm groups)."""
        return max(8, round(config.width * (2 / 3 if self.narrow else 1) / 8) * 8)


FAMILIES = (
    Family("TConv-GAN", GAN, 64, False, "DCGAN: 4x4 stride-2 transposed convolutions, BatchNorm, ReLU"),
    Family("ResizeConv-GAN", GAN, 96, False, "nearest-neighbour 2x resize then 3x3 convolution", narrow=True),
    Family("PixelShuffle-GAN", GAN, 80, False, "3x3 convolution to 4C channels then depth-to-space (sub-pixel)",
           narrow=True),
    Family("DDPM-Linear", DM, 64, False, "pixel U-Net (patch 2), linear betas, eps, 50-step respaced ancestral"),
    Family("DDIM-Cosine", DM, 80, False, "pixel U-Net (patch 2), cosine schedule, eps, 25-step DDIM (eta 0)",
           narrow=True),
    Family("Latent-PLMS", DM, 96, False, "autoencoder (8x, 4 ch) + latent U-Net, scaled-linear, 20-step PLMS",
           narrow=True),
    Family("StyleMod-GAN", GAN, 64, True, "mapping MLP, bilinear upsampling, per-pixel noise and AdaIN",
           narrow=True),
    Family("EDM-Heun", DM, 72, True, "pixel U-Net (patch 2), Karras preconditioning and sigmas, 10-step Heun",
           narrow=True),
)


def _sample_count(family: Family, config: Config) -> int:
    return config.heldout_fake if family.held_back else config.fake_per_family


def _train_gan(method: str) -> Callable:
    def run(family, crops, config, rng):
        from benchmarks.generated_corpus import gans
        model = gans.GAN(method, family.resolution, family.width(config), config.batch_size, config.graph)
        stats = model.train(crops, config.gan_steps, rng)
        return model.sample(_sample_count(family, config), rng), stats
    return run


def _train_pixel_dm(objective: str, schedule: str | None, sampler: str) -> Callable:
    def run(family, crops, config, rng):
        from benchmarks.generated_corpus import diffusion
        model = diffusion.Diffusion(objective, schedule, family.resolution, 3, family.width(config),
                                    config.batch_size, mults=(1, 2, 2), patch=2, graph=config.graph)
        stats = model.train(crops, config.dm_steps, rng)
        n = _sample_count(family, config)
        return model.sample(n, sampler, config.sampler_steps[sampler], rng), stats
    return run


def _train_latent(family, crops, config, rng):
    from benchmarks.generated_corpus import latent
    model = latent.LatentDiffusion(family.resolution, family.width(config), config.width * 2, config.batch_size,
                                   config.graph)
    stats = model.train(crops, config.ae_steps, config.dm_steps, rng)
    return model.sample(_sample_count(family, config), config.sampler_steps["plms"], rng), stats


TRAINERS = {
    "TConv-GAN": _train_gan("transposed"),
    "ResizeConv-GAN": _train_gan("resize"),
    "PixelShuffle-GAN": _train_gan("pixel_shuffle"),
    "StyleMod-GAN": _train_gan("style"),
    "DDPM-Linear": _train_pixel_dm("eps", "linear", "ancestral"),
    "DDIM-Cosine": _train_pixel_dm("eps", "cosine", "ddim"),
    "EDM-Heun": _train_pixel_dm("edm", None, "heun"),
    "Latent-PLMS": _train_latent,
}


TRAINER_SOURCES = {  # the modules whose code decides a family's images, besides photos.py and build.py
    "TConv-GAN": ("gans.py",), "ResizeConv-GAN": ("gans.py",), "PixelShuffle-GAN": ("gans.py",),
    "StyleMod-GAN": ("gans.py",), "DDPM-Linear": ("diffusion.py",), "DDIM-Cosine": ("diffusion.py",),
    "EDM-Heun": ("diffusion.py",), "Latent-PLMS": ("latent.py", "diffusion.py"),
}


def fingerprint(family: Family, config: Config, seed: int) -> str:
    """What a family's images depend on: config, seed, family, and its code's source files."""
    digest = hashlib.sha256(json.dumps([dataclasses.asdict(config), seed, dataclasses.asdict(family)]).encode())
    here = os.path.dirname(os.path.abspath(__file__))
    for name in ("photos.py", "build.py", "tf_util.py", *TRAINER_SOURCES[family.name]):
        with open(os.path.join(here, name), "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[-1, 1] floats to uint8 pixels, rounding half away from zero like an 8-bit PNG writer."""
    return np.clip(np.round((images + 1) * 127.5), 0, 255).astype(np.uint8)


def write_pngs(images, folder: str) -> None:
    """``images`` as ``folder``/NNNN.png, replacing what an interrupted build left there."""
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    for i, image in enumerate(images):
        Image.fromarray(image).save(os.path.join(folder, f"{i:04d}.png"))


def write_grid(images, path: str) -> None:
    rows, cols = GRID
    images = list(images[: rows * cols])
    h, w = images[0].shape[:2]
    grid = np.full((rows * (h + 2), cols * (w + 2), 3), 255, np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        grid[r * (h + 2): r * (h + 2) + image.shape[0], c * (w + 2): c * (w + 2) + image.shape[1]] = image
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(grid).save(path, optimize=True)


def mixed_size_crops(photos, n, rng) -> list[np.ndarray]:
    """``n`` crops of ``photos``, each at a size drawn from ``REAL_SIZES``."""
    return [photos_lib.crops(photos, 1, int(rng.choice(REAL_SIZES)), rng)[0] for _ in range(n)]


def tree_sha256(root: str, folders=("corpus", "heldout")) -> str:
    """SHA-256 over the sorted relative paths and bytes of every file under ``folders``."""
    digest = hashlib.sha256()
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, folder)):
            dirnames.sort()
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                digest.update(os.path.relpath(path, root).encode() + b"\0")
                with open(path, "rb") as f:
                    digest.update(f.read())
    return digest.hexdigest()


class _Clock:
    """Wall and process CPU seconds of each stage (CPU time sums every thread of the process)."""

    def __init__(self):
        self.stages = {}

    def __call__(self, name, fn, *args):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn(*args)
        self.stages[name] = {"wall_s": round(time.perf_counter() - wall, 1),
                             "cpu_s": round(time.process_time() - cpu, 1)}
        logging.info("%s: %.0f s wall, %.0f s CPU", name, self.stages[name]["wall_s"], self.stages[name]["cpu_s"])
        return result


def build(root: str, config: Config, photos: list, seed: int = 0, grid_dir: str | None = None,
          overwrite: bool = False) -> dict:
    """Build the whole corpus at ``root``; returns what is written to ``build.json``."""
    import keras
    import tensorflow as tf

    if os.path.exists(root) and not overwrite:
        raise FileExistsError(f"{root} exists; pass overwrite=True (--overwrite) to replace it")
    tf.config.experimental.enable_op_determinism()
    partial = root.rstrip("/") + ".partial"
    clock = _Clock()
    train_photos, held_photos = photos_lib.split(photos)
    if not held_photos or not train_photos:
        raise ValueError("need both training and held-back photos")
    started_wall, started_cpu = time.perf_counter(), time.process_time()

    rng = np.random.default_rng([seed, 0])
    real_folders = sorted({p.folder for p in train_photos})
    for folder in real_folders:
        crops = mixed_size_crops([p for p in train_photos if p.folder == folder], config.real_per_folder, rng)
        write_pngs(crops, os.path.join(partial, "corpus", REAL, folder))
    write_grid([c for c in crops if c.shape[0] == 96] or crops, os.path.join(partial, "grids", "real.png"))

    stats = {}
    for index, family in enumerate(FAMILIES, start=1):
        marker = os.path.join(partial, "done", f"{family.name}.json")
        wanted = fingerprint(family, config, seed)
        if os.path.exists(marker) and json.load(open(marker))["fingerprint"] == wanted:
            done = json.load(open(marker))
            stats[family.name], clock.stages[family.name] = done["stats"], {**done["stage"], "resumed": True}
            logging.info("%s: kept from the interrupted build", family.name)
            continue
        keras.utils.set_random_seed(seed * 1000 + index)
        family_rng = np.random.default_rng([seed, index])
        crops = photos_lib.crops(train_photos, config.train_crops, family.resolution, family_rng)
        crops = crops.astype(np.float32) / 127.5 - 1
        images, stats[family.name] = clock(family.name, TRAINERS[family.name], family, crops, config, family_rng)
        images = to_uint8(images)
        write_grid(images, os.path.join(partial, "grids", f"{family.name}.png"))
        if family.held_back:
            set_dir = os.path.join(partial, "heldout", family.name)
            write_pngs(images[: config.heldout_fake], os.path.join(set_dir, "1_fake"))
            write_pngs(mixed_size_crops(held_photos, config.heldout_real, np.random.default_rng([seed, index, 1])),
                       os.path.join(set_dir, "0_real"))
        else:
            write_pngs(images[: config.fake_per_family], os.path.join(partial, "corpus", family.label, family.name))
        os.makedirs(os.path.dirname(marker), exist_ok=True)
        with open(marker, "w") as f:
            json.dump({"fingerprint": wanted, "stats": stats[family.name], "stage": clock.stages[family.name]}, f)
        keras.backend.clear_session()

    summary = {
        "config": dataclasses.asdict(config),
        "seed": seed,
        "families": {f.name: {"class": f.label, "resolution": f.resolution, "held_back": f.held_back,
                              "what": f.what, "final_losses": stats[f.name]} for f in FAMILIES},
        "photos": {"training": [p.name for p in train_photos], "held_back": [p.name for p in held_photos]},
        "counts": _counts(partial),
        "stages": clock.stages,
        "total": {"wall_s": round(time.perf_counter() - started_wall, 1),
                  "cpu_s": round(time.process_time() - started_cpu, 1),
                  "families_cpu_s": round(sum(s["cpu_s"] for s in clock.stages.values()), 1)},
        "sha256": tree_sha256(partial),
    }
    with open(os.path.join(partial, "build.json"), "w") as f:
        json.dump(summary, f, indent=2)
    if grid_dir:
        shutil.copytree(os.path.join(partial, "grids"), grid_dir, dirs_exist_ok=True)
    shutil.rmtree(os.path.join(partial, "done"))
    if os.path.exists(root):
        shutil.rmtree(root)
    os.rename(partial, root)
    return summary


def _counts(root: str) -> dict:
    counts = {}
    for top in ("corpus", "heldout"):
        base = os.path.join(root, top)
        for first in sorted(os.listdir(base)):
            for second in sorted(os.listdir(os.path.join(base, first))):
                counts[f"{top}/{first}/{second}"] = len(os.listdir(os.path.join(base, first, second)))
    return counts
