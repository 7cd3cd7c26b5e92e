"""3x3 "same" convolutions by Winograd's F(4x4, 3x3) (Lavin and Gray, 2016), in XLA ops.

Why: on a CPU, XLA's direct convolutions run VGG16's 3x3 layers at about the rate of
a large float32 matmul, so only fewer multiplies make them faster. Winograd's
algorithm turns each 6x6 input tile into a 4x4 output tile with 36 multiplies per
channel pair where the direct convolution needs 144; its transforms are additions
and memory traffic. `scripts/benchmark_speed.py --layers` measures it against XLA's
and PyTorch's direct convolutions, layer by layer: where channels are few and images
large (VGG's first block) the transforms cost what the multiplies save, from the
second block on it is 1.5-2.3x faster, forward and input gradient alike. In float32
its error is ~2e-5 of the largest output (tested).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# The transforms of F(4x4, 3x3) at the points 0, 1, -1, 2, -2 and infinity: input
# tiles d become B^T d B, kernels g become G g G^T, products m become A^T m A.
_BT = np.array(
  [
    [4, 0, -5, 0, 1, 0],
    [0, -4, -4, 1, 1, 0],
    [0, 4, -4, -1, 1, 0],
    [0, -2, -1, 2, 1, 0],
    [0, 2, -1, -2, 1, 0],
    [0, 4, 0, -5, 0, 1],
  ],
  np.float32,
)
_G = np.array(
  [
    [1 / 4, 0, 0],
    [-1 / 6, -1 / 6, -1 / 6],
    [-1 / 6, 1 / 6, -1 / 6],
    [1 / 24, 1 / 12, 1 / 6],
    [1 / 24, -1 / 12, 1 / 6],
    [0, 0, 1],
  ],
  np.float32,
)
_AT = np.array(
  [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
  np.float32,
)
TILE, OUT = 6, 4  # input and output tile sides.


def direct_conv3x3(x, kernel):
  """XLA's own 3x3 "same" convolution, NHWC x HWIO."""
  return lax.conv_general_dilated(
    x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )


def _winograd(x, kernel):
  n, h, w, c = x.shape
  th, tw = -(-h // OUT), -(-w // OUT)  # output tiles; the last ones cropped.
  padded = jnp.pad(x, ((0, 0), (1, 1 + OUT * th - h), (1, 1 + OUT * tw - w), (0, 0)))
  rows = [padded[:, i : i + OUT * th : OUT] for i in range(TILE)]
  tiles = jnp.stack([r[:, :, j : j + OUT * tw : OUT] for r in rows for j in range(TILE)])
  # Both transforms as one matmul by a constant matrix (Kronecker products), which XLA
  # runs far faster than the equivalent chains of additions.
  v = (jnp.asarray(np.kron(_BT, _BT)) @ tiles.reshape(TILE * TILE, -1)).reshape(TILE * TILE, -1, c)
  u = jnp.einsum("ai,ijck,bj->abck", _G, kernel.astype(jnp.float32), _G)
  m = jnp.einsum("tpc,tck->tpk", v, u.reshape(TILE * TILE, c, -1))
  y = (jnp.asarray(np.kron(_AT, _AT)) @ m.reshape(TILE * TILE, -1)).reshape(OUT, OUT, n, th, tw, -1)
  return y.transpose(2, 3, 0, 4, 1, 5).reshape(n, OUT * th, OUT * tw, -1)[:, :h, :w]


@jax.custom_vjp
def conv3x3(x, kernel):
  """The 3x3 "same" convolution of NHWC float32 `x` by an HWIO `kernel`, as
  `direct_conv3x3` computes it, by Winograd F(4x4, 3x3)."""
  return _winograd(x, kernel)


def _conv3x3_forward(x, kernel):
  return _winograd(x, kernel), (x, kernel)


def _conv3x3_backward(residuals, cotangent):
  # The input gradient is the same convolution of the cotangent by the flipped,
  # transposed kernel: Winograd again. The kernel's is XLA's (jit drops it for a
  # frozen network such as the perceptual VGG16).
  x, kernel = residuals
  x_gradient = _winograd(cotangent, jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2))
  (kernel_gradient,) = jax.vjp(lambda k: direct_conv3x3(x, k), kernel)[1](cotangent)
  return x_gradient, kernel_gradient


conv3x3.defvjp(_conv3x3_forward, _conv3x3_backward)


class WinogradConv3x3(nn.Module):
  """`nn.Conv(features, (3, 3), padding=1)` computed by `conv3x3`: same parameters
  (names, shapes, initialisers), so the same weights load into either."""

  features: int

  @nn.compact
  def __call__(self, x):
    kernel = self.param(
      "kernel", nn.initializers.lecun_normal(), (3, 3, x.shape[-1], self.features), jnp.float32
    )
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
    return conv3x3(x.astype(jnp.float32), kernel) + bias
