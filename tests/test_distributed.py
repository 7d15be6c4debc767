"""Scaling: 2 replicas follow 1 device, two workers on localhost, mixed precision, XLA, and the
library behaviour the training code works around (each pinned, so an upgrade that fixes or
changes it shows up here)."""

import csv
import json
import os
import shutil
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import make_corpus

from dfx_keras import config, configs, models
from dfx_keras.data import corpus as corpus_lib
from dfx_keras.data import pipelines
from dfx_keras.training import distribute, fit, stages

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(backbone="tiny", weights=None, image_size=32, batch_size=12, verbose=0)
# per_folder=32 gives bm_real 24 train / 6 val and complete 60 / 12 images: whole batches of
# 12, which 2 replicas split evenly. (A partial last batch is split unevenly, 4+2 for 6 images,
# and each replica averages its own loss, so that step weighs its images slightly differently.)
PER_FOLDER = 32


def _curve(cfg, name):
    with open(cfg.wd.path("logs", f"{name}.csv"), newline="") as f:
        return np.array([[float(r["loss"]), float(r["val_loss"])] for r in csv.DictReader(f)])


@pytest.fixture(scope="module")
def corpus32(tmp_path_factory):
    root = make_corpus(tmp_path_factory.mktemp("corpus32"), per_folder=PER_FOLDER)
    return corpus_lib.scan_corpus(root), pipelines.FolderSource(root)


@pytest.mark.slow
def test_two_replicas_follow_the_one_device_loss_curve(tmp_path, corpus32):
    """Same global batch and seed: the base and complete stages give the same loss curves on 2
    replicas as on 1 device, to 1e-3 relative (float sums in another order, BatchNorm
    statistics all-reduced). Without synchronized BatchNorm they drift apart by ~10%."""
    corpus, source = corpus32
    bases = config.TrainConfig(workdir=str(tmp_path / "bases"), epochs=1, **TINY)
    stages.train_base_models(bases, corpus, source, ("dm_generated", "gan_generated", "real"),
                             distribute.get_strategy("one_device"))
    curves = {}
    for strategy in ("one_device", "mirrored"):
        cfg = config.TrainConfig(workdir=str(tmp_path / strategy), epochs=3, **TINY)
        dist = distribute.get_strategy(strategy)
        stages.train_base_model(cfg, corpus, source, "real", dist)
        base_curve = _curve(cfg, "bm_real")
        shutil.rmtree(cfg.wd.path("models"))
        shutil.copytree(bases.wd.path("models"), cfg.wd.path("models"))  # the same frozen base models for both
        stages.train_complete_model(cfg, corpus, source, dist)
        curves[dist.num_replicas_in_sync] = base_curve, _curve(cfg, "complete")
    for one, two in zip(curves[1], curves[2]):
        assert one.shape == (3, 2)
        np.testing.assert_allclose(two, one, rtol=1e-3)


@pytest.mark.slow
def test_a_contrastive_base_model_follows_the_one_device_curve_on_two_replicas(tmp_path, corpus32):
    """The pair stream is the same for every replica layout (seeded, drawn once), so the
    contrastive loss curve and the centroids' validation accuracy match one device's."""
    corpus, source = corpus32
    runs = {}
    for strategy in ("one_device", "mirrored"):
        cfg = config.TrainConfig(workdir=str(tmp_path / strategy), epochs=2, base_objective="contrastive", **TINY)
        summary = stages.train_base_model(cfg, corpus, source, "real", distribute.get_strategy(strategy))
        runs[strategy] = _curve(cfg, "bm_real"), summary["val_centroid_accuracy"]
    assert runs["one_device"][0].shape == (2, 2)
    np.testing.assert_allclose(runs["mirrored"][0], runs["one_device"][0], rtol=1e-3)
    assert runs["mirrored"][1] == pytest.approx(runs["one_device"][1], abs=0.11)  # one val image of ~10 may flip
    assert not tf.distribute.has_strategy()


def test_the_global_batch_must_split_evenly_across_replicas():
    with pytest.raises(distribute.SettingsError, match="multiple of the 2 replicas"):
        distribute.check_batch_size(7, distribute.get_strategy("mirrored"))
    distribute.check_batch_size(8, distribute.get_strategy("mirrored"))


def _flag_lines(name):
    with open(configs.flagfile(name)) as f:
        return [line.strip() for line in f if line.startswith("--") and not line.startswith("--workdir")]


def test_fast_flagfile_is_the_paper_recipe_with_mixed_float16_and_xla(tmp_path):
    assert _flag_lines("dfx_densenet121_fast") == _flag_lines("dfx_densenet121") + [
        "--precision=mixed_float16", "--jit_compile"]
    result = subprocess.run([sys.executable, os.path.join(REPO, "train.py"), f"--workdir={tmp_path}",
                             "--flagfile=dfx_keras/configs/dfx_densenet121_fast.flags", "--data_dir=/no/such/corpus"],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode != 0 and "--data_dir not found" in result.stderr  # every flag parsed


def _distributed_fit(dataset, strategy):
    with strategy.scope():
        model = fit.compile_model(models.build_base_model("tiny", 32, None), config.TrainConfig(workdir=""))
    model.fit(dataset, epochs=1, verbose=0)


def _images(n):
    return tf.data.Dataset.from_tensor_slices((tf.random.uniform([n, 32, 32, 3], 0, 255), tf.range(n) % 2)).batch(8)


@pytest.mark.upstream
@pytest.mark.parametrize("n", [3, 17])
def test_uneven_replica_slices_still_break_keras_so_batches_are_trimmed(n):
    """3 images (< one global batch): Keras 3 builds the model by averaging the first batch's
    slices, [2] and [1] (keras-team/keras#19246). 17: the last batch of 1 leaves replica 2 an
    empty slice, which oneDNN's CPU convolution rejects. ``whole_replica_batches`` cuts each
    batch to a multiple of the replica count."""
    strategy = distribute.get_strategy("mirrored")
    if n == 3 or os.environ.get("TF_ENABLE_ONEDNN_OPTS") != "0":
        with pytest.raises(tf.errors.InvalidArgumentError):
            _distributed_fit(_images(n), strategy)
    trimmed = distribute.whole_replica_batches(_images(n), 2)
    assert [len(labels) for _, labels in trimmed] == {3: [2], 17: [8, 8]}[n]
    _distributed_fit(trimmed, strategy)


@pytest.mark.upstream
def test_xla_under_tf_distribute_still_fails_in_keras_so_it_is_dropped(tmp_path):
    """keras-team/keras#19005: a jit-compiled step under MirroredStrategy reads replica 2's
    variables from device 1. Keras' own "auto" keeps XLA off there; so does ``jit_compile``."""
    strategy = distribute.get_strategy("mirrored")
    with strategy.scope():
        model = models.build_base_model("tiny", 32, None)
        model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      jit_compile=True)
    with pytest.raises(tf.errors.InvalidArgumentError, match="different_device"):
        model.fit(_images(16), epochs=1, verbose=0)
    cfg = config.TrainConfig(workdir=str(tmp_path), jit_compile=True)
    assert fit.jit_compile(cfg, replicas=2) is False and fit.jit_compile(cfg, replicas=1) is True


@pytest.mark.upstream
def test_keras_advances_the_optimizer_past_the_end_of_an_unknown_length_epoch():
    """Keras 3 ends an epoch of unknown length (filter, ignore_errors) by probing past its end,
    and the probe bumps the optimizer's step counter (Adam's bias correction) without an update:
    3 epochs of 2 batches leave 9 steps. ``fit`` therefore feeds endless streams with a fixed
    number of steps per epoch."""
    data = tf.data.Dataset.from_tensor_slices((np.ones((16, 4), np.float32), np.ones((16, 1), np.float32))).batch(8)
    steps = {}
    for name, ds in (("known", data), ("unknown", data.filter(lambda x, y: True))):
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        model.compile(optimizer="adam", loss="mse")
        model.fit(ds, epochs=3, verbose=0)
        steps[name] = int(model.optimizer.iterations.numpy())
    assert steps == {"known": 6, "unknown": 9}


def test_a_reshuffled_dataset_orders_each_iterator_anew_but_seeded_passes_replay():
    """``reshuffle_each_iteration`` draws a new order per iterator, and Keras and tf.distribute
    create iterators differently (one device, several, features or images), so the same seed
    gave them different orders; ``seeded_passes`` replays the same stream for every iterator."""
    reshuffled = tf.data.Dataset.range(20).shuffle(20, seed=3, reshuffle_each_iteration=True)
    assert list(reshuffled.as_numpy_iterator()) != list(reshuffled.as_numpy_iterator())
    passes = pipelines.seeded_passes(20, seed=3).take(40)
    first, again = list(passes.as_numpy_iterator()), list(passes.as_numpy_iterator())
    assert first == again and sorted(first[:20]) == list(range(20)) and first[:20] != first[20:]


TWO_MIRRORED_STRATEGIES = """
import numpy as np, keras, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
for width in (3, 5):
    with tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")]).scope():
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(width), keras.layers.Dense(1)])
        model.compile(optimizer="sgd", loss="mse")
    model.fit(np.ones((16, 4), np.float32), np.ones((16, 1), np.float32), batch_size=8, verbose=0)
"""


@pytest.mark.upstream
def test_a_second_mirrored_strategy_in_a_process_aborts_so_there_is_one_per_process():
    """Every MirroredStrategy numbers its collective ops from the same keys: the second one's
    all-reduces meet the first one's ("Shape mismatch in the collective instance")."""
    result = subprocess.run([sys.executable, "-c", TWO_MIRRORED_STRATEGIES], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode != 0 and "Shape mismatch in the collective instance" in result.stderr
    assert distribute.get_strategy("mirrored") is distribute.get_strategy("mirrored")


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_trains_with_float32_logits_and_loss(tmp_path, corpus32, precision):
    """Both stages under a mixed policy (bf16 is the CPU one; float16 runs on CPUs too, slowly):
    the convolutions compute in 16 bits, logits and loss stay float32, the cached features
    are float32, and the global policy is float32 again afterwards."""
    corpus, source = corpus32
    cfg = config.TrainConfig(workdir=str(tmp_path), epochs=1, precision=precision, **TINY)
    strategy = distribute.get_strategy("one_device")
    stages.train_base_models(cfg, corpus, source, ("dm_generated", "gan_generated", "real"), strategy)
    assert all(np.isfinite(cfg.wd.stage_summaries()[name]["val_loss"]) for name in ("bm_dm", "bm_gan", "bm_real"))
    assert np.isfinite(stages.train_complete_model(cfg, corpus, source, strategy)["val_loss"])
    assert keras.mixed_precision.global_policy().name == "float32"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        keras.models.load_model(cfg.wd.path("models", "bm_dm.keras"))  # compiled, as Keras does by default
        complete = models.load_model(cfg.wd.path("models", "complete.keras"))
    skipped = [str(w.message) for w in caught if "Skipping variable loading for optimizer" in str(w.message)]
    assert len(skipped) == (precision == "mixed_float16")  # Keras' surprise; models.load_model avoids it
    conv = models.head_of(complete).get_layer("conv1")
    assert conv.dtype_policy.name == precision and conv.compute_dtype != "float32"
    images, labels = next(iter(pipelines.image_dataset(source, corpus.samples[:4], 32, 4,
                                                       targets=[s.label for s in corpus.samples[:4]])))
    logits = complete(images)
    assert logits.dtype == tf.float32
    assert keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, logits).dtype == tf.float32
    features = [f for f in os.listdir(cfg.wd.path("features")) if f.endswith(".npz")]
    assert features and all(np.load(cfg.wd.path("features", f))["features"].dtype == np.float32 for f in features)


@pytest.mark.slow
def test_jit_compile_trains_base_models_on_one_device(tmp_path, corpus32):
    """Two base models, the second on the first one's XLA-compiled steps (``training.reuse``)."""
    corpus, source = corpus32
    cfg = config.TrainConfig(workdir=str(tmp_path), epochs=1, jit_compile=True, **TINY)
    stages.train_base_models(cfg, corpus, source, ("gan_generated", "real"), distribute.get_strategy())
    assert all(np.isfinite(cfg.wd.stage_summaries()[name]["val_loss"]) for name in ("bm_gan", "bm_real"))


@pytest.mark.slow
def test_two_workers_on_localhost_train_in_step_and_only_the_chief_writes(tmp_path, corpus32):
    """``--strategy=multi_worker`` with TF_CONFIG: two train.py processes run every stage in
    step (2 replicas in sync, one per process). Both exit 0; the models, logs, features,
    results and export are written once, by the chief; the other worker's scratch copies are
    deleted; and the global batches are those of one device, so bm_real's first epoch has the
    one-device loss."""
    corpus, source = corpus32
    work = tmp_path / "work"
    cluster = distribute.localhost_cluster(2)
    workers = []
    for index in range(2):
        scratch = tmp_path / f"tmp{index}"
        scratch.mkdir()
        env = {**os.environ, "TMPDIR": str(scratch),
               "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        workers.append(subprocess.Popen(
            [sys.executable, os.path.join(REPO, "train.py"), f"--workdir={work}", f"--data_dir={source.root}",
             "--strategy=multi_worker", "--epochs=1", "--backbone=tiny", "--weights=none", "--image_size=32",
             "--batch_size=12"],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [worker.communicate(timeout=600) for worker in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n\n".join(
        f"worker {i} (exit {w.returncode}):\n{err[-3000:]}" for i, (w, (_, err)) in enumerate(zip(workers, outputs)))
    assert all("2 replica(s)" in out for out, _ in outputs)
    assert sorted(os.listdir(work / "models")) == ["bm_dm.keras", "bm_gan.keras", "bm_real.keras", "calibration.json",
                                                   "complete.keras"]  # calibrated once, by the chief
    for name in ("bm_dm", "bm_gan", "bm_real", "complete"):
        with open(work / "logs" / f"{name}.csv", newline="") as f:
            assert [row["epoch"] for row in csv.DictReader(f)] == ["0"]  # one writer, one row
    assert len(os.listdir(work / "features")) == 2 and len(os.listdir(work / "export" / "dfx")) == 1
    assert "SavedModel" in outputs[0][0] and "SavedModel" not in outputs[1][0]
    assert not list((tmp_path / "tmp1").iterdir())  # the non-chief's scratch files are deleted
    assert not [p.name for p in work.rglob("*") if "tmp" in p.name]  # no half-written or racing files
    alone = config.TrainConfig(workdir=str(tmp_path / "alone"), epochs=1, **TINY)
    stages.train_base_model(alone, corpus, source, "real", distribute.get_strategy("one_device"))
    np.testing.assert_allclose(_curve(config.TrainConfig(workdir=str(work)), "bm_real"), _curve(alone, "bm_real"),
                               rtol=1e-3)


@pytest.mark.parametrize("cluster, task, expected", [
    ({"worker": ["a:1", "b:1"]}, ("worker", 1), (2, 1)),
    ({"chief": ["c:1"], "worker": ["a:1", "b:1"]}, ("chief", 0), (3, 0)),
    ({"chief": ["c:1"], "worker": ["a:1", "b:1"]}, ("worker", 1), (3, 2)),
    ({"worker": ["a:1"]}, ("worker", 0), None),
])
def test_each_worker_gets_its_own_share_numbered_chief_first(cluster, task, expected):
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(cluster), task_type=task[0], task_id=task[1])
    assert distribute.cluster_share(resolver) == expected
