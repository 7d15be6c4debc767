"""Latent diffusion: a small convolutional autoencoder, then a diffusion model on its latents.

As in Rombach et al. (2022), scaled down: the encoder maps a crop to an 8x smaller grid of 4
channels, the latents are scaled to unit variance, a U-Net learns them with the scaled-linear
schedule, PLMS samples them, and the decoder (nearest-neighbour upsampling and convolutions, like
the latent-diffusion autoencoder's) turns them into pixels. The decoder's upsampling and the
autoencoder's lossy reconstruction are the traces this family leaves.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from benchmarks.generated_corpus import diffusion
from benchmarks.generated_corpus.tf_util import maybe_graph

LATENT_CHANNELS = 4


def build_autoencoder(resolution: int, width: int) -> tuple[keras.Model, keras.Model]:
    image = keras.Input((resolution, resolution, 3))
    x = layers.Conv2D(width, 3, padding="same", activation="swish")(image)
    for mult in (1, 2, 4):
        x = layers.Conv2D(width * mult, 3, strides=2, padding="same", activation="swish")(x)
        x = layers.Conv2D(width * mult, 3, padding="same", activation="swish")(x)
    encoder = keras.Model(image, layers.Conv2D(LATENT_CHANNELS, 1)(x), name="encoder")
    side = resolution // 8
    latent = keras.Input((side, side, LATENT_CHANNELS))
    x = layers.Conv2D(width * 4, 3, padding="same", activation="swish")(latent)
    for mult in (4, 2, 1):
        x = layers.UpSampling2D(2, interpolation="nearest")(x)
        x = layers.Conv2D(width * mult, 3, padding="same", activation="swish")(x)
        x = layers.Conv2D(width * mult, 3, padding="same", activation="swish")(x)
    decoder = keras.Model(latent, layers.Conv2D(3, 3, padding="same")(x), name="decoder")
    return encoder, decoder


class LatentDiffusion:
    """Autoencoder + latent ``Diffusion`` (eps objective, scaled-linear schedule)."""

    def __init__(self, resolution: int, ae_width: int, unet_width: int, batch_size: int, graph: bool = True):
        self.batch_size = batch_size
        self.encoder, self.decoder = build_autoencoder(resolution, ae_width)
        self.ae_opt = keras.optimizers.Adam(1e-3)
        self.prior = diffusion.Diffusion("eps", "scaled_linear", resolution // 8, LATENT_CHANNELS,
                                         unet_width, batch_size, mults=(1, 2), graph=graph)
        self.scale = 1.0
        self._ae_step = maybe_graph(self._ae_train_step, graph)
        self._encode = maybe_graph(lambda x: self.encoder(x, training=False), graph)
        self._decode = maybe_graph(lambda z: self.decoder(z, training=False), graph)

    def _ae_train_step(self, x):
        variables = self.encoder.trainable_variables + self.decoder.trainable_variables
        with tf.GradientTape() as tape:
            z = self.encoder(x, training=True)
            recon = self.decoder(z, training=True)
            # L1 for sharpness plus a small penalty that keeps the latents near unit scale
            # (the role of the KL term of the latent-diffusion autoencoder).
            loss = tf.reduce_mean(tf.abs(recon - x)) + 1e-4 * tf.reduce_mean(tf.square(z))
        self.ae_opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    def train(self, crops: np.ndarray, ae_steps: int, steps: int, rng: np.random.Generator) -> dict:
        loss = np.nan
        for _ in range(ae_steps):
            loss = self._ae_step(crops[rng.integers(0, len(crops), self.batch_size)])
        latents = np.concatenate([self._encode(crops[i:i + 256]).numpy() for i in range(0, len(crops), 256)])
        self.scale = float(1.0 / max(latents.std(), 1e-6))  # Stable Diffusion's 0.18215, measured
        stats = self.prior.train((latents * self.scale).astype(np.float32), steps, rng)
        return {"ae_l1": float(loss), "latent_scale": self.scale, **stats}

    def sample(self, n: int, steps: int, rng: np.random.Generator) -> np.ndarray:
        latents = self.prior.sample(n, "plms", steps, rng) / self.scale
        return np.concatenate([self._decode(latents[i:i + 64]).numpy() for i in range(0, n, 64)])
