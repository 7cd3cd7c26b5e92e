"""The train and eval steps and the loop: `train_and_evaluate`.

One jitted step, SPMD over every device (devices.py): the global batch sharded along
the "data" mesh axis and the state replicated, so XLA inserts the gradient
all-reduce. Checkpoints (checkpoints.py) hold everything that determines the rest of
the run (parameters, optimiser state, step, RNG; the data order is a function of seed
and step), so rerunning the same command on the same workdir resumes it exactly.
"""

from __future__ import annotations

import contextlib
import math
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils

from percvae_jax import (
  checkpoints,
  data,
  degradation,
  devices,
  inference,
  losses,
  metrics,
  preemption,
  reporting,
)
from percvae_jax import config as config_lib
from percvae_jax import train_state as state_lib
from percvae_jax.errors import NonFiniteLossError
from percvae_jax.models import vae
from percvae_jax.train_state import TrainState


def make_train_step(config, vgg_module):
  """A pure `train_step(state, batch) -> (state, metrics)` for `config`."""
  tap_weights = config_lib.perceptual_taps(config) if vgg_module is not None else ()
  generated = losses.needs_generated(config.loss)
  # Only the SR-VAE draws prior samples in its training pass (validated).
  sampling = (
    {
      "samples": config.loss.samples,
      "temperature": config.loss.sample_temperature,
      "fixed_spread": config.loss.sample_spread == "fixed",
    }
    if losses.trains_samples(config.loss)
    else {}
  )

  def train_step(state: TrainState, batch):
    hr, lr = degradation.lr_from_hr(batch["hr"], config.data)
    rng, latent_key = jax.random.split(state.rng)

    def loss_fn(params):
      outputs = state.apply_fn(
        {"params": params}, lr, hr, generated=generated, rngs={"latent": latent_key}, **sampling
      )
      perceptual, samples = (
        losses.perceptual_terms(config.loss, vgg_module, state.vgg_params, outputs, hr, tap_weights)
        if vgg_module is not None
        else (jnp.zeros((), jnp.float32), {})
      )
      return losses.objective(config.loss, outputs, hr, perceptual, samples)

    (_, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    # A non-finite gradient's update is skipped (apply_if_finite): the parameters and
    # Adam's moments stay those of the last good step.
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(step=state.step + 1, rng=rng, opt_state=opt_state, params=params)
    if state.ema_params is not None:
      ema = state_lib.ema_update(state.ema_params, params, state.step, config.train.ema_decay)
      new_state = new_state.replace(ema_params=ema)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(terms["loss"]) & jnp.isfinite(grad_norm)
    terms = dict(
      terms,
      grad_norm=grad_norm,
      finite=finite.astype(jnp.float32),
      skipped_steps=opt_state.total_notfinite,
    )
    return new_state, terms

  return train_step


def jit_train_step(config, vgg_module, parallel: devices.DataParallel):
  """The train step as the loop runs it: jitted over the mesh, the state donated."""
  return jax.jit(
    make_train_step(config, vgg_module),
    in_shardings=(parallel.replicated, parallel.batch),
    out_shardings=(parallel.replicated, parallel.replicated),
    donate_argnums=0,
  )


def make_eval_step(config, model):
  """`eval_step(params, hr_uint8) -> per-image metrics and images`, latent mean."""

  def eval_step(params, hr_uint8):
    hr, lr = degradation.lr_from_hr(hr_uint8, config.data)
    sr = degradation.quantize(model.apply({"params": params}, lr, method="generate"))
    bicubic = degradation.quantize(degradation.bicubic_upscale(lr, config.data.scale))
    ours, base = metrics.quality(sr, hr), metrics.quality(bicubic, hr)
    values = {
      "psnr": ours["psnr_rgb"],
      "ssim": ours["ssim_rgb"],
      "bicubic_psnr": base["psnr_rgb"],
      "bicubic_ssim": base["ssim_rgb"],
    }
    return values, {"lr": lr, "sr": sr, "hr": hr}

  return eval_step


def evaluate(config, params, eval_step, eval_hr: np.ndarray, parallel):
  """Mean metrics over the eval crops, and the first batch's images."""
  batch_size = config.train.batch_size
  totals: dict[str, float] = {}
  first_images = None
  for start in range(0, len(eval_hr), batch_size):
    chunk = eval_hr[start : start + batch_size]
    padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - len(chunk), 0)])
    values, images = eval_step(params, parallel.shard_host_batch(padded))
    for k, v in jax.device_get(values).items():
      totals[k] = totals.get(k, 0.0) + float(np.sum(v[: len(chunk)]))
    if first_images is None:
      first_images = jax.device_get(images)
  return {k: v / len(eval_hr) for k, v in totals.items()}, first_images


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains `config` in `workdir`, resuming from its latest checkpoint; returns the state."""
  config_lib.validate(config, jax.device_count())
  is_writer = jax.process_index() == 0
  with checkpoints.WorkdirLock(workdir):
    parallel = devices.DataParallel()
    if jax.process_count() > 1 and config.data.name == "oxford_iiit_pet":
      if is_writer:  # one process downloads and prepares the dataset; the others read it.
        data.load_split(config.data, "train")
      multihost_utils.sync_global_devices("dataset prepared")
    train_images, eval_hr = data.training_data(config.data)
    count = jax.device_count()
    logging.info("Training on %d device%s.", count, "" if count == 1 else "s")

    model = vae.create(config, state_lib.compute_dtype(config))
    vgg_module, vgg_params = state_lib.perceptual_network(config)
    if vgg_module is not None:
      logging.info(
        "Perceptual VGG16: %s convolutions (loss.vgg_convolution=%s).",
        "Winograd F(4x4,3x3) after conv1_1" if vgg_module.winograd else "direct",
        config.loss.vgg_convolution,
      )
    state = jax.device_put(
      state_lib.create_train_state(config, model, vgg_params), parallel.replicated
    )
    manager = checkpoints.manager(workdir, config.train.keep_checkpoints)
    reporter = reporting.Reporter(workdir, enabled=is_writer)
    state, latest = checkpoints.restore_latest(manager, state, workdir)
    reporter.truncate_after(latest or 0)  # lines of an attempt that died before saving.
    if latest is not None:
      logging.info("Resuming from the checkpoint at step %d in %s.", latest, manager.directory)
    elif config.train.init_from:
      params = jax.device_put(inference.initial_params(config, state.params), parallel.replicated)
      state = state.replace(params=params, opt_state=state.tx.init(params))
      if state.ema_params is not None:
        state = state.replace(ema_params=jax.tree.map(jnp.copy, params))
    if is_writer:
      checkpoints.save_config(config, workdir)
    try:
      with preemption.StopRequest() as stop:
        state, last_eval, last_step = _loop(
          config, state, model, vgg_module, eval_hr, train_images, parallel, manager, reporter, stop
        )
    finally:
      manager.wait_until_finished()
      manager.close()
      reporter.close()
  if last_eval is not None:
    reporting.print_eval_summary(last_eval, last_step, len(eval_hr), config.data)
  return state


def _loop(
  config, state, model, vgg_module, eval_hr, train_images, parallel, manager, reporter, stop
):
  """Steps from the state's step to the end, or until `train.max_seconds` (evaluated
  there); returns the state, the last eval (None if stopped on request) and its step."""
  train_step = jit_train_step(config, vgg_module, parallel)
  eval_step = jax.jit(
    make_eval_step(config, model),
    in_shardings=(parallel.replicated, parallel.batch),
    out_shardings=parallel.replicated,
  )
  train = config.train
  batches = data.TrainBatches(
    train_images,
    config.data.hr_size,
    train.batch_size,
    train.seed,
    parallel.process_rows(train.batch_size),
    config.data.min_downscale,
  )
  first_step = int(jax.device_get(state.step))
  # Closed on every way out (a stop, a time budget, an error), so that the batch
  # threads end before the process does.
  stream = data.device_batches(batches, parallel, first_step, train.num_steps)
  with contextlib.closing(stream):
    last_eval = None
    budget = preemption.TimeBudget(train.max_seconds, train.log_every)
    log_time, log_step = time.perf_counter(), first_step
    pending = None  # the previous step's metrics, read while this one runs.
    for step in range(first_step + 1, train.num_steps + 1):
      state, terms = train_step(state, next(stream))
      if pending is not None:
        check_finite(config, *pending, manager)
      pending = (step, terms)
      out_of_time = budget.spent(step)
      last = step == train.num_steps or out_of_time
      if step % train.log_every == 0 or last:
        check_finite(config, step, terms, manager)
        elapsed = time.perf_counter() - log_time
        images_per_sec = (step - log_step) * train.batch_size / max(elapsed, 1e-9)
        values = {k: float(v) for k, v in jax.device_get(terms).items() if k != "finite"}
        values["images_per_sec"] = images_per_sec
        reporter.write(step, values)
        reporting.log_progress(step, train.num_steps, values, train.batch_size)
        log_time, log_step = time.perf_counter(), step
      if step % train.eval_every == 0 or last:
        params = state_lib.eval_params(state)
        last_eval, images = evaluate(config, params, eval_step, eval_hr, parallel)
        reporter.write(step, last_eval, split="eval")
        reporter.write_grid(step, "eval/lr_sr_hr", images, ("lr", "sr", "hr"))
        logging.info("eval at step %d: %s", step, reporting.format_terms(last_eval))
        log_time = time.perf_counter()  # eval time is not training throughput.
      stopping = stop.now(step)
      if step % train.checkpoint_every == 0 or last or stopping:
        checkpoints.save(manager, step, state, config)
        reporter.flush()
      if stopping:
        logging.warning("Stopped at step %d on request; rerun the same command to resume.", step)
        return state, None, step
      if out_of_time:
        logging.warning(
          "Stopped at step %d: train.max_seconds=%g reached; rerun the same command to continue.",
          step,
          train.max_seconds,
        )
        return state, last_eval, step
  return state, last_eval, train.num_steps


def check_finite(config, step: int, terms: dict, manager) -> None:
  if config.train.on_nonfinite == "skip" or float(terms["finite"]) == 1.0:
    return
  values = jax.device_get(terms)
  bad = [k for k, v in values.items() if k != "finite" and not math.isfinite(float(v))]
  raise NonFiniteLossError.at(
    step, bad, reporting.format_terms(values), manager.latest_step(), manager.directory
  )
