"""The released models, shipped inside the package: `released/<name>/` holds
`params.msgpack` (the generation path's parameters, float32) and `config.json` (the
config they were trained with, and `release`: its scores and provenance).

`upscale` and `evaluate` take one by `--model NAME`, or the one for `--scale S`
(named `x2`, `x3`, `x4`; their `-fast` versions trade 0.1-0.4 dB for 2-2.5x the
speed). `scripts/release_model.py` writes one from a finished training run.
"""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np
from flax import serialization

from percvae_jax import config as config_lib
from percvae_jax.errors import InferenceError, InvalidWeightsError

RELEASED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "released")
PARAMS_FILE = "params.msgpack"
CONFIG_FILE = "config.json"
# Submodules `generate` never runs: left out of the files.
TRAINING_ONLY = ("posterior",)


def names(root: str = RELEASED_DIR) -> list[str]:
  """The released models' names, sorted."""
  if not os.path.isdir(root):
    return []
  return sorted(
    name for name in os.listdir(root) if os.path.isfile(os.path.join(root, name, PARAMS_FILE))
  )


def name_for_scale(scale: int | None, root: str = RELEASED_DIR) -> str:
  """The released model for `scale` ("x2" for 2), refusing a scale none is for."""
  available = names(root)
  if scale is None:
    raise InferenceError(
      "pass --scale S (released models: "
      f"{', '.join(available) or 'none'}), --model NAME or --workdir DIR."
    )
  if f"x{scale}" not in available:
    raise InferenceError(
      f"no released model for --scale={scale}; released: "
      f"{', '.join(available) or 'none'}. Pass --workdir of a run trained "
      f"with --config.data.scale={scale}."
    )
  return f"x{scale}"


def load(name: str, root: str = RELEASED_DIR):
  """(config, params) of the released model `name`."""
  available = names(root)
  if name not in available:
    raise InferenceError(
      f"--model={name!r} is not a released model; choose one of: "
      f"{', '.join(available) or 'none (this install ships none)'}."
    )
  folder = os.path.join(root, name)
  with open(os.path.join(folder, CONFIG_FILE)) as f:
    config = config_lib.from_dict(json.load(f))
  path = os.path.join(folder, PARAMS_FILE)
  with open(path, "rb") as f:
    try:
      params = serialization.msgpack_restore(f.read())
    except ValueError as e:
      raise InvalidWeightsError(f"{path} is damaged ({e}); reinstall percvae_jax.") from None
  return config, params


def metadata(name: str, root: str = RELEASED_DIR) -> dict:
  """What `config.json` says of the release: its scores, training and provenance."""
  with open(os.path.join(root, name, CONFIG_FILE)) as f:
    return json.load(f).get("release", {})


def write(folder: str, config, params, release: dict) -> None:
  """Writes a released model's files (atomically, each)."""
  os.makedirs(folder, exist_ok=True)
  kept = {k: v for k, v in params.items() if k not in TRAINING_ONLY}
  kept = {k: v for k, v in _to_numpy(kept).items()}
  saved = dict(config.to_dict(), release=release)
  _write_atomic(os.path.join(folder, PARAMS_FILE), serialization.msgpack_serialize(kept))
  _write_atomic(
    os.path.join(folder, CONFIG_FILE), (json.dumps(saved, indent=2, sort_keys=True) + "\n").encode()
  )


def _to_numpy(tree):
  if isinstance(tree, dict):
    return {k: _to_numpy(v) for k, v in tree.items()}
  return np.asarray(tree, np.float32)


def _write_atomic(path: str, payload: bytes) -> None:
  descriptor, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp")
  with os.fdopen(descriptor, "wb") as f:
    f.write(payload)
  os.chmod(tmp, 0o644)
  os.replace(tmp, path)
