"""A small procedural corpus in the real layout, for demos, tests and smoke runs.

The real corpus (DESIGN.md 1.1) is 72k images that few machines hold. This module writes a
look-alike in seconds: ``<out>/{dm_generated,gan_generated,real}/<architecture>/<image>.png``,
three architecture folders per class, with spaces and dashes in their names as in the real one.

The classes differ only by *how the pixels were made*, as in the real task, never by what is
shown, its colours, brightness or size: every image's scene (gradients, blobs, shapes,
stripes) and size come from one shared generator seeded without the class, so each scene is
shown once in every class (a model cannot win by remembering content). The scene is then
rendered by a class-specific process whose parameters vary by architecture:

- real: a camera pipeline: optical blur, Bayer mosaic, shot and read noise on the linear
  signal, bilinear demosaicing, gamma, mild sharpening;
- GAN: the scene at 1/4 or 1/8 of the output size (9 to 20 pixels a side), brought up by two
  or three transposed convolutions (zero insertion + fixed, uneven kernels per architecture)
  with noise injected between them, which leaves the periodic checkerboard traces of GANs;
- DM: a few steps of iterative denoising from a noised scene, each one smoothing the residual
  and re-injecting less noise, which leaves a slightly soft image whose residual grain (under
  half a grey level) mostly vanishes in the 8-bit rounding: it is marked by what it lacks,
  sensor noise and periodic patterns. (Stronger DM grain made the DM-vs-rest model, trained
  on few "others" as the method does, confuse DM with real images.)

The traces are strong enough to survive the demo's bilinear resize to 64x64, so a tiny CNN
tells the classes apart within a few epochs; the content statistics stay equal across classes
(tests/test_demo.py checks the mean brightness and colour).

Same ``seed``, same bytes: every image draws from its own generators, seeded by its
position in the corpus, so the output does not depend on the order of generation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os

import numpy as np
from absl import logging
from PIL import Image

from dfx_keras.workdir import atomic_write
from dfx_keras.classes import CLASS_NAMES
from dfx_keras.data.corpus import CorpusError, list_images

GENERATOR_VERSION = 2  # bump when the images change, so stale corpora are regenerated
MARKER_FILE = ".demo_corpus.json"
# (height, width): a mix of shapes, all multiples of 8 (the GAN renders at 1/8 or 1/4 and
# upsamples), drawn independently of the class.
IMAGE_SIZES = ((64, 64), (64, 80), (96, 72), (96, 96), (128, 128))
GAMMA = 2.2
GAN_TWO_STAGE_MAX_SIDE = 80  # larger images get a third upsampling stage


@dataclasses.dataclass(frozen=True)
class CameraSpec:
    """A camera: Bayer phase, optics, sensor noise (linear units) and sharpening."""

    name: str
    bayer_offset: tuple[int, int]  # (row, col) of the red photosite in each 2x2 cell
    optical_blur: float
    read_noise: float
    shot_gain: float
    sharpen: float


@dataclasses.dataclass(frozen=True)
class GanSpec:
    """A GAN generator's upsampling path: transposed convolutions and injected noise.

    ``unevenness`` holds, finest stage first, the relative spread of the gains of the four
    output phases of each stride-2 stage: the amplitude of its checkerboard, whose period at
    the output is 2, 4, 8 for the finest, middle, coarsest stage. Large images use all three
    stages, so some trace always has a period long enough to survive the resize to 64x64.
    """

    name: str
    kernel_size: int
    kernel_seed: int  # fixes the kernels, hence the architecture's checkerboard
    unevenness: tuple[float, float, float]
    injected_noise: float


@dataclasses.dataclass(frozen=True)
class DiffusionSpec:
    """A sampler: number of steps, starting noise, and how a step denoises.

    Each step smooths the residual noise by ``denoise_blur`` and keeps ``residual_kept`` of it;
    the content comes out blurred by ``content_blur``.
    """

    name: str
    steps: int
    start_noise: float
    denoise_blur: float
    residual_kept: float
    content_blur: float


# Named after folders of the real corpus' table, so the tfds builder (which accepts only those)
# prepares a demo corpus as it would the real one.
ARCHITECTURES = {
    "dm_generated": (
        DiffusionSpec("Latent Diffusion", steps=6, start_noise=0.5, denoise_blur=1.0, residual_kept=0.3,
                      content_blur=0.6),
        DiffusionSpec("DALL-E MINI", steps=8, start_noise=0.6, denoise_blur=0.8, residual_kept=0.4,
                      content_blur=0.5),
        DiffusionSpec("Glide", steps=5, start_noise=0.4, denoise_blur=1.2, residual_kept=0.25,
                      content_blur=0.7),
    ),
    "gan_generated": (
        GanSpec("StyleGAN", kernel_size=4, kernel_seed=11, unevenness=(0.08, 0.3, 0.3), injected_noise=0.01),
        GanSpec("ProGAN", kernel_size=3, kernel_seed=23, unevenness=(0.06, 0.3, 0.3), injected_noise=0.005),
        GanSpec("CycleGAN", kernel_size=5, kernel_seed=37, unevenness=(0.1, 0.35, 0.5), injected_noise=0.008),
    ),
    "real": (
        CameraSpec("CelebA", (0, 0), optical_blur=0.5, read_noise=0.028, shot_gain=0.01, sharpen=0.3),
        CameraSpec("FFHQ", (0, 1), optical_blur=0.6, read_noise=0.035, shot_gain=0.012, sharpen=0.5),
        CameraSpec("Others", (1, 1), optical_blur=0.7, read_noise=0.042, shot_gain=0.008, sharpen=0.2),
    ),
}


# --- small vectorised filters -------------------------------------------------------------

def _filter_axis(x: np.ndarray, taps: np.ndarray, axis: int) -> np.ndarray:
    """Correlate along one axis with a centred odd-length kernel, reflecting at the borders."""
    r = len(taps) // 2
    pad = [(0, 0)] * x.ndim
    pad[axis] = (r, r)
    xp = np.moveaxis(np.pad(x, pad, mode="reflect"), axis, 0)
    n = x.shape[axis]
    return np.moveaxis(sum(t * xp[i:i + n] for i, t in enumerate(taps)), 0, axis)


def _gaussian_taps(sigma: float) -> np.ndarray:
    radius = max(1, int(np.ceil(3 * sigma)))
    t = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    return t / t.sum()


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur over the first two axes."""
    taps = _gaussian_taps(sigma)
    return _filter_axis(_filter_axis(x, taps, 0), taps, 1)


def _resize_bilinear(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear upsampling (pixel-centre aligned) by two interpolation matrices."""
    def matrix(n_out, n_in):
        pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        m = np.zeros((n_out, n_in))
        np.add.at(m, (np.arange(n_out), lo), 1 - (pos - lo))
        np.add.at(m, (np.arange(n_out), hi), pos - lo)
        return m
    rows = np.tensordot(matrix(height, x.shape[0]), x, axes=(1, 0))  # (height, w, c)
    return np.einsum("lk,ikc->ilc", matrix(width, x.shape[1]), rows, optimize=True)


def _area_downsample(x: np.ndarray, factor: int) -> np.ndarray:
    h, w, c = x.shape
    return x.reshape(h // factor, factor, w // factor, factor, c).mean(axis=(1, 3))


# --- the shared scene generator -----------------------------------------------------------

def _soft_alpha(signed_distance: np.ndarray, edge: float) -> np.ndarray:
    """Coverage of a shape from a signed distance (negative inside), anti-aliased over ``edge``."""
    return np.clip(0.5 - signed_distance / edge, 0.0, 1.0)


def render_scene(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth random scene in [0.04, 0.96], float (H, W, 3), the same for every class.

    Geometry is defined in coordinates relative to the image, so the same draws give the
    same picture at any resolution.
    """
    y = (np.arange(height) + 0.5)[:, None] / height
    x = (np.arange(width) + 0.5)[None, :] / width
    # Gradient between two colours along a random direction.
    c0, c1 = rng.uniform(0.1, 0.9, (2, 3))
    theta = rng.uniform(0, 2 * np.pi)
    t = np.clip(0.5 + (np.cos(theta) * (x - 0.5) + np.sin(theta) * (y - 0.5)) * 1.2, 0, 1)[..., None]
    img = c0 + (c1 - c0) * t
    # Low-frequency texture: a coarse random grid, bilinearly upsampled.
    grid = rng.normal(0, 0.08, (rng.integers(3, 7), rng.integers(3, 7), 3))
    img = img + _resize_bilinear(grid, height, width)
    # Soft blobs.
    for _ in range(4):
        cy, cx, s = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.25)
        colour, strength = rng.uniform(0.05, 0.95, 3), rng.uniform(0.3, 0.8)
        a = (strength * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * s * s)))[..., None]
        img = img * (1 - a) + colour * a
    # Sharp-edged shapes (ellipses and rectangles), some filled with stripes.
    edge = 1.0 / max(height, width)
    for _ in range(3):
        cy, cx = rng.uniform(0.1, 0.9, 2)
        ry, rx = rng.uniform(0.06, 0.3, 2)
        is_ellipse, striped, present = rng.uniform(size=3) < (0.5, 0.4, 0.8)
        colour, colour2 = rng.uniform(0.05, 0.95, (2, 3))
        period, phi = rng.uniform(0.04, 0.12), rng.uniform(0, np.pi)
        if is_ellipse:
            d = (np.sqrt(((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2) - 1) * min(ry, rx)
        else:
            d = np.maximum(np.abs(y - cy) - ry, np.abs(x - cx) - rx)
        a = (present * _soft_alpha(d, edge))[..., None]
        if striped:
            s = 0.5 + 0.5 * np.sin(2 * np.pi * (np.cos(phi) * x + np.sin(phi) * y) / period)
            fill = colour + (colour2 - colour) * s[..., None]
        else:
            fill = colour
        img = img * (1 - a) + fill * a
    return 0.04 + 0.92 * np.clip(img, 0, 1)


# --- the class-specific rendering processes -----------------------------------------------

_DEMOSAIC_RB = np.array([0.5, 1.0, 0.5])
_DEMOSAIC_G = np.array([[0, 0.25, 0], [0.25, 1, 0.25], [0, 0.25, 0]])


def _bayer_masks(height: int, width: int, red_at: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) 0/1 masks of the R, G, B photosites of a Bayer sensor."""
    rows, cols = np.arange(height)[:, None] % 2, np.arange(width)[None, :] % 2
    r = (rows == red_at[0]) & (cols == red_at[1])
    b = (rows != red_at[0]) & (cols != red_at[1])
    return np.stack([r, ~(r | b), b], axis=-1).astype(np.float64)


def _demosaic_bilinear(raw: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Bilinear demosaicing: each channel interpolated from its own photosites."""
    sparse = raw[..., None] * masks
    rb = _filter_axis(_filter_axis(sparse[..., [0, 2]], _DEMOSAIC_RB, 0), _DEMOSAIC_RB, 1)
    gp = np.pad(sparse[..., 1], 1, mode="reflect")
    h, w = raw.shape
    g = sum(_DEMOSAIC_G[i, j] * gp[i:i + h, j:j + w] for i in range(3) for j in range(3))
    return np.stack([rb[..., 0], g, rb[..., 1]], axis=-1)


def render_camera(scene: np.ndarray, spec: CameraSpec, rng: np.random.Generator) -> np.ndarray:
    """Photograph the scene: the traces are sensor noise and the CFA's interpolation pattern."""
    linear = _blur(scene ** GAMMA, spec.optical_blur)
    masks = _bayer_masks(*scene.shape[:2], spec.bayer_offset)
    raw = (linear * masks).sum(axis=-1)
    raw = raw + rng.standard_normal(raw.shape) * np.sqrt(spec.shot_gain * raw + spec.read_noise ** 2)
    rgb = np.clip(_demosaic_bilinear(raw, masks), 0, 1) ** (1 / GAMMA)
    return rgb + spec.sharpen * (rgb - _blur(rgb, 1.0))


def _transposed_conv_kernel(size: int, unevenness: float, rng: np.random.Generator) -> np.ndarray:
    """A stride-2 upsampling kernel: a smooth interpolator whose phase gains are made uneven.

    The interpolator's taps sum to 1 on each of the four output phases (no checkerboard); a
    trained GAN's kernels do not, so each phase's taps are scaled to a gain of
    ``1 + unevenness * pattern`` with a zero-mean 2x2 pattern, and the taps are jittered.
    """
    base = {3: [0.5, 1, 0.5], 4: [0.25, 0.75, 0.75, 0.25], 5: [0.125, 0.5, 0.75, 0.5, 0.125]}[size]
    k = np.outer(base, base) * (1 + 0.2 * rng.standard_normal((size, size)))
    pattern = rng.standard_normal((2, 2))
    pattern -= pattern.mean()
    pattern /= np.abs(pattern).max()
    for py in range(2):
        for px in range(2):
            k[py::2, px::2] *= (1 + unevenness * pattern[py, px]) / k[py::2, px::2].sum()
    return k


def _upsample_transposed(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Stride-2 transposed convolution: zero insertion then the kernel, edges replicated."""
    h, w, c = x.shape
    k = kernel.shape[0]
    p = (k + 1) // 2
    xp = np.pad(x, ((p, p), (p, p), (0, 0)), mode="edge")
    z = np.zeros((2 * xp.shape[0], 2 * xp.shape[1], c))
    z[::2, ::2] = xp
    start = 2 * p - k // 2
    return sum(kernel[i, j] * z[start + i:start + i + 2 * h, start + j:start + j + 2 * w]
               for i in range(k) for j in range(k))


def render_gan(scene: np.ndarray, spec: GanSpec, rng: np.random.Generator) -> np.ndarray:
    """Synthesise at 9 to 20 pixels a side, then upsample 2 or 3 times: periodic traces.

    The synthesis resolution is about the same for every image size, as a GAN's constant
    input is, so the content looks alike after the demo's resize whatever the output size.
    """
    kernel_rng = np.random.default_rng(spec.kernel_seed)
    kernels = [_transposed_conv_kernel(spec.kernel_size, u, kernel_rng) for u in spec.unevenness]
    stages = 3 if max(scene.shape[:2]) > GAN_TWO_STAGE_MAX_SIDE else 2
    x = _area_downsample(scene, 2 ** stages)
    for kernel in reversed(kernels[:stages]):
        x = x + spec.injected_noise * rng.standard_normal(x.shape)
        x = _upsample_transposed(x, kernel)
    return x


def render_diffusion(scene: np.ndarray, spec: DiffusionSpec, rng: np.random.Generator) -> np.ndarray:
    """Denoise from a noised scene; trace: soft content, a residual grain under half a grey level.

    The toy denoiser knows the content but removes the noise only by smoothing it, and each
    step re-injects less fresh noise (sigma decreasing geometrically to zero), as samplers do.
    """
    target = _blur(scene, spec.content_blur)
    sigmas = spec.start_noise * 0.5 ** np.arange(spec.steps)
    residual = sigmas[0] * rng.standard_normal(scene.shape)
    for sigma in sigmas[1:]:
        residual = spec.residual_kept * _blur(residual, spec.denoise_blur) + sigma * rng.standard_normal(scene.shape)
    return target + spec.residual_kept * _blur(residual, spec.denoise_blur)


_RENDERERS = {CameraSpec: render_camera, GanSpec: render_gan, DiffusionSpec: render_diffusion}


# --- writing the corpus -------------------------------------------------------------------

def make_image(seed: int, class_index: int, arch_index: int, index: int) -> np.ndarray:
    """One demo image as uint8 (H, W, 3).

    The scene and size are seeded by (seed, architecture slot, index), not by the class, so
    image ``index`` of the k-th architecture of every class shows the same scene at the same
    size: only the rendering, with its own generator, differs between the classes.
    """
    spec = ARCHITECTURES[CLASS_NAMES[class_index]][arch_index]
    scene_rng = np.random.default_rng([seed, 0, arch_index, index])
    render_rng = np.random.default_rng([seed, 1, class_index, arch_index, index])
    height, width = IMAGE_SIZES[scene_rng.integers(len(IMAGE_SIZES))]
    scene = render_scene(scene_rng, height, width)
    image = _RENDERERS[type(spec)](scene, spec, render_rng)
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


def _parameters(images_per_architecture: int, seed: int) -> dict:
    return {"generator_version": GENERATOR_VERSION, "images_per_architecture": images_per_architecture,
            "seed": seed}


def _planned(images_per_architecture: int) -> list[str]:
    """The files the demo writes, relative to its folder, in the order it writes them."""
    return [f"{class_name}/{spec.name}/{i:05d}.png" for class_name in CLASS_NAMES
            for spec in ARCHITECTURES[class_name] for i in range(images_per_architecture)]


def _manifest(out_dir: str) -> dict[str, str | None] | None:
    """The files the demo wrote in ``out_dir`` (relative path -> sha256; None: not hashed, or
    still being written), from its marker; None when there is no marker.

    A marker of the previous generator version lists no files: its parameters name them.
    """
    try:
        with open(os.path.join(out_dir, MARKER_FILE)) as f:
            recorded = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable: no file is known to be the demo's
    if "files" in recorded:
        return recorded["files"]
    return dict.fromkeys(_planned(recorded.get("images_per_architecture", 0)))


def _as_written(out_dir: str, path: str, digest: str | None) -> bool:
    """Whether the demo's file ``path`` is still the one it wrote (it may then replace it)."""
    full = os.path.join(out_dir, path)
    if not os.path.isfile(full):
        return False
    if digest is None:
        return True
    with open(full, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest() == digest


def _foreign_folders(out_dir: str) -> list[str]:
    """What the class folders of ``out_dir``, a folder without the demo's marker, hold: a user's
    data (a real corpus has the demo's folder names), which the demo never mixes into."""
    found = []
    for class_name in CLASS_NAMES:
        class_dir = os.path.join(out_dir, class_name)
        if os.path.isdir(class_dir):
            found += [f"{class_name}/{d}" for d in sorted(os.listdir(class_dir))]
    return found


# 2,700 images: enough for the demo's base models to see a few dozen "others" each at the
# paper's 4% and reach >= 0.9 test accuracy in about two CPU minutes (120 gave 0.81).
IMAGES_PER_ARCHITECTURE = 300
SEED = 0  # the demo corpus' default seed


def generate_demo_corpus(out_dir: str, images_per_architecture: int = IMAGES_PER_ARCHITECTURE, seed: int = SEED) -> dict:
    """Write the demo corpus under ``out_dir``; returns {(class name, architecture): count}.

    The marker file lists every file the demo wrote, with its hash. A rerun (other parameters)
    replaces or removes only those, and only while they are as written, so a rerun with fewer
    images leaves no stale files and no other file is ever touched: images a user added stay,
    and are part of the corpus. A file of the user's where the demo would write its own is
    refused (CorpusError), as is a folder whose class folders hold data but no marker (a real
    corpus, with the same folder names), which the demo would mix into. The marker records the
    parameters only once every image is written, so they mean the corpus is complete.
    """
    if images_per_architecture < 1:
        raise ValueError(f"images_per_architecture must be >= 1, got {images_per_architecture}")
    manifest = _manifest(out_dir)
    if manifest is None:
        foreign = _foreign_folders(out_dir)
        if foreign:
            raise CorpusError(f"{out_dir} already holds other data ({', '.join(foreign[:3])}"
                              f"{', ...' if len(foreign) > 3 else ''}); write the demo corpus to its own folder")
    ours = [path for path, digest in (manifest or {}).items() if _as_written(out_dir, path, digest)]
    planned = _planned(images_per_architecture)
    taken = [p for p in planned if os.path.lexists(os.path.join(out_dir, p)) and p not in set(ours)]
    if taken:
        raise CorpusError(f"{out_dir} holds {len(taken)} file(s) that the demo did not write where it writes its own "
                          f"({', '.join(taken[:3])}{', ...' if len(taken) > 3 else ''}); move them, or write the demo "
                          "corpus to its own folder")
    marker = os.path.join(out_dir, MARKER_FILE)
    os.makedirs(out_dir, exist_ok=True)
    # Claims the files it is about to write or remove, so an interrupted run's files stay its own.
    atomic_write(marker, json.dumps({"complete": False, "files": dict.fromkeys([*ours, *planned])}))
    for path in set(ours) - set(planned):
        os.remove(os.path.join(out_dir, path))
    files = {}
    for class_index, class_name in enumerate(CLASS_NAMES):
        for arch_index, spec in enumerate(ARCHITECTURES[class_name]):
            folder = os.path.join(out_dir, class_name, spec.name)
            os.makedirs(folder, exist_ok=True)
            for i in range(images_per_architecture):
                png = io.BytesIO()
                Image.fromarray(make_image(seed, class_index, arch_index, i)).save(png, "PNG", compress_level=1)
                with open(os.path.join(folder, f"{i:05d}.png"), "wb") as f:
                    f.write(png.getvalue())
                files[f"{class_name}/{spec.name}/{i:05d}.png"] = hashlib.sha256(png.getvalue()).hexdigest()
    atomic_write(marker, json.dumps({**_parameters(images_per_architecture, seed), "files": files},
                                            indent=2, sort_keys=True))
    return {(class_name, spec.name): images_per_architecture for class_name in CLASS_NAMES
            for spec in ARCHITECTURES[class_name]}


def existing_demo_corpus(out_dir: str, images_per_architecture: int, seed: int) -> dict | None:
    """The counts of a complete demo corpus made with these parameters in ``out_dir``, or None.

    Files a user added beside the demo's do not make it incomplete."""
    try:
        with open(os.path.join(out_dir, MARKER_FILE)) as f:
            recorded = json.load(f)
    except (OSError, ValueError):
        return None
    if {k: v for k, v in recorded.items() if k != "files"} != _parameters(images_per_architecture, seed):
        return None
    if not all(os.path.isfile(os.path.join(out_dir, path)) for path in _planned(images_per_architecture)):
        return None
    return {(class_name, spec.name): images_per_architecture for class_name in CLASS_NAMES
            for spec in ARCHITECTURES[class_name]}


def ensure_demo_corpus(out_dir: str, images_per_architecture: int = IMAGES_PER_ARCHITECTURE, seed: int = SEED) -> tuple[dict, bool]:
    """The demo corpus in ``out_dir``, generated only when missing or made otherwise.

    Returns (counts, generated): ``generated`` is False when an existing corpus was reused.
    Images a user added to the folder are kept, and said so.
    """
    counts = existing_demo_corpus(out_dir, images_per_architecture, seed)
    generated = counts is None
    if generated:
        counts = generate_demo_corpus(out_dir, images_per_architecture, seed)
    added = len(list_images(out_dir)) - sum(counts.values())
    if added:
        logging.warning("%s holds %d image(s) besides the demo's: they are kept and are part of the corpus", out_dir,
                        added)
    return counts, generated
