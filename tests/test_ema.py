"""The weights' moving average (train.ema_decay): its update, what evaluation and
inference use, and an exact resume."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from percvae_jax import config as config_lib
from percvae_jax import inference, train, train_state
from percvae_jax.errors import ConfigError
from percvae_jax.models import vae
from tests.helpers import tiny_config


def test_the_decay_ramps_up_to_its_value():
  ema, params = {"w": jnp.zeros(3)}, {"w": jnp.ones(3)}
  first = train_state.ema_update(ema, params, jnp.int32(0), 0.999)
  np.testing.assert_allclose(first["w"], 0.9)  # rate (1 + 0) / (10 + 0)
  late = train_state.ema_update(ema, params, jnp.int32(10**6), 0.999)
  np.testing.assert_allclose(late["w"], 0.001, rtol=1e-4)


def test_without_a_decay_there_is_no_average():
  config = tiny_config()
  state = train_state.create_train_state(config, vae.create(config), None)
  assert state.ema_params is None and train_state.eval_params(state) is state.params


@pytest.mark.parametrize("decay", [-0.1, 1.0])
def test_a_decay_outside_0_to_1_is_refused(decay):
  with pytest.raises(ConfigError, match="train.ema_decay"):
    config_lib.validate(tiny_config(train__ema_decay=decay), 1)


def run(workdir, steps):
  config = tiny_config(
    model__num_blocks=1,
    train__ema_decay=0.9,
    train__lr_schedule="constant",  # the same steps whatever num_steps.
    train__num_steps=steps,
    train__checkpoint_every=2,
    train__eval_every=steps,
  )
  return train.train_and_evaluate(config, str(workdir))


def test_inference_gets_the_average_and_a_resumed_run_equals_a_straight_one(tmp_path):
  straight = run(tmp_path / "straight", 4)
  run(tmp_path / "resumed", 2)
  resumed = run(tmp_path / "resumed", 4)
  assert int(resumed.step) == int(straight.step) == 4
  for name in ("params", "ema_params"):
    for a, b in zip(
      jax.tree.leaves(getattr(straight, name)), jax.tree.leaves(getattr(resumed, name))
    ):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
  _, _, restored, step = inference.restore_model(str(tmp_path / "straight"))
  assert step == 4
  ema, raw = jax.tree.leaves(straight.ema_params), jax.tree.leaves(straight.params)
  got = [np.asarray(x) for x in jax.tree.leaves(restored)]
  assert all(np.array_equal(g, np.asarray(e)) for g, e in zip(got, ema))
  assert not all(np.allclose(g, np.asarray(r)) for g, r in zip(got, raw))
