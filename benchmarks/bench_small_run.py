"""Wall time of the small runs people make, per stage: this tree against issue 15's start commit, same run.

Two recipes on a few-thousand-image corpus (the generator-made corpus of
``benchmarks/build_generated_corpus.py``: 2,700 images, held-back sets for the generalization test):

- ``demo``: the values of ``dfx_keras/configs/demo.flags`` (tiny CNN, 64 px, 12 epochs per stage,
  ``--cache_images``) with ``--data_dir`` the corpus, ``--stage=all``; without ``--train_baseline``,
  which the start commit does not have (the baseline is not part of the method);
- ``densenet``: the same values with DenseNet-121 from scratch (``--backbone=densenet121
  --weights=none``), base models 5 epochs (``--stage=base --epochs=5``), then the complete stage
  10 epochs (``--stage=complete --epochs=10``; ``--epochs`` is per stage, hence two runs);
- ``densenet_base``: the densenet recipe's base models only (goal 1's figure, a third of its time);
- ``contrastive``: the densenet recipe's base models with ``--base_objective=contrastive``, 3
  epochs, this tree only (the start commit has no contrastive objective).

Each recipe that trains a complete model then runs ``evaluate.py --protocols=raw,generalization`` on the held-back sets. Every
command is a fresh process with ``PYTHONPATH`` on its tree (the start commit's git worktree,
or this one), run through ``benchmarks/timed_run.py``, which times each stage function and
each epoch. The two trees alternate, so load from other jobs hits both alike.

    git worktree add --detach /work/wt/start15 4f367e2
    nice -n 10 python benchmarks/bench_small_run.py --start_tree=/work/wt/start15 \\
        --corpus=/work/corpora/generated/corpus --heldout=/work/corpora/generated/heldout \\
        [--recipes=demo,densenet] [--repetitions=1] [--workroot=/tmp/bench_small_run]

Prints, per recipe, the seconds of each stage (each base model, with its first epoch and the
median of its later ones; the complete stage; evaluation; whole processes), start / now, and
the goal-1 figure: a base model's fixed cost, its wall time minus its epochs at the median
later-epoch time, for each of the three base models, start and now. The load average before
and after every command is printed beside it.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root

import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

from absl import app, flags  # noqa: E402

NOW_TREE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMED_RUN = os.path.join(NOW_TREE, "benchmarks", "timed_run.py")
BASE_MODELS = ("bm_dm", "bm_gan", "bm_real")

flags.DEFINE_string("start_tree", None, "Git worktree of the start commit (git worktree add --detach DIR 4f367e2).",
                    required=True)
flags.DEFINE_string("corpus", "/work/corpora/generated/corpus", "Corpus folder (--data_dir of train.py).")
flags.DEFINE_string("heldout", "/work/corpora/generated/heldout", "Held-back sets (--generalization_dir of evaluate.py).")
flags.DEFINE_list("recipes", ["demo", "densenet"], "Recipes to time: demo, densenet, densenet_base, contrastive.")
flags.DEFINE_integer("repetitions", 1, "Runs of each recipe on each tree (medians are printed).", lower_bound=1)
flags.DEFINE_string("workroot", "/tmp/bench_small_run", "Scratch folder for the workdirs (emptied first).")
FLAGS = flags.FLAGS

DEMO = ["--backbone=tiny", "--weights=none", "--image_size=64", "--batch_size=32", "--learning_rate=1e-3",
        "--weight_decay=1e-4", "--cache_images"]
DENSENET = [*DEMO[2:], "--backbone=densenet121", "--weights=none"]
# recipe -> the train.py runs, in order (each a fresh process)
RECIPES = {
    "demo": [["--epochs=12", "--stage=all", *DEMO]],
    "densenet": [["--epochs=5", "--stage=base", *DENSENET], ["--epochs=10", "--stage=complete", *DENSENET]],
    "contrastive": [["--epochs=3", "--stage=base", "--base_objective=contrastive", *DENSENET]],
}
RECIPES["densenet_base"] = RECIPES["densenet"][:1]
NOW_ONLY = {"contrastive"}  # the start commit has no --base_objective: this tree's base models 2 and 3 vs its first
BASE_ONLY = {"densenet_base", "contrastive"}  # no complete model: nothing to evaluate


def machine() -> str:
    """The CPU model and count (Linux; the platform's processor name elsewhere)."""
    names = set()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            names = {line.split(":", 1)[1].strip() for line in f if line.startswith("model name")}
    return f"{', '.join(sorted(names)) or platform.processor()}, {os.cpu_count()} CPUs"


def timed(tree: str, script: str, args: list[str], out: str) -> dict:
    """``script`` of ``tree`` in a fresh process through timed_run.py: its timings, wall and CPU seconds."""
    env = {**os.environ, "PYTHONPATH": tree, "TF_CPP_MIN_LOG_LEVEL": "3"}
    load = os.getloadavg()[0]
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, TIMED_RUN, out, os.path.join(tree, script), *args], env=env, cwd=tree,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise RuntimeError(f"{script} {' '.join(args)} in {tree} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    with open(out) as f:
        record = json.load(f)
    record.update(wall=wall, cpu=after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime,
                  load=(load, os.getloadavg()[0]))
    return record


def run_recipe(recipe: str, tree: str, workroot: str) -> dict:
    """Every command of ``recipe`` on ``tree`` in a new workdir: {command label: record}."""
    workdir = os.path.join(workroot, "workdir")
    shutil.rmtree(workdir, ignore_errors=True)
    records = {}
    for i, args in enumerate(RECIPES[recipe]):
        label = next(a.split("=")[1] for a in args if a.startswith("--stage="))
        records[f"train {label}"] = timed(tree, "train.py", [f"--workdir={workdir}", f"--data_dir={FLAGS.corpus}", *args],
                                          os.path.join(workroot, f"train{i}.json"))
    if recipe in BASE_ONLY:
        return records
    records["evaluate"] = timed(tree, "evaluate.py", [f"--workdir={workdir}", "--protocols=raw,generalization",
                                                      f"--generalization_dir={FLAGS.heldout}", "--nobaseline"],
                                os.path.join(workroot, "evaluate.json"))
    return records


def figures(records: dict) -> dict:
    """Seconds per stage of one recipe run, and each base model's fixed cost."""
    out = {}
    stages = [s for r in records.values() for s in r["stages"]]
    fits = {f["model"]: f for r in records.values() for f in r["fits"]}
    for base in stages:
        if base["stage"] != "train_base_model":
            continue
        name = {"dm_generated": "bm_dm", "gan_generated": "bm_gan", "real": "bm_real"}[base["arg"]]
        epochs = fits[name]["epochs"]
        later = statistics.median(epochs[1:]) if len(epochs) > 1 else float("nan")
        out[f"{name} stage"] = base["seconds"]
        out[f"{name} first epoch"] = epochs[0]
        out[f"{name} later epoch (median)"] = later
        out[f"{name} fixed cost"] = base["seconds"] - len(epochs) * later
    for stage in stages:
        if stage["stage"] == "train_complete_model":
            out["complete stage"] = stage["seconds"]
        elif stage["stage"] == "evaluate_raw":
            out["raw test in train.py"] = stage["seconds"]
    complete = fits.get("head") or fits.get("complete")  # the head on cached features, or end to end
    if complete and len(complete["epochs"]) > 1:
        out["complete first epoch"] = complete["epochs"][0]
        out["complete later epoch (median)"] = statistics.median(complete["epochs"][1:])
    for label, record in records.items():
        out[f"{label} (process wall)"] = record["wall"]
        out[f"{label} (process CPU)"] = record["cpu"]
    return out


def median_figures(runs: list[dict]) -> dict:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def print_recipe(recipe: str, start: dict | None, now: dict, loads: list[float]) -> None:
    """The recipe's seconds, start / now, and the goal-1 figure (``start`` None: this tree only)."""
    print(f"\n## {recipe}: {FLAGS.repetitions} run(s) per tree, medians; load average "
          f"{min(loads):.1f}-{max(loads):.1f} over the commands")
    print(f"{'seconds':<40} {'start':>9} {'now':>9} {'start/now':>10}")
    for key, value in now.items():
        if start is None or key not in start:
            print(f"{key:<40} {'-':>9} {value:>9.1f}")
        else:
            ratio = start[key] / value if value > 0 else float("inf")
            print(f"{key:<40} {start[key]:>9.1f} {value:>9.1f} {ratio:>9.2f}x")
    fixed = [f"{name} fixed cost" for name in BASE_MODELS]
    if not all(key in now for key in fixed):
        return
    print("goal 1 (a base model after the first adds at most a quarter of today's fixed cost):")
    for key in fixed[1:]:
        against = f" = {now[key] / start[key]:.2f} of start's {start[key]:.1f} s" if start else ""
        print(f"  {key.split()[0]}: now {now[key]:.1f} s{against}; the first base model: "
              + (f"start {start[fixed[0]]:.1f} s, " if start else "") + f"now {now[fixed[0]]:.1f} s")


def main(argv):
    del argv
    print(f"machine: {machine()}; python {platform.python_version()}")
    print(f"start tree: {FLAGS.start_tree} ({_commit(FLAGS.start_tree)}); now: {NOW_TREE} ({_commit(NOW_TREE)})")
    for recipe in FLAGS.recipes:
        if recipe not in RECIPES:
            raise app.UsageError(f"unknown recipe {recipe!r}; choose among {', '.join(RECIPES)}")
        runs, loads = {"start": [], "now": []}, []
        sides = [("now", NOW_TREE)] if recipe in NOW_ONLY else [("start", FLAGS.start_tree), ("now", NOW_TREE)]
        for rep in range(FLAGS.repetitions):
            for side, tree in sides:
                workroot = os.path.join(FLAGS.workroot, recipe, side)
                os.makedirs(workroot, exist_ok=True)
                records = run_recipe(recipe, tree, workroot)
                with open(os.path.join(workroot, f"run{rep + 1}.json"), "w") as f:
                    json.dump(records, f, indent=1)
                loads += [x for r in records.values() for x in r["load"]]
                runs[side].append(figures(records))
                print(f"{recipe} run {rep + 1} {side}: " + ", ".join(
                    f"{k} {v:.1f}s" for k, v in runs[side][-1].items() if "process wall" in k), flush=True)
        print_recipe(recipe, median_figures(runs["start"]) if runs["start"] else None, median_figures(runs["now"]), loads)


def _commit(tree: str) -> str:
    done = subprocess.run(["git", "-C", tree, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", tree, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                           text=True).stdout.strip()
    return done.stdout.strip() + (" + uncommitted changes" if dirty else "")


if __name__ == "__main__":
    app.run(main)
