"""Synthetic corpora in the dfx layout: the builder's dummy_data, the command-line test, benchmarks.

Pixels are a smooth random field plus fine noise, so PNG files come out at roughly the size of
photos' PNGs (about half of raw RGB) rather than the extremes of pure noise or flat colour;
the benchmarks' disk sizes depend on it.

Regenerate the builder's dummy data with:
    python -m dfx_keras.datasets.dfx_corpus.synthetic datasets/dfx_corpus/dummy_data
"""

from __future__ import annotations

import io
import pathlib
import struct
import sys
import zlib

import numpy as np
from PIL import Image

from dfx_keras.data import corpus

# Assumed (width, height) of each architecture's images: the usual output size of each generator /
# source set (the paper gives only the 178x218..1024x1024 range); they drive the benchmarks' size mix.
ASSUMED_SIZES = {
    "AttGAN": (256, 256), "BigGAN": (256, 256), "CycleGAN": (256, 256), "GauGAN": (512, 512),
    "GDWCT": (216, 216), "ProGAN": (1024, 1024), "StarGAN": (256, 256), "StyleGAN": (1024, 1024),
    "StyleGAN2": (1024, 1024), "StyleGAN3": (1024, 1024), "DALL-E 2": (1024, 1024), "DALL-E MINI": (256, 256),
    "Glide": (256, 256), "Latent Diffusion": (256, 256), "Stable Diffusion": (512, 512), "CelebA": (178, 218),
    "FFHQ": (1024, 1024), "Others": (512, 512),
}
_FOLDERS = {architecture: (class_name, count)
            for class_name, folders in corpus.PAPER_CORPUS.items() for architecture, count in folders.items()}
# The corpus table (corpus.PAPER_CORPUS): architecture -> (class folder, images, assumed size), in
# ASSUMED_SIZES' order (the order of the random draws).
CORPUS_TABLE = {architecture: (*_FOLDERS[architecture], size) for architecture, size in ASSUMED_SIZES.items()}
CORPUS_SIZE = sum(count for _, count, _ in CORPUS_TABLE.values())  # 72,334


def natural_image(rng: np.random.Generator, width: int, height: int, noise: float = 3.0) -> np.ndarray:
  """An 8-bit RGB array: a smooth colour field (bicubic-upsampled coarse noise) plus pixel noise."""
  coarse = rng.integers(0, 256, size=(max(2, height // 32), max(2, width // 32), 3), dtype=np.uint8)
  field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), np.float32)
  return (field + rng.normal(0.0, noise, field.shape)).clip(0, 255).astype(np.uint8)


def write_table_corpus(root: str | pathlib.Path, total: int, seed: int = 0, scale: float = 1.0) -> dict[str, int]:
  """Writes about ``total`` PNGs with the corpus table's mix of architectures and sizes.

  Each architecture gets round(total * its share) images (at least one) at its size times
  ``scale``. Returns the images written per architecture.
  """
  rng = np.random.default_rng(seed)
  written = {}
  for architecture, (class_name, count, (width, height)) in CORPUS_TABLE.items():
    folder = pathlib.Path(root, class_name, architecture)
    folder.mkdir(parents=True, exist_ok=True)
    n = max(1, round(total * count / CORPUS_SIZE))
    for i in range(n):
      size = (max(8, round(width * scale)), max(8, round(height * scale)))
      Image.fromarray(natural_image(rng, *size)).save(folder / f"{architecture} {i:05d}.png")
    written[architecture] = n
  return written


def png_rgb16(array: np.ndarray) -> bytes:
  """A 16-bit-per-channel RGB PNG, written by hand because PIL cannot write one."""
  def chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

  height, width, _ = array.shape
  rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in array)
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0))
          + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def _encoded(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
  out = io.BytesIO()
  image.save(out, format=fmt, **options)
  return out.getvalue()


def odd_files(rng: np.random.Generator) -> dict[str, bytes]:
  """Valid images in formats other than 8-bit RGB PNG: each must come out as 8-bit RGB."""
  rgb = natural_image(rng, 12, 10)
  huge = Image.new("P", (8000, 8000), 0)  # solid colour, 1 bit per pixel: about 8 KB on disk
  huge.putpalette([200, 30, 30, 0, 0, 0])
  return {
      "rgba.png": _encoded(Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)]))),
      "grayscale.png": _encoded(Image.fromarray(rgb[..., 0])),
      "palette.png": _encoded(Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)),
      "gray 16-bit.png": _encoded(Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)),
      "rgb 16-bit.png": png_rgb16(rgb.astype(np.uint16) * 257),
      "cmyk.jpg": _encoded(Image.fromarray(rgb).convert("CMYK"), "JPEG"),
      "photo.jpeg": _encoded(Image.fromarray(rgb), "JPEG", quality=90),
      "huge 8000x8000.png": _encoded(huge, bits=1, optimize=True),
  }


def bad_files(rng: np.random.Generator) -> dict[str, bytes]:
  """Files with an image extension that no decoder can read: each must be skipped."""
  noisy = _encoded(Image.fromarray(rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)))
  return {
      "empty.png": b"",
      "truncated.png": noisy[: len(noisy) // 2],
      "not an image.png": b"just some text, not an image\n",
  }


# The dummy_data tree: folder -> number of plain 8-bit RGB PNGs, then where the odd and bad go.
DUMMY_FOLDERS = {
    "dm_generated/DALL-E MINI": 3, "dm_generated/Latent Diffusion": 3, "dm_generated/Stable Diffusion": 2,
    "gan_generated/GDWCT": 3, "gan_generated/StyleGAN2": 3, "gan_generated/StarGAN": 2,
    "real/CelebA": 3, "real/FFHQ": 3, "real/Others": 2,
}
DUMMY_ODD_FOLDER = "real/Others"
DUMMY_BAD_FOLDERS = {"empty.png": "gan_generated/StyleGAN2", "truncated.png": "dm_generated/DALL-E MINI",
                     "not an image.png": "real/FFHQ"}


def write_dummy_data(root: str | pathlib.Path, seed: int = 0) -> None:
  """The builder test's tree: 3 classes x 3 architectures with spaces in names, plus an image
  directly in a class folder, the odd formats, the bad files and a non-image file to ignore."""
  rng = np.random.default_rng(seed)
  root = pathlib.Path(root)
  for folder, n in DUMMY_FOLDERS.items():
    (root / folder).mkdir(parents=True, exist_ok=True)
    for i in range(n):
      width, height = rng.integers(8, 17, size=2)
      Image.fromarray(natural_image(rng, int(width), int(height))).save(root / folder / f"img {i}.png")
  Image.fromarray(natural_image(rng, 9, 11)).save(root / "real" / "loose image.png")
  for name, data in odd_files(rng).items():
    (root / DUMMY_ODD_FOLDER / name).write_bytes(data)
  for name, data in bad_files(rng).items():
    (root / DUMMY_BAD_FOLDERS[name] / name).write_bytes(data)
  (root / "real" / "FFHQ" / "LICENSE.txt").write_text("not an image extension: ignored\n")


if __name__ == "__main__":
  write_dummy_data(sys.argv[1])
