"""Where the head's training step spends its time: a TensorFlow profiler trace, summed per op.

Builds a ``bench_head_step.py`` Keras variant (the stage's compile by default), runs warm-up
steps, traces ``--steps`` ``fit`` steps with ``tf.profiler.experimental`` and reads the trace
(the XSpace protobuf TensorFlow writes) itself: no TensorBoard plugin needed. Per op it sums the
wall time of each kernel on TensorFlow's executor threads (``tf_Compute``), so "op-seconds" can
exceed the wall time when the two inter-op threads run kernels side by side; shares are of the
op-seconds. Two tables: by op type, and by layer and pass (forward / gradient).

    python benchmarks/profile_head_step.py [--variant=keras] [--steps=10] [--top=15] [--logdir=/tmp/...]

Unlike rates, shares change little on a loaded machine: every kernel is slowed alike.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import bench_head_step  # noqa: E402  (the same folder: python benchmarks/profile_head_step.py)

LAYER = re.compile(r"/(conv\d|bn\d|pad\d|relu\d|pool|logits)(?:_\d+)?/")


def op_seconds(xspace_path: str) -> tuple[collections.Counter, collections.Counter]:
    """Kernel seconds per op type and per (layer, pass) from one trace file."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    with open(xspace_path, "rb") as f:
        space.ParseFromString(f.read())
    host = next(p for p in space.planes if p.name == "/host:CPU")
    by_type, by_layer = collections.Counter(), collections.Counter()
    for line in host.lines:
        if not line.name.startswith("tf_Compute"):
            continue
        for event in line.events:
            name = host.event_metadata[event.metadata_id].name  # "scope/op_name:OpType"
            if name.startswith("ExecutorState") or ":" not in name:
                continue
            op, op_type = name.rsplit(":", 1)
            seconds = event.duration_ps * 1e-12
            by_type[op_type] += seconds
            layer = _layer_of(op)
            by_layer[layer if layer == "optimizer" else f"{layer}, {'gradient' if 'gradient_tape' in op else 'forward'}"] \
                += seconds
    return by_type, by_layer


def _layer_of(op: str) -> str:
    match = LAYER.search(op + "/")
    if match:
        return match.group(1)
    if re.search(r"adam", op, re.IGNORECASE):
        return "optimizer"
    return "other (loss, metric, gradient sums)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", default="keras", choices=list(bench_head_step.KERAS_VARIANTS))
    parser.add_argument("--feature_dim", type=int, default=1024)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--logdir", default="", help="where the trace goes (default: a temporary folder)")
    args = parser.parse_args()
    for name, value in bench_head_step.KERAS_VARIANTS[args.variant]["env"].items():
        os.environ[name] = value  # read when TensorFlow starts, below
    import tensorflow as tf

    head, batches = bench_head_step.build_head_step(args.variant, args.feature_dim, args.batch_size)
    head.fit(batches, steps_per_epoch=args.warmup, epochs=1, verbose=0)
    logdir = args.logdir or tempfile.mkdtemp(prefix="head-step-trace-")
    tf.profiler.experimental.start(logdir)
    start = time.perf_counter()
    head.fit(batches, steps_per_epoch=args.steps, epochs=1, verbose=0)
    wall = time.perf_counter() - start
    tf.profiler.experimental.stop()
    by_type, by_layer = op_seconds(sorted(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True))[-1])
    total = sum(by_type.values())
    print(f"{args.variant}: {args.steps} steps in {wall:.2f} s wall ({wall / args.steps * 1e3:.0f} ms per step), "
          f"{total / args.steps * 1e3:.0f} kernel-ms per step on the executor threads "
          f"(load average {os.getloadavg()[0]:.1f}); trace in {logdir}")
    for title, table in (("op type", by_type), ("layer, pass", by_layer)):
        print(f"\n| {title} | ms per step | share |\n| --- | --- | --- |")
        for key, seconds in table.most_common(args.top):
            print(f"| {key} | {seconds / args.steps * 1e3:.1f} | {seconds / total:.1%} |")


if __name__ == "__main__":
    main()
