"""Batched evaluation vs batch-size-1 loops, same model, same images, same run.

The reference evaluates one image at a time: a DataLoader of batch size 1 and one eager
forward pass per image. Three ways to get the same probabilities are timed:

- reference loop: read, decode and resize each image, then call the Keras model on it
  eagerly (``model(x, training=False)``), as the reference's PyTorch loop does;
- compiled batch-1 loop: the same, through the compiled function evaluation uses
  (``Classifier.probabilities``): isolates what batching itself gains;
- batched: ``protocols.predict``, tf.data decoding and resizing in parallel, one call of the
  compiled function per batch (what evaluate.py does).

    python benchmarks/bench_eval.py --workdir=W [--data_dir=D] [--images=256] [--batch_size=32]

Prints the machine, the three throughputs and the speed-ups, after checking that all three
give the same probabilities.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root

from dfx_keras.cli.quiet import quiet_tensorflow  # noqa: E402

quiet_tensorflow()

import platform  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

flags.DEFINE_string("workdir", None, "Workdir whose models/complete.keras is timed.", required=True)
flags.DEFINE_string("data_dir", None, "Corpus; default: the one in the workdir's flags.txt.")
flags.DEFINE_integer("images", 256, "Test images timed (the test pool, repeated if smaller).", lower_bound=1)
flags.DEFINE_integer("batch_size", 32, "Batch size of the batched side.", lower_bound=1)
FLAGS = flags.FLAGS


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def one_at_a_time(predict_one, source, samples, image_size) -> np.ndarray:
    """Read, decode, resize and predict each image on its own."""
    import tensorflow as tf

    from dfx_keras.data import pipelines

    out = []
    for _, encoded in source.encoded(samples):
        image = pipelines.decode_and_resize(encoded, image_size)
        out.append(np.asarray(predict_one(tf.expand_dims(image, 0)))[0])
    return np.stack(out)


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main(argv):
    del argv
    import tensorflow as tf

    from dfx_keras import models
    from dfx_keras.evaluation import classifier
    from dfx_keras.evaluation import protocols
    from dfx_keras.data import corpus as corpus_lib
    from dfx_keras.data import pipelines
    from dfx_keras.workdir import Workdir

    data_dir = FLAGS.data_dir or Workdir(FLAGS.workdir).recorded_data_flags().get("data_dir")
    pool = protocols.test_data(corpus_lib.scan_corpus(data_dir, check=False))[0]
    samples = (pool * (FLAGS.images // len(pool) + 1))[:FLAGS.images]
    source = pipelines.folder_source(data_dir)
    model_path = Workdir(FLAGS.workdir).model("complete")
    model = models.load_model(model_path)
    model_classifier = classifier.keras_classifier(model, "complete", model_path)
    size = model_classifier.image_size
    loops = {"reference loop (eager, batch 1)": lambda x: tf.nn.softmax(model(x, training=False)),
             "compiled batch-1 loop": model_classifier.probabilities}
    # Warm-up: trace the compiled function for both batch shapes, fill the file cache.
    protocols.predict(model_classifier, source, samples[:FLAGS.batch_size], FLAGS.batch_size)
    for predict_one in loops.values():
        one_at_a_time(predict_one, source, samples[:2], size)

    batched, batched_s = timed(lambda: protocols.predict(model_classifier, source, samples, FLAGS.batch_size))
    n = len(samples)
    print(f"machine: {cpu_name()}, {os.cpu_count()} logical CPUs, TensorFlow {tf.__version__}, "
          f"devices {[d.name for d in tf.config.list_logical_devices()]}")
    print(f"model: {model_path} ({size}x{size}), {n} images of {data_dir}")
    print(f"{'batched (' + str(FLAGS.batch_size) + ')':<32} {n / batched_s:8.1f} images/s ({batched_s:.2f} s)")
    assert [s.path for s in batched.samples] == [s.path for s in samples]
    for name, predict_one in loops.items():
        probabilities, seconds = timed(lambda: one_at_a_time(predict_one, source, samples, size))
        np.testing.assert_allclose(batched.probabilities, probabilities, atol=1e-4)
        print(f"{name:<32} {n / seconds:8.1f} images/s ({seconds:.2f} s): batched is {seconds / batched_s:.1f}x "
              "faster (same probabilities within 1e-4)")


if __name__ == "__main__":
    app.run(main)
