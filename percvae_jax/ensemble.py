"""Self-ensemble (EDSR's "+"): the mean of a model's outputs over the eight flips and
rotations of its input, each turned back.

A model trained on flipped and transposed crops is nearly, never exactly, equivariant
to them; averaging the eight views cancels part of its error, for 8x the compute. It
needs no retraining and works for any `fn` that maps an image to one `scale` times
larger (a tiled `inference.Upscaler`, or a jitted `generate`).
"""

from __future__ import annotations

import numpy as np

# (quarter turns, mirrored first): the eight symmetries of the square.
DIHEDRAL = tuple((turns, mirrored) for mirrored in (False, True) for turns in range(4))


def transform(image, turns: int, mirrored: bool):
  """`image` (..., H, W, C) mirrored left-right if `mirrored`, then turned by
  `turns` quarter turns."""
  if mirrored:
    image = image[..., :, ::-1, :]
  return np.rot90(image, turns, axes=(-3, -2))


def untransform(image, turns: int, mirrored: bool):
  """The inverse of `transform(., turns, mirrored)`."""
  image = np.rot90(image, -turns, axes=(-3, -2))
  return image[..., :, ::-1, :] if mirrored else image


def self_ensemble(fn, lr):
  """The mean over the eight symmetries t of t^-1(fn(t(lr))), float32.

  `lr`: one image (H, W, C) or a batch (N, H, W, C), as `fn` takes it; `fn` returns
  the same layout, `scale` times larger. Turned inputs have their sides swapped, so a
  jitted `fn` compiles for both shapes of a non-square input.
  """
  lr = np.asarray(lr)
  total = None
  for turns, mirrored in DIHEDRAL:
    view = np.ascontiguousarray(transform(lr, turns, mirrored))
    out = untransform(np.asarray(fn(view), np.float32), turns, mirrored)
    total = out.copy() if total is None else total + out
  return total / len(DIHEDRAL)
