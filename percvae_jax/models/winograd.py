"""3x3 "same" convolutions for CPUs: Winograd's F(4x4, 3x3) (Lavin and Gray, 2016), and
for inputs of few channels an input gradient by one matmul; in XLA ops.

Why: on a CPU, XLA's direct convolutions run VGG16's 3x3 layers at about the rate of
a large float32 matmul, so only fewer multiplies make them faster. Winograd's
algorithm turns each 6x6 input tile into a 4x4 output tile with 36 multiplies per
channel pair where the direct convolution needs 144; its transforms are additions
and memory traffic, here small matmuls by constant matrices, the input's one side at
a time. `scripts/benchmark_speed.py --layers` measures it against XLA's and
PyTorch's direct convolutions, layer by layer: on every VGG16 layer of 64 input
channels or more it is faster, forward and input gradient alike, from ~1.3x on
conv1_2 to ~2.3x in block 3. With VGG's 3 input channels (conv1_1) the transforms
would cost more than they save; there the forward stays XLA's and the input gradient,
which XLA runs ~5x slower than the forward, becomes one matmul and 9 shifted sums. In
float32 the error is ~2e-5 of the largest output (tested).
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
# Inputs of at least this many channels run by Winograd's algorithm (VGG16: all but
# conv1_1); with VGG's 3 (RGB) the transforms cost more than the multiplies they save.
WINOGRAD_MIN_CHANNELS = 64


def direct_conv3x3(x, kernel):
  """XLA's own 3x3 "same" convolution, NHWC x HWIO."""
  return lax.conv_general_dilated(
    x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )


def _winograd(x, kernel):
  n, h, w, c = x.shape
  th, tw = -(-h // OUT), -(-w // OUT)  # output tiles; the last ones cropped.
  padded = jnp.pad(x, ((0, 0), (1, 1 + OUT * th - h), (1, 1 + OUT * tw - w), (0, 0)))
  # B^T d B one side at a time, each a matmul by B^T over a leading axis of stacked
  # strided slices: rows (i), then columns (j). The tiles come out indexed (b, a).
  bt = jnp.asarray(_BT)
  rows = jnp.stack([padded[:, i : i + OUT * th : OUT] for i in range(TILE)])
  rows = (bt @ rows.reshape(TILE, -1)).reshape(TILE, n, th, -1, c)
  tiles = jnp.stack([rows[:, :, :, j : j + OUT * tw : OUT] for j in range(TILE)])
  v = (bt @ tiles.reshape(TILE, -1)).reshape(TILE * TILE, -1, c)
  u = jnp.einsum("ai,ijck,bj->back", _G, kernel.astype(jnp.float32), _G)
  m = jnp.einsum("tpc,tck->tpk", v, u.reshape(TILE * TILE, c, -1))
  # A^T m A as one matmul by a constant Kronecker matrix, which XLA runs faster than
  # two passes; its rows come out indexed (q, p).
  y = (jnp.asarray(np.kron(_AT, _AT)) @ m.reshape(TILE * TILE, -1)).reshape(OUT, OUT, n, th, tw, -1)
  return y.transpose(2, 3, 1, 4, 0, 5).reshape(n, OUT * th, OUT * tw, -1)[:, :h, :w]


def _kernel_gradient(x, kernel, cotangent):
  # XLA's; jit drops it for a frozen network such as the perceptual VGG16.
  (gradient,) = jax.vjp(lambda k: direct_conv3x3(x, k), kernel)[1](cotangent)
  return gradient


@jax.custom_vjp
def conv3x3(x, kernel):
  """The 3x3 "same" convolution of NHWC float32 `x` by an HWIO `kernel`, as
  `direct_conv3x3` computes it, by Winograd F(4x4, 3x3)."""
  return _winograd(x, kernel)


def _conv3x3_forward(x, kernel):
  return _winograd(x, kernel), (x, kernel)


def _conv3x3_backward(residuals, cotangent):
  # The input gradient is the same convolution of the cotangent by the flipped,
  # transposed kernel: Winograd again.
  x, kernel = residuals
  x_gradient = _winograd(cotangent, jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2))
  return x_gradient, _kernel_gradient(x, kernel, cotangent)


conv3x3.defvjp(_conv3x3_forward, _conv3x3_backward)


@jax.custom_vjp
def conv3x3_few_channels(x, kernel):
  """`direct_conv3x3`, with its input gradient by one matmul: for inputs of a few
  channels (VGG's RGB image), where XLA's own input gradient runs ~5x slower."""
  return direct_conv3x3(x, kernel)


def _few_channels_forward(x, kernel):
  return direct_conv3x3(x, kernel), (x, kernel)


def _few_channels_backward(residuals, cotangent):
  # Each input pixel receives, from each of the 9 taps, the cotangent of the output
  # pixel that tap reaches, times the tap's kernel: one matmul gives all 9 products,
  # then the 9 are shifted into place and summed.
  x, kernel = residuals
  c = x.shape[-1]
  products = cotangent @ kernel.reshape(9 * c, -1).T
  taps = [(i, j) for i in range(3) for j in range(3)]
  padded = sum(
    jnp.pad(products[..., t * c : (t + 1) * c], ((0, 0), (i, 2 - i), (j, 2 - j), (0, 0)))
    for t, (i, j) in enumerate(taps)
  )
  return padded[:, 1:-1, 1:-1], _kernel_gradient(x, kernel, cotangent)


conv3x3_few_channels.defvjp(_few_channels_forward, _few_channels_backward)


def cpu_conv3x3(x, kernel):
  """The fastest of these on a CPU for this input: Winograd for inputs of
  `WINOGRAD_MIN_CHANNELS` or more, else `conv3x3_few_channels`."""
  if x.shape[-1] >= WINOGRAD_MIN_CHANNELS:
    return conv3x3(x, kernel)
  return conv3x3_few_channels(x, kernel)


class CpuConv3x3(nn.Module):
  """`nn.Conv(features, (3, 3), padding=1)` computed by `cpu_conv3x3`: same parameters
  (names, shapes, initialisers), so the same weights load into either."""

  features: int

  @nn.compact
  def __call__(self, x):
    kernel = self.param(
      "kernel", nn.initializers.lecun_normal(), (3, 3, x.shape[-1], self.features), jnp.float32
    )
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
    return cpu_conv3x3(x.astype(jnp.float32), kernel) + bias
