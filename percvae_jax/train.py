"""Training and evaluation loop: `train_and_evaluate(config, workdir)`.

One jitted step, SPMD over every device: `jax.jit` over a 1-D `Mesh` named "data",
the global batch sharded along it and the state replicated, so XLA inserts the
gradient all-reduce. Checkpoints (Orbax) hold everything that determines the rest
of the run (parameters, optimiser state, step, RNG; the data order is a function
of seed and step), so rerunning the same command on the same workdir resumes.
"""

from __future__ import annotations

import json
import logging as std_logging
import math
import os
import signal
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from percvae_jax import config as config_lib
from percvae_jax import data
from percvae_jax import degradation
from percvae_jax import losses
from percvae_jax import metrics
from percvae_jax import pretrained
from percvae_jax import reporting
from percvae_jax.models import vae
from percvae_jax.models import vgg

DATA_AXIS = "data"
CHECKPOINTED = ("step", "params", "opt_state", "rng", "skipped_steps")


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array  # raw uint32 key data, so that it checkpoints as an array.
  skipped_steps: jax.Array  # updates skipped for a non-finite loss.
  vgg_params: Any  # frozen; loaded from the weights, never checkpointed.
  apply_fn: Any = flax.struct.field(pytree_node=False)
  tx: Any = flax.struct.field(pytree_node=False)


def compute_dtype(config):
  return jnp.bfloat16 if config.train.compute_dtype == "bfloat16" else jnp.float32


def make_optimizer(train_config) -> optax.GradientTransformation:
  lr, warmup = train_config.learning_rate, train_config.warmup_steps
  if train_config.lr_schedule == "cosine":
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, lr, warmup, max(train_config.num_steps, warmup + 1), end_value=0.01 * lr)
  else:
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup])
  return optax.adam(schedule)


def perceptual_network(config):
  """(VGG16 module, its frozen params) for the configured taps, or (None, None)."""
  if config.loss.gamma == 0:
    return None, None
  taps = [t for t, _ in config_lib.perceptual_taps(config)]
  params = vgg.params_for_taps(pretrained.load_vgg16_params(config.loss.vgg_weights), taps)
  return vgg.VGG16(taps=tuple(taps), dtype=compute_dtype(config)), params


def create_train_state(config, model, vgg_params) -> TrainState:
  size = config.data.hr_size
  hr = jnp.zeros((1, size, size, 3), jnp.float32)
  lr = jnp.zeros((1, size // config.data.scale, size // config.data.scale, 3), jnp.float32)
  init_key, state_key = jax.random.split(jax.random.PRNGKey(config.train.seed))
  params_key, latent_key = jax.random.split(init_key)
  params = model.init({"params": params_key, "latent": latent_key}, lr, hr)["params"]
  tx = make_optimizer(config.train)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=tx.init(params), rng=state_key,
                    skipped_steps=jnp.zeros((), jnp.int32), vgg_params=vgg_params,
                    apply_fn=model.apply, tx=tx)


def lr_from_hr(hr_uint8, data_config):
  """The training pair from an HR uint8 batch: float HR in [0,1] and its LR."""
  hr = hr_uint8.astype(jnp.float32) / 255.0
  return hr, degradation.degrade(hr, data_config.scale, data_config.blur_sigma)


def make_train_step(config, vgg_module):
  """A pure `train_step(state, batch) -> (state, metrics)` for `config`."""
  tap_weights = config_lib.perceptual_taps(config) if vgg_module is not None else ()
  skip_nonfinite = config.train.on_nonfinite == "skip"

  def train_step(state: TrainState, batch):
    hr, lr = lr_from_hr(batch["hr"], config.data)
    rng, latent_key = jax.random.split(state.rng)

    def loss_fn(params):
      sr, kl = state.apply_fn({"params": params}, lr, hr, rngs={"latent": latent_key})
      perceptual = (losses.perceptual(vgg_module, state.vgg_params, sr, hr, tap_weights)
                    if vgg_module is not None else jnp.zeros((), jnp.float32))
      return losses.objective(config.loss, sr, hr, kl, perceptual)

    (_, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(terms["loss"]) & jnp.isfinite(optax.tree.norm(grads))
    # A non-finite step never reaches the parameters: "stop" ends the run with the
    # last good state, "skip" counts it and goes on.
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    new_state = state.replace(
        step=state.step + 1, rng=rng,
        params=keep(params, state.params), opt_state=keep(opt_state, state.opt_state),
        skipped_steps=state.skipped_steps + (~finite).astype(jnp.int32)
        if skip_nonfinite else state.skipped_steps)
    terms = dict(terms, grad_norm=optax.tree.norm(grads),
                 finite=finite.astype(jnp.float32), skipped_steps=new_state.skipped_steps)
    return new_state, terms

  return train_step


def make_eval_step(config, model):
  """`eval_step(params, hr_uint8) -> per-image metrics and images`, latent mean."""

  def eval_step(params, hr_uint8):
    hr, lr = lr_from_hr(hr_uint8, config.data)
    sr = degradation.quantize(model.apply({"params": params}, lr, method="generate"))
    bicubic = degradation.quantize(degradation.bicubic_upscale(lr, config.data.scale))
    ours, base = metrics.quality(sr, hr), metrics.quality(bicubic, hr)
    values = {"psnr": ours["psnr_rgb"], "ssim": ours["ssim_rgb"],
              "bicubic_psnr": base["psnr_rgb"], "bicubic_ssim": base["ssim_rgb"]}
    return values, {"lr": lr, "bicubic": bicubic, "sr": sr, "hr": hr}

  return eval_step


def image_grid(images: dict, scale: int, rows: int = 4) -> np.ndarray:
  """LR (nearest-upscaled) | SR | HR rows, uint8, for TensorBoard."""
  lr = np.repeat(np.repeat(np.asarray(images["lr"][:rows]), scale, 1), scale, 2)
  panels = [lr, np.asarray(images["sr"][:rows]), np.asarray(images["hr"][:rows])]
  grid = np.concatenate([np.concatenate(list(p), axis=0) for p in panels], axis=1)
  return np.round(np.clip(grid, 0, 1) * 255).astype(np.uint8)


class Sharding:
  """The data-parallel mesh over every device of every process."""

  def __init__(self):
    self.mesh = Mesh(np.asarray(jax.devices()), (DATA_AXIS,))
    self.replicated = NamedSharding(self.mesh, P())
    self.batch = NamedSharding(self.mesh, P(DATA_AXIS))

  def process_rows(self, global_batch: int) -> slice:
    """The rows of each global batch this process feeds: those of its own devices."""
    index_map = self.batch.addressable_devices_indices_map((global_batch,))
    starts = sorted({index[0].start or 0 for index in index_map.values()})
    per_device = global_batch // self.mesh.size
    rows = slice(starts[0], starts[-1] + per_device)
    if rows.stop - rows.start != per_device * len(starts):
      raise RuntimeError(f"this process's devices hold non-contiguous rows {starts}.")
    return rows

  def global_batch(self, local_rows: np.ndarray, global_batch: int):
    shape = (global_batch,) + local_rows.shape[1:]
    return jax.make_array_from_process_local_data(self.batch, local_rows, shape)

  def shard_host_batch(self, array: np.ndarray):
    """A batch every process holds whole, split over the devices."""
    return jax.make_array_from_callback(array.shape, self.batch, lambda i: array[i])


def checkpoint_manager(workdir: str, config) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=config.train.keep_checkpoints,
                                         create=True)
  quiet_orbax()
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"),
                               options=options,
                               item_handlers=ocp.StandardCheckpointHandler())


def quiet_orbax() -> None:
  """Keeps Orbax's per-save INFO lines out of the training log (warnings stay)."""
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _DropOrbaxInfo) for f in handler.filters):
    handler.addFilter(_DropOrbaxInfo())


class _DropOrbaxInfo:

  def filter(self, record) -> bool:
    return record.levelno >= std_logging.WARNING or (
        "/orbax/" not in record.pathname and "signaling_client" not in record.pathname)


def checkpointed(state: TrainState) -> dict:
  return {k: getattr(state, k) for k in CHECKPOINTED}


def restore_for_inference(workdir: str, step: int | None = None):
  """(config, model, params, step) of a run's checkpoint, on this host's devices.

  Works on any machine, whatever the devices the run was trained on: the arrays are
  restored replicated on the local devices (a CPU-only machine included).
  """
  config = load_config(workdir)
  model = vae.create(config)
  manager = checkpoint_manager(workdir, config)
  step = manager.latest_step() if step is None else step
  if step is None or step not in manager.all_steps():
    raise FileNotFoundError(
        f"no checkpoint{'' if step is None else f' at step {step}'} in "
        f"{manager.directory}; steps there: {list(manager.all_steps())}.")
  abstract = jax.eval_shape(lambda: create_train_state(config, model, None))
  state = restore(manager, abstract, step, Sharding().replicated)
  manager.close()
  return config, model, state.params, step


def restore(manager: ocp.CheckpointManager, state: TrainState, step: int,
            sharding=None) -> TrainState:
  """`state` with the checkpoint at `step`, laid out like `state` (any device count)."""
  to_struct = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                             sharding=sharding or x.sharding)
  target = jax.tree.map(to_struct, checkpointed(state))
  _check_compatible(manager, step, target)
  return state.replace(**manager.restore(step, args=ocp.args.StandardRestore(target)))


def _shapes(tree) -> dict[str, tuple]:
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf in flat}


def _check_compatible(manager, step: int, target) -> None:
  """Refuses a checkpoint of another architecture, listing what differs."""
  saved = _shapes(dict(manager.item_metadata(step).tree)["params"])
  wanted = _shapes(target["params"])
  problems = [f"  {k}: checkpoint {saved.get(k, 'missing')}, this config {wanted.get(k, 'missing')}"
              for k in sorted(saved.keys() | wanted.keys()) if saved.get(k) != wanted.get(k)]
  if problems:
    shown = "\n".join(problems[:12]) + (f"\n  ... and {len(problems) - 12} more"
                                         if len(problems) > 12 else "")
    raise config_lib.ConfigError(
        f"the checkpoint at step {step} in {manager.directory} was trained with another "
        f"configuration; {len(problems)} arrays differ:\n{shown}\nUse the configuration "
        "it was trained with (see config.json beside it), or a new --workdir.")


def save_config(config, workdir: str) -> None:
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The configuration a workdir's run was trained with."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"{path} not found: {workdir!r} is not the --workdir of a training run.")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def evaluate(config, state, eval_step, eval_hr: np.ndarray, sharding: Sharding):
  """Mean metrics over the eval crops, and the first batch's images."""
  batch_size = config.train.batch_size
  totals: dict[str, float] = {}
  first_images = None
  for start in range(0, len(eval_hr), batch_size):
    chunk = eval_hr[start:start + batch_size]
    padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - len(chunk), 0)])
    values, images = eval_step(state.params, sharding.shard_host_batch(padded))
    values = jax.device_get(values)
    for k, v in values.items():
      totals[k] = totals.get(k, 0.0) + float(np.sum(v[:len(chunk)]))
    if first_images is None:
      first_images = jax.device_get(images)
  return {k: v / len(eval_hr) for k, v in totals.items()}, first_images


class StopRequested:
  """Set by SIGTERM (the preemption notice): save, then exit cleanly."""

  def __init__(self):
    self.requested = False

  def __call__(self, signum, frame):
    del frame
    logging.warning("Received signal %d: saving a checkpoint, then exiting.", signum)
    self.requested = True


def initialize_distributed(coordinator_address: str | None, num_processes: int | None,
                           process_id: int | None) -> None:
  """Joins a multi-process run: explicit coordinator flags, or auto-detected on
  Cloud TPU, Slurm, Open MPI and Kubernetes (all arguments None)."""
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU-only runs.
  jax.distributed.initialize(coordinator_address, num_processes, process_id)
  if jax.process_index() != 0:
    logging.set_verbosity(logging.WARNING)  # only process 0 logs progress.


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains `config` in `workdir`, resuming from its latest checkpoint; returns the state."""
  config_lib.validate(config, jax.device_count())
  os.makedirs(workdir, exist_ok=True)
  is_writer = jax.process_index() == 0
  sharding = Sharding()
  if jax.process_count() > 1 and config.data.name == "oxford_iiit_pet":
    # One process downloads and prepares the dataset; the others then read it.
    if is_writer:
      data.load_split(config.data, "train")
    multihost_utils.sync_global_devices("dataset prepared")
  train_images = data.load_split(config.data, "train")
  eval_hr, _ = data.eval_crops(data.load_split(config.data, "eval"), config.data.hr_size,
                               config.data.num_eval_images, config.data.eval_crops_per_image)
  logging.info("%d training images, %d evaluation crops of %d px, %d devices.",
               len(train_images), len(eval_hr), config.data.hr_size, jax.device_count())

  model = vae.create(config, compute_dtype(config))
  vgg_module, vgg_params = perceptual_network(config)
  state = jax.device_put(create_train_state(config, model, vgg_params), sharding.replicated)
  manager = checkpoint_manager(workdir, config)
  reporter = reporting.Reporter(workdir, enabled=is_writer)
  latest = manager.latest_step()
  reporter.truncate_after(latest or 0)  # lines of an attempt that died before saving.
  if latest is not None:
    state = restore(manager, state, latest)
    logging.info("Resuming from the checkpoint at step %d in %s.", latest, manager.directory)
  elif is_writer:
    save_config(config, workdir)

  train_step = jax.jit(make_train_step(config, vgg_module),
                       in_shardings=(sharding.replicated, sharding.batch),
                       out_shardings=(sharding.replicated, sharding.replicated),
                       donate_argnums=0)
  eval_step = jax.jit(make_eval_step(config, model),
                      in_shardings=(sharding.replicated, sharding.batch),
                      out_shardings=sharding.replicated)
  batches = data.TrainBatches(train_images, config.data.hr_size, config.train.batch_size,
                              config.train.seed, sharding.process_rows(config.train.batch_size))
  first_step = int(jax.device_get(state.step))
  num_steps = config.train.num_steps
  stream = data.prefetch(
      {"hr": sharding.global_batch(batches.batch(s), config.train.batch_size)}
      for s in range(first_step, num_steps))

  stop = StopRequested()
  previous_handler = signal.signal(signal.SIGTERM, stop)
  last_eval = None
  try:
    log_time, log_step = time.perf_counter(), first_step
    pending = None  # the previous step's metrics, read while this one runs.
    for step in range(first_step + 1, num_steps + 1):
      state, terms = train_step(state, next(stream))
      if pending is not None:
        _check_finite(config, *pending, manager)
      pending = (step, terms)
      if step % config.train.log_every == 0 or step == num_steps:
        _check_finite(config, step, terms, manager)
        elapsed = time.perf_counter() - log_time
        images_per_sec = (step - log_step) * config.train.batch_size / max(elapsed, 1e-9)
        values = {k: float(v) for k, v in jax.device_get(terms).items() if k != "finite"}
        values["images_per_sec"] = images_per_sec
        reporter.write(step, values)
        eta = (num_steps - step) * config.train.batch_size / max(images_per_sec, 1e-9)
        logging.info("step %d/%d  %s  %.1f img/s  ETA %s", step, num_steps,
                     reporting.format_terms({k: values[k] for k in
                                             ("loss", "recon", "kl", "perceptual")}),
                     images_per_sec, reporting.format_duration(eta))
        log_time, log_step = time.perf_counter(), step
      if step % config.train.eval_every == 0 or step == num_steps:
        last_eval, images = evaluate(config, state, eval_step, eval_hr, sharding)
        reporter.write(step, last_eval, split="eval")
        reporter.write_images(step, {"eval/lr_sr_hr": image_grid(images, config.data.scale)})
        logging.info("eval at step %d: %s", step, reporting.format_terms(last_eval))
        log_time = time.perf_counter()  # eval time is not training throughput.
      if step % config.train.checkpoint_every == 0 or step == num_steps or stop.requested:
        manager.save(step, args=ocp.args.StandardSave(checkpointed(state)))
        reporter.flush()
      if stop.requested:
        logging.warning("Stopped at step %d on request; rerun the same command to resume.",
                        step)
        break
  finally:
    manager.wait_until_finished()
    manager.close()
    reporter.close()
    signal.signal(signal.SIGTERM, previous_handler)
  if last_eval is not None and not stop.requested:
    print_summary(last_eval, config, num_steps, len(eval_hr))
  return state


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or Inf; the message names the step and the term."""


def _check_finite(config, step: int, terms: dict, manager) -> None:
  if config.train.on_nonfinite == "skip" or float(terms["finite"]) == 1.0:
    return
  values = jax.device_get(terms)
  bad = [k for k, v in values.items() if k != "finite" and not math.isfinite(float(v))]
  latest = manager.latest_step()
  raise NonFiniteLossError(
      f"non-finite loss at step {step}: {', '.join(bad) or 'gradients'} "
      f"({reporting.format_terms(values)}). The last good checkpoint is step {latest} in "
      f"{manager.directory}. Lower config.train.learning_rate, or set "
      "config.train.on_nonfinite=skip to skip such steps.")


def print_summary(values: dict, config, step: int, num_images: int) -> None:
  print(f"\nEvaluation at step {step} on {num_images} "
        f"{config.data.hr_size}px crops (x{config.data.scale}, RGB in [0,1], vs HR):")
  print(f"  {'':8s} {'PSNR (dB)':>10s} {'SSIM':>8s}")
  print(f"  {'bicubic':8s} {values['bicubic_psnr']:10.2f} {values['bicubic_ssim']:8.4f}")
  print(f"  {'model':8s} {values['psnr']:10.2f} {values['ssim']:8.4f}")
  print(f"  {'gain':8s} {values['psnr'] - values['bicubic_psnr']:+10.2f} "
        f"{values['ssim'] - values['bicubic_ssim']:+8.4f}", flush=True)
