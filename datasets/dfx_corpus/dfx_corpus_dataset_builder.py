"""dfx_corpus: the DeepFeatureX corpus folder as a prepared tfds dataset.

The corpus comes as a folder (``<root>/{dm_generated,gan_generated,real}/<architecture>/<image>``)
that users cannot download from a URL, hence MANUAL_DOWNLOAD_INSTRUCTIONS. The splits are the
project's three pools, assigned by ``dfx_keras.data.corpus.pool_of``: the same function the
folder reader uses, so training on tfds data or on the folder sees the same images in each pool.

Preparation runs as a plain Python generator (decoding on one thread per core) by default, and
as an Apache Beam pipeline when ``tfds build`` gets ``--beam_pipeline_options`` (or
``DownloadConfig`` a Beam runner or options), for Dataflow, Flink or Spark.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import difflib
import functools
import io
import multiprocessing
import pathlib
import sys
from typing import Callable, Iterable, Iterator, TypeVar

from absl import logging
from etils import epath
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

try:
  from dfx_keras.classes import CLASS_NAMES
  from dfx_keras.data import corpus
except ModuleNotFoundError as error:
  # `tfds build datasets/dfx_corpus` imports this file with only `datasets/` on sys.path;
  # from a source checkout (package not installed) the project root must be added.
  if error.name != "dfx_keras":
    raise
  sys.path.append(str(pathlib.Path(__file__).resolve().parents[2]))
  from dfx_keras.classes import CLASS_NAMES
  from dfx_keras.data import corpus

# The corpus table (corpus.PAPER_CORPUS): architecture folders expected under each class folder.
ARCHITECTURES = {c: tuple(corpus.PAPER_CORPUS[c]) for c in CLASS_NAMES}
# Fixed ClassLabel names, so architecture ids are the same for every copy of the corpus.
# "unspecified" labels images lying directly in a class folder (as the folder reader does).
ARCHITECTURE_NAMES = (*(a for c in CLASS_NAMES for a in ARCHITECTURES[c]), corpus.UNSPECIFIED_ARCHITECTURE)
# Split of each pool, indexed by corpus.pool_of's value.
SPLIT_NAMES = corpus.SPLIT_NAMES
BEAM_NAMESPACE = "dfx_corpus"
# Pillow's decompression-bomb limit as set by importing corpus; Beam workers do not import
# corpus, so encode_png sets it again there, keeping plain and Beam preparation alike.
MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS
# zlib level of the PNGs this builder encodes. Level 1 against the default 6, measured on the
# corpus' size mix for r256: 15.5 instead of 27.7 ms of CPU per image, files 15% larger.
PNG_COMPRESS_LEVEL = 1

_TABLE_LINES = "\n".join(f"      {c + '/':15s} {', '.join(ARCHITECTURES[c])}" for c in CLASS_NAMES)


@dataclasses.dataclass
class DfxCorpusConfig(tfds.core.BuilderConfig):
  """A way of storing the images; image_size None keeps them at their own size."""

  image_size: int | None = None


class Builder(tfds.core.GeneratorBasedBuilder):
  """DatasetBuilder for the DeepFeatureX corpus (DM-made, GAN-made and real images)."""

  # The metadata files (checksums.tsv, README.md, CITATIONS.bib, TAGS.txt) lie beside this file.
  # tfds would look for them under the module name's top-level package, which differs from
  # this folder when the builder is imported as dfx_keras.datasets.dfx_corpus from an
  # editable install (setup.cfg maps that name onto datasets/dfx_corpus).
  pkg_dir_path = epath.Path(__file__).parent
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {
      "1.0.0": "Initial release: configs original and r256; splits train_base, train_complete "
               "and test from dfx_keras.data.corpus.pool_of (40/40/20, salt dfx-pool-v1).",
  }
  BUILDER_CONFIGS = [
      DfxCorpusConfig(name="original", description="Images at their own size; 8-bit RGB PNGs are "
                      "stored byte for byte, other files converted to 8-bit RGB PNG."),
      DfxCorpusConfig(name="r256", image_size=256, description="Images squashed to 256x256 with "
                      "antialiased bilinear resizing (the paper's model input), stored as PNG."),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
  Pass the corpus folder as --manual_dir (or place it at <data_dir>/downloads/manual/).
  It must hold one folder per class, each with one folder per architecture (the corpus table):

{_TABLE_LINES}

  e.g. <manual_dir>/dm_generated/DALL-E MINI/0001.png. Images are .png, .jpg, .jpeg, .webp
  or .bmp files, in the architecture folder or any folder below it; other files are ignored.
  - A missing class folder stops preparation with an error naming it.
  - A missing architecture folder is allowed (a partial corpus); preparation logs which.
  - An architecture folder that is not in the table (or sits under another class) stops
    preparation with an error naming it: rename it to the table's name, move it out, or
    add the name to ARCHITECTURES in dfx_corpus_dataset_builder.py and bump VERSION.
  - Images directly inside a class folder get the architecture "unspecified".
  - Unreadable images (empty, truncated, not an image) are skipped with a warning each;
    their count is in the dataset's metadata (skipped_images).
  """

  def _info(self) -> tfds.core.DatasetInfo:
    """Features shared by both configs; only the image shape differs."""
    size = self.builder_config.image_size
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(size, size, 3), encoding_format="png"),
            "label": tfds.features.ClassLabel(names=CLASS_NAMES),
            "architecture": tfds.features.ClassLabel(names=ARCHITECTURE_NAMES),
            "file_name": tfds.features.Text(),
            "height": tfds.features.Scalar(dtype=np.int32, doc="Height of the original image."),
            "width": tfds.features.Scalar(dtype=np.int32, doc="Width of the original image."),
        }),
        supervised_keys=("image", "label"),
        homepage="https://arxiv.org/abs/2404.15697",
        metadata=tfds.core.MetadataDict(),
    )

  def _download_and_prepare(self, dl_manager, download_config):
    """Chooses Beam or the plain generator, and records the skipped images afterwards.

    Beam is used exactly when the user asked for a runner or pipeline options, so a plain
    `tfds build` needs no runner, and the same builder scales out on Dataflow/Flink/Spark.
    """
    self._use_beam = bool(download_config.beam_runner or download_config.beam_options)
    self._skipped = []
    super()._download_and_prepare(dl_manager, download_config)
    self.info.metadata["skipped_images"] = len(self._skipped)
    self.info.metadata["skipped_files"] = sorted(self._skipped)
    if self._skipped:
      logging.warning("skipped %d unreadable image(s) of the corpus", len(self._skipped))

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    """Lists the corpus, checks its folders and splits it into the three pools."""
    samples = list_corpus(dl_manager.manual_dir)
    check_architectures(samples)
    pools = {name: [] for name in SPLIT_NAMES}
    for sample in samples:
      pools[SPLIT_NAMES[sample.pool]].append(sample)
    return {name: self._generate_examples(dl_manager.manual_dir, pool) for name, pool in pools.items()}

  def _generate_examples(self, root: epath.Path, samples: list[corpus.Sample]):
    """Examples keyed by relative path: a Beam transform in Beam mode, else a generator."""
    rows = [(s.path, s.label, s.architecture) for s in samples]
    size = self.builder_config.image_size
    if self._use_beam:
      beam = tfds.core.lazy_imports.apache_beam
      _pickle_this_module_by_value()
      # Create reshuffles its elements, spreading the images over the workers.
      return beam.Create(rows) | beam.FlatMap(examples_of, root=root, size=size, on_skip=_count_skip_in_beam)

    def on_skip(path: str, reason: str) -> None:
      self._skipped.append(f"{path}: {reason}")

    encode = functools.partial(examples_of, root=root, size=size, on_skip=on_skip)
    return (example for examples in map_in_threads(encode, rows) for example in examples)

  def _process_pipeline_result(self, pipeline_result) -> None:
    """Collects the files the Beam workers skipped (their warnings are in the worker logs)."""
    metrics = tfds.core.lazy_imports.apache_beam.metrics
    results = pipeline_result.metrics().query(
        metrics.MetricsFilter().with_namespace(BEAM_NAMESPACE).with_name("skipped_files"))
    for result in results["string_sets"]:
      self._skipped.extend(result.committed)


def list_corpus(root: epath.PathLike) -> list[corpus.Sample]:
  """All image files of the corpus, by the rules of corpus.list_images.

  Walks through epath rather than os, so a corpus on gs:// works for cluster runners too.
  Raises CorpusError naming the missing class folders.
  """
  root = epath.Path(root)
  if not root.is_dir():
    raise corpus.CorpusError(f"corpus folder not found: {root}")
  missing = [c for c in CLASS_NAMES if not (root / c).is_dir()]
  if missing:
    found = sorted(p.name for p in root.iterdir() if p.is_dir())
    raise corpus.CorpusError(
        f"{root} lacks the class folder(s) {', '.join(missing)}; expected {', '.join(CLASS_NAMES)} "
        f"each holding one folder per architecture (found: {found or 'none'})")
  samples = []
  for label, name in enumerate(CLASS_NAMES):
    class_dir = root / name
    for dirpath, _, filenames in class_dir.walk():
      parts = dirpath.relative_to(class_dir).parts
      architecture = parts[0] if parts else corpus.UNSPECIFIED_ARCHITECTURE
      for filename in filenames:
        if filename.lower().endswith(corpus.IMAGE_EXTENSIONS):
          samples.append(corpus.Sample("/".join((name, *parts, filename)), label, architecture))
  if not samples:
    raise corpus.CorpusError(f"no images ({', '.join(corpus.IMAGE_EXTENSIONS)}) under {root}")
  return sorted(samples, key=lambda s: s.path)


def check_architectures(samples: list[corpus.Sample]) -> None:
  """Fails on architecture folders outside the table; logs the table's missing ones.

  A ClassLabel needs a fixed name list, and an unknown folder is far more often a typo or a
  misplaced folder than a new generator: lumping it into a catch-all would mislabel it quietly.
  """
  counts = collections.Counter((CLASS_NAMES[s.label], s.architecture) for s in samples)
  unknown = [(c, a) for c, a in sorted(counts) if a not in (*ARCHITECTURES[c], corpus.UNSPECIFIED_ARCHITECTURE)]
  if unknown:
    by_lower = {name.lower(): name for name in ARCHITECTURE_NAMES[:-1]}
    lines = []
    for class_name, architecture in unknown:
      hint = difflib.get_close_matches(architecture.lower(), by_lower, n=1, cutoff=0.6)
      lines.append(f"  {class_name}/{architecture} ({counts[class_name, architecture]} image(s))"
                   + (f": did you mean {by_lower[hint[0]]!r}?" if hint else ""))
    raise corpus.CorpusError(
        "architecture folder(s) not in the corpus table:\n" + "\n".join(lines) +
        "\nRename each to its table name, move it out of the corpus, or add it to ARCHITECTURES in "
        "dfx_corpus_dataset_builder.py (and bump VERSION). Table:\n" + _TABLE_LINES)
  absent = [f"{c}/{a}" for c in CLASS_NAMES for a in ARCHITECTURES[c] if (c, a) not in counts]
  if absent:
    logging.warning("corpus table folder(s) absent, preparing without them: %s", ", ".join(absent))


_In = TypeVar("_In")
_Out = TypeVar("_Out")


def map_in_threads(fn: Callable[[_In], _Out], items: Iterable[_In]) -> Iterator[_Out]:
  """fn over items, in order, on one thread per core with a bounded number in flight.

  Pillow releases the GIL while it decodes, resizes and encodes, so threads use every core
  without Beam; the bound keeps memory flat however large the corpus.
  """
  workers = multiprocessing.cpu_count()
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    pending = collections.deque()
    for item in items:
      pending.append(pool.submit(fn, item))
      if len(pending) >= 4 * workers:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()


def examples_of(row: tuple[str, int, str], root: epath.Path, size: int | None,
                on_skip: Callable[[str, str], None]) -> list[tuple[str, dict]]:
  """The (key, example) of one image as a list (empty when the image is unreadable).

  Only decoding errors skip a file: a read error (I/O, permissions) stops preparation rather
  than silently losing a valid image.
  """
  path, label, architecture = row
  data = (epath.Path(root) / path).read_bytes()
  try:
    png, height, width = encode_png(data, size)
  except MemoryError:
    raise
  except Exception as e:  # PIL raises many types for bad files; all mean "unusable".
    reason = f"{type(e).__name__}: {e}"
    logging.warning("skipping unreadable image %s (%s)", path, reason)
    on_skip(path, reason)
    return []
  return [(path, {"image": png, "label": label, "architecture": architecture,
                  "file_name": path, "height": height, "width": width})]


def encode_png(data: bytes, size: int | None) -> tuple[bytes, int, int]:
  """An 8-bit RGB PNG of the image (squashed to size x size if size), and its own height, width.

  With size None an 8-bit RGB PNG is returned byte for byte (no re-encoding); anything else is
  decoded fully first, so truncated files fail here and not in a training job.
  """
  if not data:
    raise ValueError("empty file")
  Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
  with Image.open(io.BytesIO(data)) as image:
    image.load()
    height, width = image.height, image.width
    if size is None and _is_rgb8_png(data):
      return data, height, width
    rgb = to_rgb8(image)
  if size is not None:
    # PIL's bilinear filter widens its support when shrinking: antialiased, as torchvision's
    # Resize((256, 256)) on PIL images in the reference code.
    rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
  out = io.BytesIO()
  rgb.save(out, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
  return out.getvalue(), height, width


def to_rgb8(image: Image.Image) -> Image.Image:
  """8-bit RGB, as tf.io.decode_image(channels=3) would give: alpha dropped, 16-bit >> 8.

  PIL's own convert("RGB") clips 16-bit grayscale at 255 instead of scaling it.
  """
  if image.mode in ("I;16", "I;16B", "I;16L", "I"):
    image = Image.fromarray((np.asarray(image, dtype=np.uint32) >> 8).clip(0, 255).astype(np.uint8))
  return image if image.mode == "RGB" else image.convert("RGB")


def _is_rgb8_png(data: bytes) -> bool:
  """True for a PNG of 8-bit truecolour without alpha (IHDR bit depth 8, colour type 2)."""
  return data[:8] == b"\x89PNG\r\n\x1a\n" and data[24:26] == b"\x08\x02"


def _pickle_this_module_by_value() -> None:
  """Makes Beam ship this module's functions inside the pipeline instead of by import name.

  `tfds build datasets/dfx_corpus` imports this file as `dfx_corpus.<module>`, a name that
  Beam's worker processes (and cluster workers) cannot import; by value, workers need only
  tfds, Pillow, NumPy and etils. Beam's default pickler is its bundled cloudpickle.
  """
  from apache_beam.internal.cloudpickle import cloudpickle  # pylint: disable=g-import-not-at-top
  cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _count_skip_in_beam(path: str, reason: str) -> None:
  """Reports a skipped file through Beam metrics, read back by _process_pipeline_result."""
  metrics = tfds.core.lazy_imports.apache_beam.metrics.Metrics
  metrics.string_set(BEAM_NAMESPACE, "skipped_files").add(f"{path}: {reason}")
