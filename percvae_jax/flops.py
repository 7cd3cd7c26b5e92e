"""FLOPs of a function, counted from its jaxpr: twice the multiply-adds of every
convolution and matmul, as XLA's CPU cost analysis counts them (taps that fall on the
padding or between dilated inputs do no work).

Why not XLA's cost analysis: on GPUs it leaves out the convolutions (they run as cuDNN
custom calls), which are nearly all of a step's work; on CPUs it counts what the chosen
algorithm runs (Winograd's fewer multiplies). This count is the same on every backend,
so rates compare across devices, algorithms and libraries.
"""

from __future__ import annotations

import math

import jax
import jax.extend.core as jex_core
import numpy as np

from percvae_jax.models import vae, vgg


def count(fn, *args, **kwargs) -> float:
  """FLOPs of one call `fn(*args, **kwargs)`; the arguments may be arrays or
  jax.ShapeDtypeStruct (tracing only: nothing is computed or compiled)."""
  return float(_jaxpr_flops(jax.make_jaxpr(fn)(*args, **kwargs).jaxpr))


def per_output_pixel(model, params, scale: int, lr_size: int = 128) -> float:
  """FLOPs of the model's generate path per output pixel, on a `lr_size` px square LR
  (the fixed-size seed model needs its own: hr_size // scale)."""
  lr = jax.ShapeDtypeStruct((1, lr_size, lr_size, 3), np.float32)
  generate = lambda params, lr: model.apply({"params": params}, lr, method="generate")
  return count(generate, params, lr) / (lr_size * scale) ** 2


def train_step(config, direct: bool = True) -> float:
  """FLOPs of one train step of `config` at its batch size: its perceptual VGG16 by
  direct convolutions (so that rates compare whichever algorithm runs), or with
  `direct=False` by the one the config runs on this backend (winograd.py's on CPUs)."""
  from percvae_jax import train, train_state  # heavy (Orbax, TensorBoard): only here.
  from percvae_jax.models import vgg_layout

  model = vae.create(config, train_state.compute_dtype(config))
  vgg_module = train_state.perceptual_module(config)
  vgg_params = None
  if vgg_module is not None:
    vgg_module = vgg_module.clone(winograd=vgg_module.winograd and not direct)
    vgg_params = {
      name: {k: jax.ShapeDtypeStruct(shape, np.float32) for k, shape in shapes.items()}
      for name, shapes in vgg_layout.PARAM_SHAPES.items()
      if name in vgg.convs_for_taps(vgg_module.taps)
    }
  state = jax.eval_shape(
    lambda vgg_params: train_state.create_train_state(config, model, vgg_params), vgg_params
  )
  size = config.data.hr_size
  batch = {"hr": jax.ShapeDtypeStruct((config.train.batch_size, size, size, 3), np.uint8)}
  return count(train.make_train_step(config, vgg_module), state, batch)


def _jaxpr_flops(jaxpr) -> float:
  total = 0.0
  for eqn in _live(jaxpr):
    name = eqn.primitive.name
    if name == "dot_general":
      total += _dot_flops(eqn)
    elif name == "conv_general_dilated":
      total += _conv_flops(eqn)
    inner = [_jaxpr_flops(sub) for sub in jex_core.jaxprs_in_params(eqn.params)]
    if name == "cond":  # one branch runs.
      total += max(inner, default=0.0)
    elif name == "scan":  # the body runs `length` times.
      total += eqn.params["length"] * sum(inner)
    else:  # pjit, remat, custom_jvp/vjp calls; a while loop's body counted once.
      total += sum(inner)
  return total


def _live(jaxpr) -> list:
  """The equations whose results are used: XLA drops the others (a gradient's jaxpr
  keeps the forward pass even where only the gradient is returned)."""
  used = {v for v in jaxpr.outvars if isinstance(v, jex_core.Var)}
  live = []
  for eqn in reversed(jaxpr.eqns):
    if eqn.effects or any(v in used for v in eqn.outvars):
      live.append(eqn)
      used.update(v for v in eqn.invars if isinstance(v, jex_core.Var))
  return live[::-1]


def _dot_flops(eqn) -> float:
  (contracting, _), _ = eqn.params["dimension_numbers"]
  lhs = eqn.invars[0].aval.shape
  return 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contracting)


def _conv_flops(eqn) -> float:
  """2 x output batch x output features x input features per group x the (output
  position, kernel tap) pairs, per spatial dimension, that land on a real input."""
  lhs, rhs = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
  out = eqn.outvars[0].aval.shape
  params = eqn.params
  lhs_spec, rhs_spec, out_spec = params["dimension_numbers"]
  pairs = 1
  for i, (low, _) in enumerate(params["padding"]):
    size, taps = lhs[lhs_spec[2 + i]], rhs[rhs_spec[2 + i]]
    in_dilation, tap_dilation = params["lhs_dilation"][i], params["rhs_dilation"][i]
    outputs = np.arange(out[out_spec[2 + i]])[:, None]
    at = outputs * params["window_strides"][i] + np.arange(taps)[None, :] * tap_dilation - low
    pairs *= np.count_nonzero(
      (at >= 0) & (at <= (size - 1) * in_dilation) & (at % in_dilation == 0)
    )
  return 2.0 * out[out_spec[0]] * out[out_spec[1]] * rhs[rhs_spec[1]] * pairs
