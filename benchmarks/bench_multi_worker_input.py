"""Multi-worker input: each worker decoding its own slices vs every worker decoding everything.

Two worker processes on localhost run TensorFlow's MultiWorkerMirroredStrategy (TF_CONFIG, as
``train.py --strategy=multi_worker`` does) and pull the base-model training stream through
``strategy.experimental_distribute_dataset``, one cross-worker all-reduce per step as in
training, but no model, so the input pipeline is all that is timed:

  share : ``pipelines.image_dataset(..., share=distribute.worker_share(strategy))``, what
          train.py runs: each worker reads and decodes its slice of every global batch
  data  : the same stream without ``share`` (``AutoShardPolicy.DATA``, what train.py did
          before): every worker decodes every image and keeps its slice

Both give each step the same global batch of 32 images at 256 px from PNGs with the corpus'
size mix. Reports global images/s and the CPU time per image summed over both workers, the
best of --rounds alternating rounds. On this 2-core machine both workers share the cores, as
two machines would not, so the CPU time per image is the figure that carries over.

    python benchmarks/bench_multi_worker_input.py [--images=200] [--steps=20] [--rounds=2]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

SIZE, BATCH, WARMUP_STEPS = 256, 32, 3


def run_worker(args) -> None:
    """One worker: warm up, then time ``args.steps`` global steps; prints a JSON line."""
    import tensorflow as tf

    from dfx_keras.training import distribute
    from dfx_keras.data import corpus as corpus_lib
    from dfx_keras.data import pipelines

    strategy = distribute.get_strategy("multi_worker")
    samples = corpus_lib.scan_corpus(args.corpus).samples
    share = distribute.worker_share(strategy) if args.mode == "share" else None
    ds = pipelines.image_dataset(pipelines.FolderSource(args.corpus), samples, SIZE, BATCH,
                                 targets=[s.label for s in samples], shuffle_seed=0, share=share)
    batches = iter(strategy.experimental_distribute_dataset(ds))

    @tf.function
    def step(batch):
        images_seen = strategy.run(lambda images, labels: tf.cast(tf.shape(images)[0], tf.float32), args=batch)
        return strategy.reduce(tf.distribute.ReduceOp.SUM, images_seen, axis=None)

    for _ in range(WARMUP_STEPS):
        step(next(batches))
    start, cpu_start, images = time.perf_counter(), time.process_time(), 0.0
    for _ in range(args.steps):
        images += float(step(next(batches)))
    print(json.dumps({"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu_start,
                      "images": images}), flush=True)


def one_round(corpus: str, mode: str, steps: int) -> dict:
    """Both workers of one run; global images/s (the chief's clock) and CPU ms per image (both)."""
    from dfx_keras.training import distribute

    cluster = distribute.localhost_cluster(2)
    workers = [subprocess.Popen(
        [sys.executable, __file__, "--worker", f"--mode={mode}", f"--corpus={corpus}", f"--steps={steps}"],
        env={**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [w.communicate(timeout=900) for w in workers]
    if any(w.returncode for w in workers):
        raise RuntimeError("\n".join(err[-2000:] for _, err in outputs))
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    return {"images_per_s": results[0]["images"] / results[0]["seconds"],
            "cpu_ms_per_image": 1000 * sum(r["cpu_seconds"] for r in results) / results[0]["images"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--steps", type=int, default=20, help="timed global steps of 32 images")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "dfx_bench_multi_worker"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=["share", "data"], help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return run_worker(args)
    from benchmarks.bench_tfds_prepare import ensure_corpus

    corpus = os.path.join(args.workdir, f"corpus{args.images}")
    ensure_corpus(pathlib.Path(corpus), args.images)
    print(f"2 workers on localhost, {args.steps} steps of {BATCH} images at {SIZE} px; "
          f"load average before: {os.getloadavg()}")
    best = {"data": {"images_per_s": 0.0, "cpu_ms_per_image": float("inf")}}
    best["share"] = dict(best["data"])
    for _ in range(args.rounds):
        for mode in best:
            r = one_round(corpus, mode, args.steps)
            print(f"  {mode:<5} {r['images_per_s']:6.1f} images/s  {r['cpu_ms_per_image']:6.2f} CPU ms/image", flush=True)
            best[mode] = {"images_per_s": max(best[mode]["images_per_s"], r["images_per_s"]),
                          "cpu_ms_per_image": min(best[mode]["cpu_ms_per_image"], r["cpu_ms_per_image"])}
    share, data = best["share"], best["data"]
    print(f"share / data: {share['images_per_s'] / data['images_per_s']:.2f}x images/s; "
          f"CPU time per image {data['cpu_ms_per_image'] / share['cpu_ms_per_image']:.2f}x less")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
