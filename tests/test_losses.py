"""The objective's terms: the perceptual feature distances and how the total adds up."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from percvae_jax import config as config_lib
from percvae_jax import losses
from percvae_jax.errors import ConfigError
from tests.helpers import tiny_config

RNG = np.random.default_rng(0)


def features(size=16, channels=32, batch=2):
  a = RNG.normal(size=(batch, size, size, channels)).astype(np.float32)
  return a, a + 0.5 * RNG.normal(size=a.shape).astype(np.float32)


def test_channel_norm_distance_ignores_the_features_scale():
  a, b = features()
  d = float(losses.feature_distance(a, b, "channel"))
  assert d > 0
  assert float(losses.feature_distance(1e3 * a, 1e3 * b, "channel")) == pytest.approx(d, rel=1e-5)
  # LPIPS normalises each position on its own: a positive scale per position too.
  per_position = RNG.uniform(0.1, 10, size=a.shape[:3] + (1,)).astype(np.float32)
  assert float(losses.feature_distance(a * per_position, b * per_position, "channel")) == (
    pytest.approx(d, rel=1e-5)
  )
  # The plain MSE is the features' squared scale: a weight means different things at
  # different taps.
  plain = float(losses.feature_distance(a, b, "none"))
  assert float(losses.feature_distance(10 * a, 10 * b, "none")) == pytest.approx(
    100 * plain, rel=1e-5
  )


def test_channel_norm_distance_is_comparable_across_crop_sizes():
  a, b = features(size=8)
  d = float(losses.feature_distance(a, b, "channel"))
  tiled = lambda x: np.tile(x, (1, 4, 4, 1))  # the same statistics on a 4x larger crop
  assert float(losses.feature_distance(tiled(a), tiled(b), "channel")) == pytest.approx(d, rel=1e-5)
  big_a, big_b = features(size=64)
  small = float(losses.feature_distance(big_a[:, :16, :16], big_b[:, :16, :16], "channel"))
  whole = float(losses.feature_distance(big_a, big_b, "channel"))
  assert small == pytest.approx(whole, rel=0.1)  # a mean over positions, not a sum


def test_channel_norm_distance_lies_in_0_to_4():
  a, _ = features()
  assert float(losses.feature_distance(a, a, "channel")) == pytest.approx(0, abs=1e-6)
  assert float(losses.feature_distance(a, -a, "channel")) == pytest.approx(4, rel=1e-5)


def outputs(generated=True):
  sr = jnp.full((2, 8, 8, 3), 0.5)
  out = {"sr": sr, "kl": jnp.array([3.0, 5.0])}
  if generated:
    out["generated"] = jnp.full((2, 8, 8, 3), 0.25)
  return out


def test_objective_adds_the_weighted_terms():
  config = tiny_config(
    loss__prior_recon_weight=2.0, loss__kl_weight=0.1, loss__alpha=0.5, loss__gamma=3.0
  )
  hr = jnp.zeros((2, 8, 8, 3))
  total, terms = losses.objective(config.loss, outputs(), hr, jnp.float32(0.2))
  assert float(terms["recon"]) == pytest.approx(0.25)
  assert float(terms["kl"]) == pytest.approx(4.0 / (8 * 8 * 3))  # per HR value
  assert float(terms["prior_recon"]) == pytest.approx(0.0625)
  assert float(terms["vae"]) == pytest.approx(0.25 + 0.1 * float(terms["kl"]))
  assert (
    float(total)
    == float(terms["loss"])
    == pytest.approx(0.5 * float(terms["vae"]) + 2.0 * 0.0625 + 3.0 * 0.2)
  )
  # Without the generated output the prior term is 0 (and not computed).
  _, terms = losses.objective(config.loss, outputs(generated=False), hr, jnp.float32(0.0))
  assert float(terms["prior_recon"]) == 0


def test_the_generated_output_is_computed_only_when_a_term_needs_it():
  assert not losses.needs_generated(tiny_config(loss__prior_recon_weight=0.0).loss)
  assert losses.needs_generated(tiny_config(loss__prior_recon_weight=1.0).loss)
  assert losses.needs_generated(
    tiny_config(
      loss__prior_recon_weight=0.0, loss__gamma=1e-3, loss__perceptual_on="generated"
    ).loss
  )
  assert not losses.needs_generated(
    tiny_config(loss__prior_recon_weight=0.0, loss__gamma=1e-3, loss__perceptual_on="vae").loss
  )
  assert not losses.needs_generated(
    tiny_config(loss__prior_recon_weight=0.0, loss__gamma=0.0, loss__perceptual_on="generated").loss
  )
  out = outputs()
  assert losses.perceptual_input(tiny_config(loss__perceptual_on="vae").loss, out) is out["sr"]
  assert (
    losses.perceptual_input(tiny_config(loss__perceptual_on="generated").loss, out)
    is out["generated"]
  )


def test_pixel_losses_of_both_reconstruction_terms():
  hr = jnp.zeros((2, 8, 8, 3))
  for pixel, recon, prior in (("mse", 0.25, 0.0625), ("l1", 0.5, 0.25)):
    config = tiny_config(loss__pixel_loss=pixel)
    _, terms = losses.objective(config.loss, outputs(), hr, jnp.float32(0.0))
    assert float(terms["recon"]) == pytest.approx(recon)
    assert float(terms["prior_recon"]) == pytest.approx(prior)
  # Charbonnier: L1 away from 0, and smooth at 0, where its value is epsilon.
  diffs = jnp.array([0.0, 0.5, -0.5])[:, None, None, None]
  values = [float(losses.reconstruction(d, jnp.zeros(()), "mean", "charbonnier")) for d in diffs]
  assert values == pytest.approx([losses.CHARBONNIER_EPS, 0.5, 0.5], rel=1e-5)
  assert (
    jax.grad(lambda d: losses.reconstruction(d, jnp.zeros(()), "sum", "charbonnier"))(0.0) == 0.0
  )
  with pytest.raises(ConfigError, match="loss.pixel_loss"):
    config_lib.validate(tiny_config(loss__pixel_loss="l2"), 1)
