"""Training the prior's samples (loss.samples): the samples the SR-VAE draws in its
training pass, the terms that judge them, their validation, the train step, and a
fine-tuning's posterior started at the prior (train.posterior_from_prior)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from percvae_jax import config as config_lib
from percvae_jax import data, losses, train, train_state
from percvae_jax.errors import ConfigError
from percvae_jax.models import vae
from tests.helpers import tiny_config

SAMPLES = dict(loss__samples=3, loss__sample_weight=0.5, loss__sample_best_weight=2.0)


def perturbed_params(config, seed=0):
  """Fresh parameters with every leaf perturbed: the zero-initialised output convs
  would make every output bicubic, whatever the latent."""
  params = vae.init_params(vae.create(config), config, jax.random.PRNGKey(seed))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: x + 0.1 * rng.normal(size=x.shape).astype(np.float32), params)


def training_pass(config, params, **kwargs):
  lr = jax.random.uniform(jax.random.PRNGKey(2), (2, 8, 8, 3))
  hr = jax.random.uniform(jax.random.PRNGKey(3), (2, 16, 16, 3))
  return vae.create(config).apply(
    {"params": params}, lr, hr, generated=True, rngs={"latent": jax.random.PRNGKey(4)}, **kwargs
  )


def test_training_pass_draws_prior_samples_beside_the_other_outputs():
  config = tiny_config()
  params = perturbed_params(config)
  plain = training_pass(config, params)
  drawn = training_pass(config, params, samples=3, temperature=1.0)
  assert drawn["samples"].shape == (3, 2, 16, 16, 3)
  # The posterior's and the mean's outputs are those of a pass without samples.
  for key in ("sr", "generated", "kl"):
    np.testing.assert_allclose(drawn[key], plain[key], rtol=1e-5, atol=1e-6)
  samples = np.asarray(drawn["samples"])
  assert np.abs(samples[0] - samples[1]).max() > 1e-3
  assert np.abs(samples[0] - np.asarray(drawn["generated"])).max() > 1e-3
  # At temperature 0 every sample is the prior mean's output, to float32 rounding of
  # outputs up to ~10 computed in another batch (a sample that differs: > 1e-3, above).
  cold = training_pass(config, params, samples=2, temperature=0.0)
  for sample in np.asarray(cold["samples"]):
    np.testing.assert_allclose(sample, cold["generated"], rtol=1e-5, atol=1e-5)


def test_samples_take_the_prior_spread_as_generate_does():
  """A sample of the training pass is the decoder at mu + T sigma eps, as `generate`'s
  samples are: their spread around the mean grows with the temperature."""
  config = tiny_config()
  params = perturbed_params(config)
  spread = lambda t: float(
    jnp.mean(
      jnp.abs(
        training_pass(config, params, samples=2, temperature=t)["samples"][0]
        - (training_pass(config, params)["generated"])
      )
    )
  )
  assert 0 < spread(0.25) < spread(1.0)


def test_a_fixed_spread_keeps_the_samples_gradient_off_the_prior_log_variance():
  """loss.sample_spread=fixed: the samples still train the prior's mean and the decoder,
  but not the prior's log-variance (the second half of its last convolution's outputs)."""
  config = tiny_config()
  params = perturbed_params(config)
  stats_conv = max((k for k in params["prior"] if k.startswith("Conv_")), key=lambda k: int(k[5:]))
  latent = config.model.latent_channels

  def prior_grads(fixed):
    samples = lambda p: jnp.sum(
      training_pass(config, p, samples=2, temperature=1.0, fixed_spread=fixed)["samples"] ** 2
    )
    kernel = jax.grad(samples)(params)["prior"][stats_conv]["kernel"]
    return np.abs(np.asarray(kernel[..., :latent])), np.abs(np.asarray(kernel[..., latent:]))

  mean_free, spread_free = prior_grads(False)
  mean_fixed, spread_fixed = prior_grads(True)
  assert spread_free.max() > 1e-4 and mean_free.max() > 1e-4
  assert spread_fixed.max() == 0.0
  np.testing.assert_allclose(mean_fixed, mean_free, rtol=1e-5, atol=1e-7)


def test_best_term_takes_the_nearest_sample_at_each_position():
  # Two samples, each right in one half: every sample is wrong on average, their
  # nearest at each position is right everywhere.
  left = np.zeros((1, 4, 4), np.float32)
  left[:, :, 2:] = 2.0
  maps = jnp.asarray(np.stack([left, left[:, :, ::-1]]))
  terms = losses.sample_terms([(1.0, maps), (0.5, 2 * maps)])
  assert float(terms["sample_perceptual"]) == pytest.approx(1.0 + 0.5 * 2.0)
  assert float(terms["sample_best"]) == pytest.approx(0.0)
  # Identical samples: the nearest is each of them.
  same = losses.sample_terms([(1.0, jnp.stack([left[None], left[None]])[:, 0])])
  assert float(same["sample_best"]) == pytest.approx(float(same["sample_perceptual"]))


@pytest.mark.parametrize("norm", ["none", "channel"])
def test_pairwise_term_averages_the_distance_over_every_two_samples(norm):
  rng = np.random.default_rng(1)
  a, b, c = (rng.normal(size=(2, 5, 5, 8)).astype(np.float32) for _ in range(3))
  pairwise = losses.pairwise_distance(jnp.stack([a, b, c]), norm)
  expected = np.mean(
    [float(losses.feature_distance(x, y, norm)) for x, y in [(a, b), (a, c), (b, c)]]
  )
  assert float(pairwise) == pytest.approx(expected, rel=1e-5)
  assert float(pairwise) > 0
  # Identical samples are no distance apart, so the hinge pays its whole target.
  assert float(losses.pairwise_distance(jnp.stack([a, a, a]), norm)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("target,paid", [(0.5, 0.3), (0.1, 0.0)])
def test_diversity_hinge_pays_only_below_its_target(target, paid):
  config = sampling_config(loss__sample_diversity_weight=2.0, loss__sample_diversity_target=target)
  hr = jnp.zeros((1, 4, 4, 3))
  outputs = {"sr": hr, "generated": hr, "kl": jnp.zeros((1,))}
  samples = {"sample_perceptual": 0.0, "sample_best": 0.0, "sample_pairwise": jnp.asarray(0.2)}
  total, _ = losses.objective(config.loss, outputs, hr, jnp.zeros(()), samples)
  assert float(total) == pytest.approx(2.0 * paid, abs=1e-6)


def direct_gram_distance(a, b, size, norm):
  """numpy, float64: the Gram matrices themselves, patch by patch."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if norm != "none":
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
  k, n, h, w, _ = a.shape
  out = np.zeros((k, n, (h // size) * (w // size)))
  for i in range(k):
    for j in range(n):
      for p, (y, x) in enumerate(
        (y, x) for y in range(0, h // size * size, size) for x in range(0, w // size * size, size)
      ):
        fa = a[i, j, y : y + size, x : x + size].reshape(size * size, -1)
        fb = b[j, y : y + size, x : x + size].reshape(size * size, -1)
        out[i, j, p] = np.sum((fa.T @ fa - fb.T @ fb) ** 2) / (size * size) ** 2
  return out


@pytest.mark.parametrize("channels", [3, 40])  # fewer, then more, channels than positions.
@pytest.mark.parametrize("norm", ["none", "channel"])
def test_gram_distance_is_the_patches_gram_matrices_distance(channels, norm):
  rng = np.random.default_rng(1)
  a = rng.normal(size=(2, 2, 9, 8, channels)).astype(np.float32)  # 9 rows: one cut off.
  b = rng.normal(size=(2, 9, 8, channels)).astype(np.float32)
  got = np.asarray(losses.gram_distance(a, b, 4, norm))
  want = direct_gram_distance(a, b, 4, norm)
  assert got.shape == (2, 2, 4)
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-6)
  assert want.min() > 0


def test_texture_distance_judges_a_patch_statistics_not_where_its_detail_lies():
  """Shuffling positions inside each patch keeps the texture distance at 0, where the
  per-position distance grows; grain laid over a flat HR costs texture distance."""
  rng = np.random.default_rng(2)
  hr = rng.normal(size=(1, 8, 8, 16)).astype(np.float32)
  shuffled = hr.reshape(1, 2, 4, 2, 4, 16)[:, :, ::-1, :, ::-1].reshape(1, 8, 8, 16)
  assert float(losses.feature_distance(shuffled, hr, "channel")) > 0.5
  assert float(losses.texture_distance(shuffled[None], hr, 8, 4, "channel")) < 1e-6
  flat = np.ones((1, 8, 8, 16), np.float32)
  grain = flat + 0.5 * rng.normal(size=flat.shape).astype(np.float32)
  assert float(losses.texture_distance(grain[None], flat, 8, 4, "channel")) > 1e-3
  # The patch is counted in HR px: a tap at half the HR's resolution takes patches of
  # half the side, so an 8 px patch over 16 px of HR is the 4 x 4 patch above.
  np.testing.assert_allclose(
    float(losses.texture_distance(grain[None], flat, 16, 8, "channel")),
    float(jnp.mean(losses.gram_distance(grain[None], flat, 4, "channel"))),
    rtol=1e-6,
  )


def test_energy_texture_sees_contrast_and_is_the_plain_gram_over_the_hr_energy_squared():
  """Unnormed, a sample twice the HR's contrast costs; under the channel norm it is free.
  The value is the plain Gram distance over the square of the HR features' mean squared
  norm, so scaling HR and sample together leaves it unchanged."""
  rng = np.random.default_rng(3)
  hr = np.abs(rng.normal(size=(1, 8, 8, 16))).astype(np.float32)
  louder = 2.0 * hr
  assert float(losses.texture_distance(louder[None], hr, 8, 4, "channel")) < 1e-6
  energy = float(losses.texture_distance(louder[None], hr, 8, 4, "energy"))
  plain = float(jnp.mean(losses.gram_distance(louder[None], hr, 4, "none")))
  assert energy == pytest.approx(plain / float(np.mean(np.sum(hr**2, -1))) ** 2, rel=1e-5)
  assert energy > 1.0  # G(2f) = 4 G(f): the distance is 9 ||G(f)||^2, against ||G(f)||^2.
  scaled = float(losses.texture_distance(10 * louder[None], 10 * hr, 8, 4, "energy"))
  assert scaled == pytest.approx(energy, rel=1e-4)


class PixelTaps:
  """Stands in for the VGG16: its 'taps' are the images at full and half resolution."""

  def apply(self, variables, images):
    del variables
    return {"relu1_2": images, "relu2_2": images[:, ::2, ::2]}


@pytest.mark.parametrize("texture_norm", ["perceptual", "energy"])
def test_the_texture_term_takes_the_features_as_texture_norm_says(texture_norm):
  config = sampling_config(
    loss__sample_texture_weight=1.0, loss__texture_patch=4, loss__texture_norm=texture_norm
  )
  rng = np.random.default_rng(4)
  hr = jnp.asarray(rng.uniform(size=(2, 16, 16, 3)), jnp.float32)
  outputs = {
    "generated": hr,
    "samples": jnp.asarray(rng.uniform(size=(3, 2, 16, 16, 3)), jnp.float32),
  }
  taps = (("relu1_2", 1.0), ("relu2_2", 0.5))
  _, terms = losses.perceptual_terms(config.loss, PixelTaps(), {}, outputs, hr, taps)
  norm = "energy" if texture_norm == "energy" else config.loss.perceptual_norm
  want = losses.texture_distance(outputs["samples"], hr, 16, 4, norm) + 0.5 * (
    losses.texture_distance(outputs["samples"][:, :, ::2, ::2], hr[:, ::2, ::2], 16, 4, norm)
  )
  assert float(terms["sample_texture"]) == pytest.approx(float(want), rel=1e-5)


def test_objective_adds_the_texture_term_at_its_weight():
  config = sampling_config(loss__sample_texture_weight=4.0)
  hr = jnp.zeros((1, 4, 4, 3))
  outputs = {"sr": hr, "generated": hr, "kl": jnp.zeros((1,))}
  samples = {
    "sample_perceptual": jnp.asarray(0.0),
    "sample_best": jnp.asarray(0.0),
    "sample_pairwise": jnp.asarray(0.0),
    "sample_texture": jnp.asarray(0.25),
  }
  total, terms = losses.objective(config.loss, outputs, hr, jnp.zeros(()), samples)
  assert float(total) == pytest.approx(4.0 * 0.25, abs=1e-6)
  assert float(terms["sample_texture"]) == pytest.approx(0.25)


@pytest.mark.parametrize("norm", ["none", "channel"])
def test_distance_map_averages_to_the_feature_distance(norm):
  rng = np.random.default_rng(0)
  a, b = (rng.normal(size=(2, 6, 6, 8)).astype(np.float32) for _ in range(2))
  assert losses.distance_map(a, b, norm).shape == (2, 6, 6)
  assert float(jnp.mean(losses.distance_map(a, b, norm))) == pytest.approx(
    float(losses.feature_distance(a, b, norm)), rel=1e-6
  )


def sampling_config(**overrides):
  return tiny_config(
    loss__gamma=0.1,
    loss__perceptual_layers="relu1_2,relu2_2",
    loss__perceptual_norm="channel",
    loss__perceptual_on="generated",
    model__lr_consistent=True,
    data__blur_sigma=0.0,
    **{**SAMPLES, **overrides},
  )


@pytest.mark.slow
def test_train_step_adds_the_sample_terms_at_their_weights():
  # A target above any pairwise distance (each channel-normalised tap's is at most
  # 4), so the hinge pays target - L_pairwise.
  config = sampling_config(
    loss__sample_diversity_weight=3.0,
    loss__sample_diversity_target=9.0,
    loss__sample_texture_weight=5.0,
    loss__texture_patch=8,
  )
  config_lib.validate(config, 1)
  model = vae.create(config)
  vgg_module, vgg_params = train_state.perceptual_network(config)
  state = train_state.create_train_state(config, model, vgg_params)
  state = state.replace(params=perturbed_params(config))
  batch = data.TrainBatches(data.embedded_images("train"), 32, 4, seed=0).batch(0)
  _, terms = jax.jit(train.make_train_step(config, vgg_module))(state, {"hr": jnp.asarray(batch)})
  terms = {k: float(v) for k, v in terms.items()}
  assert 0 < terms["sample_best"] < terms["sample_perceptual"]
  assert 0 < terms["sample_pairwise"] < 8.0
  assert terms["loss"] == pytest.approx(
    terms["vae"]
    + terms["prior_recon"]
    + 0.1 * terms["perceptual"]
    + 0.5 * terms["sample_perceptual"]
    + 2.0 * terms["sample_best"]
    + 3.0 * (9.0 - terms["sample_pairwise"])
    + 5.0 * terms["sample_texture"],
    rel=1e-5,
  )
  assert terms["sample_texture"] > 0
  # The mean output's term is the one a run without samples computes.
  plain = sampling_config(loss__samples=0, loss__sample_weight=0.0, loss__sample_best_weight=0.0)
  _, alone = jax.jit(train.make_train_step(plain, vgg_module))(state, {"hr": jnp.asarray(batch)})
  assert float(alone["perceptual"]) == pytest.approx(terms["perceptual"], rel=1e-4)
  assert "sample_best" not in alone


@pytest.mark.parametrize(
  "overrides,message",
  [
    (dict(model__name="seed"), "only model.name=srvae"),
    (dict(loss__sample_weight=0.0, loss__sample_best_weight=0.0), "need a weight"),
    (dict(loss__samples=0), "need a weight"),
    (
      dict(
        loss__samples=0,
        loss__sample_weight=0.0,
        loss__sample_best_weight=0.0,
        loss__sample_texture_weight=1.0,
      ),
      "need a weight",
    ),
    (dict(loss__texture_patch=1), "texture_patch"),
    (dict(loss__texture_norm="gram"), "texture_norm"),
    (dict(loss__sample_temperature=0.0), "sample_temperature"),
    (dict(loss__sample_spread="frozen"), "sample_spread"),
    (dict(loss__sample_diversity_weight=1.0), "target above 0"),
    (
      dict(loss__samples=1, loss__sample_diversity_weight=1.0, loss__sample_diversity_target=0.1),
      "two or more samples",
    ),
  ],
)
def test_sampling_configs_that_cannot_work_are_refused(overrides, message):
  with pytest.raises(ConfigError, match=message):
    config_lib.validate(sampling_config(**overrides), 1)


def test_a_posterior_started_from_the_prior_equals_it_whatever_the_hr():
  config = tiny_config()
  params = perturbed_params(config)
  assert float(jnp.min(training_pass(config, params)["kl"])) > 1e-3
  params = dict(params, posterior=vae.posterior_from_prior(params["prior"], params["posterior"]))
  np.testing.assert_allclose(training_pass(config, params)["kl"], 0.0, atol=1e-4)


def test_smooth_noise_has_unit_variance_and_the_blurs_correlation():
  noise = np.asarray(vae.smooth_noise(jax.random.PRNGKey(0), (16, 96, 96, 2), sigma=2.0))
  inside = noise[:, 8:-8, 8:-8]
  assert abs(inside.std() - 1.0) < 0.03
  corr = lambda lag: np.corrcoef(inside[:, :, :-lag].ravel(), inside[:, :, lag:].ravel())[0, 1]
  # Blurred white noise correlates as a Gaussian of sigma * sqrt(2): exp(-lag^2 / 16).
  assert abs(corr(1) - np.exp(-1 / 16)) < 0.03
  assert abs(corr(8)) < 0.1


def test_noise_channels_vary_the_samples_and_leave_the_mean_output():
  """With model.noise_channels the samples draw smooth noise, the latent at the prior's
  mean: the VAE's passes and the mean output see zero noise, and a sample at
  temperature 0 is the mean output."""
  config = tiny_config(model__noise_channels=2)
  params = perturbed_params(config)
  drawn = training_pass(config, params, samples=3, temperature=1.0)
  samples = np.asarray(drawn["samples"])
  assert np.abs(samples[0] - samples[1]).max() > 1e-3
  assert np.abs(samples[0] - np.asarray(drawn["generated"])).max() > 1e-3
  model = vae.create(config)
  lr = jax.random.uniform(jax.random.PRNGKey(2), (2, 8, 8, 3))
  mean = model.apply({"params": params}, lr, method="generate")
  np.testing.assert_allclose(drawn["generated"], mean, rtol=1e-5, atol=1e-5)
  cold = model.apply(
    {"params": params},
    lr,
    method="generate",
    sample=True,
    temperature=0.0,
    rngs={"latent": jax.random.PRNGKey(5)},
  )
  np.testing.assert_allclose(cold, mean, rtol=1e-5, atol=1e-5)
  # Fresh (its last convolution zero), the noise decoder adds nothing: a release
  # fine-tuned with it starts at its own outputs.
  fresh = vae.init_params(model, config, jax.random.PRNGKey(0))
  warm = model.apply(
    {"params": fresh}, lr, method="generate", sample=True, rngs={"latent": jax.random.PRNGKey(5)}
  )
  np.testing.assert_allclose(warm, model.apply({"params": fresh}, lr, method="generate"), atol=1e-6)
