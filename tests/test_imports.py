"""The inference side (inference, evaluate, upscale, export) stays light. Importing
it must not load the training code, the VGG16 of the perceptual loss (evaluation uses
LPIPS's AlexNet), TFDS or TensorFlow: a user who only upscales pays for none of them.
Each module is imported in a fresh interpreter (tests/workers/import_probe.py)."""

import json
import subprocess
import sys

import pytest

from tests import helpers

pytestmark = pytest.mark.slow

INFERENCE_MODULES = (
  "percvae_jax.inference",
  "percvae_jax.evaluate",
  "percvae_jax.upscale",
  "percvae_jax.export",
)
TRAINING_ONLY = (
  "percvae_jax.train",
  "percvae_jax.train_state",
  "percvae_jax.models.vgg",
  "tensorflow_datasets",
  "tensorflow",
)


@pytest.fixture(scope="module")
def loaded_by():
  """{module: the modules importing it loaded}, each probed in its own process."""
  probes = {
    name: subprocess.Popen(
      [sys.executable, "-m", "tests.workers.import_probe", name],
      cwd=helpers.REPO,
      env=helpers.subprocess_env(),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for name in INFERENCE_MODULES
  }
  loaded = {}
  for name, probe in probes.items():
    out, err = probe.communicate(timeout=300)
    assert probe.returncode == 0, err[-3000:]
    loaded[name] = set(json.loads(out)["modules"])
  return loaded


@pytest.mark.parametrize("module", INFERENCE_MODULES)
def test_importing_the_inference_side_loads_no_training_code(loaded_by, module):
  loaded = loaded_by[module]
  assert module in loaded  # the probe did import it.
  unwanted = sorted(
    name
    for name in loaded
    if name in TRAINING_ONLY or name.startswith(("tensorflow.", "tensorflow_datasets."))
  )
  assert not unwanted, f"importing {module} loaded {unwanted}"


def test_the_probe_sees_what_training_loads():
  """The probe's check can fail: importing the training module loads its VGG16."""
  result = helpers.run_module("tests.workers.import_probe", "percvae_jax.train")
  assert result.returncode == 0, result.stderr[-3000:]
  loaded = set(json.loads(result.stdout)["modules"])
  assert {"percvae_jax.train", "percvae_jax.models.vgg"} <= loaded
