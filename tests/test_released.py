"""Released models (percvae_jax/released/<name>/): written from a trained model, loaded
back the same, and used by upscale and evaluate in place of a --workdir. The package
ships none yet, so every test writes its own into a temporary root."""

import json

import jax
import numpy as np
import pytest
from PIL import Image

from percvae_jax import evaluate, inference, released, upscale
from percvae_jax.errors import InferenceError
from percvae_jax.models import vae
from tests import helpers

RELEASE = {"trained_steps": helpers.TINY_STEPS, "note": "a test's tiny model"}


@pytest.fixture
def root(tiny_workdir, tmp_path):
  """A released-models folder holding x2, written from the session's tiny checkpoint."""
  config, _, params, _ = inference.restore_model(tiny_workdir)
  folder = tmp_path / "released"
  released.write(str(folder / "x2"), config, params, RELEASE)
  return folder


@pytest.fixture
def installed(root, monkeypatch):
  """`root` as the package's own released models."""
  names, name_for_scale, load = released.names, released.name_for_scale, released.load
  monkeypatch.setattr(released, "names", lambda where=str(root): names(where))
  monkeypatch.setattr(
    released, "name_for_scale", lambda scale, where=str(root): name_for_scale(scale, where)
  )
  monkeypatch.setattr(released, "load", lambda name, where=str(root): load(name, where))
  return root


def test_a_released_model_loads_back_as_written(tiny_workdir, root):
  config, model, params, _ = inference.restore_model(tiny_workdir)
  assert released.names(str(root)) == ["x2"]
  assert sorted(p.name for p in (root / "x2").iterdir()) == ["config.json", "params.msgpack"]
  loaded_config, loaded_params = released.load("x2", str(root))
  assert loaded_config.to_dict() == config.to_dict()
  assert released.metadata("x2", str(root)) == RELEASE
  # The generation path's parameters, all of them and the same; training's posterior left out.
  assert set(loaded_params) == set(params) - set(released.TRAINING_ONLY)
  expected = {k: v for k, v in params.items() if k not in released.TRAINING_ONLY}
  flat_a, tree_a = jax.tree_util.tree_flatten(loaded_params)
  flat_b, tree_b = jax.tree_util.tree_flatten(expected)
  assert tree_a == tree_b
  for a, b in zip(flat_a, flat_b):
    assert a.dtype == np.float32
    np.testing.assert_array_equal(a, np.asarray(b))
  # generate gives the same output, mean and samples.
  lr = np.random.default_rng(0).random((1, 20, 24, 3), np.float32)
  twin = vae.create(loaded_config)
  for kwargs in ({}, {"sample": True, "rngs": {"latent": jax.random.PRNGKey(3)}}):
    np.testing.assert_array_equal(
      np.asarray(twin.apply({"params": loaded_params}, lr, method="generate", **kwargs)),
      np.asarray(model.apply({"params": params}, lr, method="generate", **kwargs)),
    )


def test_an_unknown_name_is_refused_listing_the_released_ones(root, tmp_path):
  config, params = released.load("x2", str(root))
  released.write(str(root / "x4-perceptual"), config, params, {})
  with pytest.raises(
    InferenceError,
    match=r"--model='x3' is not a released model; choose one "
    r"of: x2, x4-perceptual",
  ):
    released.load("x3", str(root))
  with pytest.raises(InferenceError, match="none"):
    released.load("x2", str(tmp_path / "nothing_here"))
  assert released.names(str(tmp_path / "nothing_here")) == []


def test_name_for_scale_refuses_a_scale_no_released_model_is_for(root):
  assert released.name_for_scale(2, str(root)) == "x2"
  with pytest.raises(InferenceError, match=r"no released model for --scale=4; released: x2"):
    released.name_for_scale(4, str(root))
  with pytest.raises(InferenceError, match=r"pass --scale S \(released models: x2\)"):
    released.name_for_scale(None, str(root))


def test_a_damaged_params_file_is_a_user_error(root):
  (root / "x2" / "params.msgpack").write_bytes(b"\x00\x01 not msgpack")
  with pytest.raises(released.InvalidWeightsError, match="is damaged"):
    released.load("x2", str(root))


def test_upscale_with_a_released_model_equals_its_checkpoint(tiny_workdir, installed, tmp_path):
  helpers.crop_of(helpers.shared_data("Set5", "bird.png"), 48).save(tmp_path / "bird.png")
  config, upscaler, source = inference.load_upscaler(scale=2)
  assert source == {"model": "x2"} and config.data.scale == 2
  by_scale = upscale.run(None, str(tmp_path / "bird.png"), str(tmp_path / "a"), scale=2, samples=1)
  by_name = upscale.run(None, str(tmp_path / "bird.png"), str(tmp_path / "b"), model="x2")
  by_checkpoint = upscale.run(
    tiny_workdir, str(tmp_path / "bird.png"), str(tmp_path / "c"), samples=1
  )
  assert len(by_scale["written"]) == len(by_checkpoint["written"]) == 2
  assert len(by_name["written"]) == 1
  for name in ("bird.png", "bird_sample1.png"):
    np.testing.assert_array_equal(
      np.asarray(Image.open(tmp_path / "a" / name)), np.asarray(Image.open(tmp_path / "c" / name))
    )
  np.testing.assert_array_equal(
    np.asarray(Image.open(tmp_path / "b" / "bird.png")),
    np.asarray(Image.open(tmp_path / "c" / "bird.png")),
  )


def test_evaluate_with_a_released_model_says_which(installed, tmp_path):
  folder = tmp_path / "images"
  folder.mkdir()
  helpers.crop_of(helpers.shared_data("Set5", "head.png"), 64).save(folder / "head.png")
  output = tmp_path / "r.json"
  results = evaluate.run(model="x2", data_dir=str(folder), output=str(output), grids=0)
  written = json.loads(output.read_text())
  assert written == results
  assert written["released_model"] == "x2"
  assert "workdir" not in written and "step" not in written
  assert "released model x2" in evaluate.format_table(results)


def test_model_choice_errors(tiny_workdir, installed):
  with pytest.raises(InferenceError, match="not both"):
    inference.load_model(workdir=tiny_workdir, name="x2")
  with pytest.raises(InferenceError, match="--scale=4, but the released model 'x2' upscales by 2"):
    inference.load_model(name="x2", scale=4)
  with pytest.raises(InferenceError, match="no released model for --scale=3"):
    inference.load_model(scale=3)
