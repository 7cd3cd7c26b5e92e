"""Scores a model over an image set as the published SR tables do: the one scorer
that `evaluate`, the release script, the training curves and the benchmarks share.

The classic protocol mod-crops each HR image to a multiple of the scale and makes its
LR by PIL-exact bicubic downscaling (with `blur_sigma` > 0: the training degradation
instead), quantised to 8 bits. The model runs on the whole image (by tiles, see
inference.py) and, like bicubic, its output is clipped and quantised to 8 bits before
it is measured, as a saved PNG would be. Metrics per image and averaged: PSNR and SSIM
on RGB, on BT.601 Y with `scale` px of border shaved, LPIPS (AlexNet), and LR-PSNR.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from absl import logging

from percvae_jax import data, data_root, degradation, inference, lpips, metrics
from percvae_jax.errors import DataError

METRICS = ("psnr_rgb", "ssim_rgb", "psnr_y", "ssim_y", "lpips", "lr_psnr")
SAMPLE_METRICS = (
  "lpips",
  "pairwise_lpips",
  "lr_psnr",
  "worst_lr_psnr",
  "best_of_k_lpips",
  "diversity",
)
# LPIPS's AlexNet needs 31 px on a side; SSIM's 11 px window fits inside the shaved Y.
MIN_HR_SIDE = 32


def folder_sources(folder: str, flag: str = "--data-dir") -> list:
  """(name, load) per image file below `folder` (a path, or a set's name under the data
  root); `load()` may raise data.BadImage."""
  root = data_root.resolve(folder)
  if not os.path.isdir(root):
    raise DataError(
      f"{flag}={folder!r} is not a directory (nor a set under the data root "
      f"{data_root.root()}); point it at a folder of HR images, or name a set such as Set5."
    )
  paths = data.list_images(root)
  if not paths:
    raise DataError(
      f"{flag}={folder!r} holds no image files ({', '.join(data.IMAGE_EXTENSIONS)}); "
      "point it at a folder of HR images, such as Set5."
    )
  return [(os.path.relpath(p, root), functools.partial(data.decode_image, p)) for p in paths]


def mod_crop(image: np.ndarray, scale: int) -> np.ndarray:
  """The top-left crop whose sides are multiples of `scale` (MATLAB's modcrop)."""
  height, width = image.shape[:2]
  return image[: height - height % scale, : width - width % scale]


@functools.partial(jax.jit, static_argnames="border")
def _quality(images, targets, border):
  return metrics.quality(images, targets, border)


# Jitted, so that each new image size compiles once, not once per operation: eagerly,
# the polyphase bicubic alone took 1.3 s per size on 2 cores.
_degrade = jax.jit(degradation.degrade, static_argnames=("scale", "blur_sigma"))
_bicubic_upscale = jax.jit(degradation.bicubic_upscale, static_argnames="scale")


@functools.partial(jax.jit, static_argnames=("scale", "blur_sigma"))
def _lr_psnr(images, lr, scale, blur_sigma):
  """NTIRE 2021's LR consistency: RGB PSNR of the SR downscaled with the degradation's
  kernel against the LR input."""
  return metrics.psnr(degradation.downscale(images, scale, blur_sigma), lr)


@dataclasses.dataclass
class Samples:
  """Draw K prior samples of each image (`upscale --samples K`) and score them."""

  count: int
  lpips_map: Any  # spatial LPIPS: (N, H, W) maps, for the diversity score.
  seed: int = 0


def score(
  hr_uint8: np.ndarray,
  scale: int,
  blur_sigma: float,
  lpips_fn,
  upscaler: Callable | None = None,
  samples: Samples | None = None,
  index: int = 0,
  degrade: Callable | None = None,
) -> tuple[dict, dict]:
  """Metrics of bicubic (and of `upscaler`, if given) on one mod-cropped HR image.
  `degrade(hr, scale)`, where given, makes the LR in place of the protocol's (as
  scripts/benchmark_peers.py's OpenCV LR); LR-PSNR still reads the protocol's kernel.

  Returns ({"bicubic": M, "model": M[, "samples": S]}, the uint8 images {"lr",
  "bicubic", "model", "hr"}), M holding METRICS (LPIPS is NaN without `lpips_fn`) and
  S SAMPLE_METRICS (`sample_scores`). Both outputs are measured in one batch: one
  compile.
  """
  hr = hr_uint8.astype(np.float32) / 255.0
  if degrade is None:
    lr = np.asarray(_degrade(hr, scale=scale, blur_sigma=blur_sigma))
  else:
    lr = np.asarray(degrade(hr, scale), np.float32)
  images = {"bicubic": inference.to_uint8(np.asarray(_bicubic_upscale(lr, scale=scale)))}
  if upscaler is not None:
    images["model"] = inference.to_uint8(upscaler(lr))
  outputs = np.stack(list(images.values())).astype(np.float32) / 255.0
  targets = np.broadcast_to(hr, outputs.shape)
  values = dict(
    _quality(outputs, targets, scale),
    lpips=lpips_fn(outputs, targets) if lpips_fn else np.full(len(outputs), np.nan),
    lr_psnr=_lr_psnr(outputs, lr[None], scale, blur_sigma),
  )
  values = jax.device_get(values)
  scores = {kind: {m: float(values[m][k]) for m in METRICS} for k, kind in enumerate(images)}
  if upscaler is not None and samples is not None and samples.count > 0:
    key = jax.random.fold_in(jax.random.PRNGKey(samples.seed), index)
    scores["samples"] = sample_scores(hr, lr, scale, blur_sigma, upscaler, lpips_fn, samples, key)
  return scores, dict(images, lr=inference.to_uint8(lr), hr=hr_uint8)


def sample_scores(
  hr, lr, scale: int, blur_sigma: float, upscaler, lpips_fn, samples: Samples, key
) -> dict:
  """K prior samples of one image, judged as SRFlow and NTIRE 2021's "Learning the
  Super-Resolution Space" do: each sample's LPIPS to the HR (mean), the mean pairwise
  LPIPS between samples, LR-PSNR (mean and worst), the best sample's LPIPS, and the
  diversity score (global - local) / global x 100, where global is the best sample's
  LPIPS and local the mean over pixels of the per-pixel minimum of the samples' LPIPS
  maps (0 for identical samples)."""
  drawn = (
    np.stack(
      [inference.to_uint8(upscaler(lr, jax.random.fold_in(key, k))) for k in range(samples.count)]
    ).astype(np.float32)
    / 255.0
  )
  targets = np.broadcast_to(hr, drawn.shape)
  to_hr = np.asarray(lpips_fn(drawn, targets))
  maps = np.asarray(samples.lpips_map(drawn, targets))
  pairs = [(i, j) for i in range(len(drawn)) for j in range(i + 1, len(drawn))]
  pairwise = (
    np.asarray(lpips_fn(drawn[[i for i, _ in pairs]], drawn[[j for _, j in pairs]]))
    if pairs
    else np.zeros(1)
  )
  lr_psnr = np.asarray(_lr_psnr(drawn, lr[None], scale, blur_sigma))
  best = float(np.min(maps.mean(axis=(1, 2))))
  local = float(np.mean(np.min(maps, axis=0)))
  return {
    "lpips": float(np.mean(to_hr)),
    "pairwise_lpips": float(np.mean(pairwise)),
    "lr_psnr": float(np.mean(lr_psnr)),
    "worst_lr_psnr": float(np.min(lr_psnr)),
    "best_of_k_lpips": float(np.min(to_hr)),
    "diversity": (best - local) / best * 100.0 if best > 0 else 0.0,
    "per_sample_lpips": [float(v) for v in to_hr],
  }


def score_images(
  sources,
  scale: int,
  blur_sigma: float,
  lpips_fn,
  upscaler: Callable | None = None,
  samples: Samples | None = None,
  degrade: Callable | None = None,
) -> Iterator:
  """`score` over (name, load) sources: yields (name, scores, images) per image, and
  (name, None, None) for one that cannot be used, after a warning that says why."""
  for index, (name, load) in enumerate(sources):
    try:
      hr = mod_crop(load(), scale)
    except data.BadImage as e:
      logging.warning("skipping unreadable image %s", e)
      yield name, None, None
      continue
    if min(hr.shape[:2]) < MIN_HR_SIDE:
      logging.warning(
        "skipping %s: %dx%d px (mod-cropped) is smaller than the %d px evaluation needs.",
        name,
        hr.shape[1],
        hr.shape[0],
        MIN_HR_SIDE,
      )
      yield name, None, None
      continue
    yield (name, *score(hr, scale, blur_sigma, lpips_fn, upscaler, samples, index, degrade))


def mean_scores(rows: list[dict], names=METRICS) -> dict:
  return {m: float(np.mean([row[m] for row in rows])) for m in names}


@functools.cache
def alex_lpips():
  """One jitted LPIPS (AlexNet) per process: each of its compiles (one per image size)
  then serves every set and model scored."""
  return lpips.make_lpips("alex")


def score_sources(
  sources,
  scale: int,
  upscaler: Callable | None = None,
  *,
  blur_sigma: float = 0.0,
  with_lpips: bool = True,
  samples: Samples | None = None,
  degrade: Callable | None = None,
  on_image: Callable[[str, dict], None] | None = None,
  label: str = "the set",
) -> dict:
  """Per-image and mean metrics of `upscaler` (and bicubic) over (name, load) sources:
  {"images": [{"name", "bicubic", "model"[, "samples"]}], "bicubic": means, "model":
  means[, "samples": means], "skipped": names}. `on_image(name, images)` sees each
  scored image's uint8 LR, bicubic, SR and HR."""
  lpips_fn = alex_lpips() if with_lpips or samples else None
  rows, skipped = [], []
  for name, scores, images in score_images(sources, scale, blur_sigma, lpips_fn, upscaler, samples):
    if scores is None:
      skipped.append(name)
      continue
    rows.append(dict(name=name, **scores))
    if on_image is not None:
      on_image(name, images)
  if not rows:
    raise DataError(
      f"none of the {len(sources)} images of {label} could be evaluated (see the warnings "
      "above); "
      f"each must be a readable image of at least {MIN_HR_SIDE} px on a side."
    )
  results = {
    "images": rows,
    "bicubic": mean_scores([r["bicubic"] for r in rows]),
    "skipped": skipped,
  }
  if upscaler is not None:
    results["model"] = mean_scores([r["model"] for r in rows])
  if samples is not None and samples.count > 0:
    results["samples"] = dict(
      mean_scores([r["samples"] for r in rows], SAMPLE_METRICS),
      count=samples.count,
      worst_lr_psnr=float(min(r["samples"]["worst_lr_psnr"] for r in rows)),
    )
  return results


def score_folder(folder: str, scale: int, upscaler: Callable | None = None, **options) -> dict:
  """`score_sources` over the images of `folder` (a path, or a set under the data root)."""
  return score_sources(folder_sources(folder), scale, upscaler, label=folder, **options)


def score_sets(
  upscaler: Callable | None, scale: int, sets=data_root.EVAL_SETS, **options
) -> dict[str, dict]:
  """{set: mean model metrics} over the named sets (default Set5, Set14, BSD100)."""
  return {name: score_folder(name, scale, upscaler, **options)["model"] for name in sets}
