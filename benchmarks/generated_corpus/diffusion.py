"""Diffusion families: a small U-Net, three noise schedules, four samplers, pixel or latent space.

- ``ddpm``: linear beta schedule (1e-4 to 0.02, T=1000), noise prediction, ancestral sampling
  on a respaced chain (Ho et al., 2020; respacing as in Nichol & Dhariwal, 2021).
- ``ddim``: cosine schedule (Nichol & Dhariwal, 2021), noise prediction, deterministic DDIM
  (eta = 0, Song et al., 2021).
- ``plms``: the latent-diffusion recipe: scaled-linear schedule (0.00085 to 0.012), noise
  prediction on an autoencoder's latents, pseudo linear multistep sampling (Rombach et al., 2022;
  Liu et al., 2022) -- see ``latent.py``.
- ``edm`` (held back): Karras et al. (2022): preconditioned denoiser, log-normal noise levels in
  training, the rho=7 noise-level ladder and Heun's second-order sampler.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from benchmarks.generated_corpus.tf_util import maybe_graph

T = 1000


def betas(schedule: str) -> np.ndarray:
    if schedule == "linear":
        return np.linspace(1e-4, 0.02, T, dtype=np.float64)
    if schedule == "scaled_linear":
        return np.linspace(0.00085**0.5, 0.012**0.5, T, dtype=np.float64) ** 2
    if schedule == "cosine":
        s = 0.008
        f = np.cos((np.arange(T + 1) / T + s) / (1 + s) * math.pi / 2) ** 2
        return np.clip(1 - f[1:] / f[:-1], 0, 0.999)
    raise ValueError(f"unknown schedule {schedule!r}")


# --- the network ------------------------------------------------------------------------------

def _embedding(t, dim):
    """Sinusoidal embedding of a float per example (timestep, or EDM's c_noise)."""
    freqs = tf.exp(-math.log(10000.0) * tf.range(dim // 2, dtype=tf.float32) / (dim // 2))
    args = t[:, None] * freqs[None, :]
    return tf.concat([tf.sin(args), tf.cos(args)], axis=-1)


def _res_block(x, emb, channels):
    h = layers.Activation("swish")(layers.GroupNormalization(8)(x))
    h = layers.Conv2D(channels, 3, padding="same")(h)
    h = h + layers.Reshape((1, 1, channels))(layers.Dense(channels)(emb))
    h = layers.Activation("swish")(layers.GroupNormalization(8)(h))
    h = layers.Conv2D(channels, 3, padding="same")(h)
    skip = x if x.shape[-1] == channels else layers.Conv2D(channels, 1)(x)
    return skip + h


def build_unet(resolution: int, channels: int, width: int, mults=(1, 2, 3), patch: int = 1) -> keras.Model:
    """A DDPM-style U-Net without attention (small enough to train on a CPU in minutes):
    one residual block per level, strided-conv down, nearest-then-conv up, skip concatenation.

    ``patch`` > 1 folds patch x patch pixel blocks into channels at the input and unfolds them at
    the output (space-to-depth, as pixel-space models with patch size 2 do): the network runs
    at 1/patch the resolution, a quarter of the cost for patch 2.
    """
    x_in = keras.Input((resolution, resolution, channels))
    t_in = keras.Input(())
    emb = layers.Lambda(lambda t: _embedding(t, width * 2), output_shape=(width * 2,))(t_in)
    emb = layers.Dense(width * 4, activation="swish")(emb)
    emb = layers.Dense(width * 4)(emb)
    inner, folded = resolution // patch, channels * patch * patch
    h = x_in
    if patch > 1:
        h = layers.Lambda(lambda x: tf.nn.space_to_depth(x, patch), output_shape=(inner, inner, folded))(h)
    h = layers.Conv2D(width, 3, padding="same")(h)
    skips = []
    for level, mult in enumerate(mults):
        h = _res_block(h, emb, width * mult)
        skips.append(h)
        if level < len(mults) - 1:
            h = layers.Conv2D(width * mult, 3, strides=2, padding="same")(h)
    h = _res_block(h, emb, width * mults[-1])
    for level in reversed(range(len(mults))):
        if level < len(mults) - 1:
            h = layers.Conv2D(width * mults[level], 3, padding="same")(layers.UpSampling2D(2)(h))
        h = _res_block(layers.Concatenate()([h, skips.pop()]), emb, width * mults[level])
    h = layers.Activation("swish")(layers.GroupNormalization(8)(h))
    out = layers.Conv2D(folded, 3, padding="same", kernel_initializer="zeros")(h)
    if patch > 1:
        out = layers.Lambda(lambda x: tf.nn.depth_to_space(x, patch),
                            output_shape=(resolution, resolution, channels))(out)
    return keras.Model([x_in, t_in], out, name="unet")


# --- training ---------------------------------------------------------------------------------

class Diffusion:
    """A U-Net trained with one objective; ``train`` and ``sample`` take NumPy arrays.

    ``objective`` is ``eps`` (noise prediction at a discrete timestep of ``schedule``) or
    ``edm`` (Karras et al.'s preconditioned denoiser, continuous noise levels).
    """

    SIGMA_DATA = 0.5

    def __init__(self, objective: str, schedule: str | None, resolution: int, channels: int,
                 width: int, batch_size: int, mults=(1, 2, 3), patch: int = 1, learning_rate=1e-3,
                 graph: bool = True):
        self.objective, self.batch_size = objective, batch_size
        self.shape = (resolution, resolution, channels)
        self.unet = build_unet(resolution, channels, width, mults, patch)
        self.optimizer = keras.optimizers.Adam(learning_rate)
        if objective == "eps":
            self.alpha_bar = np.cumprod(1 - betas(schedule))
        elif objective != "edm":
            raise ValueError(f"unknown objective {objective!r}")
        self._step = maybe_graph(self._train_step, graph)
        self._net = maybe_graph(lambda x, t: self.unet([x, t], training=False), graph)
        self._edm = maybe_graph(self._edm_denoise, graph)

    def _train_step(self, x0, noise, a, b, t_input, weight):
        """Loss ||target - prediction||^2 for x_t = a * x0 + b * noise (per-example a, b)."""
        x_t = a[:, None, None, None] * x0 + b[:, None, None, None] * noise
        with tf.GradientTape() as tape:
            if self.objective == "eps":
                pred, target = self.unet([x_t, t_input], training=True), noise
            else:
                pred, target = self._edm_denoise(x_t, b, training=True), x0
            loss = tf.reduce_mean(weight * tf.reduce_mean(tf.square(pred - target), axis=[1, 2, 3]))
        grads = tape.gradient(loss, self.unet.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.unet.trainable_variables))
        return loss

    def _edm_denoise(self, x, sigma, training=False):
        sd = self.SIGMA_DATA
        s = sigma[:, None, None, None]
        c_skip = sd**2 / (s**2 + sd**2)
        c_out = s * sd / tf.sqrt(s**2 + sd**2)
        c_in = 1 / tf.sqrt(s**2 + sd**2)
        f = self.unet([c_in * x, tf.math.log(sigma) / 4], training=training)
        return c_skip * x + c_out * f

    def _noise_levels(self, rng, n):
        """Per-example (a, b, network time input, loss weight) of one training batch."""
        if self.objective == "eps":
            t = rng.integers(0, T, n)
            ab = self.alpha_bar[t]
            return np.sqrt(ab), np.sqrt(1 - ab), t.astype(np.float32), np.ones(n)
        sigma = np.exp(rng.normal(-1.2, 1.2, n))
        sd = self.SIGMA_DATA
        return np.ones(n), sigma, np.zeros(n), (sigma**2 + sd**2) / (sigma * sd) ** 2

    def train(self, data: np.ndarray, steps: int, rng: np.random.Generator) -> dict:
        loss = np.nan
        for _ in range(steps):
            x0 = data[rng.integers(0, len(data), self.batch_size)]
            noise = rng.standard_normal(x0.shape, dtype=np.float32)
            a, b, t, w = (v.astype(np.float32) for v in self._noise_levels(rng, self.batch_size))
            loss = self._step(x0, noise, a, b, t, w)
        return {"loss": float(loss)}

    # --- sampling -----------------------------------------------------------------------------

    def sample(self, n: int, sampler: str, steps: int, rng: np.random.Generator) -> np.ndarray:
        run = {"ancestral": self._ancestral, "ddim": self._ddim, "plms": self._plms, "heun": self._heun}[sampler]
        out = [run(rng, steps) for _ in range(-(-n // self.batch_size))]
        return np.concatenate(out)[:n]

    def _eps(self, x, t):
        return self._net(x, np.full(len(x), t, np.float32)).numpy()

    def _timesteps(self, steps):
        return np.linspace(T - 1, 0, steps).round().astype(int)

    def _ancestral(self, rng, steps):
        """DDPM ancestral sampling on the respaced chain: the betas between kept timesteps, the
        posterior q(x_prev | x_t, x0) with x0 predicted and clipped to [-1, 1] (the reference
        code's clip_denoised), posterior variance beta~ (Ho et al. eqs. 6-7)."""
        ts = self._timesteps(steps)
        x = rng.standard_normal((self.batch_size, *self.shape), dtype=np.float32)
        for i, t in enumerate(ts):
            ab = self.alpha_bar[t]
            ab_prev = self.alpha_bar[ts[i + 1]] if i + 1 < len(ts) else 1.0
            beta = 1 - ab / ab_prev
            x0 = np.clip((x - np.sqrt(1 - ab) * self._eps(x, t)) / np.sqrt(ab), -1, 1)
            mean = (np.sqrt(ab_prev) * beta * x0 + np.sqrt(1 - beta) * (1 - ab_prev) * x) / (1 - ab)
            if i + 1 < len(ts):
                var = beta * (1 - ab_prev) / (1 - ab)
                mean += np.sqrt(var) * rng.standard_normal(x.shape, dtype=np.float32)
            x = mean.astype(np.float32)
        return x

    def _ddim_step(self, x, eps, t, t_prev, clip):
        ab = self.alpha_bar[t]
        ab_prev = self.alpha_bar[t_prev] if t_prev >= 0 else 1.0
        x0 = (x - np.sqrt(1 - ab) * eps) / np.sqrt(ab)
        if clip:
            x0 = np.clip(x0, -1, 1)
        return (np.sqrt(ab_prev) * x0 + np.sqrt(1 - ab_prev) * eps).astype(np.float32)

    def _ddim(self, rng, steps, clip=True):
        ts = self._timesteps(steps)
        x = rng.standard_normal((self.batch_size, *self.shape), dtype=np.float32)
        for i, t in enumerate(ts):
            x = self._ddim_step(x, self._eps(x, t), t, ts[i + 1] if i + 1 < len(ts) else -1, clip)
        return x

    def _plms(self, rng, steps):
        """Pseudo linear multistep: DDIM transfers driven by an Adams-Bashforth combination of
        the last noise predictions (the original latent-diffusion sampler)."""
        ts = self._timesteps(steps)
        x = rng.standard_normal((self.batch_size, *self.shape), dtype=np.float32)
        history = []
        for i, t in enumerate(ts):
            t_prev = ts[i + 1] if i + 1 < len(ts) else -1
            eps = self._eps(x, t)
            if not history:  # Heun-like start: average with the prediction at the next point
                x_next = self._ddim_step(x, eps, t, t_prev, clip=False)
                eps_prime = (eps + self._eps(x_next, max(t_prev, 0))) / 2
            elif len(history) == 1:
                eps_prime = (3 * eps - history[-1]) / 2
            elif len(history) == 2:
                eps_prime = (23 * eps - 16 * history[-1] + 5 * history[-2]) / 12
            else:
                eps_prime = (55 * eps - 59 * history[-1] + 37 * history[-2] - 9 * history[-3]) / 24
            history.append(eps)
            x = self._ddim_step(x, eps_prime, t, t_prev, clip=False)
        return x

    def _heun(self, rng, steps, sigma_min=0.002, sigma_max=80.0, rho=7.0):
        """Karras et al. Algorithm 1 (deterministic Heun) on the rho=7 noise-level ladder."""
        i = np.arange(steps)
        sigmas = (sigma_max ** (1 / rho) + i / (steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
        sigmas = np.append(sigmas, 0.0)
        x = (rng.standard_normal((self.batch_size, *self.shape)) * sigmas[0]).astype(np.float32)
        denoise = lambda x, s: self._edm(x.astype(np.float32), np.full(len(x), s, np.float32)).numpy()  # noqa: E731
        for s, s_next in zip(sigmas[:-1], sigmas[1:]):
            d = (x - denoise(x, s)) / s
            x_next = x + (s_next - s) * d
            if s_next > 0:
                d_next = (x_next - denoise(x_next, s_next)) / s_next
                x_next = x + (s_next - s) * (d + d_next) / 2
            x = x_next.astype(np.float32)
        return x

