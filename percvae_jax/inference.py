"""Super-resolution of whole images of any size, in fixed-shape overlapping tiles.

Shared by `evaluate` and `upscale`, so a score and a written PNG come from the same
computation. The LR image is cut into windows of one shape (`tile` px on a side, or
the image's side where that is smaller), so jit compiles once per shape and memory is
bounded by the tile, not by the image. Each window keeps only the stretch that lies
at least `margin` LR px inside it, the model's receptive radius (`receptive_radius`).
Windows at the image's edges are shifted inwards rather than padded, so every kept
pixel sees what it would in one pass over the whole image (the convolutions' zero
padding falls on the image's true border): the tiled result is the untiled one.
"""

from __future__ import annotations

import jax
import numpy as np

from percvae_jax import data
from percvae_jax import train

DEFAULT_TILE = 256  # LR px on a side of each window the model runs on.
# Samples draw z = mu + temperature * sigma * eps from the prior. Chosen on Set5 x2 by
# scripts/benchmark_quality.py's CPU budget: at 1.0 samples differ most but lie ~50%
# further from the HR (LPIPS) than the mean output; at 0.75 they still differ (mean
# pairwise LPIPS 0.013) and lie within 6% of it; at 0.6 they differ by under 0.01.
DEFAULT_TEMPERATURE = 0.75
# Bicubic upsampling reads 2 LR px on each side of an output pixel.
BICUBIC_REACH = 2


class InferenceError(ValueError):
  """A checkpoint or request that inference cannot serve; the message says what to do."""


def receptive_radius(params) -> int:
  """How many LR px on each side of a pixel the model may read, an upper bound.

  Counted from the convolution kernels, as if every one lay on a single path (the
  posterior's too, which generation never runs), plus the bicubic skip.
  """
  kernels = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params)
             if getattr(path[-1], "key", None) == "kernel" and leaf.ndim == 4]
  return sum(max(k.shape[0], k.shape[1]) // 2 for k in kernels) + BICUBIC_REACH


def window_spans(size: int, tile: int, margin: int) -> list[tuple[int, int, int]]:
  """(window start, kept start, kept end) along one axis of `size` LR px.

  Windows are `tile` px long (one window if the axis is no longer); each keeps a
  stretch that lies at least `margin` px from the window's ends, except at the
  image's own border.
  """
  if size <= tile:
    return [(0, 0, size)]
  step = tile - 2 * margin
  return [(min(max(start - margin, 0), size - tile), start, min(start + step, size))
          for start in range(0, size, step)]


def to_uint8(images: np.ndarray) -> np.ndarray:
  """Clips and rounds [0,1] images to 8 bits, as `degradation.quantize` and a PNG do."""
  scaled = np.clip(images, 0.0, 1.0)
  scaled *= 255.0  # in place: a 4000x3000 image's SR alone takes 576 MB as float32.
  return np.rint(scaled, out=scaled).astype(np.uint8)


class Upscaler:
  """Super-resolves LR images of any size with a fully convolutional model, by tiles."""

  def __init__(self, model, params, scale: int, tile: int = DEFAULT_TILE,
               temperature: float = DEFAULT_TEMPERATURE):
    if not temperature >= 0:
      raise InferenceError(f"--temperature={temperature} must be 0 or more (0: every "
                           "sample is the mean output, 1: the prior as trained).")
    self.scale = scale
    self.margin = receptive_radius(params)
    if tile <= 2 * self.margin:
      raise InferenceError(
          f"--tile={tile} leaves no room inside the {self.margin} px margin this model "
          f"needs on each side; use --tile={2 * self.margin + 64} or more.")
    self.tile = tile
    self._params = params
    self._mean = jax.jit(
        lambda params, lr: model.apply({"params": params}, lr, method="generate"))
    self._sample = jax.jit(
        lambda params, lr, key: model.apply({"params": params}, lr, method="generate",
                                            sample=True, temperature=temperature,
                                            rngs={"latent": key}))

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
        window = np.asarray(lr[None, top:top + window_h, left:left + window_w], np.float32)
        if key is None:
          sr = self._mean(self._params, window)
        else:
          sr = self._sample(self._params, window, jax.random.fold_in(key, i * len(cols) + j))
        sr = np.asarray(sr)[0]
        out[keep_top * s:keep_bottom * s, keep_left * s:keep_right * s] = sr[
            (keep_top - top) * s:(keep_bottom - top) * s,
            (keep_left - left) * s:(keep_right - left) * s]
    return out


def load_upscaler(workdir: str, step: int | None = None, tile: int = DEFAULT_TILE,
                  temperature: float = DEFAULT_TEMPERATURE):
  """(config, Upscaler, step) of a run's checkpoint, on this host's devices."""
  config = train.load_config(workdir)
  if config.model.name != "srvae":
    lr_side = config.data.hr_size // config.data.scale
    raise InferenceError(
        f"the checkpoint in {workdir} is a {config.model.name!r} model, which takes only "
        f"{lr_side}x{lr_side} px LR inputs (its training crop), so it cannot super-resolve "
        "whole images; evaluate and upscale need a fully convolutional model, trained "
        "with --config.model.name=srvae.")
  config, model, params, step = train.restore_for_inference(workdir, step)
  return config, Upscaler(model, params, config.data.scale, tile, temperature), step
