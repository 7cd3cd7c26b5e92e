"""The train state: what a checkpoint holds (parameters, optimiser state, step, RNG)
plus the frozen perceptual VGG16, and the optimiser that updates it."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from percvae_jax import config as config_lib
from percvae_jax import losses, pretrained
from percvae_jax.models import vae, vgg

# apply_if_finite's limit of skipped (non-finite) updates in a row: never reached.
_MAX_CONSECUTIVE_NONFINITE = 2**30


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array  # raw uint32 key data, so that it checkpoints as an array.
  vgg_params: Any  # frozen; loaded from the weights, never checkpointed.
  apply_fn: Any = flax.struct.field(pytree_node=False)
  tx: Any = flax.struct.field(pytree_node=False)
  # With train.ema_decay > 0, the weights' exponential moving average: what evaluation,
  # releases and inference use (checkpointed beside the params); None without.
  ema_params: Any = None


def ema_update(ema, params, step, decay: float):
  """One step of the weights' moving average. Its decay ramps up as (1 + t) / (10 + t)
  to `decay`, so that the average of a short run is not held by its first steps."""
  rate = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
  return jax.tree.map(lambda e, p: rate * e + (1.0 - rate) * p, ema, params)


def eval_params(state):
  """The parameters evaluated and released: the moving average where there is one."""
  return state.params if state.ema_params is None else state.ema_params


def compute_dtype(config):
  return jnp.bfloat16 if config.train.compute_dtype == "bfloat16" else jnp.float32


def make_optimizer(train_config) -> optax.GradientTransformation:
  """Adam on a warm-up + cosine (or constant) schedule; a non-finite gradient's update
  is skipped and counted (`skipped_steps`)."""
  lr, warmup = train_config.learning_rate, train_config.warmup_steps
  if train_config.lr_schedule == "cosine":
    schedule = optax.warmup_cosine_decay_schedule(
      0.0, lr, warmup, max(train_config.num_steps, warmup + 1), end_value=0.01 * lr
    )
  else:
    schedule = optax.join_schedules(
      [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup]
    )
  return optax.apply_if_finite(optax.adam(schedule), _MAX_CONSECUTIVE_NONFINITE)


def perceptual_module(config):
  """The VGG16 module of the configured taps, or None without a perceptual term."""
  if not losses.uses_perceptual(config.loss):
    return None
  taps = tuple(t for t, _ in config_lib.perceptual_taps(config))
  winograd = config_lib.vgg_winograd(config, jax.default_backend())
  return vgg.VGG16(taps=taps, dtype=compute_dtype(config), winograd=winograd)


def perceptual_network(config):
  """(VGG16 module, its frozen params) for the configured taps, or (None, None)."""
  module = perceptual_module(config)
  if module is None:
    return None, None
  return module, vgg.params_for_taps(
    pretrained.load_vgg16_params(config.loss.vgg_weights), module.taps
  )


def create_train_state(config, model, vgg_params) -> TrainState:
  init_key, state_key = jax.random.split(jax.random.PRNGKey(config.train.seed))
  params = vae.init_params(model, config, init_key)
  tx = make_optimizer(config.train)
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    opt_state=tx.init(params),
    rng=state_key,
    vgg_params=vgg_params,
    apply_fn=model.apply,
    tx=tx,
    # A copy: the step donates the state's buffers, each once.
    ema_params=jax.tree.map(jnp.copy, params) if config.train.ema_decay > 0 else None,
  )
