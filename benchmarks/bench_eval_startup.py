"""evaluate.py's fixed cost: process start to first prediction, and the time per image after it,
this tree against another commit's tree (issue 15's start commit), in the same run.

Each repetition starts one fresh process per tree, alternating. The process does what
``python evaluate.py --workdir=W`` does up to its first batch: import the evaluate CLI and the
run module, scan the test pool, ``load_classifier(W/models/complete.keras)``, then
``predict`` the test pool; the clock starts before the process is spawned and stops when the
first batch's probabilities are in NumPy (start-up). A second ``predict`` of the whole test
pool in the same process gives the time per image (the traced function warm).

    python benchmarks/bench_eval_startup.py --workdir=W --data_dir=D --other=/work/wt/start15h [--repeats=3]

The other tree is a git worktree of the baseline commit (``git worktree add --detach PATH
4f367e2``); each process gets its tree first on PYTHONPATH. Both trees must read the model
(a complete model saved by this tree loads in the start commit's code).
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

HERE = pathlib.Path(__file__).resolve().parents[1]


def child(model_path: str, data_dir: str, batch_size: int) -> None:
    """One evaluate-like process (the tree on PYTHONPATH decides which code runs)."""
    start = float(os.environ["BENCH_T0"])
    new_layout = os.path.isdir(os.path.join(os.environ["PYTHONPATH"], "dfx_keras", "evaluation"))
    if new_layout:
        from dfx_keras.cli import quiet

        quiet.quiet_tensorflow()
        import dfx_keras.cli.evaluate  # noqa: F401  what evaluate.py imports
        import dfx_keras.run  # noqa: F401  what its main imports
        from dfx_keras.evaluation import classifier as classifiers
        from dfx_keras.evaluation import protocols
    else:  # the start commit: one evaluation module
        from dfx_keras import quiet

        quiet.quiet_tensorflow()
        import dfx_keras.evaluate_cli  # noqa: F401
        import dfx_keras.run  # noqa: F401
        from dfx_keras import evaluation as classifiers
        from dfx_keras import evaluation as protocols
    import dataclasses

    import numpy as np

    from dfx_keras.data import corpus as corpus_lib
    from dfx_keras.data import pipelines

    imported = time.time()
    samples = protocols.test_data(corpus_lib.scan_corpus(data_dir, check=False))[0]
    source = pipelines.folder_source(data_dir)
    clf = classifiers.load_classifier(model_path, "complete")
    loaded = time.time()
    first = []

    def probabilities(batch):
        out = np.asarray(clf.probabilities(batch))
        first.append(first[0] if first else time.time())
        return out

    timed = dataclasses.replace(clf, probabilities=probabilities)
    protocols.predict(timed, source, samples, batch_size)
    again = time.time()
    protocols.predict(clf, source, samples, batch_size)
    per_image = (time.time() - again) / len(samples)
    traces = clf.probabilities.experimental_get_tracing_count()
    print("RESULT " + json.dumps({"import_s": imported - start, "load_s": loaded - imported,
                                  "startup_s": first[0] - start, "per_image_ms": 1000 * per_image,
                                  "images": len(samples), "traces": traces}))


def run_tree(tree: str, args) -> dict:
    env = {**os.environ, "PYTHONPATH": tree, "BENCH_T0": repr(time.time()), "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, __file__, "--child", "--workdir", args.workdir, "--data_dir", args.data_dir,
                          "--batch_size", str(args.batch_size)], env=env, capture_output=True, text=True, check=False)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode or not lines:
        sys.exit(f"{tree}: the evaluation process failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="holds models/complete.keras")
    parser.add_argument("--data_dir", required=True, help="the corpus whose test pool is predicted")
    parser.add_argument("--other", help="the baseline commit's tree (required)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    model_path = os.path.join(args.workdir, "models", "complete.keras")
    if args.child:
        child(model_path, args.data_dir, args.batch_size)
        return
    if not args.other:
        parser.error("--other (the baseline commit's tree) is required")
    trees = {"start": os.path.abspath(args.other), "now": str(HERE)}
    print(f"model {model_path}; test pool of {args.data_dir}; {os.cpu_count()} CPUs; "
          f"load average before: {os.getloadavg()}")
    runs = {name: [] for name in trees}
    for repeat in range(args.repeats):
        for name, tree in (trees.items() if repeat % 2 == 0 else reversed(trees.items())):
            runs[name].append(run_tree(tree, args))
            r = runs[name][-1]
            print(f"  {name:<5} start-up {r['startup_s']:6.2f} s (import {r['import_s']:5.2f}, scan+load "
                  f"{r['load_s']:5.2f}), {r['per_image_ms']:6.2f} ms/image over {r['images']} images, "
                  f"traces {r['traces']}; load average {os.getloadavg()[0]:.1f}", flush=True)
    median = {name: {k: statistics.median(r[k] for r in rs) for k in ("startup_s", "per_image_ms", "import_s",
                                                                       "load_s")} for name, rs in runs.items()}
    for name, m in median.items():
        print(f"median {name:<5}: start-up {m['startup_s']:.2f} s (import {m['import_s']:.2f}, scan+load "
              f"{m['load_s']:.2f}), {m['per_image_ms']:.2f} ms/image")
    print(f"start-up now / start: {median['now']['startup_s'] / median['start']['startup_s']:.2f}; per image now / "
          f"start: {median['now']['per_image_ms'] / median['start']['per_image_ms']:.2f}; "
          f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
