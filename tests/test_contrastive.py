"""DeepFeatureX-SN's contrastive base models: the loss, the pairs, the centroid head, a short run."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import make_corpus
from dfx_keras import config, contrastive, models
from dfx_keras.classes import class_id
from dfx_keras.data import corpus as corpus_lib
from dfx_keras.data import pipelines
from dfx_keras.training import distribute, fit, pairs, stages

TINY = dict(backbone="tiny", weights=None, image_size=32, batch_size=8, verbose=0)


def numpy_contrastive_loss(a, b, y, margin=2.0):
    """The follow-up's loss, written out: mean(0.5 (1-y) d^2 + 0.5 y max(0, m-d)^2)."""
    d = np.sqrt(((a - b) ** 2).sum(axis=1))
    return np.mean(0.5 * (1 - y) * d ** 2 + 0.5 * y * np.maximum(0.0, margin - d) ** 2)


def test_the_loss_equals_the_numpy_formula_on_fixed_pairs():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 5)).astype(np.float32)
    b = a + rng.normal(scale=[[0.1], [0.5], [3.0], [0.1], [0.5], [3.0]], size=(6, 5)).astype(np.float32)
    y = np.array([0, 0, 0, 1, 1, 1], np.int32)  # near, mid, far; same then other side
    distances = contrastive.PairDistance()([a, b])
    loss = keras.losses.get(contrastive.contrastive_loss)(y, distances)
    assert float(tf.reduce_mean(loss)) == pytest.approx(numpy_contrastive_loss(a, b, y), rel=1e-5)
    d = np.sqrt(((a - b) ** 2).sum(axis=1))
    assert d[5] > 2.0 and float(loss[5]) == 0.0  # an other-side pair beyond the margin costs nothing
    assert float(loss[2]) == pytest.approx(0.5 * d[2] ** 2, rel=1e-5)


def test_pair_labels_are_about_half_same_and_partners_match_their_label():
    is_main = np.arange(3000) % 3 == 0  # a third main, as before balancing
    partners, labels = pairs.draw_partners(is_main, seed=7)
    assert abs(labels.mean() - 0.5) < 0.03
    assert np.array_equal(is_main[partners] == is_main, labels == contrastive.SAME)
    assert not np.any(partners == np.arange(len(is_main)))  # never the image itself
    again, again_labels = pairs.draw_partners(is_main, seed=7)
    assert np.array_equal(again, partners) and np.array_equal(again_labels, labels)  # drawn once: seeded
    assert not np.array_equal(pairs.draw_partners(is_main, seed=8)[0], partners)
    lone = pairs.draw_partners(np.array([True, False, False]), seed=0)
    assert lone[1][0] == contrastive.OTHER and lone[0][0] in (1, 2)  # a lone main image has no same-side partner


def test_the_balanced_set_has_as_many_main_images_as_others(tmp_path):
    corpus = corpus_lib.scan_corpus(make_corpus(tmp_path / "c", per_folder=10))
    for main in range(3):
        subset = pairs.balanced_main_vs_rest(corpus.samples, main, seed=1)
        n_main = sum(s.label == main for s in subset)
        assert n_main == len(subset) - n_main == 20  # 20 main images, 40 others down-sampled


def test_pair_dataset_reads_each_image_with_its_partner_in_a_seeded_order(tmp_path):
    data = make_corpus(tmp_path / "c", per_folder=4)
    samples = corpus_lib.scan_corpus(data).samples
    partners, labels = pairs.draw_partners(np.array([s.label == 2 for s in samples]), seed=0)
    source = pipelines.FolderSource(data)
    images = {s.path: pipelines.decode_and_resize(tf.io.read_file(os.path.join(data, s.path)), 16).numpy()
              for s in samples}
    (first, second), y = next(iter(pairs.pair_dataset(source, samples, partners, labels, 16, len(samples))))
    for i, s in enumerate(samples):  # one pass in sample order
        np.testing.assert_array_equal(first[i], images[s.path])
        np.testing.assert_array_equal(second[i], images[samples[partners[i]].path])
    np.testing.assert_array_equal(y, labels)
    streams = [pairs.pair_dataset(source, samples, partners, labels, 16, 8, shuffle_seed=3) for _ in range(2)]
    (a, _), ya = next(iter(streams[0]))
    (b, _), yb = next(iter(streams[1]))
    np.testing.assert_array_equal(a, b)  # every iterator replays the same order
    np.testing.assert_array_equal(ya, yb)


def test_the_centroid_head_survives_save_and_safe_load_and_gives_nearest_centroid_logits(tmp_path):
    embedder = models.build_feature_extractor("tiny", 32, None, name="bm_real_features")
    rest, main = np.zeros(embedder.output_shape[-1]), np.full(embedder.output_shape[-1], 0.5)
    model = contrastive.attach_centroids(embedder, rest, main, "bm_real")
    path = str(tmp_path / "bm_real.keras")
    fit.save_model(model, path)
    loaded = models.load_model(path)  # safe_mode=True
    np.testing.assert_array_equal(loaded.get_layer("logits").get_weights()[0], np.stack([rest, main]))
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    features = models.feature_extractor(loaded)(images)[0].numpy()  # [features, the centroid logits]
    expected = -np.stack([np.linalg.norm(features - rest, axis=1), np.linalg.norm(features - main, axis=1)], axis=1)
    np.testing.assert_allclose(loaded(images).numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(loaded(images).numpy(), model(images).numpy(), rtol=1e-6)
    assert loaded.output_shape == (None, 2) and not loaded.get_layer("logits").trainable_weights


@pytest.mark.slow
def test_a_short_run_on_separable_data_puts_same_class_images_closer_than_other_class_ones(tmp_path):
    data = make_corpus(tmp_path / "corpus", per_folder=16)
    corpus, source = corpus_lib.scan_corpus(data), pipelines.FolderSource(data)
    cfg = config.TrainConfig(workdir=str(tmp_path / "w"), epochs=6, learning_rate=3e-3, weight_decay=1e-4,
                             base_objective="contrastive", **TINY)
    summary = stages.train_base_model(cfg, corpus, source, "real", distribute.get_strategy("one_device"))
    recorded = cfg.wd.stage_summaries()["bm_real"]
    assert recorded == summary and recorded["objective"] == "contrastive" and recorded["margin"] == 2.0
    assert recorded["main_images"] + recorded["other_images"] == recorded["train_images"]  # of a balanced set, 80%
    assert np.isfinite(recorded["val_loss"]) and recorded["val_centroid_accuracy"] == recorded["val_accuracy"]
    model = models.load_model(cfg.wd.model("bm_real"))
    samples = corpus.pool(corpus_lib.BASE_POOL)
    is_real = np.array([s.label == class_id("real") for s in samples])
    embedder = keras.Model(model.input, model.get_layer(models.FEATURES_LAYER).output)
    features, _ = pairs.embed(embedder, pipelines.image_dataset(
        source, samples, 32, 16, targets=is_real.astype(int).tolist()))
    distances = np.linalg.norm(features[:, None] - features[None], axis=-1)
    same = is_real[:, None] == is_real[None]
    off_diagonal = ~np.eye(len(samples), dtype=bool)
    assert distances[same & off_diagonal].mean() < 0.7 * distances[~same].mean()
    images = np.stack([pipelines.decode_and_resize(tf.io.read_file(os.path.join(data, s.path)), 32) for s in samples])
    probabilities = tf.nn.softmax(model(images)).numpy()
    assert np.mean((probabilities[:, 1] > 0.5) == is_real) > 0.8  # the nearest-centroid rule classifies


def test_contrastive_base_models_need_a_corpus_folder(tmp_path):
    corpus = corpus_lib.scan_corpus(make_corpus(tmp_path / "c", per_folder=2))
    cfg = config.TrainConfig(workdir=str(tmp_path / "w"), base_objective="contrastive", **TINY)
    with pytest.raises(distribute.SettingsError, match="--data_dir"):
        stages.train_base_model(cfg, corpus, object(), "real", distribute.get_strategy("one_device"))


def test_a_complete_model_of_contrastive_base_models_reports_their_nearest_centroid_probabilities():
    """Issue 13's base_scores on issue 12's base models: softmax of [-d(rest), -d(main)], index 1."""
    bases = []
    for i, name in enumerate(("bm_dm", "bm_gan", "bm_real")):
        embedder = models.build_feature_extractor("tiny", 32, None, name=f"{name}_features")
        dim = embedder.output_shape[-1]
        bases.append(contrastive.attach_centroids(embedder, np.zeros(dim), np.full(dim, 0.1 * (i + 1)), name))
    complete = models.build_complete_model(*bases, head=models.build_head(models.feature_extractor(bases[0]).output_shape[0][-1]))
    images = np.random.default_rng(1).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    outputs = models.detector_model(complete)(images)
    expected = np.stack([tf.nn.softmax(base(images))[:, 1].numpy() for base in bases], axis=1)
    np.testing.assert_allclose(outputs["base_scores"].numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(outputs["logits"].numpy(), complete(images).numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(expected, 0.5, atol=1e-3)  # the centroids differ, so the scores say something
