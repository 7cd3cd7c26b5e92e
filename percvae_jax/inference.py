"""Super-resolution of whole images of any size, in fixed-shape overlapping tiles.

Shared by `evaluate` and `upscale`, so a score and a written PNG come from the same
computation. The LR image is cut into windows of one shape (`tile` px on a side, or
the image's side where that is smaller), so jit compiles once per shape and memory is
bounded by the tile, not by the image. Each window keeps only the stretch that lies
at least `margin` LR px inside it, the reach of the model's generation path
(`vae.generation_reach`). Windows at the image's edges are shifted inwards rather
than padded, so every kept pixel sees what it would in one pass over the whole image
(the convolutions' zero padding falls on the image's true border): the tiled result
is the untiled one.

Models come from a training run's checkpoint (`--workdir`) or from the released
models shipped with the package (`--model NAME`, or the one for `--scale S`).
"""

from __future__ import annotations

import os

import flax
import jax
import numpy as np
from absl import logging

from percvae_jax import checkpoints, devices, released
from percvae_jax.errors import CheckpointError, ConfigError, InferenceError
from percvae_jax.models import vae

# LR px on a side that each window keeps, past the model's margins: the default tile is
# KEPT_TILE + 2 * margin (256 for the fidelity models, whose margin is 18 px; 408 for
# x4-perceptual, whose LR projection reaches 94 px), so no model spends most of a
# window on its margins. On 2 CPU cores windows of 192 to 384 px run at the same speed
# per pixel (scripts/benchmark_speed.py --explore).
KEPT_TILE = 220
# Samples draw z = mu + temperature * sigma * eps from the prior. At 0.75, x4-perceptual's
# samples on BSD100 x4 differ by pairwise LPIPS 0.12 and lie within 5% of the mean
# output's LPIPS to the HR (README, "Samples that explore the SR space").
DEFAULT_TEMPERATURE = 0.75


def window_spans(size: int, tile: int, margin: int) -> list[tuple[int, int, int]]:
  """(window start, kept start, kept end) along one axis of `size` LR px.

  Windows are `tile` px long (one window if the axis is no longer); each keeps a
  stretch that lies at least `margin` px from the window's ends, except at the
  image's own border.
  """
  if size <= tile:
    return [(0, 0, size)]
  step = tile - 2 * margin
  return [
    (min(max(start - margin, 0), size - tile), start, min(start + step, size))
    for start in range(0, size, step)
  ]


def to_uint8(images: np.ndarray) -> np.ndarray:
  """Clips and rounds [0,1] images to 8 bits, as `degradation.quantize` and a PNG do."""
  scaled = np.clip(images, 0.0, 1.0)
  scaled *= 255.0  # in place: a 4000x3000 image's SR alone takes 576 MB as float32.
  return np.rint(scaled, out=scaled).astype(np.uint8)


class Upscaler:
  """Super-resolves LR images of any size with a fully convolutional model, by tiles."""

  def __init__(
    self,
    model,
    params,
    scale: int,
    tile: int | None = None,
    temperature: float = DEFAULT_TEMPERATURE,
  ):
    if not temperature >= 0:
      raise InferenceError(
        f"--temperature={temperature} must be 0 or more (0: every "
        "sample is the mean output, 1: the prior as trained)."
      )
    self.scale = scale
    self.margin = vae.generation_reach(model, params)
    tile = KEPT_TILE + 2 * self.margin if tile is None else tile
    if tile <= 2 * self.margin:
      raise InferenceError(
        f"--tile={tile} leaves no room inside the {self.margin} px margin this model "
        f"needs on each side; use --tile={2 * self.margin + 64} or more."
      )
    self.tile = tile
    self._params = params
    self._mean = jax.jit(lambda params, lr: model.apply({"params": params}, lr, method="generate"))
    self._sample = jax.jit(
      lambda params, lr, key: model.apply(
        {"params": params},
        lr,
        method="generate",
        sample=True,
        temperature=temperature,
        rngs={"latent": key},
      )
    )

  def __call__(self, lr: np.ndarray, key: jax.Array | None = None) -> np.ndarray:
    """The SR of one HxWx3 float LR image in [0,1]: float32, unclipped, `scale` x larger.

    Without `key`, from the prior's mean; with it, a prior sample. Each window then
    draws its own noise (`key` folded with the window's index), so a sample of an
    image larger than a tile is stitched from independent draws.
    """
    height, width = lr.shape[:2]
    s = self.scale
    out = np.empty((height * s, width * s, 3), np.float32)
    rows = window_spans(height, self.tile, self.margin)
    cols = window_spans(width, self.tile, self.margin)
    window_h, window_w = min(height, self.tile), min(width, self.tile)
    for i, (top, keep_top, keep_bottom) in enumerate(rows):
      for j, (left, keep_left, keep_right) in enumerate(cols):
        window = np.asarray(lr[None, top : top + window_h, left : left + window_w], np.float32)
        if key is None:
          sr = self._mean(self._params, window)
        else:
          sr = self._sample(self._params, window, jax.random.fold_in(key, i * len(cols) + j))
        sr = np.asarray(sr)[0]
        out[keep_top * s : keep_bottom * s, keep_left * s : keep_right * s] = sr[
          (keep_top - top) * s : (keep_bottom - top) * s,
          (keep_left - left) * s : (keep_right - left) * s,
        ]
    return out


def restore_model(workdir: str, step: int | None = None):
  """(config, model, params, step) of a run's checkpoint, the parameters alone,
  replicated on this host's devices (whatever the devices it was trained on)."""
  config = checkpoints.load_config(workdir)
  model = vae.create(config)
  if not os.path.isdir(checkpoints.checkpoint_dir(workdir)):
    raise CheckpointError(
      f"{workdir!r} has no checkpoints/ folder yet; train first, or pass "
      "the --workdir of a run that saved a checkpoint."
    )
  manager = checkpoints.manager(workdir, read_only=True)
  try:
    steps = list(manager.all_steps())
    step = manager.latest_step() if step is None else step
    if step is None or step not in steps:
      raise CheckpointError(
        f"no checkpoint{'' if step is None else f' at step {step}'} in "
        f"{manager.directory}; steps there: {steps}. Pass one of them with --step, or "
        "train first."
      )
    abstract = jax.eval_shape(lambda: vae.init_params(model, config, jax.random.PRNGKey(0)))
    params = checkpoints.restore_params(manager, step, abstract, devices.local_replicated())
  finally:
    manager.close()
  return config, model, params, step


def load_model(
  workdir: str | None = None,
  name: str | None = None,
  scale: int | None = None,
  step: int | None = None,
):
  """(config, model, params, source) from a run's --workdir, a released model's name,
  or the released model for `scale`; a `scale` that the model does not have is refused.
  `source` says where it came from: {"workdir", "step"} or {"model"}."""
  if workdir is not None and name is not None:
    raise InferenceError("pass --workdir (a training run) or --model (a released model), not both.")
  if workdir is not None:
    config, model, params, step = restore_model(workdir, step)
    source = {"workdir": workdir, "step": int(step)}
    label = f"the checkpoint at step {step} in {workdir}"
  else:
    name = name or released.name_for_scale(scale)
    config, params = released.load(name)
    model = vae.create(config)
    source = {"model": name}
    label = f"the released model {name!r}"
  if scale is not None and scale != config.data.scale:
    raise InferenceError(
      f"--scale={scale}, but {label} upscales by {config.data.scale}; pass "
      f"--scale={config.data.scale}, or a model of scale {scale} (released: "
      f"{', '.join(released.names())})."
    )
  if config.model.name != "srvae":
    lr_side = config.data.hr_size // config.data.scale
    raise InferenceError(
      f"{label} is a {config.model.name!r} model, which takes only {lr_side}x{lr_side} px "
      "LR inputs (its training crop), so it cannot super-resolve whole images; evaluate "
      "and upscale need a fully convolutional model, trained with "
      "--config.model.name=srvae."
    )
  return config, model, params, source


def load_upscaler(
  workdir: str | None = None,
  name: str | None = None,
  scale: int | None = None,
  step: int | None = None,
  tile: int | None = None,
  temperature: float = DEFAULT_TEMPERATURE,
):
  """(config, Upscaler, source) for `load_model`'s arguments."""
  config, model, params, source = load_model(workdir, name, scale, step)
  return config, Upscaler(model, params, config.data.scale, tile, temperature), source


def initial_params(config, params):
  """`params` overwritten by those of `config.train.init_from` where it has them (a
  released model lacks the posterior, which keeps its fresh initialisation, or with
  `train.posterior_from_prior` starts equal to the prior: vae.posterior_from_prior)."""
  source = config.train.init_from
  if not source:
    return params
  is_workdir = os.path.isdir(source)
  loaded_config, _, loaded, _ = load_model(
    workdir=source if is_workdir else None,
    name=None if is_workdir else source,
    scale=config.data.scale,
  )
  fresh = flax.traverse_util.flatten_dict(params)
  given = flax.traverse_util.flatten_dict(jax.device_get(loaded))
  wrong = [k for k in given if k in fresh and given[k].shape != fresh[k].shape]
  if wrong or not set(given) & set(fresh):
    raise ConfigError(
      f"config.train.init_from={source!r} holds a model of another shape (model "
      f"{loaded_config.model.to_dict()}); give this run the same config.model fields."
    )
  logging.info("Starting from the parameters of %s.", source)
  merged = flax.traverse_util.unflatten_dict({k: given.get(k, v) for k, v in fresh.items()})
  if config.train.posterior_from_prior and "posterior" in merged and "posterior" not in loaded:
    merged["posterior"] = vae.posterior_from_prior(merged["prior"], merged["posterior"])
  return merged
