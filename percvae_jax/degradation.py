"""The LR degradation (Gaussian blur, then bicubic downscaling) and bicubic resizing.

Every operation here is separable and linear, so each is a pair of small matrices
(one per image axis) applied with two matrix products, or on large images, where a
dense product would cost the side's length per pixel, as the same matrices' banded
taps (bicubic upscaling, the projection onto the LR). That makes the degradation
cheap enough to run inside the jitted train step on the accelerator, bit-identical
between training, evaluation and upscaling, and exact against PIL: the bicubic
matrices reproduce `PIL.Image.resize(..., Image.BICUBIC)` (Keys' a=-0.5 kernel,
widened by the scale factor when downscaling, which is PIL's antialiasing).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

SCALES = (2, 3, 4, 8)
# Bicubic upsampling reads 2 LR px on each side of an output pixel.
BICUBIC_REACH = 2


def _cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
  x = np.abs(x)
  return np.where(
    x < 1.0,
    ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0,
    np.where(x < 2.0, (((x - 5.0) * x + 8.0) * x - 4.0) * a, 0.0),
  )


@functools.lru_cache(maxsize=256)
def bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out_size, in_size) weights of PIL's bicubic resampling along one axis."""
  scale = in_size / out_size
  filter_scale = max(scale, 1.0)
  support = 2.0 * filter_scale
  weights = np.zeros((out_size, in_size), np.float64)
  for i in range(out_size):
    center = (i + 0.5) * scale
    lo = max(int(center - support + 0.5), 0)
    hi = min(int(center + support + 0.5), in_size)
    taps = np.arange(lo, hi)
    w = _cubic((taps - center + 0.5) / filter_scale)
    weights[i, lo:hi] = w / w.sum()
  weights.setflags(write=False)
  return weights


@functools.lru_cache(maxsize=256)
def gaussian_blur_matrix(size: int, sigma: float) -> np.ndarray:
  """(size, size) Gaussian blur along one axis, reflecting at the borders.

  The kernel has radius ceil(3 * sigma); sigma 0 is the identity.
  """
  if sigma <= 0:
    return np.eye(size)
  radius = math.ceil(3.0 * sigma)
  if size <= radius:
    raise ValueError(
      f"An image side of {size} px is too small for a Gaussian blur of sigma "
      f"{sigma} (radius {radius} px); use larger images or a smaller "
      "config.data.blur_sigma."
    )
  offsets = np.arange(-radius, radius + 1)
  kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
  kernel /= kernel.sum()
  weights = np.zeros((size, size), np.float64)
  for i in range(size):
    src = i + offsets
    src = np.where(src < 0, -src, src)
    src = np.where(src >= size, 2 * (size - 1) - src, src)
    np.add.at(weights[i], src, kernel)
  weights.setflags(write=False)
  return weights


def apply_separable(images, rows: np.ndarray, cols: np.ndarray):
  """Applies `rows` along height and `cols` along width of NHWC (or HWC) images."""
  dtype = images.dtype if jnp.issubdtype(images.dtype, jnp.floating) else jnp.float32
  rows = jnp.asarray(rows, dtype)
  cols = jnp.asarray(cols, dtype)
  images = jnp.asarray(images, dtype)
  out = jnp.einsum("ih,...hwc->...iwc", rows, images, precision="highest")
  return jnp.einsum("jw,...iwc->...ijc", cols, out, precision="highest")


def bicubic_resize(images, height: int, width: int):
  """PIL-exact bicubic resize of float NHWC (or HWC) images to (height, width)."""
  in_h, in_w = images.shape[-3], images.shape[-2]
  return apply_separable(images, bicubic_matrix(in_h, height), bicubic_matrix(in_w, width))


def quantize(images):
  """Rounds [0,1] images to the 8-bit grid, as an LR image saved to disk would be."""
  return jnp.round(jnp.clip(images, 0.0, 1.0) * 255.0) / 255.0


def check_scale(scale: int) -> None:
  if scale not in SCALES:
    raise ValueError(f"scale {scale} is not supported; choose one of {SCALES}.")


@functools.lru_cache(maxsize=256)
def degradation_matrix(size: int, scale: int, blur_sigma: float) -> np.ndarray:
  """(size / scale, size) weights of the degradation along one axis: blur, then
  bicubic downscaling."""
  check_scale(scale)
  matrix = bicubic_matrix(size, size // scale) @ gaussian_blur_matrix(size, blur_sigma)
  matrix.setflags(write=False)
  return matrix


@functools.lru_cache(maxsize=256)
def degradation_pinv(size: int, scale: int, blur_sigma: float) -> np.ndarray:
  """(size, size / scale) Moore-Penrose pseudo-inverse of `degradation_matrix`."""
  pinv = np.linalg.pinv(degradation_matrix(size, scale, blur_sigma))
  pinv.setflags(write=False)
  return pinv


# Weights below this are dropped where the projection runs as banded taps
# (`banded_factor`): those of (A A^T)^-1 decay tenfold every 2 LR px, so each pixel
# reads 12 LR px either side instead of the whole row, and the projection differs
# from the dense pseudo-inverse's by under 1e-6 of the LR residual.
BAND_TOLERANCE = 1e-6


@functools.lru_cache(maxsize=64)
def projection_reach(scale: int, blur_sigma: float, tolerance: float = BAND_TOLERANCE) -> int:
  """LR px on each side of an output pixel that `project_onto_lr` reads, beyond what
  its input read: the pseudo-inverse's weights decay geometrically, and those below
  `tolerance` are taken as zero (a tiled projection then equals the whole one to
  that tolerance)."""
  size = 64 * scale
  pinv = degradation_pinv(size, scale, blur_sigma)
  centre = pinv[size // 2]
  far = np.abs(np.arange(size // scale) - size // 2 / scale)
  pinv_reach = int(np.ceil(far[np.abs(centre) > tolerance].max()))
  taps = np.nonzero(degradation_matrix(size, scale, blur_sigma)[size // scale // 2])[0]
  kernel_reach = int(np.ceil((taps[-1] - taps[0]) / 2 / scale)) + 1
  return pinv_reach + kernel_reach


@functools.lru_cache(maxsize=256)
def _projection_factor(name: str, size: int, scale: int, blur_sigma: float) -> np.ndarray:
  """One axis's factor of the projection for an HR side `size`: "down", the
  degradation A; "gram_inverse", (A A^T)^-1; "adjoint", A^T. A^+ = A^T (A A^T)^-1."""
  matrix = degradation_matrix(size, scale, blur_sigma)
  if name == "gram_inverse":
    return np.linalg.inv(matrix @ matrix.T)
  return matrix.T if name == "adjoint" else matrix


@functools.lru_cache(maxsize=256)
def banded_factor(name: str, size: int, scale: int, blur_sigma: float) -> dict | None:
  """`_projection_factor` as banded taps: output row g * period + p reads input
  g * step + offset + k with weight taps[p, k], except the `first` and `last` rows,
  near the border where the matrix is not shift-invariant, which keep their exact
  weights over the first and last columns. The taps are the centre rows', weights
  below BAND_TOLERANCE dropped. None where the border rows would leave fewer than 8
  shift-invariant ones (sides under 32 LR px: there the dense product is cheap)."""
  matrix = _projection_factor(name, size, scale, blur_sigma)
  rows, cols = matrix.shape
  period, step = max(rows // cols, 1), max(cols // rows, 1)
  groups = rows // period
  centre = groups // 2
  block = matrix[centre * period : (centre + 1) * period]
  used = np.nonzero(np.abs(block).max(axis=0) > BAND_TOLERANCE)[0]
  taps, offset = block[:, used[0] : used[-1] + 1], int(used[0] - centre * step)
  width = taps.shape[1]
  off_band = np.full(groups, np.inf)
  for g in range(groups):
    start = g * step + offset
    if start >= 0 and start + width <= cols:  # else its taps leave the image: exact.
      rebuilt = np.zeros((period, cols))
      rebuilt[:, start : start + width] = taps
      off_band[g] = np.abs(matrix[g * period : (g + 1) * period] - rebuilt).max()
  inside = np.nonzero(off_band <= BAND_TOLERANCE)[0]
  if len(inside) < 8 or np.any(np.diff(inside) != 1):
    return None
  first = matrix[: inside[0] * period]
  last = matrix[(inside[-1] + 1) * period :]
  # The border rows' weights over the columns they use (the rest below 1e-12).
  first_cols = np.nonzero(np.abs(first).max(axis=0, initial=0) > 1e-12)[0]
  last_cols = np.nonzero(np.abs(last).max(axis=0, initial=0) > 1e-12)[0]
  return {
    "taps": taps,
    "offset": offset,
    "step": step,
    "first": first[:, : first_cols[-1] + 1] if len(first) else first[:, :0],
    "last": last[:, last_cols[0] :] if len(last) else last[:, :0],
  }


def _apply_banded(images, axis: int, band: dict):
  """A `banded_factor` applied along `axis`: each tap a shifted, strided slice
  multiplied and summed (one fused loop), then the exact border rows."""
  taps, offset, step = band["taps"], band["offset"], band["step"]
  period, width = taps.shape
  size = images.shape[axis]
  groups = size // step
  pad_lo, pad_hi = max(-offset, 0), max((groups - 1) * step + offset + width - size, 0)
  padding = [(0, 0)] * images.ndim
  padding[axis] = (pad_lo, pad_hi)
  padded = jnp.pad(images, padding)
  shifted = [
    jax.lax.slice_in_dim(padded, start, start + (groups - 1) * step + 1, stride=step, axis=axis)
    for start in range(pad_lo + offset, pad_lo + offset + width)
  ]
  phases = [sum(float(w) * x for w, x in zip(phase, shifted) if w) for phase in taps]
  out = jnp.stack(phases, axis=axis + 1)
  out = out.reshape(images.shape[:axis] + (groups * period,) + images.shape[axis + 1 :])

  def exact(weights, part):
    weights = jnp.asarray(weights, images.dtype)
    product = jnp.tensordot(weights, part, axes=([1], [axis]), precision="highest")
    return jnp.moveaxis(product, 0, axis)

  first, last = band["first"], band["last"]
  parts = [jax.lax.slice_in_dim(out, len(first), groups * period - len(last), axis=axis)]
  if len(first):
    head = jax.lax.slice_in_dim(images, 0, first.shape[1], axis=axis)
    parts.insert(0, exact(first, head))
  if len(last):
    parts.append(exact(last, jax.lax.slice_in_dim(images, size - last.shape[1], size, axis=axis)))
  return jnp.concatenate(parts, axis=axis)


def _check_divisible(h: int, w: int, scale: int) -> None:
  if h % scale or w % scale:
    raise ValueError(
      f"HR size {h}x{w} is not divisible by the scale {scale}; crop the HR to "
      "a multiple of the scale first."
    )


def downscale(hr, scale: int, blur_sigma: float):
  """HR float images -> their degradation (blur, bicubic downscaling), unquantised."""
  h, w = hr.shape[-3], hr.shape[-2]
  _check_divisible(h, w, scale)
  return apply_separable(
    hr, degradation_matrix(h, scale, blur_sigma), degradation_matrix(w, scale, blur_sigma)
  )


def degrade(hr, scale: int, blur_sigma: float):
  """HR float images in [0,1] -> 8-bit-quantised LR, blurred then bicubic-downscaled."""
  return quantize(downscale(hr, scale, blur_sigma))


def _apply_factor(images, name: str, hr_sides, scale: int, blur_sigma: float):
  """`_projection_factor` `name` along both image axes of NHWC `images`: banded taps
  where the side allows (`banded_factor`), else the dense matrix."""
  for axis, side in zip((images.ndim - 3, images.ndim - 2), hr_sides):
    band = banded_factor(name, side, scale, blur_sigma)
    if band is None:
      matrix = jnp.asarray(_projection_factor(name, side, scale, blur_sigma), images.dtype)
      product = jnp.tensordot(matrix, images, axes=([1], [axis]), precision="highest")
      images = jnp.moveaxis(product, 0, axis)
    else:
      images = _apply_banded(images, axis, band)
  return images


def project_onto_lr(sr, lr, scale: int, blur_sigma: float):
  """The image nearest to `sr` (least squares) whose degradation is exactly `lr`.

  The degradation D is separable (D x = A x B^T), so its pseudo-inverse is too, and
  sr + D^+(lr - D sr) is the orthogonal projection onto {x : D x = lr}: it changes
  only what the LR determines and keeps everything in D's null space (the detail).
  D^+ is applied as D^T (D D^T)^-1, each factor as banded taps (`banded_factor`):
  a dense product costs the side's length per pixel (on a 664 px LR tile at x4, more
  than the x4 model itself), the taps 4-25.
  """
  h, w = sr.shape[-3], sr.shape[-2]
  _check_divisible(h, w, scale)
  factor = lambda x, name: _apply_factor(x, name, (h, w), scale, blur_sigma)
  residual = jnp.asarray(lr, sr.dtype) - factor(sr, "down")
  return sr + factor(factor(residual, "gram_inverse"), "adjoint")


# Rounds of clipping to [0,1] and projecting again in `project_onto_lr_in_range`.
RANGE_ITERATIONS = 3


def project_onto_lr_in_range(sr, lr, scale: int, blur_sigma: float):
  """`project_onto_lr`, alternated RANGE_ITERATIONS times with clipping to [0,1].

  Alternating projections onto two convex sets (POCS) approach their intersection: the
  images in [0,1] whose degradation is `lr`. A single projection can leave values
  outside [0,1] where the model adds strong texture near black or white, and the clip
  every saved image undergoes then changes its downscale (BSD100 x4 samples: LR-PSNR
  down to 43 dB after one projection, 56 dB after three more rounds).
  """
  x = project_onto_lr(sr, lr, scale, blur_sigma)
  for _ in range(RANGE_ITERATIONS):
    x = project_onto_lr(jnp.clip(x, 0.0, 1.0), lr, scale, blur_sigma)
  return x


# Upscaling by an integer factor reads LR px -2..+2 around each output pixel.
_UPSCALE_TAPS = 5


@functools.lru_cache(maxsize=256)
def _upscale_phases(size: int, scale: int) -> tuple[np.ndarray, np.ndarray]:
  """PIL's bicubic upscaling of `size` px by `scale`, as polyphase taps: (scale, 5)
  weights of LR px -2..+2 for each output phase, the same for every output pixel
  whose taps lie inside the image; and the `bicubic_matrix` it comes from, whose rows
  within 2 * scale px of either end (taps renormalised at the border) stay exact."""
  matrix = bicubic_matrix(size, size * scale)
  centre = size // 2
  phases = matrix[scale * centre : scale * (centre + 1), centre - 2 : centre + 3]
  interior = matrix[2 * scale : (size - 2) * scale]
  rebuilt = np.zeros_like(interior)
  for q in range(2, size - 2):
    rebuilt[(q - 2) * scale : (q - 1) * scale, q - 2 : q + 3] = phases
  assert np.allclose(interior, rebuilt, atol=1e-12), "bicubic upscaling is not polyphase"
  return phases, matrix


def _upscale_axis(images, axis: int, scale: int):
  """Bicubic upscaling along one axis: 5 shifted multiply-adds per output phase, then
  the 2 * scale border rows at each end from the exact matrix."""
  size = images.shape[axis]
  phases, matrix = _upscale_phases(size, scale)
  taps, border = _UPSCALE_TAPS, 2 * scale
  padding = [(0, 0)] * images.ndim
  padding[axis] = (2, 2)
  padded = jnp.pad(images, padding, mode="edge")  # read only by the border rows.
  shifted = [jax.lax.slice_in_dim(padded, k, k + size, axis=axis) for k in range(taps)]
  out = jnp.stack(
    [sum(float(w) * x for w, x in zip(phase, shifted)) for phase in phases], axis=axis + 1
  )
  out = out.reshape(images.shape[:axis] + (size * scale,) + images.shape[axis + 1 :])

  def rows(weights, part):
    weights = jnp.asarray(weights, images.dtype)
    return jnp.moveaxis(jnp.tensordot(weights, part, axes=([1], [axis])), 0, axis)

  first = rows(matrix[:border, :taps], jax.lax.slice_in_dim(images, 0, taps, axis=axis))
  last = rows(matrix[-border:, -taps:], jax.lax.slice_in_dim(images, size - taps, size, axis=axis))
  middle = jax.lax.slice_in_dim(out, border, size * scale - border, axis=axis)
  return jnp.concatenate([first, middle, last], axis=axis)


def bicubic_upscale(lr, scale: int):
  """The bicubic baseline: LR float images upscaled by `scale` (unclipped), PIL-exact.

  As polyphase taps where the image allows (sides of 8 px or more): 4-10x less CPU
  time than `bicubic_resize`'s dense matrices, whose cost grows with the side (at x4
  on a 256 px tile, 6 ms against 58, ~15% of the fidelity model's whole pass), and
  equal to them to float rounding.
  """
  h, w = lr.shape[-3], lr.shape[-2]
  if min(h, w) < 8:
    return bicubic_resize(lr, h * scale, w * scale)
  lr = jnp.asarray(lr, lr.dtype if jnp.issubdtype(lr.dtype, jnp.floating) else jnp.float32)
  return _upscale_axis(_upscale_axis(lr, lr.ndim - 3, scale), lr.ndim - 2, scale)


def lr_from_hr(hr_uint8, data_config):
  """The training pair from an HR uint8 batch: float HR in [0,1] and its LR."""
  hr = hr_uint8.astype(jnp.float32) / 255.0
  return hr, degrade(hr, data_config.scale, data_config.blur_sigma)
