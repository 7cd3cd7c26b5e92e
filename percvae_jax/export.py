"""Exports a released model (or a run's checkpoint) to ONNX, for the tools that load
model files: onnxruntime, OpenCV's dnn, chaiNNer.

  python -m percvae_jax.export --model x2 --output x2.onnx
  python -m percvae_jax.export --workdir DIR --output mine.onnx

The graph is `generate`, the path `upscale` runs: input `lr`, float32 NCHW RGB in
[0,1] of any height and width (dynamic axes), output `sr`, `scale` times larger. The
sampling models (`model.lr_consistent`: x4-perceptual) also take `noise` (N x
latent_channels x H x W standard normal draws) and `temperature` (shape [1]), and
compute z = mu + temperature * sigma * noise as `generate(sample=True)` does; zero
noise or temperature gives the mean output.

The graph is built node by node from the Flax parameters with the `onnx` package's
helper API (docs/export.md says why no converter): convolutions as they are, and the
two operations that JAX computes with matrices sized to the image, written so that
they hold for any size: bicubic upsampling as a polyphase convolution divided by the
same convolution of ones (PIL's renormalised border taps, exactly), and the LR
projection's pseudo-inverse as Chebyshev iterations on the degradation's normal
equations, which converge to float32 precision in a dozen steps because their
eigenvalues lie within a factor of 2.2 of each other at every size.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import numpy as np
from absl import app, flags

from percvae_jax import cli, degradation, inference
from percvae_jax.errors import InferenceError, ensure_writable_folder
from percvae_jax.models import vae

OPSET = 17  # DepthToSpace CRD, ConvTranspose, Clip with tensor bounds; OpenCV 4.7+ reads it.
IR_VERSION = 8  # the oldest that opset 17 allows: the most runtimes load it.
# Residual of each normal-equation solve, relative: far below float32's 8-bit-image
# needs (the tests ask 1e-4 mean abs of the whole output).
SOLVE_TOLERANCE = 1e-7


class ExportError(InferenceError):
  """A model or option the ONNX export cannot serve; the message says what to do."""


def require_onnx():
  """The `onnx` module, or a one-line error naming the extra that brings it."""
  try:
    import onnx  # the optional `export` extra.
  except ImportError:
    raise ExportError(
      "exporting to ONNX needs the onnx package, an extra: install it with "
      "`pip install 'percvae_jax[export]'`."
    ) from None
  return onnx


@dataclasses.dataclass
class Graph:
  """The nodes and weights of an ONNX graph being built; names are made unique."""

  nodes: list = dataclasses.field(default_factory=list)
  initializers: list = dataclasses.field(default_factory=list)
  count: int = 0

  def name(self, hint: str) -> str:
    self.count += 1
    return f"{hint}_{self.count}"

  def const(self, value: np.ndarray, hint: str = "const") -> str:
    onnx = require_onnx()
    name = self.name(hint)
    self.initializers.append(onnx.numpy_helper.from_array(np.asarray(value), name))
    return name

  def op(self, kind: str, *inputs: str, hint: str | None = None, **attributes) -> str:
    onnx = require_onnx()
    output = self.name(hint or kind.lower())
    self.nodes.append(onnx.helper.make_node(kind, list(inputs), [output], **attributes))
    return output

  def divide(self, x: str, norm: str) -> str:
    """x / norm, for a positive `norm`. OpenCV's dnn (5.0) divides in a blocked layout
    whose padding lanes hold 0, and the 0/0 there turns a following ConvTranspose's
    output to NaN; max(norm, 1e-30) is norm itself wherever it is positive."""
    guarded = self.op("Max", norm, self.const(np.float32(1e-30)))
    return self.op("Div", x, guarded)

  def conv(self, x: str, kernel: np.ndarray, bias: np.ndarray | None = None, **attributes) -> str:
    inputs = [x, self.const(kernel.astype(np.float32), "w")]
    if bias is not None:
      inputs.append(self.const(bias.astype(np.float32), "b"))
    return self.op("Conv", *inputs, **attributes)

  def slice(self, x: str, start: int, end: int, axis: int = 1) -> str:
    """x[start:end] along `axis` (1: channels)."""
    return self.op(
      "Slice",
      x,
      self.const(np.array([start], np.int64)),
      self.const(np.array([end], np.int64)),
      self.const(np.array([axis], np.int64)),
    )

  def ones_like(self, x: str) -> str:
    """Ones shaped like `x`, whatever its size."""
    zero = self.op("Mul", x, self.const(np.zeros((), np.float32)))
    return self.op("Add", zero, self.const(np.ones((), np.float32)))


def flax_conv(graph: Graph, x: str, conv: dict) -> str:
  """A Flax 3x3 'SAME' convolution (HWIO kernel) on NCHW `x`."""
  kernel = np.asarray(conv["kernel"], np.float32).transpose(3, 2, 0, 1)  # OIHW
  kh, kw = kernel.shape[2:]
  pads = [kh // 2, kw // 2, (kh - 1) // 2, (kw - 1) // 2]
  return graph.conv(x, kernel, np.asarray(conv["bias"], np.float32), pads=pads)


def trunk(graph: Graph, x: str, params: dict) -> str:
  """vae.Trunk: conv -> residual blocks (pixel attention where a block has its 1x1
  conv, Conv_2) -> (+ skip) -> conv."""
  x = skip = flax_conv(graph, x, params["Conv_0"])
  blocks = sorted((k for k in params if k.startswith("ResBlock_")), key=lambda k: int(k[9:]))
  for block in blocks:
    y = graph.op("Relu", flax_conv(graph, x, params[block]["Conv_0"]))
    y = flax_conv(graph, y, params[block]["Conv_1"])
    if "Conv_2" in params[block]:
      y = graph.op("Mul", y, graph.op("Sigmoid", flax_conv(graph, y, params[block]["Conv_2"])))
    x = graph.op("Add", x, y)
  return flax_conv(graph, graph.op("Add", x, skip), params["Conv_1"])


def interior_taps(matrix: np.ndarray, row: int, anchor: int) -> tuple[int, np.ndarray]:
  """(first offset, weights) of the non-zero taps of `matrix[row]`, as offsets from
  column `anchor`."""
  columns = np.nonzero(matrix[row])[0]
  return columns[0] - anchor, matrix[row, columns[0] : columns[-1] + 1]


def upsampling_phases(scale: int) -> tuple[int, np.ndarray]:
  """(first offset, scale x K kernel) of PIL's bicubic upsampling by `scale`: SR pixel
  y * scale + p is the taps of phase p on LR pixels y + offset ... y + offset + K - 1."""
  size = 64
  matrix = degradation.bicubic_matrix(size, size * scale)
  anchor = size // 2
  taps = [interior_taps(matrix, anchor * scale + p, anchor) for p in range(scale)]
  first = min(offset for offset, _ in taps)
  last = max(offset + len(w) - 1 for offset, w in taps)
  kernel = np.zeros((scale, last - first + 1))
  for p, (offset, weights) in enumerate(taps):
    kernel[p, offset - first : offset - first + len(weights)] = weights
  return first, kernel


def bicubic_upscale(graph: Graph, x: str, ones: str, scale: int, channels: int = 3) -> str:
  """degradation.bicubic_upscale for any size: each phase pair (py, px) a depthwise
  convolution by k_py (x) k_px, interleaved by DepthToSpace; the border rows, whose taps
  PIL renormalises over those inside the image, divided by the same convolution of
  `ones` (shaped like `x`: zero padding drops the outside taps, the division
  renormalises)."""
  first, phases = upsampling_phases(scale)
  taps = phases.shape[1]
  pads = [-first, -first, taps - 1 + first, taps - 1 + first]
  kernel = np.einsum("pi,qj->pqij", phases, phases).reshape(scale * scale, 1, taps, taps)

  def interleaved(y: str) -> str:
    convolved = graph.conv(y, np.tile(kernel, (channels, 1, 1, 1)), pads=pads, group=channels)
    return graph.op("DepthToSpace", convolved, blocksize=scale, mode="CRD")

  return graph.divide(interleaved(x), interleaved(ones))


@dataclasses.dataclass(frozen=True)
class Downscaling:
  """The degradation along one axis (blur 0: PIL's bicubic downscaling by `scale`) as a
  strided convolution: LR pixel i is the taps on HR pixels scale*i + first ... ."""

  scale: int
  first: int
  taps: np.ndarray

  @classmethod
  def create(cls, scale: int) -> Downscaling:
    size = 64 * scale
    matrix = degradation.degradation_matrix(size, scale, 0.0)
    first, taps = interior_taps(matrix, 32, 32 * scale)
    return cls(scale, int(first), taps)

  @property
  def pads(self) -> tuple[int, int]:
    return -self.first, self.first + len(self.taps) - self.scale

  def kernel(self, axis: str, channels: int) -> np.ndarray:
    shape = (len(self.taps), 1) if axis == "h" else (1, len(self.taps))
    return np.tile(self.taps.reshape(1, 1, *shape), (channels, 1, 1, 1)).astype(np.float32)

  def attributes(self, axis: str, channels: int) -> dict:
    begin, end = self.pads
    along_h = axis == "h"
    return {
      "strides": [self.scale, 1] if along_h else [1, self.scale],
      "pads": [begin, 0, end, 0] if along_h else [0, begin, 0, end],
      "group": channels,
    }

  def normaliser(self, graph: Graph, ones: str, axis: str) -> str:
    """For each LR row (axis "h") or column ("w") of the downscaling of `ones` (ones
    shaped like the HR side), the sum of its taps that lie inside the image: 1 inside,
    less at a border, where PIL renormalises. Full-shaped, not broadcast: OpenCV's dnn
    (5.0) loses the layout of a broadcast divisor between convolutions."""
    return self.down(graph, ones, None, axis)

  def down(self, graph: Graph, x: str, norm: str | None, axis: str, channels: int = 3) -> str:
    """A x: PIL's bicubic downscaling along `axis` ("h" or "w"); `norm` None: not
    renormalised."""
    convolved = graph.conv(x, self.kernel(axis, channels), **self.attributes(axis, channels))
    return convolved if norm is None else graph.divide(convolved, norm)

  def up(self, graph: Graph, y: str, norm: str, axis: str, channels: int = 3) -> str:
    """A^T y: its transpose (ConvTranspose is the adjoint of the strided Conv)."""
    weights = graph.const(self.kernel(axis, channels), "w")
    return graph.op(
      "ConvTranspose", graph.divide(y, norm), weights, **self.attributes(axis, channels)
    )

  def solve(self, graph: Graph, r: str, norm: str, axis: str) -> str:
    """(A A^T)^-1 r along `axis`, by Chebyshev iteration (Saad, Iterative Methods for
    Sparse Linear Systems, Alg. 12.1): no inner products, so a fixed number of
    convolutions, as many as the eigenvalue bounds need for SOLVE_TOLERANCE."""
    low, high = eigenvalue_bounds(self.scale)
    theta, delta = (high + low) / 2, (high - low) / 2
    sigma = theta / delta
    rate = (np.sqrt(high / low) - 1) / (np.sqrt(high / low) + 1)
    steps = int(np.ceil(np.log(SOLVE_TOLERANCE / 2) / np.log(rate)))
    scalar = lambda v: graph.const(np.asarray(v, np.float32))
    rho = 1 / sigma
    d = x = graph.op("Mul", r, scalar(1 / theta))
    for _ in range(1, steps):
      r = graph.op("Sub", r, self.down(graph, self.up(graph, d, norm, axis), norm, axis))
      rho_next = 1 / (2 * sigma - rho)
      d = graph.op(
        "Add",
        graph.op("Mul", d, scalar(rho_next * rho)),
        graph.op("Mul", r, scalar(2 * rho_next / delta)),
      )
      rho = rho_next
      x = graph.op("Add", x, d)
    return x


@functools.lru_cache(maxsize=8)
def eigenvalue_bounds(scale: int) -> tuple[float, float]:
  """Bounds on the eigenvalues of A A^T (A: the degradation along one axis) at every
  size: the lowest and highest over LR sides 1-64 and 256, widened by 5%. They lie
  within a factor of 2.2 of each other (for x2 to x4), whatever the size."""
  low, high = np.inf, 0.0
  for side in [*range(1, 65), 256]:
    matrix = degradation.degradation_matrix(side * scale, scale, 0.0)
    eigenvalues = np.linalg.eigvalsh(matrix @ matrix.T)
    low, high = min(low, eigenvalues[0]), max(high, eigenvalues[-1])
  return 0.95 * low, 1.05 * high


def project_onto_lr_in_range(graph: Graph, sr: str, lr: str, scale: int) -> str:
  """degradation.project_onto_lr_in_range (blur 0) for any size: x + D^+(lr - D x),
  with D^+ = D^T (D D^T)^-1 solved axis by axis (D = A_h (x) A_w is separable),
  alternated with clipping to [0,1]."""
  axis_op = Downscaling.create(scale)
  # The normalisers of each shape the projection divides: (HR H, HR W) -> (h, W) ->
  # (h, w) going down, and (H, w) -> (h, w) for the height's normal equations.
  hr_ones = graph.ones_like(sr)
  norm_h = axis_op.normaliser(graph, hr_ones, "h")  # h x W
  norm_w = axis_op.normaliser(graph, graph.ones_like(norm_h), "w")  # h x w
  narrow = axis_op.normaliser(graph, hr_ones, "w")  # H x w, unnormalised: for its shape
  norm_h_lr = axis_op.normaliser(graph, graph.ones_like(narrow), "h")  # h x w

  def project(x: str) -> str:
    lowered = axis_op.down(graph, axis_op.down(graph, x, norm_h, "h"), norm_w, "w")
    solved = axis_op.solve(graph, graph.op("Sub", lr, lowered), norm_h_lr, "h")
    solved = axis_op.solve(graph, solved, norm_w, "w")
    back = axis_op.up(graph, solved, norm_w, "w")
    return graph.op("Add", x, axis_op.up(graph, back, norm_h, "h"))

  low, high = graph.const(np.zeros((), np.float32)), graph.const(np.ones((), np.float32))
  x = project(sr)
  for _ in range(degradation.RANGE_ITERATIONS):
    x = project(graph.op("Clip", x, low, high))
  return x


def build(model, params, sampling: bool):
  """The ONNX ModelProto of `model.generate` with `params` (an SRVAE)."""
  onnx = require_onnx()
  if model.lr_consistent and model.blur_sigma > 0:
    raise ExportError(
      f"this model projects onto a blurred degradation (blur_sigma={model.blur_sigma}), "
      "which the export does not build; export a model trained with "
      "--config.data.blur_sigma=0 (all released models are)."
    )
  if model.noise_channels:
    raise ExportError(
      f"this model decodes smooth noise (model.noise_channels={model.noise_channels}), "
      "which the export does not build; export a model without it (no released one has it)."
    )
  params = jax.device_get(params)
  graph = Graph()
  latent = model.latent_channels
  features = trunk(graph, "lr", params["lr_encoder"])
  stats = trunk(graph, features, params["prior"])
  mu = graph.slice(stats, 0, latent)
  z = mu
  if sampling:
    logvar = graph.op(
      "Clip",
      graph.slice(stats, latent, 2 * latent),
      graph.const(np.float32(vae.LOGVAR_RANGE[0])),
      graph.const(np.float32(vae.LOGVAR_RANGE[1])),
    )
    sigma = graph.op("Exp", graph.op("Mul", logvar, graph.const(np.float32(0.5))))
    spread = graph.op("Mul", graph.op("Mul", sigma, "noise"), "temperature")
    z = graph.op("Add", mu, spread)
  if model.latent_blocks:
    decoded = trunk(graph, graph.op("Concat", features, z, axis=1), params["latent_decoder"])
    features = graph.op("Add", features, decoded)
  residual = trunk(graph, graph.op("Concat", features, z, axis=1), params["decoder"])
  detail = graph.op("DepthToSpace", residual, blocksize=model.scale, mode="DCR")
  upscaled = bicubic_upscale(graph, "lr", graph.ones_like("lr"), model.scale)
  sr = graph.op("Add", upscaled, detail)
  if model.lr_consistent:
    sr = project_onto_lr_in_range(graph, sr, "lr", model.scale)
  graph.nodes.append(onnx.helper.make_node("Identity", [sr], ["sr"]))
  float32 = onnx.TensorProto.FLOAT
  inputs = [onnx.helper.make_tensor_value_info("lr", float32, ["N", 3, "H", "W"])]
  if sampling:
    inputs += [
      onnx.helper.make_tensor_value_info("noise", float32, ["N", latent, "H", "W"]),
      onnx.helper.make_tensor_value_info("temperature", float32, [1]),
    ]
  output = onnx.helper.make_tensor_value_info("sr", float32, ["N", 3, "SH", "SW"])
  proto = onnx.helper.make_model(
    onnx.helper.make_graph(graph.nodes, "percvae_srvae", inputs, [output], graph.initializers),
    opset_imports=[onnx.helper.make_opsetid("", OPSET)],
    producer_name="percvae_jax",
  )
  proto.ir_version = IR_VERSION
  onnx.checker.check_model(proto)
  return proto


def latent_noise(model, params, lr: np.ndarray, key) -> np.ndarray:
  """The N x latent_channels x H x W `noise` that `generate(sample=True)` draws for
  the NHWC `lr` with rngs={"latent": key}: fed to the graph, it gives JAX's sample.
  (`upscale` folds its key with each tile's index; an image within one tile uses
  jax.random.fold_in(key, 0).)"""
  draw = lambda module, x: jax.random.normal(
    module.make_rng("latent"), (*x.shape[:3], module.latent_channels)
  )
  noise = model.apply({"params": params}, lr, method=draw, rngs={"latent": key})
  return np.asarray(noise).transpose(0, 3, 1, 2)


def export(
  output: str,
  workdir: str | None = None,
  model: str | None = None,
  step: int | None = None,
  sampling: bool | None = None,
) -> dict:
  """Writes the ONNX graph of a released model (`model`) or a run's checkpoint
  (`workdir`) to `output`; returns what it wrote: {"output", "inputs", "scale",
  "source"}. `sampling` (default: the model's lr_consistent) adds the noise inputs."""
  require_onnx()
  if not output.lower().endswith(".onnx"):
    raise ExportError(f"--output={output!r} must name a .onnx file.")
  if os.path.isdir(output):
    raise ExportError(f"--output={output!r} is a folder; pass a file name ending in .onnx.")
  folder = os.path.dirname(os.path.abspath(output))
  ensure_writable_folder(folder, "--output's folder", ExportError)
  if workdir is None and model is None:
    raise ExportError("pass --model NAME (a released model) or --workdir DIR (a checkpoint).")
  config, flax_model, params, source = inference.load_model(workdir, model, None, step)
  sampling = flax_model.lr_consistent if sampling is None else sampling
  proto = build(flax_model, params, sampling)
  part = output + ".part"
  with open(part, "wb") as f:
    f.write(proto.SerializeToString())
  os.replace(part, output)
  inputs = ["lr", "noise", "temperature"] if sampling else ["lr"]
  print(
    f"Wrote {output} ({os.path.getsize(output) / 1e6:.1f} MB): x{config.data.scale}, "
    f"inputs {', '.join(inputs)} (NCHW float32 RGB in [0,1], any height and width), "
    "output sr.",
    flush=True,
  )
  return {"output": output, "inputs": inputs, "scale": config.data.scale, "source": source}


def define_flags() -> None:
  """The flags, defined only when run as a program (see upscale.define_flags)."""
  flags.DEFINE_string("model", None, "A released model's name (x2, x4-fast, x4-perceptual, ...).")
  flags.DEFINE_string("workdir", None, "A training run's --workdir, to export its checkpoint.")
  flags.DEFINE_integer("step", None, "With --workdir: the checkpoint step; default: the latest.")
  flags.DEFINE_string("output", None, "The .onnx file to write.", required=True)
  flags.DEFINE_bool(
    "sampling",
    None,
    "Add the noise and temperature inputs (prior samples); default: for the models "
    "trained to sample (model.lr_consistent, e.g. x4-perceptual).",
  )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  f = flags.FLAGS
  cli.exit_on_user_error(
    export, f.output, workdir=f.workdir, model=f.model, step=f.step, sampling=f.sampling
  )


def console():
  """The percvae-export command."""
  define_flags()
  app.run(main)


if __name__ == "__main__":
  console()
