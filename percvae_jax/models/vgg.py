"""VGG16 feature extractor with the layout of torchvision's ``vgg16().features``.

Used as a frozen network for the perceptual loss and as the LPIPS-VGG backbone.
Parameter names (``conv{block}_{index}`` with ``kernel`` in HWIO and ``bias``) are the
ones of the weights files written by :mod:`percvae_jax.pretrained`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from percvae_jax.models.vgg_layout import BLOCKS, TAPS, conv_layout
from percvae_jax.models.winograd import CpuConv3x3

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def deepest_block(taps: Iterable[str]) -> int:
  """1-based index of the deepest block the taps need; rejects unknown taps."""
  if isinstance(taps, str):
    raise ValueError(f"taps must be a sequence of tap names such as ({taps!r},), not a string")
  taps = tuple(taps)
  unknown = [tap for tap in taps if tap not in TAPS]
  if unknown:
    raise ValueError(f"unknown VGG16 tap(s) {unknown}; valid taps are {', '.join(TAPS)}")
  if not taps:
    raise ValueError(f"no VGG16 tap requested; valid taps are {', '.join(TAPS)}")
  return max(TAPS.index(tap) for tap in taps) + 1


def convs_for_taps(taps: Iterable[str]) -> tuple[str, ...]:
  """Names of the convs computed for these taps, in network order."""
  n_blocks = deepest_block(taps)
  return tuple(name for name, block, _, _ in conv_layout() if block <= n_blocks)


def params_for_taps(params: Mapping[str, Any], taps: Iterable[str]) -> dict[str, Any]:
  """Keeps from a full VGG16 params dict only the convs a truncated ``VGG16(taps)`` has."""
  needed = convs_for_taps(taps)
  missing = [name for name in needed if name not in params]
  if missing:
    raise ValueError(f"VGG16 params lack {missing} needed for taps {tuple(taps)}")
  return {name: params[name] for name in needed}


def max_pool_2x2(x: jnp.ndarray) -> jnp.ndarray:
  """torchvision's 2x2/2 max-pool (odd sides floored) as reshape + max.

  Its gradient is an elementwise mask that XLA fuses, where `nn.max_pool`'s is a
  reduce-window plus a scatter: 10% of the paper's whole train step on a CPU.
  """
  n, h, w, c = x.shape
  x = x[:, : h - h % 2, : w - w % 2]
  return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class VGG16(nn.Module):
  """VGG16 convolutional trunk that stops at the deepest requested tap.

  Input: NHWC RGB in [0, 1]. With ``normalize`` the ImageNet mean/std the weights were
  trained with is applied here, so callers never handle it; LPIPS turns it off because
  it applies its own scaling layer. Returns ``{tap: features}`` for the requested taps.
  Layers past the deepest tap are neither computed nor given parameters. With
  ``winograd`` (float32 only) the convolutions run by winograd.py's CPU algorithms
  (Winograd's for all but conv1_1, and conv1_1's input gradient by a matmul), with the
  same parameters and the same features to ~1e-5.
  """

  taps: Sequence[str] = ("relu3_3",)
  normalize: bool = True
  dtype: Any = jnp.float32
  winograd: bool = False

  @nn.compact
  def __call__(self, images: jnp.ndarray) -> dict[str, jnp.ndarray]:
    if self.winograd and self.dtype != jnp.float32:
      raise ValueError("VGG16's Winograd convolutions are float32 only")
    n_blocks = deepest_block(self.taps)
    x = jnp.asarray(images, jnp.float32)
    if self.normalize:
      x = (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)
    x = x.astype(self.dtype)
    features = {}
    for block, (width, n_convs) in enumerate(BLOCKS[:n_blocks], start=1):
      if block > 1:
        x = max_pool_2x2(x)
      for index in range(1, n_convs + 1):
        name = f"conv{block}_{index}"
        if self.winograd:
          conv = CpuConv3x3(width, name=name)
        else:
          conv = nn.Conv(
            width,
            kernel_size=(3, 3),
            padding=1,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            name=name,
          )
        x = nn.relu(conv(x))
      tap = TAPS[block - 1]
      if tap in self.taps:
        features[tap] = x
    return features
