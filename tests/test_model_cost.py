"""The convolution FLOPs per output pixel that the tables print beside the scores."""

import jax
import numpy as np
import pytest

from percvae_jax.models import vae
from tests.helpers import tiny_config


@pytest.mark.parametrize("scale", [2, 4])
def test_flops_per_pixel_count_the_generation_paths_convolutions(scale):
  config = tiny_config(data__scale=scale, model__features=8, model__num_blocks=2)
  model = vae.create(config)
  params = vae.init_params(model, config, jax.random.PRNGKey(0))
  f, latent = 8, config.model.latent_channels
  # LR encoder (in, one block, out), prior (in, one block, out), decoder (the same).
  macs = [3 * f, 2 * f * f, f * f, f * f, 2 * f * f, f * 2 * latent]
  macs += [(f + latent) * f, 2 * f * f, f * 3 * scale**2]
  expected = 2 * 9 * sum(macs) / scale**2
  assert vae.generation_flops_per_pixel(params, scale) == expected
  # XLA's count of the whole `generate` adds bicubic upsampling and the activations.
  side = 32
  lr = np.zeros((1, side, side, 3), np.float32)
  generate = jax.jit(lambda p, x: model.apply({"params": p}, x, method="generate"))
  cost = generate.lower(params, lr).compile().cost_analysis()
  xla = (cost[0] if isinstance(cost, list) else cost)["flops"] / (side * scale) ** 2
  assert expected < xla < 1.5 * expected
