"""tf.data pipelines: realised composition, order, resizing and unreadable images."""

import os
import time
from collections import Counter

import numpy as np
import tensorflow as tf
from conftest import make_corpus

from dfx_keras.config import TrainConfig
from dfx_keras.data import corpus as corpus_lib
from dfx_keras.data import pipelines
from dfx_keras.training.stages import base_model_data


def _labels(ds, count=None):
    """Targets of a finite dataset, or of the first ``count`` images of an endless one."""
    batches = ds if count is None else ds.take(-(-count // next(iter(ds))[1].shape[0]))
    return np.concatenate([batch[1].numpy() for batch in batches])[:count]


def test_base_model_pipeline_realises_the_expected_composition(tmp_path):
    """What the tf.data pipeline actually yields matches the unbalanced set of DESIGN.md 1.2."""
    root = make_corpus(tmp_path / "c", per_folder=60, size=(16, 16))
    corpus = corpus_lib.scan_corpus(root)
    pool0 = corpus.pool(corpus_lib.BASE_POOL)
    folders = corpus_lib.by_folder(pool0)
    cfg = TrainConfig(workdir=str(tmp_path / "w"), image_size=16, batch_size=8, others_fraction=0.1, val_fraction=0.2)
    for main, name in enumerate(("dm_generated", "gan_generated", "real")):
        train_ds, val_ds, train, val = base_model_data(cfg, corpus, pipelines.FolderSource(root), name)
        realised = Counter(_labels(train_ds, len(train)).tolist()) + Counter(_labels(val_ds).tolist())
        expected_main = sum(len(g) for (label, _), g in folders.items() if label == main)
        expected_others = sum(corpus_lib.folder_quota(len(g), 0.1) for (label, _), g in folders.items() if label != main)
        assert realised == {1: expected_main, 0: expected_others}
        assert abs(len(val) / (len(train) + len(val)) - 0.2) < 0.1


def test_shuffle_is_seeded_and_reshuffles_each_epoch(small_corpus):
    """A seeded (training) dataset is an endless stream of passes, each a new permutation; every
    iterator replays the same stream (see ``pipelines.seeded_passes``)."""
    corpus = corpus_lib.scan_corpus(small_corpus)
    samples = corpus.samples
    source = pipelines.FolderSource(small_corpus)

    def order(seed):
        ds = pipelines.image_dataset(source, samples, 8, 4, with_paths=True, shuffle_seed=seed)
        stream = [p.decode() for _, paths in ds.take(2 * len(samples) // 4) for p in paths.numpy()]
        return [stream[:len(samples)], stream[len(samples):]]

    first, again = order(7), order(7)
    assert first == again and first[0] != first[1]
    assert sorted(first[0]) == sorted(s.path for s in samples)


def test_images_are_squashed_to_the_model_size_in_range(small_corpus):
    corpus = corpus_lib.scan_corpus(small_corpus)
    ds = pipelines.image_dataset(pipelines.FolderSource(small_corpus), corpus.samples[:5], 24, 5,
                                 targets=[s.label for s in corpus.samples[:5]])
    images, labels = next(iter(ds))
    assert images.shape == (5, 24, 24, 3) and images.dtype == tf.float32
    assert 0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 255


def test_antialiased_resize_averages_instead_of_sampling():
    """Downscaling a 1-pixel checkerboard by 4 must give flat grey (antialias), not aliasing."""
    board = (np.indices((64, 64)).sum(axis=0) % 2 * 255).astype(np.float32)
    small = pipelines.resize(tf.constant(np.dstack([board] * 3)), 16).numpy()
    assert abs(small.mean() - 127.5) < 1 and small.std() < 2


def test_an_image_broken_after_the_scan_is_skipped_not_fatal(small_corpus):
    corpus = corpus_lib.scan_corpus(small_corpus)
    victim = corpus.samples[3]
    with open(os.path.join(small_corpus, victim.path), "wb") as f:
        f.write(b"garbage")
    ds = pipelines.image_dataset(pipelines.FolderSource(small_corpus), corpus.samples, 8, 4, with_paths=True)
    read = [p.decode() for _, paths in ds for p in paths.numpy()]
    assert victim.path not in read and len(read) == len(corpus.samples) - 1


def test_resizing_the_8_bit_image_equals_resizing_its_float_copy(small_corpus):
    """decode_and_resize skips the float32 copy of the full-size image (1.7x faster pipeline)."""
    corpus = corpus_lib.scan_corpus(small_corpus)
    encoded = tf.io.read_file(os.path.join(small_corpus, corpus.samples[0].path))
    fast = pipelines.decode_and_resize(encoded, 24)
    assert fast.dtype == tf.float32
    np.testing.assert_array_equal(fast.numpy(), pipelines.resize(pipelines.decode_image(encoded), 24).numpy())


def _paths(ds, batches):
    return [p.decode() for _, paths in ds.take(batches) for p in paths.numpy()]


def test_workers_read_only_their_slices_which_together_are_the_one_device_batches(small_corpus):
    """A multi-worker training stream (``share``): worker k of 2 reads elements [k*B/2, (k+1)*B/2)
    of every one-device global batch, and nothing else, so the global batches (and the loss
    curve) do not change while each worker decodes half the images. TensorFlow must not shard
    such a stream again (OFF); shared pipelines keep DATA."""
    samples = corpus_lib.scan_corpus(small_corpus).samples
    source, batch = pipelines.FolderSource(small_corpus), 6
    make = lambda share: pipelines.image_dataset(source, samples, 8, batch, shuffle_seed=3, with_paths=True,
                                                 share=share)
    one = _paths(make(None), 8)
    workers = [_paths(make((2, k)), 4) for k in range(2)]  # 4 global-sized batches = 8 steps' slices
    half = batch // 2
    for step in range(8):
        assert one[step * batch:(step + 1) * batch] == sum((w[step * half:(step + 1) * half] for w in workers), [])
    policy = tf.data.experimental.AutoShardPolicy
    assert make((2, 0)).options().experimental_distribute.auto_shard_policy == policy.OFF
    assert make(None).options().experimental_distribute.auto_shard_policy == policy.DATA


def test_with_cached_images_each_worker_caches_its_own_half(small_corpus):
    samples = corpus_lib.scan_corpus(small_corpus).samples
    source = pipelines.FolderSource(small_corpus)
    halves = [set(_paths(pipelines.image_dataset(source, samples, 8, 4, shuffle_seed=3, with_paths=True, cache=True,
                                                 share=(2, k)), 2 * len(samples) // 4)) for k in range(2)]
    assert not halves[0] & halves[1] and halves[0] | halves[1] == {s.path for s in samples}
    assert abs(len(halves[0]) - len(halves[1])) <= 1


def test_an_image_the_decoder_refuses_is_named_and_counted_before_training(tmp_path, caplog):
    """A PNG with right chunk checksums and corrupt data passes the scan (it checks CRCs only);
    inside a training stream it used to be dropped without a word."""
    from conftest import png_declaring

    from dfx_keras import run

    data = make_corpus(tmp_path / "c", per_folder=4)
    name = next(p for p in (f"real/CelebA/corrupt {i}.png" for i in range(100))
                if corpus_lib.pool_of(p) == corpus_lib.BASE_POOL)
    (tmp_path / "c" / name).write_bytes(png_declaring(16, 16, idat=b"not zlib data"))
    assert corpus_lib.check_image(str(tmp_path / "c" / name)) is None
    corpus, _ = run.open_data(TrainConfig(workdir=str(tmp_path / "w")), data)
    assert name not in {s.path for s in corpus.samples} and len(corpus.samples) == 24
    assert corpus.skipped == [(name, "TensorFlow cannot decode it")]
    assert any(name in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


def test_a_decode_needed_only_by_a_control_dependency_never_runs():
    """TensorFlow 2.21 prunes it, in tf.data functions and tf.functions alike: bad data passes.
    Checks must use the decode's output (``pipelines.decoded_shape``)."""
    from conftest import png_declaring

    bad = png_declaring(16, 16, idat=b"not zlib data")

    def control_only(encoded):
        with tf.control_dependencies([pipelines.decode_uint8(encoded)]):
            return tf.identity(encoded)

    ds = tf.data.Dataset.from_tensor_slices([bad])
    assert len(list(ds.map(control_only).ignore_errors())) == 1  # not dropped: never decoded
    assert len(list(ds.map(pipelines.decoded_shape).ignore_errors())) == 0
    tf.function(control_only)(tf.constant(bad))  # no error either


def test_evaluation_drops_an_undecodable_image_before_a_model_that_decodes_itself(tmp_path):
    """One bad image would fail the SavedModel's whole batch: it must be dropped, and named, first."""
    from conftest import png_declaring

    from dfx_keras.evaluation import protocols

    data = make_corpus(tmp_path / "c", per_folder=2)
    (tmp_path / "c" / "real" / "CelebA" / "corrupt.png").write_bytes(png_declaring(16, 16, idat=b"not zlib data"))
    samples = corpus_lib.scan_corpus(data).samples
    assert "real/CelebA/corrupt.png" in {s.path for s in samples}  # the scan cannot see it
    ds = protocols.bytes_dataset(pipelines.FolderSource(data), samples, batch_size=5)
    read = [p.decode() for _, paths in ds for p in paths.numpy()]
    assert len(read) == len(samples) - 1 and "real/CelebA/corrupt.png" not in read



def _deletion_wait(ds: tf.data.Dataset, lifetime: float) -> float:
    """Seconds that deleting an iterator of ``ds`` blocks, after ``lifetime`` seconds of use."""
    iterator = iter(ds)
    next(iterator)
    start = time.perf_counter()
    while time.perf_counter() - start < lifetime:
        next(iterator)
    start = time.perf_counter()
    del iterator
    return time.perf_counter() - start


def test_tensorflow_blocks_deleting_an_autotuned_iterator_and_finish_avoids_it():
    """TF 2.21 surprise behind ``pipelines.finish``: deleting an autotuned iterator often waits
    for the autotuning thread's next wake-up, 10 ms x (2^k - 1) after the first batch. Used for
    70 ms, about 4 in 10 block until ~150 ms (measured). Iterators of our pipelines never wait.
    If the first assertion fails, TensorFlow fixed it and ``finish`` can keep autotuning on."""
    endless = tf.data.Dataset.range(10**9).map(lambda x: x + 1, num_parallel_calls=tf.data.AUTOTUNE)
    assert any(_deletion_wait(endless.prefetch(tf.data.AUTOTUNE), 0.07) > 0.05 for _ in range(40))
    ours = [_deletion_wait(pipelines.finish(endless), 0.07) for _ in range(15)]
    assert np.median(ours) < 0.02, ours
    assert not pipelines.finish(endless).options().autotune.enabled
    assert pipelines.finish(endless).options().autotune.initial_parallelism == os.cpu_count()
