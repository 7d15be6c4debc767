"""Leave-generators-out: folders kept out of every stage, listed in holdout.csv, reported by evaluate.py."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import make_corpus
from dfx_keras.classes import REAL
from dfx_keras.data import corpus as corpus_lib
from dfx_keras.data import holdout
from dfx_keras.evaluation import protocols

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKER = os.path.join(REPO, "..", "shared", "tools", "check_workdir.py")
TINY = ["--backbone=tiny", "--weights=none", "--image_size=32", "--batch_size=8"]
HELD = ["gan_generated/StyleGAN2", "real/Others"]


def _cli(script, *args, timeout=600):
    return subprocess.run([sys.executable, os.path.join(REPO, script), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_split_holdout_takes_the_folders_out_and_wrong_names_list_what_exists(tmp_path):
    corpus = corpus_lib.scan_corpus(make_corpus(tmp_path / "c", per_folder=3))
    kept, held = holdout.split_holdout(corpus, holdout.normalize([" gan_generated/StyleGAN2/ ", "real/Others", ""]))
    assert {holdout.folder_name(s) for s in held} == set(HELD) and len(held) == 6
    assert len(kept.samples) == len(corpus.samples) - 6 and not set(held) & set(kept.samples)
    assert kept.skipped == corpus.skipped  # held out is not skipped
    with pytest.raises(corpus_lib.CorpusError) as error:
        holdout.split_holdout(corpus, ["gan_generated/StyleGAN3"])
    message = str(error.value)
    assert "\n" not in message and "no folder gan_generated/StyleGAN3" in message
    assert all(name in message for name in ("gan_generated/Big-GAN x", "dm_generated/Latent Diffusion", "real/CelebA"))
    with pytest.raises(corpus_lib.CorpusError, match="every folder of real"):
        holdout.split_holdout(corpus, ["real/CelebA", "real/Others"])
    assert holdout.folders_on_disk(corpus.root) == sorted({holdout.folder_name(s) for s in corpus.samples})


def test_holdout_csv_has_the_split_columns_and_reads_back(tmp_path):
    corpus = corpus_lib.scan_corpus(make_corpus(tmp_path / "c", per_folder=2))
    _, held = holdout.split_holdout(corpus, HELD)
    path = str(tmp_path / "holdout.csv")
    holdout.write_holdout_csv(held, path)
    rows = _rows(path)
    assert list(rows[0]) == ["label", "image_path", "model"] and {r["label"] for r in rows} == {"holdout"}
    assert holdout.read_holdout_csv(path) == held
    assert holdout.read_holdout_csv(str(tmp_path / "absent.csv")) == []


def test_each_held_out_folder_meets_as_many_test_pool_images_of_the_other_side(tmp_path):
    corpus = corpus_lib.scan_corpus(make_corpus(tmp_path / "c", per_folder=20))
    kept, held = holdout.split_holdout(corpus, HELD)
    test = kept.pool(corpus_lib.TEST_POOL)
    sets = protocols.holdout_sets(test, held, seed=42)
    assert list(sets) == ["gan_generated/StyleGAN2", "real/Others"]
    n_real, n_fake = sum(s.label == REAL for s in test), sum(s.label != REAL for s in test)
    gan, real = sets["gan_generated/StyleGAN2"], sets["real/Others"]
    assert sum(s.architecture == "StyleGAN2" for s in gan) == sum(s.label == REAL for s in gan) == min(20, n_real)
    assert sum(s.architecture == "Others" for s in real) == sum(s.label != REAL for s in real) == min(20, n_fake)
    assert all(s in test for s in gan + real if holdout.folder_name(s) not in HELD)  # opponents: test pool only
    assert protocols.holdout_sets(test, held, seed=42) == sets  # seeded
    assert protocols.holdout_sets(test, held, seed=1) != sets


@pytest.mark.slow
def test_a_holdout_run_keeps_the_folders_out_and_evaluate_reports_them(tmp_path):
    data = make_corpus(tmp_path / "corpus", per_folder=16)
    work = str(tmp_path / "work")
    result = _cli("train.py", f"--workdir={work}", f"--data_dir={data}", "--epochs=1", *TINY,
                  f"--holdout_architectures={','.join(HELD)}")
    assert result.returncode == 0, result.stderr[-3000:]
    split, held = _rows(f"{work}/split.csv"), _rows(f"{work}/holdout.csv")
    assert not any(r["image_path"].startswith(tuple(HELD)) for r in split)  # no held-out image in split.csv
    assert len(held) == 32 and all(r["image_path"].startswith(tuple(HELD)) for r in held)
    assert len(split) + len(held) == 96
    stages = json.load(open(f"{work}/logs/stages.json"))
    for name in ("bm_dm", "bm_gan", "bm_real"):
        assert not set(stages[name]["folder_images"]) & set(HELD)
    trained = json.load(open(f"{work}/results/results.json"))
    assert set(trained["holdout"]) == {*HELD, "mean"}
    assert "held-out folders (2) mean binary accuracy" in result.stdout
    check = subprocess.run([sys.executable, CHECKER, work], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout

    evaluated = _cli("evaluate.py", f"--workdir={work}", "--protocols=raw,holdout", f"--results_dir={tmp_path / 'r'}")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    results = json.load(open(tmp_path / "r" / "results.json"))
    for name in HELD:
        block = results["holdout"][name]
        assert {"accuracy", "auc", "ap", "n"} <= set(block) and block["n"] == 2 * block["n_holdout"] > 0
    mean = results["holdout"]["mean"]
    assert mean["accuracy"] == pytest.approx(np.mean([results["holdout"][n]["accuracy"] for n in HELD]))
    assert mean["n"] == sum(results["holdout"][n]["n"] for n in HELD)
    assert results["holdout"] == trained["holdout"]  # the same seeded sets at training and afterwards
    assert not set(results["per_architecture"]) & set(HELD)  # the test pool has no held-out image
    assert results["data"]["holdout_folders"] == HELD
    rows = [r for r in _rows(tmp_path / "r" / "predictions.csv") if r["protocol"] == "holdout"]
    assert len(rows) == mean["n"] and {r["architecture"] for r in rows} >= {"StyleGAN2", "Others"}
    markdown = open(tmp_path / "r" / "results.md").read()
    assert "## Held-out folders" in markdown and "| gan_generated/StyleGAN2 |" in markdown

    other = _cli("train.py", f"--workdir={work}", f"--data_dir={data}", "--epochs=1", *TINY, "--stage=baseline",
                 "--holdout_architectures=gan_generated/StyleGAN2")
    assert other.returncode != 0
    assert "holds models trained holding out gan_generated/StyleGAN2, real/Others" in other.stderr
    assert "Traceback" not in other.stderr and not os.path.exists(f"{work}/models/baseline.keras")


def test_a_wrong_folder_name_fails_in_one_line_before_any_work(tmp_path):
    data = make_corpus(tmp_path / "corpus", per_folder=2)
    work = tmp_path / "work"
    result = _cli("train.py", f"--workdir={work}", f"--data_dir={data}", *TINY,
                  "--holdout_architectures=gan_generated/StyleGAN3", timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    line = next(line for line in result.stderr.splitlines() if "no folder gan_generated/StyleGAN3" in line)
    assert "gan_generated/StyleGAN2" in line and "real/CelebA" in line  # what exists, on the same line
    assert not os.path.exists(work / "split.csv") and not os.path.exists(work / "flags.txt")


def test_evaluate_asks_for_a_holdout_workdir_when_the_holdout_protocol_is_named(tmp_path):
    work = tmp_path / "w"
    os.makedirs(work / "models")
    (work / "models" / "complete.keras").write_bytes(b"")
    result = _cli("evaluate.py", f"--workdir={work}", f"--data_dir={tmp_path}", "--protocols=holdout", timeout=120)
    assert result.returncode != 0 and "--holdout_architectures" in result.stderr and "Traceback" not in result.stderr
