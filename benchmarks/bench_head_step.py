"""The head's training step (forward, backward, Adam) against a PyTorch twin of the same layers.

The Keras side is the real head (``models.build_head``) compiled as the complete stage compiles
it (``fit.compile_model``: AdamL2 with the default L2, cross-entropy on logits, accuracy; XLA as
``--jit_compile`` resolves on one replica), fed cached-feature batches (stacked features
(B, D, 3), labels, class weights) by ``model.fit``. The twin is ``torch_head_twin.py`` run by a
Python that has torch (``--torch_python``, a scratch environment). Each variant runs in its own
process (environment variables such as ``TF_ENABLE_ONEDNN_OPTS`` are read when TensorFlow
starts); one repetition runs every variant once, in rotated order, after a warm-up inside the
process; the median over repetitions is reported, in images per wall second and per CPU-second
of the process (the steadier figure on a shared machine).

    python benchmarks/bench_head_step.py --torch_python=/work/scratch/torchenv/bin/python \\
        [--feature_dim=1024] [--batch_size=32] [--steps=20] [--repeats=3] [--variants=keras,keras_xla,torch]

Variants: ``keras`` (as the stage runs on CPU: no XLA), ``keras_xla`` (``jit_compile=True``),
``keras_onednn_off`` / ``keras_xla_onednn_off`` (``TF_ENABLE_ONEDNN_OPTS=0``),
``keras_inter1`` (one inter-op thread), ``torch``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve()
KERAS_VARIANTS = {  # name -> (jit_compile, extra environment)
    "keras": (False, {}),
    "keras_xla": (True, {}),
    "keras_onednn_off": (False, {"TF_ENABLE_ONEDNN_OPTS": "0"}),
    "keras_xla_onednn_off": (True, {"TF_ENABLE_ONEDNN_OPTS": "0"}),
    "keras_inter1": (False, {"DFX_BENCH_INTER_OP_THREADS": "1"}),
}
VARIANTS = (*KERAS_VARIANTS, "torch")


def keras_child(args) -> None:
    """Images/s of the Keras head's ``fit`` steps (prints one RESULT line)."""
    sys.path.insert(0, str(HERE.parents[1]))
    import tensorflow as tf

    if os.environ.get("DFX_BENCH_INTER_OP_THREADS"):
        tf.config.threading.set_inter_op_parallelism_threads(int(os.environ["DFX_BENCH_INTER_OP_THREADS"]))
    from dfx_keras import config, models
    from dfx_keras.training import fit

    jit, _ = KERAS_VARIANTS[args.child]
    cfg = config.TrainConfig(workdir="", jit_compile=jit)
    head = fit.compile_model(models.build_head(args.feature_dim), cfg, replicas=1)
    features = tf.random.stateless_uniform((args.batch_size, args.feature_dim, 3), seed=(1, 2))
    labels = tf.range(args.batch_size) % 3
    weights = tf.ones((args.batch_size,))
    batches = tf.data.Dataset.from_tensors((features, labels, weights)).repeat()
    head.fit(batches, steps_per_epoch=args.warmup, epochs=1, verbose=0)
    start, cpu = time.perf_counter(), time.process_time()
    head.fit(batches, steps_per_epoch=args.steps, epochs=1, verbose=0)
    images = args.steps * args.batch_size
    print("RESULT " + json.dumps({"images_per_s": images / (time.perf_counter() - start),
                                  "images_per_cpu_s": images / (time.process_time() - cpu)}))


def run_variant(name: str, args) -> dict:
    if name == "torch":
        command = [args.torch_python, str(HERE.parent / "torch_head_twin.py")]
        env = dict(os.environ)
    else:
        command = [sys.executable, str(HERE), "--child", name]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **KERAS_VARIANTS[name][1]}
    command += ["--feature_dim", str(args.feature_dim), "--batch_size", str(args.batch_size),
                "--steps", str(args.steps), "--warmup", str(args.warmup)]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in out.stdout.splitlines() if line.startswith(("RESULT ", "{"))]
    if out.returncode or not lines:
        sys.exit(f"{name} failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--torch_python", default="/work/scratch/torchenv/bin/python")
    parser.add_argument("--feature_dim", type=int, default=1024, help="DenseNet-121's pooled features")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--child", choices=list(KERAS_VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        keras_child(args)
        return
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or "torch" not in variants:
        parser.error(f"--variants: unknown {unknown}" if unknown else "--variants must include torch (the baseline)")
    print(f"head train step: D={args.feature_dim}, batch {args.batch_size}, {args.steps} timed steps after "
          f"{args.warmup}; {os.cpu_count()} CPUs; load average before: {os.getloadavg()}")
    rates = {v: [] for v in variants}
    for repeat in range(args.repeats):
        order = variants[repeat % len(variants):] + variants[:repeat % len(variants)]
        for name in order:
            rates[name].append(run_variant(name, args))
            r = rates[name][-1]
            print(f"  {name:<22} {r['images_per_s']:7.1f} images/s, {r['images_per_cpu_s']:7.1f} images per CPU-second "
                  f"(load average {os.getloadavg()[0]:.1f})", flush=True)
    medians = {name: {k: statistics.median(r[k] for r in runs) for k in ("images_per_s", "images_per_cpu_s")}
               for name, runs in rates.items()}
    torch = medians["torch"]
    for name, m in medians.items():
        print(f"median {name:<22} {m['images_per_s']:7.1f} images/s ({m['images_per_s'] / torch['images_per_s']:.2f}x "
              f"torch), {m['images_per_cpu_s']:7.1f} per CPU-second "
              f"({m['images_per_cpu_s'] / torch['images_per_cpu_s']:.2f}x torch)")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
