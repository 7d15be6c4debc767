"""GAN families: one generator per upsampling method, one shared discriminator design.

The families differ where real GANs leave their traces: how the generator goes from a coarse
grid to pixels. Transposed convolutions overlap unevenly and leave checkerboard patterns
(Odena et al., 2016); resize-then-convolve replaces them with interpolation blur; pixel shuffle
(sub-pixel convolution, Shi et al., 2016) leaves a periodic 2x2 phase pattern; the held-back
style-modulated generator upsamples bilinearly and modulates its convolutions by a mapped latent,
with per-pixel noise, as StyleGAN does. All are trained the same way (non-saturating loss,
Adam 2e-4 / 0.5, Radford et al., 2016) on crops of the training photos.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from benchmarks.generated_corpus.tf_util import maybe_graph

LATENT = 128


def _start(z, side, channels):
    x = layers.Dense(side * side * channels)(z)
    x = layers.Reshape((side, side, channels))(x)
    return layers.ReLU()(layers.BatchNormalization()(x))


def _upsample_block(x, channels, method):
    """One 2x upsampling of ``method``: the part that differs between families."""
    if method == "transposed":
        x = layers.Conv2DTranspose(channels, 4, strides=2, padding="same", use_bias=False)(x)
    elif method == "resize":
        x = layers.UpSampling2D(2, interpolation="nearest")(x)
        x = layers.Conv2D(channels, 3, padding="same", use_bias=False)(x)
    elif method == "pixel_shuffle":
        x = layers.Conv2D(channels * 4, 3, padding="same", use_bias=False)(x)
        x = layers.Lambda(lambda t: tf.nn.depth_to_space(t, 2))(x)
    else:
        raise ValueError(f"unknown upsampling {method!r}")
    return layers.ReLU()(layers.BatchNormalization()(x))


def build_generator(method: str, resolution: int, width: int) -> keras.Model:
    """A DCGAN-style generator: latent -> (resolution/16)^2 grid -> four 2x upsamplings -> RGB."""
    if method == "style":
        return _build_style_generator(resolution, width)
    side = resolution // 16
    z = keras.Input((LATENT,))
    x = _start(z, side, width * 8)
    for mult in (8, 4, 2, 1):
        x = _upsample_block(x, width * mult, method)
    rgb = layers.Conv2D(3, 3, padding="same", activation="tanh")(x)
    return keras.Model(z, rgb, name=f"generator_{method}")


class _NoiseAndStyle(layers.Layer):
    """StyleGAN's per-block ops: add scaled per-pixel noise, then instance-normalise and apply a
    per-channel scale and bias predicted from the mapped latent w (AdaIN)."""

    def build(self, input_shape):
        channels = input_shape[0][-1]
        self.noise_scale = self.add_weight(shape=(channels,), initializer="zeros", name="noise_scale")
        self.to_scale = layers.Dense(channels, bias_initializer="ones")
        self.to_bias = layers.Dense(channels)

    def call(self, inputs):
        x, w, noise = inputs
        x = x + self.noise_scale * noise[:, : tf.shape(x)[1], : tf.shape(x)[2], :1]
        mean, var = tf.nn.moments(x, axes=[1, 2], keepdims=True)
        x = (x - mean) * tf.math.rsqrt(var + 1e-5)
        return x * self.to_scale(w)[:, None, None, :] + self.to_bias(w)[:, None, None, :]


def _build_style_generator(resolution: int, width: int) -> keras.Model:
    """StyleGAN's ingredients at small scale: a 3-layer mapping MLP z -> w, a start grid
    projected from w, then per block bilinear 2x upsampling, a 3x3 conv, noise and AdaIN from w."""
    z = keras.Input((LATENT,))
    noise = keras.Input((resolution, resolution, 1))
    w = z
    for _ in range(3):
        w = layers.Dense(LATENT)(w)
        w = layers.LeakyReLU(0.2)(w)
    side = resolution // 16
    x = layers.Reshape((side, side, width * 8))(layers.Dense(side * side * width * 8)(w))
    for mult in (8, 4, 2, 1):
        x = layers.UpSampling2D(2, interpolation="bilinear")(x)
        x = layers.Conv2D(width * mult, 3, padding="same")(x)
        x = layers.LeakyReLU(0.2)(_NoiseAndStyle()([x, w, noise]))
    rgb = layers.Conv2D(3, 1, activation="tanh")(x)
    return keras.Model([z, noise], rgb, name="generator_style")


def build_discriminator(resolution: int, width: int) -> keras.Model:
    """Strided 4x4 convolutions with LeakyReLU down to resolution/16, then one logit."""
    image = keras.Input((resolution, resolution, 3))
    x = image
    for mult in (1, 2, 4, 8):
        x = layers.Conv2D(width * mult, 4, strides=2, padding="same")(x)
        x = layers.LeakyReLU(0.2)(x)
    logit = layers.Dense(1)(layers.Flatten()(x))
    return keras.Model(image, logit, name="discriminator")


class GAN:
    """A generator, its discriminator and their optimisers; train() and sample() in NumPy terms."""

    def __init__(self, method: str, resolution: int, width: int, batch_size: int, graph: bool = True):
        self.method, self.resolution, self.batch_size = method, resolution, batch_size
        self.generator = build_generator(method, resolution, width)
        self.discriminator = build_discriminator(resolution, width)
        self.g_opt = keras.optimizers.Adam(2e-4, beta_1=0.5)
        self.d_opt = keras.optimizers.Adam(2e-4, beta_1=0.5)
        self._step = maybe_graph(self._train_step, graph)
        self._generate = maybe_graph(self._generate_fn, graph)

    def _inputs(self, z, noise):
        return [z, noise] if self.method == "style" else z

    def _generate_fn(self, z, noise):
        # Batch statistics at sampling time, as in DCGAN's reference code: the running averages
        # of a short run lag the generator and give washed-out samples.
        return self.generator(self._inputs(z, noise), training=True)

    def _train_step(self, real, z, noise):
        with tf.GradientTape() as g_tape, tf.GradientTape() as d_tape:
            fake = self.generator(self._inputs(z, noise), training=True)
            real_logit = self.discriminator(real, training=True)
            fake_logit = self.discriminator(fake, training=True)
            d_loss = tf.reduce_mean(tf.nn.softplus(-real_logit) + tf.nn.softplus(fake_logit))
            g_loss = tf.reduce_mean(tf.nn.softplus(-fake_logit))
        d_vars, g_vars = self.discriminator.trainable_variables, self.generator.trainable_variables
        self.d_opt.apply_gradients(zip(d_tape.gradient(d_loss, d_vars), d_vars))
        self.g_opt.apply_gradients(zip(g_tape.gradient(g_loss, g_vars), g_vars))
        return d_loss, g_loss

    def _noise(self, rng, n):
        return (rng.standard_normal((n, LATENT), dtype=np.float32),
                rng.standard_normal((n, self.resolution, self.resolution, 1), dtype=np.float32))

    def train(self, crops: np.ndarray, steps: int, rng: np.random.Generator) -> dict:
        """``steps`` updates on random batches of ``crops`` (N, r, r, 3) in [-1, 1]."""
        losses = (np.nan, np.nan)
        for _ in range(steps):
            real = crops[rng.integers(0, len(crops), self.batch_size)]
            losses = self._step(real, *self._noise(rng, self.batch_size))
        return {"d_loss": float(losses[0]), "g_loss": float(losses[1])}

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` images in [-1, 1], generated in batches of the training batch size."""
        out = [self._generate(*self._noise(rng, self.batch_size)).numpy() for _ in range(-(-n // self.batch_size))]
        return np.concatenate(out)[:n]
