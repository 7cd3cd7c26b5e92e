"""The CPU convolutions of models/winograd.py (Winograd F(4x4, 3x3), the few-channel
input gradient by a matmul): the direct convolution's outputs and gradients, in VGG16
the same parameters and features, and when the perceptual loss uses them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from percvae_jax import config as config_lib
from percvae_jax import train_state
from percvae_jax.errors import ConfigError
from percvae_jax.models import winograd
from percvae_jax.models.vgg import TAPS, VGG16
from tests import helpers


def relative_error(a, b):
  return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


@pytest.mark.parametrize("shape", [(2, 10, 7, 5, 6), (1, 3, 5, 4, 3), (2, 16, 16, 8, 16)])
@pytest.mark.parametrize("conv", [winograd.conv3x3, winograd.conv3x3_few_channels])
def test_convolutions_and_their_gradients_equal_the_direct_convolution(shape, conv):
  n, h, w, c_in, c_out = shape  # sides below, at and off multiples of the 4 px tile.
  rng = np.random.default_rng(0)
  x = rng.standard_normal((n, h, w, c_in), np.float32)
  kernel = rng.standard_normal((3, 3, c_in, c_out), np.float32)
  cotangent = rng.standard_normal((n, h, w, c_out), np.float32)
  y, vjp = jax.vjp(winograd.direct_conv3x3, x, kernel)
  y_winograd, vjp_winograd = jax.vjp(jax.jit(conv), x, kernel)
  assert y_winograd.shape == y.shape
  assert relative_error(y_winograd, y) < 5e-5
  for gradient_winograd, gradient in zip(vjp_winograd(cotangent), vjp(cotangent)):
    assert relative_error(gradient_winograd, gradient) < 5e-5


@pytest.mark.parametrize("channels, winograd_runs", [(3, False), (64, True)])
def test_cpu_conv3x3_runs_winograd_from_its_channel_threshold(channels, winograd_runs):
  x, kernel = jnp.zeros((1, 8, 8, channels)), jnp.zeros((3, 3, channels, 4))
  program = jax.jit(winograd.cpu_conv3x3).lower(x, kernel).as_text()
  assert ("stablehlo.convolution" not in program) == winograd_runs


def test_vgg16_with_winograd_has_the_same_parameters_and_features():
  images = jnp.asarray(np.random.default_rng(1).random((2, 48, 40, 3), np.float32))
  direct_vgg, fast = VGG16(taps=TAPS), VGG16(taps=TAPS, winograd=True)
  shapes = jax.eval_shape(direct_vgg.init, jax.random.key(0), images)["params"]
  assert jax.eval_shape(fast.init, jax.random.key(0), images)["params"] == shapes
  # He-scaled random weights, drawn in numpy: a jitted init would compile VGG16 once more.
  rng = np.random.default_rng(0)
  params = jax.tree.map(
    lambda s: rng.standard_normal(s.shape, np.float32) * np.sqrt(2 / np.prod(s.shape[:-1])),
    shapes,
  )

  def loss_and_features(x, params, module):
    features = module.apply({"params": params}, x)
    return jnp.mean(features["relu4_3"] ** 2), features

  # The features and the input gradient of one loss, in one program per model; the
  # weights are an argument, as constants they would make each program 200 MB to compile.
  run = jax.jit(jax.grad(loss_and_features, has_aux=True), static_argnums=2)
  gradient, direct = run(images, params, direct_vgg)
  fast_gradient, features = run(images, params, fast)
  for tap in TAPS:
    assert relative_error(features[tap], direct[tap]) < 1e-4, tap
  assert relative_error(fast_gradient, gradient) < 1e-4


def test_vgg16_refuses_winograd_outside_float32():
  images = jnp.zeros((1, 16, 16, 3))
  with pytest.raises(ValueError, match="float32 only"):
    VGG16(winograd=True, dtype=jnp.bfloat16).init(jax.random.key(0), images)


@pytest.mark.parametrize(
  "choice,dtype,backend,expected",
  [
    ("auto", "float32", "cpu", True),
    ("auto", "float32", "gpu", False),
    ("auto", "float32", "tpu", False),
    ("auto", "bfloat16", "cpu", False),
    ("direct", "float32", "cpu", False),
    ("winograd", "float32", "gpu", True),
  ],
)
def test_when_the_perceptual_vgg16_uses_winograd(choice, dtype, backend, expected):
  config = config_lib.base()
  config.loss.vgg_convolution, config.train.compute_dtype = choice, dtype
  assert config_lib.vgg_winograd(config, backend) is expected


def test_the_perceptual_network_of_a_cpu_run_uses_winograd():
  config = helpers.load_config("default")
  module, _ = train_state.perceptual_network(config)
  assert module.winograd is (jax.default_backend() == "cpu")
  config.loss.vgg_convolution = "direct"
  assert not train_state.perceptual_network(config)[0].winograd


@pytest.mark.parametrize(
  "choice,dtype,expected",
  [
    ("fft", "float32", "config.loss.vgg_convolution='fft' is not valid"),
    ("winograd", "bfloat16", "runs in float32 only"),
  ],
)
def test_invalid_vgg_convolution_is_refused(choice, dtype, expected):
  config = config_lib.base()
  config.data.name = "embedded"
  config.loss.vgg_convolution, config.train.compute_dtype = choice, dtype
  with pytest.raises(ConfigError, match=expected):
    config_lib.validate(config, num_devices=1)
