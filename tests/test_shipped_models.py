"""The models the package ships (percvae_jax/released/): each still gives the Set5 scores
recorded in its config.json, and `upscale --scale S` works offline with no --workdir."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from percvae_jax import inference, released, scoring
from tests import helpers

SHIPPED = released.names()


def test_the_package_ships_the_fidelity_models():
  assert {"x2", "x3", "x4"} <= set(SHIPPED), SHIPPED
  total = sum(
    os.path.getsize(os.path.join(released.RELEASED_DIR, name, file))
    for name in SHIPPED
    for file in os.listdir(os.path.join(released.RELEASED_DIR, name))
  )
  assert total <= 16e6, f"released files take {total / 1e6:.1f} MB (at most 16 MB)"


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_model_reproduces_its_recorded_set5_scores(name):
  set5 = helpers.shared_data("Set5")
  recorded = released.metadata(name)["scores"]["Set5"]
  config, upscaler, _ = inference.load_upscaler(name=name)
  sources = scoring.folder_sources(set5)
  rows = [
    s["model"]
    for _, s, _ in scoring.score_images(
      sources, config.data.scale, 0.0, scoring.alex_lpips(), upscaler
    )
    if s is not None
  ]
  measured = scoring.mean_scores(rows)
  assert len(rows) == 5
  for metric, tolerance in (("psnr_y", 0.01), ("ssim_y", 1e-4), ("lpips", 1e-3), ("lr_psnr", 0.01)):
    assert measured[metric] == pytest.approx(recorded[metric], abs=tolerance), metric


def test_upscale_by_scale_uses_the_shipped_model_offline(tmp_path):
  if "x2" not in SHIPPED:
    pytest.fail("the package ships no x2 model")
  photo = np.random.default_rng(0).integers(0, 256, (40, 56, 3), np.uint8)
  Image.fromarray(photo).save(tmp_path / "photo.png")
  run = subprocess.run(
    [
      sys.executable,
      "-m",
      "percvae_jax.upscale",
      "--input",
      str(tmp_path / "photo.png"),
      "--output",
      str(tmp_path / "out"),
      "--scale",
      "2",
    ],
    capture_output=True,
    text=True,
    timeout=300,
    env=dict(os.environ, JAX_PLATFORMS="cpu", NO_PROXY="*", HTTPS_PROXY="http://0.0.0.0:9"),
  )
  assert run.returncode == 0, run.stderr[-3000:]
  assert "released model x2" in run.stdout + run.stderr
  with Image.open(tmp_path / "out" / "photo.png") as out:
    assert out.size == (112, 80)
