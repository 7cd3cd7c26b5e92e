"""Super-resolution of whole images of any size, in fixed-shape overlapping tiles.

Shared by `evaluate` and `upscale`, so a score and a written PNG come from the same
computation. The LR image is cut into windows of one shape, at most `tile` px on a
side and sized to the image (`window_length`), so jit compiles once per image size and
memory is bounded by the tile, not by the image. Each window keeps only the stretch that lies
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
from collections.abc import Iterator

import flax
import jax
import numpy as np
from absl import logging

from percvae_jax import checkpoints, devices, released
from percvae_jax import ensemble as ensemble_lib
from percvae_jax.errors import CheckpointError, ConfigError, InferenceError
from percvae_jax.models import vae

# LR px on a side that each window keeps, past the model's margins: the default tile is
# KEPT_TILE + 2 * margin (512 for x2, x3 and x4, whose margin is 26 px; 496 for the
# -fast models; 616 for x4-perceptual, whose LR projection reaches 78 px). Larger
# windows compute fewer margins: on a 12 MP output at x4 the models compute 1.18x the LR
# pixels in 512 px windows, 1.46x in 272 px ones, and run 15-26% faster for 0.1 GB more
# memory (docs/speed.md, 2026-12-07).
KEPT_TILE = 460
# Samples draw z = mu + temperature * sigma * eps from the prior. At 0.5, where
# x4-perceptual's samples are best (docs/model.md, scripts/sample_scores.py, K = 10):
# their LPIPS to the HR is 0.94x the mean output's on BSD100 and 1.01x on Set14 (0.75:
# 1.05x, 1.21x), pairwise LPIPS 0.078 / 0.055, the worst LR-PSNR 50.1 / 45.7 dB.
DEFAULT_TEMPERATURE = 0.5


def window_length(size: int, tile: int, margin: int) -> int:
  """The windows' length along an axis of `size` LR px: the whole axis where it fits
  in `tile`; else as few windows as `tile` allows, each the shortest that still
  covers the axis. Every window of an image has one shape (one compiled program per
  image size), and none computes far past what it keeps: a 1000 px axis takes 5
  windows of 229 px (1.14x its pixels) where 5 of 256 took 1.28x."""
  if size <= tile:
    return size
  count = -(-(size - 2 * margin) // (tile - 2 * margin))
  return -(-(size + 2 * margin * (count - 1)) // count)


def window_spans(size: int, tile: int, margin: int) -> list[tuple[int, int, int]]:
  """(window start, kept start, kept end) along one axis of `size` LR px.

  Windows are `window_length` px long; each keeps a stretch that lies at least
  `margin` px from the window's ends, except at the image's own border.
  """
  length = window_length(size, tile, margin)
  if length == size:
    return [(0, 0, size)]
  step = length - 2 * margin
  count = -(-(size - 2 * margin) // (tile - 2 * margin))
  spans = []
  for k in range(count):
    keep_start = 0 if k == 0 else k * step + margin
    keep_end = size if k == count - 1 else (k + 1) * step + margin
    spans.append((min(max(keep_start - margin, 0), size - length), keep_start, keep_end))
  return spans


def to_uint8(images: np.ndarray) -> np.ndarray:
  """Clips and rounds [0,1] images to 8 bits, as `degradation.quantize` and a PNG do."""
  scaled = np.clip(images, 0.0, 1.0)
  scaled *= 255.0  # in place: a 4000x3000 image's SR alone takes 576 MB as float32.
  return np.rint(scaled, out=scaled).astype(np.uint8)


class Upscaler:
  """Super-resolves LR images of any size with a fully convolutional model, by tiles.

  Images come whole: grayscale (1 channel) runs through the model as gray RGB and comes
  back as its luma; alpha (the last of 2 or 4 channels) is upscaled by the model too,
  from its mean, as a gray image (against bicubic on synthetic mattes: up to 11 dB
  better on sharp edges, 1-3 dB on hair-like strands, docs/upscaling.md), and the
  colour under fully transparent pixels is replaced by their visible neighbours'
  first, so whatever it held never shows.
  """

  # ITU-R 601-2 luma, as Pillow's convert("L"): a gray image's SR back to one channel.
  LUMA = np.array([0.299, 0.587, 0.114], np.float32)

  def __init__(
    self,
    model,
    params,
    scale: int,
    tile: int | None = None,
    temperature: float = DEFAULT_TEMPERATURE,
    ensemble: bool = False,
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
    # EDSR's "+": the mean output over the eight flips and rotations (ensemble.py), for
    # 8x the compute; it needs the whole image, so it comes as one band.
    self.ensemble = ensemble
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
    """The SR of one HxWxC LR image (C = 3: RGB; 1, 2, 4: L, LA, RGBA), float in [0,1]
    or uint8/uint16 read against their depth: float32, unclipped (alpha clipped),
    `scale` x larger, with C channels.

    Without `key`, from the prior's mean; with it, a prior sample. Each window then
    draws its own noise (`key` folded with the window's index), so a sample of an
    image larger than a tile is stitched from independent draws.
    """
    height, width, channels = np.shape(lr)
    out = np.empty((height * self.scale, width * self.scale, channels), np.float32)
    top = 0
    for band in self.bands(lr, key):
      out[top : top + len(band)] = band
      top += len(band)
    return out

  def bands(self, lr: np.ndarray, key: jax.Array | None = None) -> Iterator[np.ndarray]:
    """`self(lr, key)` as bands of whole SR rows (with `ensemble`: one band, the whole
    image), top to bottom."""
    if self.ensemble:
      if key is not None:
        raise InferenceError(
          "--ensemble averages the mean output over flips and rotations; samples are "
          "drawn without it: drop --ensemble or --samples."
        )
      tiled = lambda view: np.concatenate(list(self._tiled_bands(view)))
      yield ensemble_lib.self_ensemble(tiled, lr)
      return
    yield from self._tiled_bands(lr, key)

  def _tiled_bands(self, lr: np.ndarray, key: jax.Array | None = None) -> Iterator[np.ndarray]:
    """`self(lr, key)` as bands of whole SR rows, top to bottom, one per row of
    windows, each yielded as soon as it is done: a writer that stores each band as it
    comes holds one band, not the image (a 10000 px wide x2 band is 50 MB of RGB)."""
    height, width, channels = np.shape(lr)
    s = self.scale
    colour_channels = 1 if channels <= 2 else 3
    has_alpha = channels in (2, 4)
    colour = lr[..., :colour_channels]
    if has_alpha:
      colour = self.fill_transparent(colour, lr[..., -1])
    rows = window_spans(height, self.tile, self.margin)
    cols = window_spans(width, self.tile, self.margin)
    window_h = window_length(height, self.tile, self.margin)
    window_w = window_length(width, self.tile, self.margin)
    for i, (top, keep_top, keep_bottom) in enumerate(rows):
      band = np.empty(((keep_bottom - keep_top) * s, width * s, channels), np.float32)
      kept_rows = slice((keep_top - top) * s, (keep_bottom - top) * s)
      for j, (left, keep_left, keep_right) in enumerate(cols):
        window = (slice(top, top + window_h), slice(left, left + window_w))
        kept_cols = slice((keep_left - left) * s, (keep_right - left) * s)
        target = slice(keep_left * s, keep_right * s)
        if key is None:
          sr = self._mean(self._params, self._model_input(colour[window]))
        else:
          window_key = jax.random.fold_in(key, i * len(cols) + j)
          sr = self._sample(self._params, self._model_input(colour[window]), window_key)
        sr = np.asarray(sr)[0, kept_rows, kept_cols]
        if colour_channels == 1:
          sr = (sr @ self.LUMA)[..., None]
        band[:, target, :colour_channels] = sr
        if has_alpha:
          alpha = self._mean(self._params, self._model_input(lr[window][..., -1:]))
          alpha = np.asarray(alpha)[0, kept_rows, kept_cols].mean(-1)
          band[:, target, -1] = np.clip(alpha, 0.0, 1.0)
      yield band

  @staticmethod
  def _model_input(window: np.ndarray) -> np.ndarray:
    """A 1xHxWx3 float32 batch of a window: integers read against their bit depth
    (65535 is white in 16 bits), one channel repeated as gray RGB."""
    window = np.asarray(window)
    if np.issubdtype(window.dtype, np.integer):
      unit = window.astype(np.float32) / np.float32(np.iinfo(window.dtype).max)
    else:
      unit = window.astype(np.float32, copy=False)
    if unit.shape[-1] == 1:
      unit = np.repeat(unit, 3, axis=-1)
    return unit[None]

  @staticmethod
  def fill_transparent(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """`colour` with each fully transparent pixel's value replaced by its visible
    neighbours' (push-pull: alpha-weighted 2x2 means up a pyramid, then back down,
    each level's holes taken from the next coarser), in `colour`'s dtype.

    The colour under alpha 0 is often junk (black, or what an editor left there);
    the model's kernels would spread it into the visible pixels near the edge, and the
    upscaled alpha, softer than a step, would show it. Visible pixels keep theirs.
    """
    hole = np.asarray(alpha) == 0
    if not hole.any() or hole.all():
      return colour
    colour = np.asarray(colour)
    weight = (~hole).astype(np.float32)[..., None]
    levels = [(colour.astype(np.float32) * weight, weight)]
    while max(levels[-1][1].shape[:2]) > 1:
      levels.append(tuple(Upscaler._halve(x) for x in levels[-1]))
    summed, weight = levels[-1]
    filled = summed / np.maximum(weight, 1e-12)
    for summed, weight in reversed(levels[:-1]):
      coarser = np.repeat(np.repeat(filled, 2, axis=0), 2, axis=1)[: len(summed), : summed.shape[1]]
      filled = summed + (1.0 - weight) * coarser  # `summed` is the visible mean x weight.
    if np.issubdtype(colour.dtype, np.integer):
      filled = np.clip(np.rint(filled), 0, np.iinfo(colour.dtype).max)
    return np.where(hole[..., None], filled.astype(colour.dtype), colour)

  @staticmethod
  def _halve(x: np.ndarray) -> np.ndarray:
    """2x2 means of HxWxC `x`, an odd side padded with zeros (no weight)."""
    h, w = x.shape[:2]
    x = np.pad(x, ((0, h % 2), (0, w % 2), (0, 0)))
    return 0.25 * (x[0::2, 0::2] + x[1::2, 0::2] + x[0::2, 1::2] + x[1::2, 1::2])


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


def restore_average(
  runs: list[tuple[str, int | None]],
  models: list[str] = (),
  root: str = released.RELEASED_DIR,
):
  """(config, model, params, sources): the mean of the generation parameters of several
  runs' checkpoints, each a (workdir, step or None for the latest), and released models
  (by name, from `root`). A model soup (Wortsman et al., 2022): fine-tunes of one model
  stay in one basin, and their mean scores above each of them at no cost at inference;
  a release can be an ingredient, so a soup can take in fine-tunes of itself. The
  ingredients must share the model and the scale (the first one's config is returned);
  `sources` says what went in: {"run", "step"} or {"model", "step"} each."""
  loaded = []
  for workdir, wanted in runs:
    config, _, params, step = restore_model(workdir, wanted)
    run = os.path.basename(os.path.normpath(workdir))
    loaded.append((repr(workdir), config, params, {"run": run, "step": int(step)}))
  for name in models:
    config, params = released.load(name, root)
    record = released.metadata(name, root)
    source = {"model": name, "step": int(record.get("step", 0))}
    if "averaged" in record:  # A soup's own ingredients stay on record.
      source["averaged"] = record["averaged"]
    loaded.append((f"--model {name}", config, params, source))
  if not loaded:
    raise InferenceError("nothing to average: give at least one run or released model.")
  first, config = loaded[0][0], loaded[0][1]
  for label, other, _, _ in loaded[1:]:
    if other.model.to_dict() != config.model.to_dict() or other.data.scale != config.data.scale:
      raise InferenceError(
        f"{label} is not the same model as {first} (its config.model or scale differs): "
        "only models of one architecture and scale can be averaged."
      )
  # A release keeps no posterior: the mean is of what `generate` runs.
  trees = [
    {k: v for k, v in params.items() if k not in released.TRAINING_ONLY}
    for _, _, params, _ in loaded
  ]
  average = jax.tree.map(lambda *leaves: sum(leaves) / len(leaves), *trees)
  return config, vae.create(config), average, [source for *_, source in loaded]


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
  ensemble: bool = False,
):
  """(config, Upscaler, source) for `load_model`'s arguments."""
  config, model, params, source = load_model(workdir, name, scale, step)
  upscaler = Upscaler(model, params, config.data.scale, tile, temperature, ensemble)
  return config, upscaler, source


def added_blocks(fresh: dict, given: dict) -> list:
  """The keys (flattened) of the last convolution of each residual block that
  `fresh` has and `given` lacks, in a trunk `given` has: zeroed, such a block adds
  nothing, so a deeper model (more `model.num_blocks`) starts as the loaded one and
  its new blocks learn from there."""
  trunks = {k[0] for k in given}
  blocks = {k[:2] for k in given}
  return [
    k
    for k in fresh
    if len(k) == 4
    and k[0] in trunks
    and k[1].startswith("ResBlock_")
    and k[:2] not in blocks
    and k[2] == "Conv_1"
  ]


def initial_params(config, params):
  """`params` overwritten by those of `config.train.init_from` where it has them (a
  released model lacks the posterior, which keeps its fresh initialisation, or with
  `train.posterior_from_prior` starts equal to the prior). A model of another scale and
  the same `config.model` gives all but the layers whose shape depends on the scale (the
  upsampling head, the posterior's input): pretraining at x2 then fine-tuning at x3 or
  x4, as EDSR does. A deeper model (more `model.num_blocks`) gets every layer the
  loaded one has, its extra residual blocks starting as the identity."""
  source = config.train.init_from
  if not source:
    return params
  is_workdir = os.path.isdir(source)
  if not is_workdir and source not in released.names():
    raise ConfigError(
      f"config.train.init_from={source!r} is neither a run's workdir nor a released "
      f"model ({', '.join(released.names())}); train that run first (the config's "
      "docstring gives its command) or name another."
    )
  loaded_config, _, loaded, _ = load_model(
    workdir=source if is_workdir else None, name=None if is_workdir else source
  )
  fresh = flax.traverse_util.flatten_dict(params)
  given = flax.traverse_util.flatten_dict(jax.device_get(loaded))
  other_scale = loaded_config.data.scale != config.data.scale
  same_model = loaded_config.model.to_dict() == config.model.to_dict()
  wrong = [k for k in given if k in fresh and given[k].shape != fresh[k].shape]
  if other_scale and same_model:
    wrong = []  # the scale's own layers start fresh.
  if wrong or not set(given) & set(fresh):
    raise ConfigError(
      f"config.train.init_from={source!r} holds a model of another shape (model "
      f"{loaded_config.model.to_dict()}); give this run the same config.model fields."
    )
  kept = {k: v for k, v in given.items() if k in fresh and v.shape == fresh[k].shape}
  added = added_blocks(fresh, given)
  kept.update({k: np.zeros_like(fresh[k]) for k in added})
  logging.info(
    "Starting from the parameters of %s%s%s.",
    source,
    f" (x{loaded_config.data.scale}; the layers of x{config.data.scale}'s shape fresh)"
    if other_scale
    else "",
    f" ({len({k[:2] for k in added})} residual blocks added, each starting as the identity)"
    if added
    else "",
  )
  merged = flax.traverse_util.unflatten_dict({k: kept.get(k, v) for k, v in fresh.items()})
  if config.train.posterior_from_prior and "posterior" in merged and "posterior" not in loaded:
    merged["posterior"] = vae.posterior_from_prior(merged["prior"], merged["posterior"])
  return merged
