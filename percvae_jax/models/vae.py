"""The VAEs that map an LR image to its SR image at `scale` times the size.

Both models share one interface, so training, evaluation and upscaling never ask
which one they hold:
  - `model.apply(params, lr, hr, rngs={"latent": key})` -> {"sr", "kl"}: the
    reparameterised training pass (z = mu + exp(0.5 * logvar) * eps) and the KL of
    each example's posterior to its prior, summed over latent units; with
    `generated=True` also "generated", the output `generate` gives for the same LR
    (the path users get), computed in the same pass; with `samples=K` (SRVAE only)
    also "samples", K prior samples' outputs at `temperature`, (K, N, H, W, 3), whose
    gradient reaches the prior's log-variance unless `fixed_spread`;
  - `model.apply(params, lr, method="generate")` -> sr from the latent's mean, and
    `method="generate", sample=True` (with a "latent" rng) -> one sample.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from percvae_jax import degradation

LOGVAR_RANGE = (-12.0, 8.0)


def gaussian_kl(mu_q, logvar_q, mu_p, logvar_p):
  """KL(N(mu_q, e^logvar_q) || N(mu_p, e^logvar_p)) per element."""
  return 0.5 * (
    logvar_p - logvar_q + (jnp.exp(logvar_q) + (mu_q - mu_p) ** 2) * jnp.exp(-logvar_p) - 1.0
  )


def split_gaussian(stats):
  mu, logvar = jnp.split(stats.astype(jnp.float32), 2, axis=-1)
  return mu, jnp.clip(logvar, *LOGVAR_RANGE)


def reparameterise(rng, mu, logvar, temperature=1.0):
  """z = mu + temperature * sigma * eps; temperature < 1 draws nearer the mean."""
  return mu + temperature * jnp.exp(0.5 * logvar) * jax.random.normal(rng, mu.shape, mu.dtype)


def sum_per_example(x):
  return jnp.sum(x.reshape(x.shape[0], -1), axis=-1)


def smooth_noise(rng, shape, sigma: float):
  """Standard normal noise (N, H, W, C) blurred by a Gaussian of `sigma` px and scaled
  back to unit variance: each value correlated with its neighbours' over ~2 sigma px."""
  radius = max(1, int(np.ceil(3 * sigma)))
  taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
  taps /= np.sqrt(np.sum(taps**2))  # unit variance after both axes (away from borders).
  channels = shape[-1]
  noise = jax.random.normal(rng, shape, jnp.float32)
  for kernel_shape in ((len(taps), 1, 1, channels), (1, len(taps), 1, channels)):
    kernel = jnp.asarray(np.broadcast_to(taps.reshape(kernel_shape[:2] + (1, 1)), kernel_shape))
    noise = jax.lax.conv_general_dilated(
      noise,
      kernel.astype(jnp.float32),
      (1, 1),
      "SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=channels,
    )
  return noise


class SeedVAE(nn.Module):
  """The paper's VAE: a 256-d global latent, adapted to an LR input of size/scale.

  Encoder conv 3->16->32->64 (3x3, stride 2, ReLU) on the LR, dense heads to mu and
  log-variance; decoder dense -> 64 x (HR/8) x (HR/8), transposed convs 64->32->16->3
  (stride 2), sigmoid. Its prior is N(0, I).
  """

  scale: int
  hr_size: int
  latent_dim: int = 256
  dtype: Any = jnp.float32

  def setup(self):
    conv = lambda f, name: nn.Conv(f, (3, 3), strides=2, dtype=self.dtype, name=name)
    self.encoder_convs = [conv(16, "enc1"), conv(32, "enc2"), conv(64, "enc3")]
    self.mu_head = nn.Dense(self.latent_dim, dtype=self.dtype, name="mu")
    self.logvar_head = nn.Dense(self.latent_dim, dtype=self.dtype, name="logvar")
    self.decoder_convs = [
      nn.ConvTranspose(f, (3, 3), strides=(2, 2), dtype=self.dtype, name=f"dec{i}")
      for i, f in enumerate((32, 16, 3), start=1)
    ]
    self.decoder_dense = nn.Dense(64 * (self.hr_size // 8) ** 2, dtype=self.dtype, name="dec_dense")

  def _posterior(self, lr):
    if lr.shape[1:3] != (self.hr_size // self.scale,) * 2:
      raise ValueError(
        f"the seed model takes {self.hr_size // self.scale} px square LR inputs "
        f"(it was trained at hr_size={self.hr_size}), not {lr.shape[1]}x{lr.shape[2]}."
      )
    x = lr.astype(self.dtype)
    for conv in self.encoder_convs:
      x = nn.relu(conv(x))
    x = x.reshape(x.shape[0], -1)
    return (
      self.mu_head(x).astype(jnp.float32),
      jnp.clip(self.logvar_head(x).astype(jnp.float32), *LOGVAR_RANGE),
    )

  def _decode(self, z):
    side = self.hr_size // 8
    x = self.decoder_dense(z.astype(self.dtype))
    x = nn.relu(x).reshape(z.shape[0], side, side, 64)
    for i, conv in enumerate(self.decoder_convs):
      x = conv(x)
      x = nn.relu(x) if i < len(self.decoder_convs) - 1 else x
    return nn.sigmoid(x.astype(jnp.float32))

  def __call__(self, lr, hr, generated: bool = False):
    del hr  # The paper's encoder sees only its input.
    mu, logvar = self._posterior(lr)
    z = reparameterise(self.make_rng("latent"), mu, logvar)
    kl = gaussian_kl(mu, logvar, jnp.zeros_like(mu), jnp.zeros_like(logvar))
    if not generated:
      return {"sr": self._decode(z), "kl": sum_per_example(kl)}
    sr, mean = jnp.split(self._decode(jnp.concatenate([z, mu])), 2)
    return {"sr": sr, "kl": sum_per_example(kl), "generated": mean}

  def generate(self, lr, sample: bool = False, temperature: float = 1.0):
    mu, logvar = self._posterior(lr)
    z = reparameterise(self.make_rng("latent"), mu, logvar, temperature) if sample else mu
    return self._decode(z)


class ResBlock(nn.Module):
  """conv -> ReLU -> conv, added to its input. With `pixel_attention` the branch is
  gated per pixel and channel by a sigmoid of a 1x1 conv of itself (PAN, Zhao et
  al., ECCV 2020 workshops): 6% more FLOPs, and local, so tiles still agree."""

  features: int
  pixel_attention: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    y = nn.relu(nn.Conv(self.features, (3, 3), dtype=self.dtype)(x))
    y = nn.Conv(self.features, (3, 3), dtype=self.dtype)(y)
    if self.pixel_attention:
      y = y * nn.sigmoid(nn.Conv(self.features, (1, 1), dtype=self.dtype)(y))
    return x + y


class Trunk(nn.Module):
  """conv -> residual blocks -> conv, at a fixed channel count."""

  features: int
  num_blocks: int
  out_features: int
  zero_out: bool = False
  block: str = "residual"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.features, (3, 3), dtype=self.dtype)(x.astype(self.dtype))
    skip = x
    for _ in range(self.num_blocks):
      x = ResBlock(self.features, self.block == "pixel_attention", self.dtype)(x)
    x = x + skip
    init = nn.initializers.zeros if self.zero_out else nn.initializers.lecun_normal()
    return nn.Conv(self.out_features, (3, 3), kernel_init=init, dtype=self.dtype)(x)


def space_to_depth(x, block: int):
  n, h, w, c = x.shape
  x = x.reshape(n, h // block, block, w // block, block, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(n, h // block, w // block, block * block * c)


def depth_to_space(x, block: int):
  n, h, w, c = x.shape
  x = x.reshape(n, h, w, block, block, c // (block * block))
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(n, h * block, w * block, c // (block * block))


class SRVAE(nn.Module):
  """A conditional VAE for SR, fully convolutional (any input size).

  The decoder sees LR features and a latent map at LR resolution and predicts a
  residual over bicubic upsampling. The posterior q(z | LR, HR) sees the HR's
  residual over bicubic (space-to-depth to LR resolution); the prior p(z | LR) sees
  only the LR. At test time z is the prior's mean (or a prior sample), so the latent
  carries only what the LR cannot: the variation among plausible HR images.

  With `noise_channels`, samples draw a second input besides the latent: smooth noise
  (`smooth_noise`, correlated over ~2 `noise_blur` LR px), decoded with the LR
  features by residual blocks, with the latent at the prior's mean. The VAE's own
  passes and the mean output see zero noise; only the sample terms (losses.py) train
  what the decoder makes of it, so the samples can differ by structure over regions
  rather than by the per-pixel grain a linearly decoded latent adds (docs/model.md).

  With `lr_consistent`, every output is projected onto the images in [0,1] whose
  degradation (blur `blur_sigma`, then bicubic downscaling) is the LR input
  (`degradation.project_onto_lr_in_range`): what the model adds lies in the
  degradation's null space, and its output downscaled gives back the LR.
  """

  scale: int
  features: int = 64
  num_blocks: int = 8
  latent_channels: int = 4
  latent_blocks: int = 0
  noise_channels: int = 0
  noise_blur: float = 2.0
  lr_consistent: bool = False
  blur_sigma: float = 0.0
  block: str = "residual"
  dtype: Any = jnp.float32

  def setup(self):
    half = max(1, self.num_blocks // 2)
    stats = 2 * self.latent_channels
    trunk = lambda blocks, out, zero_out=True: Trunk(
      self.features, blocks, out, zero_out, self.block, self.dtype
    )
    self.lr_encoder = trunk(half, self.features, zero_out=False)
    self.posterior = trunk(1, stats)
    self.prior = trunk(1, stats)
    self.decoder = trunk(half, 3 * self.scale**2)
    if self.latent_blocks:
      # Zero at initialisation, so a release fine-tuned with it starts as it was.
      self.latent_decoder = trunk(self.latent_blocks, self.features)
    if self.noise_channels:
      # Zero at initialisation too: a release fine-tuned with it starts as it was.
      self.noise_decoder = trunk(max(1, self.latent_blocks), self.features)

  def _sample_noise(self, like, temperature):
    """Smooth noise for `noise_channels` samples at `like`'s LR size, x temperature."""
    shape = (*like.shape[:3], self.noise_channels)
    return temperature * smooth_noise(self.make_rng("latent"), shape, self.noise_blur)

  def _decode(self, lr, upscaled, features, z, noise=None):
    z = z.astype(features.dtype)
    if self.noise_channels:
      if noise is None:
        noise = jnp.zeros((*features.shape[:3], self.noise_channels), features.dtype)
      noise = noise.astype(features.dtype)
      features = features + self.noise_decoder(jnp.concatenate([features, noise], -1))
    if self.latent_blocks:
      features = features + self.latent_decoder(jnp.concatenate([features, z], -1))
    residual = self.decoder(jnp.concatenate([features, z], -1))
    sr = upscaled + depth_to_space(residual.astype(jnp.float32), self.scale)
    if self.lr_consistent:
      sr = degradation.project_onto_lr_in_range(
        sr, lr.astype(jnp.float32), self.scale, self.blur_sigma
      )
    return sr

  def __call__(
    self,
    lr,
    hr,
    generated: bool = False,
    samples: int = 0,
    temperature: float = 1.0,
    fixed_spread: bool = False,
  ):
    features = self.lr_encoder(lr)
    upscaled = degradation.bicubic_upscale(lr.astype(jnp.float32), self.scale)
    # The posterior sees what the decoder must add (the HR's residual over bicubic),
    # so the latent learns to carry it before the decoder learns to ignore the noise.
    missing = space_to_depth((hr.astype(jnp.float32) - upscaled).astype(features.dtype), self.scale)
    mu_q, logvar_q = split_gaussian(self.posterior(jnp.concatenate([features, missing], -1)))
    mu_p, logvar_p = split_gaussian(self.prior(features))
    z = reparameterise(self.make_rng("latent"), mu_q, logvar_q)
    kl = sum_per_example(gaussian_kl(mu_q, logvar_q, mu_p, logvar_p))
    if not generated and not samples:
      return {"sr": self._decode(lr, upscaled, features, z), "kl": kl}
    # Every output in one decoder pass: the posterior sample's, the prior mean's, and
    # `samples` prior samples' (so that the objective can train what users draw).
    latents = [z] + ([mu_p] if generated else [])
    spread = jax.lax.stop_gradient(logvar_p) if fixed_spread else logvar_p
    if self.noise_channels:  # the samples differ by their noise, the latent at its mean.
      latents += [mu_p] * samples
    else:
      latents += [
        reparameterise(self.make_rng("latent"), mu_p, spread, temperature) for _ in range(samples)
      ]
    times = lambda x: jnp.concatenate([x] * len(latents))
    noise = None
    if self.noise_channels:
      zeros = jnp.zeros((*features.shape[:3], self.noise_channels), features.dtype)
      draws = [self._sample_noise(lr, temperature) for _ in range(samples)]
      noise = jnp.concatenate([zeros] * (len(latents) - samples) + draws)
    decoded = self._decode(
      times(lr), times(upscaled), times(features), jnp.concatenate(latents), noise
    )
    decoded = decoded.reshape(len(latents), *lr.shape[:1], *decoded.shape[1:])
    outputs = {"sr": decoded[0], "kl": kl}
    if generated:
      outputs["generated"] = decoded[1]
    if samples:
      outputs["samples"] = decoded[len(latents) - samples :]
    return outputs

  def generate(self, lr, sample: bool = False, temperature: float = 1.0):
    features = self.lr_encoder(lr)
    mu_p, logvar_p = split_gaussian(self.prior(features))
    upscaled = degradation.bicubic_upscale(lr.astype(jnp.float32), self.scale)
    if sample and self.noise_channels:
      return self._decode(lr, upscaled, features, mu_p, self._sample_noise(lr, temperature))
    z = reparameterise(self.make_rng("latent"), mu_p, logvar_p, temperature) if sample else mu_p
    return self._decode(lr, upscaled, features, z)


def init_params(model: nn.Module, config, key: jax.Array):
  """Fresh parameters of `model` for `config.data`'s crop size and scale."""
  size, scale = config.data.hr_size, config.data.scale
  hr = jnp.zeros((1, size, size, 3), jnp.float32)
  lr = jnp.zeros((1, size // scale, size // scale, 3), jnp.float32)
  params_key, latent_key = jax.random.split(key)
  # Jitted: the same values, one program (which drops the unused forward pass) instead
  # of every operation compiled on its own, 2-3 s less at each training's start on CPU.
  init = jax.jit(model.init)
  return init({"params": params_key, "latent": latent_key}, lr, hr)["params"]


def posterior_from_prior(prior, posterior):
  """Posterior parameters whose q equals the prior: the prior's weights on the LR
  features, zeros on the HR's residual (the posterior's extra input channels).

  A release ships no posterior, so a fine-tuning from one starts with a fresh q =
  N(0, I); its KL then pulls the prior's spread towards 1, and nothing else trains
  the prior's log-variance, so Adam moves it at full step whatever kl_weight (the
  released x4-perceptual's prior sigma: 2x x4's in flat regions,
  scripts/diagnose_samples.py). Started at q = p, the KL is 0 and the posterior
  departs from the prior only as far as the HR teaches it.
  """
  on_features = prior["Conv_0"]["kernel"]
  kernel = jnp.zeros_like(posterior["Conv_0"]["kernel"])
  kernel = kernel.at[:, :, : on_features.shape[2]].set(on_features)
  return dict(prior, Conv_0=dict(prior["Conv_0"], kernel=kernel))


def generation_kernels(params) -> list:
  """The convolution kernels `generate` runs (fully convolutional models): those of
  its one path, LR encoder -> prior -> decoder; the posterior never runs."""
  return [
    leaf
    for path, leaf in jax.tree_util.tree_leaves_with_path(params)
    if getattr(path[-1], "key", None) == "kernel"
    and leaf.ndim == 4
    and getattr(path[0], "key", None) != "posterior"
  ]


def generation_reach(model: nn.Module, params) -> int:
  """How many LR px on each side of a pixel `generate` may read (fully convolutional
  models): the kernels on its one path (`generation_kernels`), bicubic upsampling's
  2 px, and the LR projection's reach."""
  kernels = generation_kernels(params)
  reach = sum(max(k.shape[0], k.shape[1]) // 2 for k in kernels) + degradation.BICUBIC_REACH
  if getattr(model, "lr_consistent", False):
    rounds = 1 + degradation.RANGE_ITERATIONS  # each projection reads further.
    reach += rounds * degradation.projection_reach(model.scale, model.blur_sigma)
  return reach


def create(config, dtype=jnp.float32) -> nn.Module:
  """The model named by `config.model.name`, for `config.data`'s scale."""
  model_config, scale, hr_size = config.model, config.data.scale, config.data.hr_size
  if model_config.name == "seed":
    return SeedVAE(scale=scale, hr_size=hr_size, latent_dim=model_config.latent_dim, dtype=dtype)
  if model_config.name == "srvae":
    return SRVAE(
      scale=scale,
      features=model_config.features,
      num_blocks=model_config.num_blocks,
      latent_channels=model_config.latent_channels,
      latent_blocks=model_config.latent_blocks,
      noise_channels=model_config.noise_channels,
      noise_blur=model_config.noise_blur,
      lr_consistent=model_config.lr_consistent,
      blur_sigma=config.data.blur_sigma,
      block=model_config.block,
      dtype=dtype,
    )
  raise ValueError(f"unknown model {model_config.name!r}; choose seed or srvae.")
