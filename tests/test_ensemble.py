"""Self-ensemble: the eight symmetries, undone exactly; the mean is equivariant."""

import jax
import numpy as np
import pytest
from PIL import Image

from percvae_jax import ensemble, evaluate, inference, upscale
from percvae_jax.errors import InferenceError
from percvae_jax.models import vae
from tests.helpers import tiny_config
from tests.test_upscale import random_params


def test_the_eight_symmetries_differ_and_each_is_undone():
  image = np.arange(2 * 3 * 5 * 1, dtype=np.float32).reshape(2, 3, 5, 1)
  views = [ensemble.transform(image, t, m) for t, m in ensemble.DIHEDRAL]
  assert len({v.tobytes() + bytes(v.shape) for v in views}) == 8
  for (turns, mirrored), view in zip(ensemble.DIHEDRAL, views):
    np.testing.assert_array_equal(ensemble.untransform(view, turns, mirrored), image)


def test_an_equivariant_function_is_its_own_ensemble():
  nearest = lambda lr: np.repeat(np.repeat(lr, 2, axis=-3), 2, axis=-2)
  lr = np.random.default_rng(0).random((7, 5, 3), np.float32)
  np.testing.assert_allclose(ensemble.self_ensemble(nearest, lr), nearest(lr), atol=1e-6)


@pytest.mark.parametrize("turns,mirrored", [(1, False), (2, True), (3, True)])
def test_the_ensemble_of_a_model_is_equivariant(turns, mirrored):
  config = tiny_config()
  model = vae.create(config)
  params = random_params(model)
  generate = jax.jit(lambda lr: model.apply({"params": params}, lr, method="generate"))
  lr = np.random.default_rng(0).random((1, 12, 10, 3), np.float32)
  plain = np.asarray(generate(lr))
  ensembled = ensemble.self_ensemble(generate, lr)
  assert ensembled.shape == plain.shape and not np.allclose(ensembled, plain, atol=1e-3)
  turned = ensemble.self_ensemble(generate, ensemble.transform(lr, turns, mirrored))
  np.testing.assert_allclose(turned, ensemble.transform(ensembled, turns, mirrored), atol=1e-5)


def test_the_tiled_upscalers_ensemble_is_the_whole_images():
  config = tiny_config()
  model = vae.create(config)
  params = random_params(model)
  tile = 2 * vae.generation_reach(model, params) + 8
  upscaler = inference.Upscaler(model, params, scale=2, tile=tile)
  generate = jax.jit(lambda lr: model.apply({"params": params}, lr[None], method="generate")[0])
  lr = np.random.default_rng(1).random((3 * tile, 2 * tile + 5, 3), np.float32)
  out = ensemble.self_ensemble(upscaler, lr)
  assert out.shape == (6 * tile, 4 * tile + 10, 3) and out.dtype == np.float32
  np.testing.assert_allclose(out, ensemble.self_ensemble(generate, lr), atol=1e-5)


def test_upscale_and_evaluate_take_ensemble_and_refuse_it_with_samples(tiny_workdir, tmp_path):
  _, model, params, _ = inference.restore_model(tiny_workdir)
  lr = np.random.default_rng(2).random((20, 16, 3), np.float32)
  ensembled = inference.Upscaler(model, params, scale=2, ensemble=True)
  plain = inference.Upscaler(model, params, scale=2)
  np.testing.assert_allclose(ensembled(lr), ensemble.self_ensemble(plain, lr), atol=1e-6)
  Image.fromarray((lr * 255).astype(np.uint8)).save(tmp_path / "a.png")
  done = upscale.run(tiny_workdir, str(tmp_path / "a.png"), str(tmp_path / "out"), ensemble=True)
  assert Image.open(done["written"][0]).size == (32, 40)
  with pytest.raises(InferenceError, match="--ensemble"):
    upscale.run(
      tiny_workdir, str(tmp_path / "a.png"), str(tmp_path / "o"), ensemble=True, samples=1
    )
  with pytest.raises(InferenceError, match="--ensemble"):
    evaluate.run(tiny_workdir, data_dir=str(tmp_path), ensemble=True, samples=2)
