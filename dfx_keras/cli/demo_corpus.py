"""``python -m dfx_keras.cli demo_corpus --out DIR`` (``dfx-demo-corpus``): write the procedural
demo corpus.

The corpus (see ``dfx_keras.data.demo``) has the real corpus' layout, so every command that
takes ``--data_dir`` runs on it. A folder that already holds a complete corpus made with the
same parameters is reused as it is, so scripts can call this unconditionally.
"""

import sys
import time

from absl import app, flags

from dfx_keras.data import demo

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("out", None, "Folder to write the corpus to (created if missing); it will hold "
                        "{dm_generated,gan_generated,real}/<architecture>/<image>.png.")
    flags.DEFINE_integer("images_per_architecture", demo.IMAGES_PER_ARCHITECTURE, "Images in each of the 9 "
                         "architecture folders (3 per class).", lower_bound=1)
    flags.DEFINE_integer("seed", demo.SEED, "Random seed: the same seed and size give byte-identical files.")
    flags.mark_flag_as_required("out")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    start = time.time()
    try:
        counts, generated = demo.ensure_demo_corpus(FLAGS.out, FLAGS.images_per_architecture, FLAGS.seed)
    except (OSError, ValueError) as e:
        sys.exit(f"cannot write the demo corpus: {e}")
    how = f"generated in {time.time() - start:.1f} s" if generated else "already present with these parameters, reused"
    print(f"Demo corpus in {FLAGS.out} ({how}): {sum(counts.values())} images")
    for (class_name, architecture), count in sorted(counts.items()):
        print(f"  {class_name}/{architecture}: {count}")
