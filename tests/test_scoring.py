"""The one scorer: a model over an image folder at a scale, per image and averaged."""

import math

import numpy as np

from percvae_jax import degradation, scoring
from tests import helpers


def bicubic(lr, key=None):
  del key
  return np.asarray(degradation.bicubic_upscale(lr, 2))


def test_a_folder_scores_per_image_and_on_average(tmp_path):
  helpers.write_photos(tmp_path / "set", count=3, size=48, seed=0)
  (tmp_path / "set" / "broken.png").write_bytes(b"not an image")
  results = scoring.score_folder(str(tmp_path / "set"), 2, bicubic, with_lpips=False)
  assert [row["name"] for row in results["images"]] == ["0.png", "1.png", "2.png"]
  assert results["skipped"] == ["broken.png"]
  for metric in ("psnr_y", "ssim_y", "psnr_rgb", "lr_psnr"):
    per_image = [row["model"][metric] for row in results["images"]]
    assert results["model"][metric] == np.mean(per_image)
    # The model here is bicubic itself: both columns agree image by image.
    assert per_image == [row["bicubic"][metric] for row in results["images"]]
  assert all(math.isnan(row["model"]["lpips"]) for row in results["images"])


def test_a_worse_model_scores_lower(tmp_path):
  helpers.write_photos(tmp_path / "set", count=2, size=48, seed=1)
  blurred = lambda lr, key=None: bicubic(lr) * 0.9 + 0.05
  results = scoring.score_folder(str(tmp_path / "set"), 2, blurred, with_lpips=False)
  assert results["model"]["psnr_y"] < results["bicubic"]["psnr_y"] - 1.0
