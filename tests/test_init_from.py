"""train.init_from: an x2 run's parameters start an x3 or x4 run, or a deeper one."""

import flax
import jax
import numpy as np
import pytest

from percvae_jax import inference
from percvae_jax.errors import ConfigError
from percvae_jax.models import vae
from tests.helpers import tiny_config


def fresh_params(config):
  return vae.init_params(vae.create(config), config, jax.random.PRNGKey(7))


def assert_generates_alike(model, params, other, other_params):
  """`other` with `other_params` generates what `model` with `params` does: the mean
  output and a prior sample."""
  lr = jax.random.uniform(jax.random.PRNGKey(0), (1, 10, 10, 3))
  rngs = {"latent": jax.random.PRNGKey(1)}
  for sample in (False, True):
    before = model.apply({"params": params}, lr, sample, method="generate", rngs=rngs)
    after = other.apply({"params": other_params}, lr, sample, method="generate", rngs=rngs)
    np.testing.assert_allclose(np.asarray(after), np.asarray(before), atol=1e-6)


@pytest.mark.parametrize("scale", [3, 4])
def test_a_model_of_another_scale_gives_all_but_its_scales_layers(tiny_workdir, scale):
  _, _, trained, _ = inference.restore_model(tiny_workdir)
  config = tiny_config(
    model__num_blocks=1, data__scale=scale, data__hr_size=12 * scale, train__init_from=tiny_workdir
  )
  fresh = fresh_params(config)
  started = flax.traverse_util.flatten_dict(inference.initial_params(config, fresh))
  trained = flax.traverse_util.flatten_dict(jax.device_get(trained))
  fresh = flax.traverse_util.flatten_dict(fresh)
  differ = sorted(k for k in fresh if trained[k].shape != fresh[k].shape)
  # The decoder's head (3 * scale^2 outputs) and the posterior's input (the HR's
  # residual at LR resolution, 3 * scale^2 channels).
  assert [(k[0], k[-1]) for k in differ] == [
    ("decoder", "bias"),
    ("decoder", "kernel"),
    ("posterior", "kernel"),
  ]
  for key, value in started.items():
    expected = fresh[key] if key in differ else trained[key]
    np.testing.assert_array_equal(np.asarray(value), np.asarray(expected))


def test_a_model_of_other_features_is_still_refused(tiny_workdir):
  config = tiny_config(model__num_blocks=1, model__features=12, train__init_from=tiny_workdir)
  with pytest.raises(ConfigError, match="another shape"):
    inference.initial_params(config, fresh_params(config))


def test_latent_blocks_added_to_a_trained_model_start_at_its_outputs(tiny_workdir):
  _, model, trained, _ = inference.restore_model(tiny_workdir)
  config = tiny_config(model__num_blocks=1, model__latent_blocks=1, train__init_from=tiny_workdir)
  wider = vae.create(config)
  started = inference.initial_params(config, fresh_params(config))
  assert "latent_decoder" in started and "latent_decoder" not in trained
  assert_generates_alike(model, trained, wider, started)


def test_a_missing_source_is_named_with_the_fix(tmp_path):
  config = tiny_config(train__init_from=str(tmp_path / "runs" / "not_trained"))
  with pytest.raises(ConfigError, match="neither a run's workdir nor a released model"):
    inference.initial_params(config, fresh_params(config))


def test_a_deeper_model_starts_as_the_shallower_one_it_loads(tiny_workdir):
  _, model, trained, _ = inference.restore_model(tiny_workdir)
  config = tiny_config(model__num_blocks=4, train__init_from=tiny_workdir)
  deeper = vae.create(config)
  fresh = fresh_params(config)
  started = inference.initial_params(config, fresh)
  flat_started = flax.traverse_util.flatten_dict(started)
  flat_trained = flax.traverse_util.flatten_dict(jax.device_get(trained))
  added = sorted({k[:2] for k in flat_started if k[:2] not in {t[:2] for t in flat_trained}})
  assert added == [("decoder", "ResBlock_1"), ("lr_encoder", "ResBlock_1")]
  for key, value in flat_trained.items():
    np.testing.assert_array_equal(np.asarray(flat_started[key]), np.asarray(value))
  # The new blocks' first convolutions keep their fresh weights, so they can learn.
  first = flat_started[("decoder", "ResBlock_1", "Conv_0", "kernel")]
  assert np.abs(np.asarray(first)).max() > 0
  assert_generates_alike(model, trained, deeper, started)
