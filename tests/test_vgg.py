"""VGG16 port: matches a PyTorch VGG16 through the conversion script, tap by tap."""

import os
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization

from percvae_jax import pretrained
from percvae_jax.models import vgg
from percvae_jax.models.vgg import TAPS, VGG16, params_for_taps
from percvae_jax.models.vgg_layout import CONV_NAMES, PARAM_SHAPES
from tests import helpers

REPO_ROOT = Path(__file__).resolve().parents[1]

# torchvision vgg16().features layout: channels, "M" = 2x2 max-pool.
TORCHVISION_VGG16_CFG = [
  64,
  64,
  "M",
  128,
  128,
  "M",
  256,
  256,
  256,
  "M",
  512,
  512,
  512,
  "M",
  512,
  512,
  512,
  "M",
]
# Index in torchvision's vgg16().features of the ReLU behind each tap.
TORCH_TAP_RELU_INDEX = {"relu1_2": 3, "relu2_2": 8, "relu3_3": 15, "relu4_3": 22, "relu5_3": 29}


def torch_vgg16(torch):
  """A torch module whose state dict has torchvision's keys (``features.N.weight``, a classifier).

  torchvision itself is not installed, so the layers are rebuilt from its configuration;
  He-initialised so that deep taps carry signal rather than near-zero values.
  """
  torch.manual_seed(0)
  layers, in_channels = [], 3
  for item in TORCHVISION_VGG16_CFG:
    if item == "M":
      layers.append(torch.nn.MaxPool2d(kernel_size=2, stride=2))
      continue
    conv = torch.nn.Conv2d(in_channels, item, kernel_size=3, padding=1)
    torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
    torch.nn.init.normal_(conv.bias, std=0.1)
    layers += [conv, torch.nn.ReLU()]
    in_channels = item
  model = torch.nn.Module()
  model.features = torch.nn.Sequential(*layers)
  model.classifier = torch.nn.Linear(4, 2)  # present in real checkpoints; must be ignored
  return model.eval()


def run_converter(checkpoint: Path, output: Path) -> subprocess.CompletedProcess:
  pythonpath = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
  return subprocess.run(
    [
      sys.executable,
      str(REPO_ROOT / "scripts" / "convert_vgg16.py"),
      "--torch-checkpoint",
      str(checkpoint),
      "--output",
      str(output),
    ],
    capture_output=True,
    text=True,
    env=dict(os.environ, PYTHONPATH=pythonpath),
    timeout=300,
  )


@pytest.mark.slow
def test_every_tap_matches_torch_after_conversion(tmp_path):
  torch = pytest.importorskip("torch")
  model = torch_vgg16(torch)
  checkpoint = tmp_path / "vgg16.pth"
  torch.save(model.state_dict(), checkpoint)
  converted = tmp_path / "vgg16.msgpack"
  result = run_converter(checkpoint, converted)
  assert result.returncode == 0, result.stderr

  images = np.random.default_rng(0).uniform(size=(2, 64, 64, 3)).astype(np.float32)
  mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
  std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
  x = (torch.from_numpy(images).permute(0, 3, 1, 2) - mean) / std
  expected = {}
  with torch.no_grad():
    for index, layer in enumerate(model.features):
      x = layer(x)
      for tap, relu_index in TORCH_TAP_RELU_INDEX.items():
        if index == relu_index:
          expected[tap] = x.permute(0, 2, 3, 1).numpy()

  params = pretrained.load_vgg16_params(str(converted))
  features = VGG16(taps=TAPS).apply({"params": params}, jnp.asarray(images))
  assert set(features) == set(TAPS)
  for tap in TAPS:
    assert features[tap].shape == expected[tap].shape, tap
    scale = np.abs(expected[tap]).max()
    assert scale > 0, tap
    relative_error = np.abs(np.asarray(features[tap]) - expected[tap]).max() / scale
    assert relative_error < 1e-4, (tap, relative_error)


@pytest.mark.slow
def test_converter_lists_every_missing_and_misshapen_key(tmp_path):
  torch = pytest.importorskip("torch")
  state_dict = torch_vgg16(torch).state_dict()
  del state_dict["features.0.weight"]
  del state_dict["features.28.bias"]
  state_dict["features.10.weight"] = torch.zeros(256, 128, 1, 1)
  checkpoint = tmp_path / "broken.pth"
  torch.save(state_dict, checkpoint)
  output = tmp_path / "out.msgpack"

  result = run_converter(checkpoint, output)

  assert result.returncode == 2
  for key in ("features.0.weight", "features.28.bias", "features.10.weight"):
    assert key in result.stderr
  assert "Traceback" not in result.stderr and result.stderr.startswith("error: ")
  assert not output.exists()


def test_converter_without_torch_names_the_install_command(tmp_path, monkeypatch, capsys):
  converter = helpers.load_script("convert_vgg16")
  monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
  checkpoint, output = tmp_path / "vgg16.pth", tmp_path / "out.msgpack"
  exit_code = converter.main(["--torch-checkpoint", str(checkpoint), "--output", str(output)])
  assert exit_code == 2
  assert "pip install 'percvae_jax[convert]'" in capsys.readouterr().err
  assert not output.exists()


def test_state_dict_conversion_rejects_bad_keys_without_torch():
  state_dict = {
    f"features.{index}.{kind}": np.zeros(1, np.float32)
    for index in pretrained.TORCHVISION_CONV_INDICES
    for kind in ("weight", "bias")
  }
  with pytest.raises(pretrained.InvalidWeightsError) as error:
    pretrained.torch_state_dict_to_flax(state_dict)
  message = str(error.value)
  # All 26 tensors are misshapen: each is reported, not just the first.
  for index in pretrained.TORCHVISION_CONV_INDICES:
    assert f"features.{index}.weight has shape (1,)" in message


def test_shallow_taps_create_no_deeper_params():
  variables = VGG16(taps=("relu2_2",)).init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
  assert sorted(variables["params"]) == ["conv1_1", "conv1_2", "conv2_1", "conv2_2"]
  assert "conv3_1" not in variables["params"]


def test_full_params_sliced_to_shallow_taps_give_same_features():
  images = jnp.asarray(np.random.default_rng(1).uniform(size=(1, 32, 32, 3)), jnp.float32)
  full = VGG16(taps=TAPS).init(jax.random.key(0), images)["params"]
  assert sorted(full) == sorted(CONV_NAMES)
  deep = VGG16(taps=TAPS).apply({"params": full}, images)
  sliced = params_for_taps(full, ("relu1_2", "relu2_2"))
  assert sorted(sliced) == ["conv1_1", "conv1_2", "conv2_1", "conv2_2"]
  shallow = VGG16(taps=("relu1_2", "relu2_2")).apply({"params": sliced}, images)
  assert set(shallow) == {"relu1_2", "relu2_2"}
  for tap in shallow:
    np.testing.assert_array_equal(shallow[tap], deep[tap])


def test_unknown_tap_error_lists_valid_taps():
  with pytest.raises(ValueError) as error:
    VGG16(taps=("relu3_3", "conv9_9")).init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
  assert "conv9_9" in str(error.value)
  for tap in TAPS:
    assert tap in str(error.value)


def test_msgpack_written_by_save_round_trips(tmp_path):
  params = {
    name: {leaf: np.full(shape, 0.5, np.float32) for leaf, shape in leaves.items()}
    for name, leaves in PARAM_SHAPES.items()
  }
  path = pretrained.save_vgg16_params(params, tmp_path / "nested" / "vgg16.msgpack")
  restored = serialization.msgpack_restore(path.read_bytes())
  assert sorted(restored) == sorted(CONV_NAMES)
  assert restored["conv5_3"]["kernel"].shape == (3, 3, 512, 512)
  assert list(tmp_path.joinpath("nested").iterdir()) == [path]  # no temp file left behind


def test_reshape_max_pool_matches_flax_values_and_gradients():
  pre = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 8, 3))  # odd: VALID drops a row.
  cotangent = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 4, 3))

  def pooled(pool):
    # Of ReLU outputs, as VGG pools them: windows of tied zeros included.
    value, vjp = jax.vjp(lambda p: pool(jax.nn.relu(p)), pre)
    return value, vjp(cotangent)[0]

  (expected, expected_grad), (actual, actual_grad) = (
    pooled(lambda x: nn.max_pool(x, (2, 2), (2, 2))),
    pooled(vgg.max_pool_2x2),
  )
  np.testing.assert_array_equal(actual, expected)
  np.testing.assert_allclose(actual_grad, expected_grad, rtol=1e-6)
