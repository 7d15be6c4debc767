"""The complete stage's feature cache: the same head as end-to-end training, computed once, never stale."""

import os
import shutil

import numpy as np
import pytest
from conftest import make_corpus

from dfx_keras import config, models, run
from dfx_keras.data import corpus as corpus_lib
from dfx_keras.data import pipelines
from dfx_keras.training import distribute, feature_cache, fit, stages
from dfx_keras.workdir import Workdir

TINY = dict(backbone="tiny", weights=None, image_size=32, batch_size=12, verbose=0)


@pytest.fixture(scope="module")
def trained_bases(tmp_path_factory):
    """A corpus and three tiny base models trained on it (one epoch)."""
    root = make_corpus(tmp_path_factory.mktemp("corpus"), per_folder=24)
    corpus, source = corpus_lib.scan_corpus(root), pipelines.FolderSource(root)
    cfg = config.TrainConfig(workdir=str(tmp_path_factory.mktemp("bases")), epochs=1, **TINY)
    stages.train_base_models(cfg, corpus, source, ("dm_generated", "gan_generated", "real"), distribute.get_strategy())
    return corpus, source, cfg.wd.path("models")


def _complete(tmp_path, trained_bases, name, **overrides):
    corpus, source, base_models = trained_bases
    cfg = config.TrainConfig(workdir=str(tmp_path / name), **{"epochs": 2, **TINY, **overrides})
    if not os.path.isdir(cfg.wd.path("models")):
        shutil.copytree(base_models, cfg.wd.path("models"))
    stages.train_complete_model(cfg, corpus, source, distribute.get_strategy())
    return cfg


@pytest.mark.slow
def test_cached_features_and_end_to_end_training_give_the_same_head(tmp_path, trained_bases):
    """Same seed, same order (``seeded_passes``), no augmentation: two epochs on cached features
    and two epochs through the frozen base models end with the same head, to float rounding."""
    cached = _complete(tmp_path, trained_bases, "cached")
    end_to_end = _complete(tmp_path, trained_bases, "end_to_end", feature_cache=False)
    assert os.listdir(cached.wd.features) and not os.path.exists(end_to_end.wd.features)
    heads = [models.head_of(models.load_model(cfg.wd.path("models", "complete.keras"))) for cfg in (cached, end_to_end)]
    for a, b in zip(*(head.weights for head in heads)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)  # bit-identical here
    # --head_fused_bn: the head's BatchNorm through TF's fused kernel trains the same head to
    # float tolerance (another summation order, so not bit for bit), and its complete.keras loads.
    fused = _complete(tmp_path, trained_bases, "fused_bn", head_fused_bn=True)
    fused_head = models.head_of(models.load_model(fused.wd.path("models", "complete.keras")))
    assert type(fused_head.get_layer("bn1")).__name__ == "FusedBatchNormalization"
    for a, b in zip(heads[0].weights, fused_head.weights):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-4, atol=1e-5, err_msg=a.path)


@pytest.mark.slow
def test_features_are_computed_once_and_a_retrained_base_model_is_not_served_stale_ones(tmp_path, trained_bases):
    cfg = _complete(tmp_path, trained_bases, "work", epochs=1)
    files = {f: os.path.getmtime(cfg.wd.path("features", f)) for f in os.listdir(cfg.wd.path("features"))}
    assert len(files) == 2  # training and validation images
    _complete(tmp_path, trained_bases, "work", epochs=1, overwrite=True)
    assert {f: os.path.getmtime(cfg.wd.path("features", f)) for f in os.listdir(cfg.wd.path("features"))} == files
    bm_dm = models.load_model(cfg.wd.path("models", "bm_dm.keras"))
    first_conv = bm_dm.get_layer("tiny").layers[1]
    first_conv.kernel.assign(first_conv.kernel * 1.01)  # as if retrained: other features
    fit.save_model(bm_dm, cfg.wd.path("models", "bm_dm.keras"))
    _complete(tmp_path, trained_bases, "work", epochs=1, overwrite=True)
    assert len(os.listdir(cfg.wd.path("features"))) == 4


@pytest.mark.slow
def test_the_feature_pass_splits_batches_across_replicas_and_loses_no_image(tmp_path, trained_bases):
    """Under MirroredStrategy (2 logical CPUs) each global batch is split between the replicas;
    the last one (11 = 2 x 4 + 3 images) is padded to a multiple of 2 and the padding dropped.
    The features and their order equal the one-device pass."""
    corpus, source, base_models = trained_bases
    samples = corpus.samples[:11]
    passes = []
    for strategy in (distribute.get_strategy(), distribute.get_strategy("mirrored")):
        with strategy.scope():
            frozen = models.build_complete_model(*stages.load_base_models(Workdir(os.path.dirname(base_models))))
        cache = feature_cache.FeatureCache(str(tmp_path), frozen, source, 32, 4, strategy=strategy, write=False)
        passes.append(cache.features(samples))
    (one, one_paths), (two, two_paths) = passes
    assert one.shape == (11, *one.shape[1:]) and one_paths == two_paths == [s.path for s in samples]
    np.testing.assert_allclose(two, one, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_reference_frozen_bn_moves_the_base_models_statistics_not_their_weights(tmp_path, trained_bases):
    """--frozen_bn=reference: the complete stage bypasses the cache and trains end to end with the
    frozen base models' BatchNorm in training mode; complete.keras then holds running statistics
    that differ from models/bm_*.keras, and every other base-model weight equal to theirs."""
    cfg = _complete(tmp_path, trained_bases, "reference", epochs=1, frozen_bn="reference")
    assert not os.path.exists(cfg.wd.path("features"))
    complete = models.load_model(cfg.wd.path("models", "complete.keras"))
    bases = stages.load_base_models(cfg.wd)
    moved = kept = 0
    for extractor, base in zip(models.base_feature_extractors(complete), bases):
        assert extractor.name == f"{base.name}_features"
        for ours, theirs in zip(extractor.weights, models.feature_extractor(base).weights):
            if ours.path.endswith(("moving_mean", "moving_variance")):
                moved += not np.allclose(ours.numpy(), theirs.numpy())
            else:
                np.testing.assert_array_equal(ours.numpy(), theirs.numpy(), err_msg=ours.path)
                kept += 1
    assert moved == 3 * 3 * 2 and kept > 0  # 3 base models x 3 BatchNorm layers x (mean, variance)
    assert cfg.wd.stage_summaries()["complete"]["frozen_bn"] == "reference"
    corpus, source, _ = trained_bases
    assert run.evaluate_raw(cfg, corpus, source)["raw"]["three_class"]["n"] > 0
