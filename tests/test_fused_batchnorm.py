"""FusedBatchNormalization: Keras' BatchNormalization, trained through TensorFlow's fused kernel."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from dfx_keras import models
from dfx_keras.fused_batchnorm import FusedBatchNormalization
from dfx_keras.optimizers import AdamL2


def _pair(shape, **kwargs):
    """A Keras BatchNormalization and a fused one with the same non-trivial gamma and beta."""
    gamma = np.random.default_rng(1).normal(size=shape[-1]).astype(np.float32)
    layers = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, **kwargs), \
        FusedBatchNormalization(momentum=0.9, epsilon=1e-5, **kwargs)
    for layer in layers:
        layer.build(shape)
        layer.gamma.assign(gamma)
        layer.beta.assign(0.3 * gamma)
    return layers


def _train_step(layer, x, upstream):
    """Output, gradients (input, gamma, beta) and moving statistics after one training call."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
        loss = tf.reduce_sum(y * upstream)
    grads = tape.gradient(loss, [x, layer.gamma, layer.beta])
    return [y, *grads, layer.moving_mean, layer.moving_variance]


@pytest.mark.parametrize("shape", [(8, 50, 16), (4, 3, 10, 8)], ids=["conv1d", "conv2d"])
def test_training_matches_keras_batchnorm_outputs_gradients_and_moving_statistics(shape):
    x = tf.constant(np.random.default_rng(0).normal(2.0, 3.0, shape).astype(np.float32))
    upstream = tf.random.stateless_normal(shape, seed=(1, 1))
    keras_bn, fused = _pair(shape)
    for expected, got in zip(_train_step(keras_bn, x, upstream), _train_step(fused, x, upstream)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-5)
    # The moving variance took the biased batch variance, as Keras does (the kernel returns the
    # Bessel-corrected one): the two differ by 1/(n-1), far above the tolerance above.
    biased = np.var(x.numpy().reshape(-1, shape[-1]), axis=0)
    np.testing.assert_allclose(fused.moving_variance.numpy(), 0.9 + 0.1 * biased, rtol=1e-5)
    np.testing.assert_allclose(fused(x, training=False).numpy(), keras_bn(x, training=False).numpy(), atol=1e-5)


def test_training_runs_the_fused_kernel_and_other_cases_run_keras_code():
    x = tf.random.stateless_normal((4, 20, 8), seed=(2, 2))
    fused = FusedBatchNormalization()
    fused.build(x.shape)

    def op_types(**kwargs):
        graph = tf.function(lambda t: fused(t, **kwargs)).get_concrete_function(x).graph
        return {op.type for op in graph.get_operations()}

    assert "FusedBatchNormV3" in op_types(training=True)
    assert "FusedBatchNormV3" not in op_types(training=False)
    assert "FusedBatchNormV3" not in op_types(training=True, mask=tf.ones((4, 20), bool))
    fused.synchronized = True  # what --sync_batchnorm sets on several replicas: cross-replica moments
    assert "FusedBatchNormV3" not in op_types(training=True)


def test_mixed_bfloat16_keeps_the_compute_dtype_and_float32_statistics():
    keras_bn, fused = _pair((8, 30, 16), dtype="mixed_bfloat16")
    x = tf.random.stateless_normal((8, 30, 16), seed=(3, 3), dtype=tf.bfloat16)
    y, y_keras = fused(x, training=True), keras_bn(x, training=True)
    assert y.dtype == tf.bfloat16 and fused.moving_mean.dtype == "float32"
    np.testing.assert_allclose(y.numpy().astype(np.float32), y_keras.numpy().astype(np.float32), atol=2e-2)
    np.testing.assert_allclose(fused.moving_variance.numpy(), keras_bn.moving_variance.numpy(), rtol=1e-5)


def test_a_fused_head_saves_loads_and_trains_as_the_keras_head(tmp_path):
    """Same weights, same batches: two AdamL2 steps of both heads agree to float tolerance, and
    the fused head's .keras file loads its own class back with safe_mode."""
    keras.utils.set_random_seed(0)
    head = models.build_head(64)
    fused = models.build_head(64, fused_bn=True)
    fused.set_weights(head.get_weights())
    assert isinstance(fused.get_layer("bn1"), FusedBatchNormalization)
    assert not isinstance(head.get_layer("bn1"), FusedBatchNormalization)
    x = np.random.default_rng(4).normal(size=(16, 64, 3)).astype(np.float32)
    y = np.arange(16) % 3
    for model in (head, fused):
        model.compile(optimizer=AdamL2(l2=1e-3, learning_rate=1e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    for expected, got in zip(head.get_weights(), fused.get_weights()):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    path = str(tmp_path / "fused_head.keras")
    fused.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded.get_layer("bn4"), FusedBatchNormalization)
    np.testing.assert_allclose(loaded(x, training=False).numpy(), fused(x, training=False).numpy(), atol=1e-6)
