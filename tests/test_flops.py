"""percvae_jax.flops: a convolution's and a dense layer's FLOPs as counted by hand, the
same count as XLA's for gradients and strides, sub-programs counted as they run, and
the paper step's known count (docs/accelerators.md)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from jax import lax

from percvae_jax import flops, losses
from percvae_jax.models import vae, vgg_layout
from tests import helpers
from tests.helpers import tiny_config

NHWC = ("NHWC", "HWIO", "NHWC")


def conv(x, kernel, stride=1, padding="SAME"):
  return lax.conv_general_dilated(x, kernel, (stride, stride), padding, dimension_numbers=NHWC)


def test_a_convolution_counts_the_taps_that_land_on_the_image():
  x, kernel = jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 4))
  # VALID: 6x6 outputs, each 3x3 taps x 3 channels in, for 4 out, 2 images.
  assert flops.count(lambda x, k: conv(x, k, padding="VALID"), x, kernel) == 2 * 2 * 36 * 4 * 27
  # SAME: per side 8 outputs x 3 taps, less the 2 that fall on the padding: 22.
  assert flops.count(conv, x, kernel) == 2 * 2 * 4 * 3 * 22 * 22
  # Stride 2: 4 outputs x 3 taps per side, less 1 on the padding: 11.
  assert flops.count(lambda x, k: conv(x, k, 2), x, kernel) == 2 * 2 * 4 * 3 * 11 * 11


def test_a_dense_layer_counts_its_matmul_not_its_bias():
  layer = nn.Dense(3)
  x = jax.ShapeDtypeStruct((5, 7), jnp.float32)
  params = jax.eval_shape(layer.init, jax.random.PRNGKey(0), x)  # shapes only: nothing runs.
  assert flops.count(layer.apply, params, x) == 2 * 5 * 7 * 3


@pytest.mark.parametrize("stride", [1, 2])
def test_gradients_count_as_xla_does(stride):
  """Forward, input and kernel gradients of a strided, dilated, padded convolution:
  XLA's CPU cost analysis counts the same multiply-adds (and nothing unused)."""
  x, kernel = jnp.ones((2, 9, 7, 3)), jnp.ones((3, 3, 3, 4))

  def loss(x, kernel):
    padding, dilation = ((2, 1), (0, 3)), (1, 2)
    y = lax.conv_general_dilated(
      x, kernel, (stride, stride), padding, rhs_dilation=dilation, dimension_numbers=NHWC
    )
    return jnp.sum(jnp.tanh(y))

  grads = jax.grad(loss, (0, 1))
  cost = jax.jit(grads).lower(x, kernel).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  matmuls = flops.count(grads, x, kernel)
  assert 0 < matmuls <= cost["flops"] < 1.05 * matmuls  # XLA adds the elementwise work.


def test_sub_programs_count_as_they_run():
  a, b = jnp.ones((4, 8)), jnp.ones((8, 16))
  matmul = 2 * 4 * 8 * 16

  @jax.custom_vjp
  def custom(a, b):
    return a @ b

  custom.defvjp(lambda a, b: (a @ b, (a, b)), lambda ab, g: (g @ ab[1].T, ab[0].T @ g))
  assert flops.count(jax.jit(jnp.matmul), a, b) == matmul
  assert flops.count(jax.checkpoint(jnp.matmul), a, b) == matmul
  assert flops.count(custom, a, b) == matmul
  scanned = lambda a, b: lax.scan(lambda c, _: (c, c @ b), a, None, length=5)[1]
  assert flops.count(scanned, a, b) == 5 * matmul
  branches = lambda p, a, b: lax.cond(p, lambda: (a @ b) @ b.T, lambda: a)
  assert flops.count(branches, True, a, b) == 2 * matmul  # the costlier branch.


def test_the_paper_step_is_its_vae_and_three_passes_of_vgg16_to_relu3_3():
  """The paper step's FLOPs, less those of the same step without the perceptual term,
  are two forward passes of VGG16 to relu3_3 and one input gradient, by hand; at batch
  32 the step is the 572.5 GFLOP docs/accelerators.md states."""
  config = helpers.load_config("paper")
  assert losses.uses_perceptual(config.loss)
  config.train.batch_size = 2  # a step's FLOPs are linear in its batch.
  full = flops.train_step(config)
  assert full * 16 / 1e9 == pytest.approx(572.52, abs=0.01)
  config.loss.gamma = 0.0
  side, vgg = config.data.hr_size, 0
  for _, block, c_in, c_out in vgg_layout.conv_layout()[:7]:
    n = side >> (block - 1)
    vgg += 3 * 2 * 2 * c_in * c_out * (3 * n - 2) ** 2  # SAME: 2 taps per side on padding.
  assert full - flops.train_step(config) == vgg


def test_winograd_does_fewer_multiplies_than_it_is_counted_for():
  """On CPUs the perceptual VGG16 runs by Winograd's algorithm: a step's counted work
  stays that of direct convolutions, what it executes is less."""
  config = helpers.tiny_config(loss__gamma=0.01, loss__perceptual_layers="relu2_2")
  config.loss.vgg_convolution = "winograd"
  assert 0 < flops.train_step(config, direct=False) < flops.train_step(config)


def test_per_output_pixel_counts_a_generate_path():
  class Shuffle(nn.Module):
    """One 3x3 convolution to 12 channels at the LR, then a 2x pixel shuffle."""

    def setup(self):
      self.conv = nn.Conv(12, (3, 3), use_bias=False)

    def __call__(self, lr):
      return self.generate(lr)

    def generate(self, lr):
      y = self.conv(lr).reshape(1, 16, 16, 2, 2, 3)
      return y.transpose(0, 1, 3, 2, 4, 5).reshape(1, 32, 32, 3)

  model = Shuffle()
  lr = jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), lr)["params"]
  expected = 2 * 12 * 3 * (3 * 16 - 2) ** 2 / 32**2
  assert flops.per_output_pixel(model, params, scale=2, lr_size=16) == pytest.approx(expected)


@pytest.mark.parametrize("scale", [2, 4])
def test_a_models_flops_per_output_pixel_are_its_convolutions_and_upsampling(scale):
  config = tiny_config(data__scale=scale, model__features=8, model__num_blocks=2)
  model = vae.create(config)
  params = vae.init_params(model, config, jax.random.PRNGKey(0))
  f, latent = 8, config.model.latent_channels
  # LR encoder (in, one block, out), prior (in, one block, out), decoder (the same).
  macs = [3 * f, 2 * f * f, f * f, f * f, 2 * f * f, f * 2 * latent]
  macs += [(f + latent) * f, 2 * f * f, f * 3 * scale**2]
  convolutions = 2 * 9 * sum(macs) / scale**2  # every tap, the border's included.
  counted = flops.per_output_pixel(model, params, scale)
  # Fewer taps at the border; bicubic upsampling's products on top.
  assert 0.95 * convolutions < counted < 1.3 * convolutions
