"""Generalization to unseen generators, measured: leave-one-generator-out folds, then held-back sets.

Trains one workdir per (row, fold) on a corpus in the seed layout (the generator-made corpus of
``benchmarks/build_generated_corpus.py``), each with one generator folder kept out of every stage
(``--holdout_architectures``), and scores that folder as evaluate.py's ``holdout`` protocol
does (its images against as many real test-pool images, accuracy and AUC). A row is a set of
train.py flags on top of a recipe; every run also trains the baseline, so each row reports the
complete model and ``--stage=baseline`` side by side.

Choose settings on the folds only. ``--heldback`` then trains each row once on the whole
corpus and scores the held-back generalization sets (``<dir>/<family>/{0_real,1_fake}``), which
are read by nothing else.

    python benchmarks/generalization_table.py --recipe=demo --folds=all --out=/tmp/loo
    python benchmarks/generalization_table.py --recipe=demo --heldback --out=/tmp/loo
    python benchmarks/generalization_table.py --recipe=densenet121 \
        --folds=gan_generated/TConv-GAN,dm_generated/DDPM-Linear --rows=default,contrastive --out=/tmp/loo

Runs whose results exist are not rerun (an interrupted table resumes); ``--jobs`` runs trainings
side by side (two single-process runs use 2 cores better than one). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shlex
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_FLAGS = os.path.join(REPO, "dfx_keras", "configs", "demo.flags")
# Flags of the demo recipe that name its own corpus and workdir, replaced per run.
NOT_RECIPE = ("--workdir", "--data_dir", "--make_demo_corpus")

# Each row: the train.py flags it adds to the recipe.
ROWS = {
    "default": [],
    "augment": ["--augment=jpeg,blur"],
    "contrastive": ["--base_objective=contrastive"],
    "others_min": ["--others_min_images=20"],
    "npr": ["--input_residual=npr"],
}
# Rows whose flags only change the base models: their baseline would be the default row's, so
# they do not train one (the table prints the baseline once, under "default").
BASE_MODELS_ONLY = {"contrastive", "others_min"}


def demo_recipe() -> list[str]:
    """The demo flagfile's training flags, without its corpus and workdir."""
    with open(DEMO_FLAGS) as f:
        lines = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    return [line for line in lines if not line.startswith(NOT_RECIPE)]


# Each recipe: the train.py calls that make a workdir with models/complete.keras and baseline.keras.
RECIPES = {
    "demo": lambda: [demo_recipe() + ["--stage=all", "--noevaluate"]],
    # DenseNet-121 from scratch at 64 px, base models 5 epochs, head 10 (the speed issue's recipe),
    # with the demo recipe's optimizer values: 1e-4 from scratch barely moves in 5 epochs.
    "densenet121": lambda: [
        common + stage
        for common in [["--backbone=densenet121", "--weights=none", "--image_size=64", "--batch_size=32",
                        "--learning_rate=1e-3", "--weight_decay=1e-4", "--cache_images"]]
        for stage in (["--stage=base", "--epochs=5"], ["--stage=complete", "--epochs=10", "--noevaluate"],
                      ["--stage=baseline", "--epochs=5"])
    ],
}


def without_baseline(calls: list[list[str]], row: str) -> list[list[str]]:
    """The recipe's calls, without training the baseline for rows that cannot change it."""
    if row not in BASE_MODELS_ONLY:
        return calls
    return [call + ["--notrain_baseline"] for call in calls if "--stage=baseline" not in call]


def generator_folders(corpus: str) -> list[str]:
    """``<class>/<folder>`` of every generator folder (the real folders stay in every fold)."""
    return sorted(f"{c}/{a}" for c in ("dm_generated", "gan_generated")
                  for a in os.listdir(os.path.join(corpus, c)) if os.path.isdir(os.path.join(corpus, c, a)))


def run_one(args, row: str, fold: str | None) -> dict:
    """Train one workdir (skipped when its results exist) and evaluate it; returns results.json."""
    name = f"{args.recipe}-s{'default' if args.seed is None else args.seed}-{row}-" + (fold.replace("/", "_") if fold else "heldback")
    workdir = os.path.join(args.out, name)
    results_dir = os.path.join(workdir, "table")
    results_json = os.path.join(results_dir, "results.json")
    if os.path.exists(results_json):
        with open(results_json) as f:
            return json.load(f)
    os.makedirs(workdir, exist_ok=True)
    holdout = [f"--holdout_architectures={fold}"] if fold else []
    seed = [f"--seed={args.seed}"] if args.seed is not None else []
    calls = [[sys.executable, os.path.join(REPO, "train.py"), f"--workdir={workdir}", f"--data_dir={args.corpus}",
              *flags, *seed, *ROWS[row], *holdout] for flags in without_baseline(RECIPES[args.recipe](), row)]
    protocols = ["--protocols=holdout"] if fold else ["--protocols=generalization", f"--generalization_dir={args.heldout}"]
    calls.append([sys.executable, os.path.join(REPO, "evaluate.py"), f"--workdir={workdir}",
                  f"--results_dir={results_dir}", *protocols])
    start = time.time()
    with open(os.path.join(workdir, "table.log"), "a") as log:
        for call in calls:
            log.write("$ " + shlex.join(call) + "\n")
            log.flush()
            if subprocess.run(call, stdout=log, stderr=subprocess.STDOUT, cwd=REPO).returncode:
                raise RuntimeError(f"{name}: failed, see {workdir}/table.log")
    print(f"{name}: {time.time() - start:.0f} s", flush=True)
    with open(results_json) as f:
        return json.load(f)


def scores(results: dict, fold: str | None) -> dict[str, dict[str, tuple[float, float]]]:
    """Column -> model -> (accuracy, AUC): the fold's folder, or each held-back set."""
    def pick(block):
        sets = {fold.split("/")[1]: block["holdout"][fold]} if fold else block["generalization"]
        return {name: (entry["accuracy"], entry["auc"]) for name, entry in sets.items()}

    complete = pick(results)
    baseline = pick(results["baseline"]) if "baseline" in results else {}
    return {name: {"complete": complete[name], **({"baseline": baseline[name]} if baseline else {})}
            for name in complete}


def table(rows: list[str], runs: dict) -> str:
    """Markdown: one line per (row, model), accuracy (AUC) per column and their unweighted means."""
    columns = sorted({column for (_, column) in runs})
    lines = ["| row | model | " + " | ".join(columns) + " | mean acc | mean AUC |",
             "| --- | --- |" + " --- |" * (len(columns) + 2)]
    for row in rows:
        for model in ("complete", "baseline"):
            cells = [runs.get((row, c), {}).get(model) for c in columns]
            done = [c for c in cells if c]
            if not done or (model == "baseline" and row in BASE_MODELS_ONLY):  # the default row's baseline
                continue
            text = [f"{c[0]:.3f} ({c[1]:.3f})" if c else "-" for c in cells]
            mean_acc, mean_auc = (sum(c[i] for c in done) / len(done) if done else float("nan") for i in (0, 1))
            lines.append(f"| {row} | {model} | " + " | ".join(text) + f" | {mean_acc:.3f} | {mean_auc:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default="/work/corpora/generated/corpus")
    parser.add_argument("--heldout", default="/work/corpora/generated/heldout")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="demo")
    parser.add_argument("--rows", default="default,augment,contrastive,others_min")
    parser.add_argument("--folds", default="all", help="'all' generator folders or <class>/<folder>,...")
    parser.add_argument("--heldback", action="store_true", help="Train on the whole corpus, score the held-back sets.")
    parser.add_argument("--out", required=True)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=None, help="train.py's --seed; default: the recipe's.")
    args = parser.parse_args()
    rows = args.rows.split(",")
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        parser.error(f"unknown rows {unknown}; known: {sorted(ROWS)}")
    folds = [None] if args.heldback else (
        generator_folders(args.corpus) if args.folds == "all" else args.folds.split(","))
    jobs = [(row, fold) for row in rows for fold in folds]
    runs, failed = {}, []
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(run_one, args, row, fold): (row, fold) for row, fold in jobs}
        for future in concurrent.futures.as_completed(futures):
            row, fold = futures[future]
            try:
                runs.update({(row, column): cell for column, cell in scores(future.result(), fold).items()})
            except Exception as e:  # one failed run must not lose the others' numbers
                failed.append(str(e))
    print(f"\nrecipe {args.recipe}, seed {'default' if args.seed is None else args.seed}, corpus {args.corpus}: accuracy (AUC)\n")
    print(table(rows, runs))
    for message in failed:
        print(message, file=sys.stderr)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
