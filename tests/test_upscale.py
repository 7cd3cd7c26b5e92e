"""upscale and the tiled super-resolution it shares with evaluate."""

import jax
import numpy as np
import pytest
from PIL import Image

from percvae_jax import config as config_lib
from percvae_jax import data, degradation, inference, upscale
from percvae_jax.models import vae
from tests import helpers
from tests.helpers import crop_of

require_set = helpers.shared_data


@pytest.mark.parametrize(
  "size,tile,margin", [(100, 40, 8), (41, 40, 8), (40, 40, 8), (7, 40, 8), (250, 64, 20)]
)
def test_window_spans_keep_every_pixel_once_away_from_window_edges(size, tile, margin):
  kept = np.zeros(size, int)
  for start, keep_start, keep_end in inference.window_spans(size, tile, margin):
    window_end = start + min(tile, size)
    assert 0 <= start <= keep_start < keep_end <= window_end <= size
    assert keep_start - start >= margin or start == 0
    assert window_end - keep_end >= margin or window_end == size
    kept[keep_start:keep_end] += 1
  assert np.all(kept == 1)


def assert_tiled_equals_untiled(model, params, lr, tile, scale=2, atol=1e-5):
  upscaler = inference.Upscaler(model, params, scale=scale, tile=tile)
  rows = inference.window_spans(lr.shape[0], tile, upscaler.margin)
  cols = inference.window_spans(lr.shape[1], tile, upscaler.margin)
  assert len(rows) >= 3 and len(cols) >= 3  # edge windows shifted, and interior ones.
  whole = np.asarray(model.apply({"params": params}, lr[None], method="generate"))[0]
  np.testing.assert_allclose(upscaler(lr), whole, atol=atol)


def test_tiled_equals_untiled(tiny_workdir):
  _, model, params, _ = inference.restore_model(tiny_workdir)
  lr = np.asarray(crop_of(require_set("Set5") / "bird.png", 200), np.float32)[::2, :150:2] / 255
  assert_tiled_equals_untiled(model, params, lr, tile=2 * vae.generation_reach(model, params) + 16)


def random_params(model, lr_side=16, scale=2):
  """Weights that are non-zero everywhere, the zero-initialised layers too."""
  shapes = jax.eval_shape(
    model.init,
    {"params": jax.random.PRNGKey(0), "latent": jax.random.PRNGKey(1)},
    np.zeros((1, lr_side, lr_side, 3), np.float32),
    np.zeros((1, lr_side * scale, lr_side * scale, 3), np.float32),
  )["params"]
  leaves, treedef = jax.tree.flatten(shapes)
  rng = np.random.default_rng(1)
  return jax.tree.unflatten(
    treedef,
    [
      rng.normal(0, 1 / np.sqrt(np.prod(leaf.shape[:-1])), leaf.shape).astype(np.float32)
      for leaf in leaves
    ],
  )


@pytest.fixture(scope="module")
def default_architecture():
  """The default srvae depth (8 blocks; the features don't change its reach), with
  random weights that are non-zero everywhere, the zero-initialised layers too."""
  config = config_lib.base()
  config.model.features = 8
  model = vae.create(config)
  return model, random_params(model)


def test_the_margin_covers_the_receptive_field(default_architecture):
  """An LR pixel changed: no SR pixel further than the margin from it may change."""
  model, params = default_architecture
  generate = jax.jit(lambda lr: model.apply({"params": params}, lr, method="generate"))
  centre = 40
  lr = np.random.default_rng(0).random((1, 2 * centre + 1, 2 * centre + 1, 3), np.float32)
  poked = lr.copy()
  poked[0, centre, centre] += 1.0
  changed = np.abs(np.asarray(generate(poked)) - np.asarray(generate(lr)))[0].max(-1) > 0
  reach = np.abs(np.argwhere(changed) // 2 - centre).max()
  assert 16 < reach <= vae.generation_reach(model, params)


def test_tiled_equals_untiled_for_the_default_architecture(default_architecture):
  model, params = default_architecture
  lr = np.random.default_rng(0).random((84, 100, 3), np.float32)
  assert_tiled_equals_untiled(model, params, lr, tile=2 * vae.generation_reach(model, params) + 8)


@pytest.mark.parametrize("blur_sigma", [1.0, 0.0])
def test_lr_consistent_model_tiles_exactly_and_gives_back_its_lr(blur_sigma):
  """model.lr_consistent projects every output onto the images whose degradation is the
  LR: the margin covers the projection's reach, and the SR, degraded, is the LR."""
  config = config_lib.base()
  config.model.features = 8
  config.model.num_blocks = 2
  config.model.lr_consistent = True
  config.data.blur_sigma = blur_sigma
  model = vae.create(config)
  params = random_params(model)
  margin = vae.generation_reach(model, params)
  plain = vae.create(
    config_lib.from_dict(dict(config.to_dict(), model=dict(config.model, lr_consistent=False)))
  )
  assert margin > vae.generation_reach(plain, params)  # the projection reaches further.
  tile = 2 * margin + 24
  lr = np.random.default_rng(0).random((tile + 2 * 24 + 5, tile + 2 * 24 + 11, 3), np.float32)
  assert_tiled_equals_untiled(model, params, lr, tile=tile, atol=1e-4)
  sr = inference.Upscaler(model, params, scale=2, tile=tile)(lr)
  np.testing.assert_allclose(np.asarray(degradation.downscale(sr, 2, blur_sigma)), lr, atol=2e-5)
  # Without the projection the output does not give back its LR.
  free = np.asarray(plain.apply({"params": params}, lr[None], method="generate"))[0]
  assert np.abs(np.asarray(degradation.downscale(free, 2, blur_sigma)) - lr).max() > 1e-2


def test_a_tile_without_room_inside_the_margin_is_refused(tiny_workdir):
  _, model, params, _ = inference.restore_model(tiny_workdir)
  with pytest.raises(inference.InferenceError, match="--tile"):
    inference.Upscaler(model, params, scale=2, tile=2 * vae.generation_reach(model, params))


def test_the_default_tile_keeps_the_same_stretch_whatever_the_models_margin(tiny_workdir):
  config, model, params, _ = inference.restore_model(tiny_workdir)
  plain = inference.Upscaler(model, params, scale=2)
  assert plain.tile == inference.KEPT_TILE + 2 * plain.margin
  consistent = vae.create(
    config_lib.from_dict(dict(config.to_dict(), model=dict(config.model, lr_consistent=True)))
  )
  projected = inference.Upscaler(consistent, params, scale=2)
  assert projected.margin > plain.margin  # the LR projection reads further.
  assert projected.tile - 2 * projected.margin == plain.tile - 2 * plain.margin
  assert inference.Upscaler(model, params, scale=2, tile=200).tile == 200


def test_output_names_mirror_the_input_folder(tmp_path):
  for relative in ("a.jpg", "a.png", "sub/b.bmp", "c.JPEG", "notes.txt"):
    (tmp_path / "in" / relative).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "in" / relative).write_bytes(b"")
  out = tmp_path / "out"
  assert upscale.plan_outputs(str(tmp_path / "in"), str(out)) == [
    (str(tmp_path / "in" / "a.jpg"), str(out / "a_jpg")),
    (str(tmp_path / "in" / "a.png"), str(out / "a_png")),
    (str(tmp_path / "in" / "c.JPEG"), str(out / "c")),
    (str(tmp_path / "in" / "sub" / "b.bmp"), str(out / "sub" / "b")),
  ]
  with pytest.raises(data.DataError, match="overwrite its input"):
    upscale.plan_outputs(str(tmp_path / "in" / "a.png"), str(tmp_path / "in"))


def test_rgba_and_grayscale_give_rgb_pngs_and_bad_files_are_skipped(tiny_workdir, tmp_path):
  inputs = tmp_path / "in"
  bad = helpers.write_unreadable_files(inputs / "broken", require_set("Set5") / "bird.png")
  rgba = np.asarray(crop_of(require_set("Set5") / "baby.png", 40).convert("RGBA")).copy()
  rgba[:, :20, 3] = 0  # the left half transparent: white, as viewers show it.
  Image.fromarray(rgba[:30]).save(inputs / "rgba.png")
  crop_of(require_set("Set14") / "bridge.png", 36, grayscale=True).save(inputs / "gray.jpg")
  result = upscale.run(tiny_workdir, str(inputs), str(tmp_path / "out"))
  assert sorted(result["skipped"]) == [str(inputs / "broken" / name) for name in bad]
  assert sorted(result["written"]) == [str(tmp_path / "out" / n) for n in ("gray.png", "rgba.png")]
  for name, size in (("rgba.png", (80, 60)), ("gray.png", (72, 72))):
    image = Image.open(tmp_path / "out" / name)
    assert (image.mode, image.size) == ("RGB", size), name
  transparent = np.asarray(Image.open(tmp_path / "out" / "rgba.png"))[8:-8, 8:32]
  assert transparent.mean() > 250


def test_samples_are_written_and_differ(tiny_workdir, tmp_path):
  crop_of(require_set("Set5") / "head.png", 48).save(tmp_path / "head.png")
  result = upscale.run(tiny_workdir, str(tmp_path / "head.png"), str(tmp_path / "out"), samples=2)
  assert sorted(result["written"]) == [
    str(tmp_path / "out" / n) for n in ("head.png", "head_sample1.png", "head_sample2.png")
  ]
  mean, first, second = (
    np.asarray(Image.open(tmp_path / "out" / n), np.float32)
    for n in ("head.png", "head_sample1.png", "head_sample2.png")
  )
  assert first.shape == second.shape == mean.shape == (96, 96, 3)
  assert np.abs(first - second).mean() > 0.5
  assert np.abs(first - mean).mean() > 0.5


def test_temperature_zero_samples_the_mean_and_negative_is_refused(tiny_workdir, tmp_path):
  crop_of(require_set("Set5") / "head.png", 48).save(tmp_path / "head.png")
  upscale.run(
    tiny_workdir, str(tmp_path / "head.png"), str(tmp_path / "out"), samples=1, temperature=0.0
  )
  mean, sample = (
    np.asarray(Image.open(tmp_path / "out" / n)) for n in ("head.png", "head_sample1.png")
  )
  np.testing.assert_array_equal(sample, mean)
  with pytest.raises(inference.InferenceError, match="--temperature=-1.0 must be 0 or more"):
    upscale.run(tiny_workdir, str(tmp_path / "head.png"), str(tmp_path / "out2"), temperature=-1.0)


run_module = helpers.run_module


@pytest.mark.slow
def test_command_line(tiny_workdir, tmp_path):
  crop_of(require_set("Set5") / "woman.png", 64).save(tmp_path / "woman.png")
  done = run_module(
    "percvae_jax.upscale",
    f"--workdir={tiny_workdir}",
    f"--input={tmp_path / 'woman.png'}",
    f"--output={tmp_path / 'out'}",
    "--samples=1",
    "--tile=64",
  )
  assert done.returncode == 0, done.stderr
  for name in ("woman.png", "woman_sample1.png"):
    assert Image.open(tmp_path / "out" / name).size == (128, 128)


@pytest.mark.slow
def test_command_line_missing_input(tiny_workdir, tmp_path):
  done = run_module(
    "percvae_jax.upscale",
    f"--workdir={tiny_workdir}",
    f"--input={tmp_path / 'nowhere'}",
    f"--output={tmp_path / 'out'}",
  )
  helpers.assert_one_line_error(done, "error: --input=", "does not exist", codes=(1,))
