"""The degradation pinned down against PIL, the reference the paper's pipeline used."""

import jax
import numpy as np
import pytest
from PIL import Image

from percvae_jax import degradation
from tests.helpers import shared_data

RNG = np.random.default_rng(0)


def pil_bicubic_float(image: np.ndarray, height: int, width: int) -> np.ndarray:
  channels = [
    Image.fromarray(image[..., c].astype(np.float32), "F").resize((width, height), Image.BICUBIC)
    for c in range(image.shape[-1])
  ]
  return np.stack([np.asarray(c) for c in channels], -1)


@pytest.mark.parametrize(
  "in_hw,out_hw",
  [
    ((96, 80), (48, 40)),
    ((96, 81), (32, 27)),
    ((96, 80), (24, 20)),
    ((96, 80), (12, 10)),
    ((30, 20), (60, 40)),
    ((25, 17), (100, 68)),
    ((40, 40), (31, 53)),
  ],
)
def test_bicubic_matches_pil(in_hw, out_hw):
  image = RNG.uniform(0, 255, in_hw + (3,)).astype(np.float32)
  ours = np.asarray(degradation.bicubic_resize(image, *out_hw))
  np.testing.assert_allclose(ours, pil_bicubic_float(image, *out_hw), atol=2e-3, rtol=1e-5)


def test_bicubic_matches_pil_on_8bit_photo():
  photo = np.asarray(Image.open(shared_data("Set5", "bird.png")).convert("RGB"))
  h, w = photo.shape[0] // 4, photo.shape[1] // 4
  pil = np.asarray(Image.fromarray(photo).resize((w, h), Image.BICUBIC)).astype(np.int32)
  ours = np.asarray(degradation.bicubic_resize(photo.astype(np.float32), h, w))
  ours = np.clip(np.round(ours), 0, 255).astype(np.int32)
  # PIL's 8-bit path rounds between its two passes: at most one level apart.
  assert np.abs(ours - pil).max() <= 1
  assert np.mean(ours == pil) > 0.85


@pytest.mark.parametrize("scale", [2, 3, 4, 8])
@pytest.mark.parametrize("shape", [(2, 37, 50, 3), (8, 9, 1), (5, 40, 3)])
def test_polyphase_upscaling_equals_the_dense_matrices_and_pil(scale, shape):
  lr = RNG.uniform(0, 1, shape).astype(np.float32)
  h, w = shape[-3], shape[-2]
  ours = np.asarray(jax.jit(lambda x: degradation.bicubic_upscale(x, scale))(lr))
  dense = np.asarray(degradation.bicubic_resize(lr, h * scale, w * scale))
  np.testing.assert_allclose(ours, dense, atol=1e-6)
  pil = pil_bicubic_float(lr.reshape((-1,) + shape[-3:])[0] * 255, h * scale, w * scale) / 255
  np.testing.assert_allclose(ours.reshape((-1,) + ours.shape[-3:])[0], pil, atol=1e-5)


def test_degrade_shrinks_by_the_scale_and_blurs():
  hr = RNG.uniform(0, 1, (2, 64, 48, 3)).astype(np.float32)
  for scale in (2, 3, 4, 8):
    size = (48 // scale) * scale
    lr = np.asarray(degradation.degrade(hr[:, :size, :size], scale, 1.0))
    assert lr.shape == (2, size // scale, size // scale, 3)
    np.testing.assert_allclose(lr * 255, np.round(lr * 255), atol=1e-3)  # 8-bit grid
  sharp = np.asarray(degradation.degrade(hr, 2, 0.0))
  blurred = np.asarray(degradation.degrade(hr, 2, 1.0))
  assert blurred.std() < sharp.std()  # blur removes high-frequency energy
  reference = pil_bicubic_float(hr[0] * 255, 32, 24) / 255
  np.testing.assert_allclose(
    sharp[0], np.clip(np.round(reference * 255), 0, 255) / 255, atol=1 / 255 + 1e-6
  )


def test_gaussian_blur_preserves_constants_and_sums_to_one():
  m = degradation.gaussian_blur_matrix(20, 1.0)
  np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-12)
  np.testing.assert_array_equal(degradation.gaussian_blur_matrix(5, 0.0), np.eye(5))


def test_degrade_refuses_bad_shapes_and_scales():
  with pytest.raises(ValueError, match="not divisible by the scale 2"):
    degradation.degrade(np.zeros((1, 33, 32, 3), np.float32), 2, 1.0)
  with pytest.raises(ValueError, match="scale 5 is not supported"):
    degradation.degrade(np.zeros((1, 40, 40, 3), np.float32), 5, 1.0)


@pytest.mark.parametrize("scale,blur_sigma", [(2, 1.0), (2, 0.0), (3, 1.0), (4, 0.0)])
def test_projection_onto_the_lr_gives_back_the_lr_and_keeps_consistent_images(scale, blur_sigma):
  hr = RNG.uniform(0, 1, (2, 48, 36, 3)).astype(np.float32)
  lr = np.asarray(degradation.degrade(hr, scale, blur_sigma))  # 8-bit: not quite D(hr)
  guess = RNG.uniform(0, 1, hr.shape).astype(np.float32)
  projected = np.asarray(degradation.project_onto_lr(guess, lr, scale, blur_sigma))
  assert projected.shape == hr.shape
  np.testing.assert_allclose(
    np.asarray(degradation.downscale(projected, scale, blur_sigma)), lr, atol=1e-5
  )
  # Projecting what is already consistent changes nothing.
  again = np.asarray(degradation.project_onto_lr(projected, lr, scale, blur_sigma))
  np.testing.assert_allclose(again, projected, atol=1e-5)
  exact_lr = np.asarray(degradation.downscale(hr, scale, blur_sigma))
  np.testing.assert_allclose(
    np.asarray(degradation.project_onto_lr(hr, exact_lr, scale, blur_sigma)), hr, atol=1e-5
  )
  # It is the nearest consistent image: nearer the guess than another consistent one.
  other = np.asarray(degradation.project_onto_lr(hr, lr, scale, blur_sigma))
  assert np.linalg.norm(guess - projected) < np.linalg.norm(guess - other)


@pytest.mark.parametrize("scale", [2, 4])
def test_projection_in_range_stays_consistent_after_the_clip_a_saved_image_undergoes(scale):
  # A bright HR and a guess with strong texture: one projection overshoots [0,1].
  hr = np.clip(RNG.uniform(0.85, 1.0, (1, 64, 48, 3)), 0, 1).astype(np.float32)
  lr = np.asarray(degradation.degrade(hr, scale, 0.0))
  guess = (hr + RNG.normal(0, 0.3, hr.shape)).astype(np.float32)
  once = np.asarray(degradation.project_onto_lr(guess, lr, scale, 0.0))
  in_range = np.asarray(degradation.project_onto_lr_in_range(guess, lr, scale, 0.0))
  assert once.max() > 1.05  # the case this is for.
  error = lambda x: np.sqrt(
    np.mean((np.asarray(degradation.downscale(np.clip(x, 0, 1), scale, 0.0)) - lr) ** 2)
  )
  assert error(in_range) < 0.5 * error(once)
  assert np.abs(np.clip(in_range, 0, 1) - in_range).max() < np.abs(np.clip(once, 0, 1) - once).max()


@pytest.mark.parametrize("scale,blur_sigma", [(2, 0.0), (3, 0.0), (4, 0.0), (4, 1.0)])
def test_banded_projection_equals_the_dense_pseudo_inverse(scale, blur_sigma):
  """On sides of 32 LR px or more the projection runs as banded taps, D^T (D D^T)^-1
  with the border rows exact: it must equal sr + D^+(lr - D sr) with the dense
  pseudo-inverse, at the borders as in the middle."""
  h, w = 64, 40  # the width banded only without the blur: both paths, side by side.
  assert degradation.banded_factor("gram_inverse", h * scale, scale, blur_sigma) is not None
  sr = RNG.uniform(0, 1, (1, h * scale, w * scale, 3)).astype(np.float32)
  lr = RNG.uniform(0, 1, (1, h, w, 3)).astype(np.float32)
  dense = lambda name, x: degradation.apply_separable(
    x,
    getattr(degradation, name)(h * scale, scale, blur_sigma),
    getattr(degradation, name)(w * scale, scale, blur_sigma),
  )
  residual = lr - np.asarray(dense("degradation_matrix", sr))
  expected = sr + np.asarray(dense("degradation_pinv", residual))
  projected = np.asarray(degradation.project_onto_lr(sr, lr, scale, blur_sigma))
  np.testing.assert_allclose(projected, expected, atol=5e-6)
