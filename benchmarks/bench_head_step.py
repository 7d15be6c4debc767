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
``keras_inter1`` / ``keras_intra1`` (one inter-op / intra-op thread), ``keras_intra4`` /
``keras_intra4_inter1`` (4 intra-op threads on the 2 cores: oneDNN splits each kernel into one
chunk per thread, so smaller chunks balance better), ``keras_bare`` (plain
Adam, no sample weights, no metric: what the stage's compile costs), ``keras_spe4``
(``steps_per_execution=4``: what fit's per-step Python costs), ``keras_fused_bn``
(``build_head(fused_bn=True)``), ``keras_bf16`` / ``keras_bf16_fused_bn`` (the
``mixed_bfloat16`` policy), ``torch``, ``torch_bf16`` (the twin under
``torch.autocast("cpu", torch.bfloat16)``), ``keras_conv45_only`` (the head from bn3 on: conv4 and conv5,
97% of its multiply-adds, the same compile: a step no head can beat). Ratios are printed against ``torch``,
``torch_bf16`` and ``keras`` when they ran: Keras against Keras is the figure that a loaded
machine distorts least (both sides share TensorFlow's thread pools).
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


def _variant(jit=False, env=None, compile="stage", fused_bn=False, precision="float32", steps_per_execution=1,
             conv45_only=False):
    return {"jit": jit, "env": env or {}, "compile": compile, "fused_bn": fused_bn, "precision": precision,
            "steps_per_execution": steps_per_execution, "conv45_only": conv45_only}


KERAS_VARIANTS = {
    "keras": _variant(),
    "keras_xla": _variant(jit=True),
    "keras_onednn_off": _variant(env={"TF_ENABLE_ONEDNN_OPTS": "0"}),
    "keras_xla_onednn_off": _variant(jit=True, env={"TF_ENABLE_ONEDNN_OPTS": "0"}),
    "keras_inter1": _variant(env={"DFX_BENCH_INTER_OP_THREADS": "1"}),
    "keras_intra1": _variant(env={"DFX_BENCH_INTRA_OP_THREADS": "1"}),
    "keras_intra4": _variant(env={"DFX_BENCH_INTRA_OP_THREADS": "4"}),
    "keras_intra4_inter1": _variant(env={"DFX_BENCH_INTRA_OP_THREADS": "4", "DFX_BENCH_INTER_OP_THREADS": "1"}),
    "keras_bare": _variant(compile="bare"),
    "keras_spe4": _variant(steps_per_execution=4),
    "keras_fused_bn": _variant(fused_bn=True),
    "keras_bf16": _variant(precision="mixed_bfloat16"),
    "keras_bf16_fused_bn": _variant(precision="mixed_bfloat16", fused_bn=True),
    "keras_conv45_only": _variant(conv45_only=True),
}
TORCH_VARIANTS = {"torch": [], "torch_bf16": ["--bf16"]}  # name -> extra arguments of torch_head_twin.py
VARIANTS = (*KERAS_VARIANTS, *TORCH_VARIANTS)


def build_head_step(name: str, feature_dim: int, batch_size: int):
    """The head of Keras variant ``name`` compiled, and a dataset of one repeated batch for ``fit``.

    ``compile="stage"`` is the complete stage's compile (``fit.compile_model``) fed (features,
    labels, class weights); ``"bare"`` the same layers with plain Adam, no sample weights and
    no metric, to price what the stage's compile adds.
    """
    sys.path.insert(0, str(HERE.parents[1]))
    import keras
    import tensorflow as tf

    from dfx_keras import config, models
    from dfx_keras.data import pipelines
    from dfx_keras.training import fit

    spec = KERAS_VARIANTS[name]
    for setting, env in ((tf.config.threading.set_inter_op_parallelism_threads, "DFX_BENCH_INTER_OP_THREADS"),
                         (tf.config.threading.set_intra_op_parallelism_threads, "DFX_BENCH_INTRA_OP_THREADS")):
        if spec["env"].get(env):
            setting(int(spec["env"][env]))
    cfg = config.TrainConfig(workdir="", jit_compile=spec["jit"], precision=spec["precision"])
    with fit.dtype_policy(cfg.precision):
        head = models.build_head(feature_dim, fused_bn=spec["fused_bn"])
        if spec["conv45_only"]:
            head = _conv45_only(head)
    features = tf.random.stateless_uniform((batch_size, *head.input_shape[1:]), seed=(1, 2))
    labels = tf.range(batch_size) % 3
    if spec["compile"] == "bare":
        head.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate),
                     loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=spec["jit"])
        batch = (features, labels)
    else:
        fit.compile_model(head, cfg, replicas=1)
        batch = (features, labels, tf.ones((batch_size,)))
    head.steps_per_execution = spec["steps_per_execution"]  # read when fit builds its train function
    # finish(): as the stage's feature-cache batches (no autotuning wait when fit drops the iterator)
    return head, pipelines.finish(tf.data.Dataset.from_tensors(batch).repeat())


def _conv45_only(head):
    """The head from bn3 on (conv4 and conv5, 97% of its multiply-adds, with their BatchNorm,
    pool and logits) on conv3's output shape: a step no head can beat. bn3 keeps conv4's input
    gradient in the step, as in the head (without a trainable layer below it, TensorFlow would
    skip that half of conv4's backward pass)."""
    import keras

    inputs = keras.Input(head.get_layer("bn3").output.shape[1:])
    x = inputs
    for name in ("bn3", "pad4", "conv4", "relu4", "bn4", "pad5", "conv5", "relu5", "pool", "logits"):
        x = head.get_layer(name).__class__.from_config(head.get_layer(name).get_config())(x)
    return keras.Model(inputs, x, name="conv45_only")


def keras_child(args) -> None:
    """Images/s of the Keras head's ``fit`` steps (prints one RESULT line)."""
    head, batches = build_head_step(args.child, args.feature_dim, args.batch_size)
    head.fit(batches, steps_per_epoch=args.warmup, epochs=1, verbose=0)
    start, cpu = time.perf_counter(), time.process_time()
    head.fit(batches, steps_per_epoch=args.steps, epochs=1, verbose=0)
    images = args.steps * args.batch_size
    print("RESULT " + json.dumps({"images_per_s": images / (time.perf_counter() - start),
                                  "images_per_cpu_s": images / (time.process_time() - cpu)}))


def run_variant(name: str, args) -> dict:
    if name in TORCH_VARIANTS:
        command = [args.torch_python, str(HERE.parent / "torch_head_twin.py"), *TORCH_VARIANTS[name]]
        env = dict(os.environ)
    else:
        command = [sys.executable, str(HERE), "--child", name]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **KERAS_VARIANTS[name]["env"]}
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
    if unknown or not {"torch", "keras"} & set(variants):
        parser.error(f"--variants: unknown {unknown}" if unknown else "--variants must include torch or keras (a baseline)")
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
    baselines = [b for b in ("torch", "torch_bf16", "keras") if b in medians]
    for name, m in medians.items():
        ratios = ", ".join(f"{m['images_per_s'] / medians[b]['images_per_s']:.2f}x {b}" for b in baselines)
        cpu_ratios = ", ".join(f"{m['images_per_cpu_s'] / medians[b]['images_per_cpu_s']:.2f}x {b}" for b in baselines)
        print(f"median {name:<22} {m['images_per_s']:7.1f} images/s ({ratios}), "
              f"{m['images_per_cpu_s']:7.1f} per CPU-second ({cpu_ratios})")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
