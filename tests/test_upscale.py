"""upscale and the tiled super-resolution it shares with evaluate."""

import os

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
  "size,tile,margin",
  [(100, 40, 8), (41, 40, 8), (40, 40, 8), (7, 40, 8), (250, 64, 20), (1000, 256, 18)]
  + [(size, 256, 18) for size in range(257, 800, 37)],
)
def test_window_spans_keep_every_pixel_once_away_from_window_edges(size, tile, margin):
  kept = np.zeros(size, int)
  length = inference.window_length(size, tile, margin)
  assert length <= tile
  for start, keep_start, keep_end in inference.window_spans(size, tile, margin):
    window_end = start + length
    assert 0 <= start <= keep_start < keep_end <= window_end <= size
    assert keep_start - start >= margin or start == 0
    assert window_end - keep_end >= margin or window_end == size
    kept[keep_start:keep_end] += 1
  assert np.all(kept == 1)


def test_windows_compute_little_past_what_they_keep():
  """As few windows as the tile allows, each no longer than the axis needs: every
  window of a big photo's axis computes its kept stretch and its two margins, little
  more (windows of the whole tile computed 1.28x a 1000 px axis, 1.37x a 750 px one)."""
  for size in (1000, 750, 3000):
    spans = inference.window_spans(size, 256, 18)
    needed = size + 2 * 18 * (len(spans) - 1)
    computed = len(spans) * inference.window_length(size, 256, 18)
    assert len(spans) == -(-(size - 36) // (256 - 36))
    assert needed <= computed < needed + len(spans)


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
def test_lr_consistent_model_tiles_exactly_and_gives_back_its_lr(blur_sigma, monkeypatch):
  """model.lr_consistent projects every output onto the images whose degradation is the
  LR: the margin covers the projection's reach, and the SR, degraded, is the LR. One
  round of clipping and projecting again instead of the three: the reach grows by
  round, and a third of the margin makes the images 4x smaller."""
  monkeypatch.setattr(degradation, "RANGE_ITERATIONS", 1)
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
  with pytest.raises(data.DataError, match="overwrite an input"):
    upscale.plan_outputs(str(tmp_path / "in" / "a.png"), str(tmp_path / "in"))


def test_rgba_and_grayscale_come_back_whole_and_bad_files_are_skipped(tiny_workdir, tmp_path):
  inputs = tmp_path / "in"
  bad = helpers.write_unreadable_files(inputs / "broken", require_set("Set5") / "bird.png")
  rgba = np.asarray(crop_of(require_set("Set5") / "baby.png", 40).convert("RGBA")).copy()
  rgba[:, :20, 3] = 0  # the left half transparent: it stays transparent.
  Image.fromarray(rgba[:30]).save(inputs / "rgba.png")
  crop_of(require_set("Set14") / "bridge.png", 36, grayscale=True).save(inputs / "gray.jpg")
  result = upscale.run(tiny_workdir, str(inputs), str(tmp_path / "out"))
  assert sorted(result["skipped"]) == [str(inputs / "broken" / name) for name in bad]
  assert sorted(result["written"]) == [str(tmp_path / "out" / n) for n in ("gray.jpg", "rgba.png")]
  for name, mode, size in (("rgba.png", "RGBA", (80, 60)), ("gray.jpg", "L", (72, 72))):
    image = Image.open(tmp_path / "out" / name)
    assert (image.mode, image.size) == (mode, size), name
  alpha = np.asarray(Image.open(tmp_path / "out" / "rgba.png"))[..., 3]
  assert alpha[:, :36].max() < 8 and alpha[:, 44:].min() > 247


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


# ------------------------------------------------------- images that come back whole


@pytest.fixture(scope="module")
def x2():
  """The released x2's Upscaler (the real model: cheap on images of a few dozen px)."""
  return inference.load_upscaler(name="x2")[1]


def smooth_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
  """A smooth random uint8 RGB image (upscaled noise)."""
  coarse = np.random.default_rng(seed).uniform(0, 255, (height // 4 + 1, width // 4 + 1, 3))
  image = Image.fromarray(coarse.astype(np.uint8)).resize((width, height), Image.BICUBIC)
  return np.asarray(image)


def test_junk_under_transparent_pixels_never_shows(x2):
  """Fully transparent pixels' colour (here magenta or black) cannot reach the output:
  the two images differ only there, and their SR, colour and alpha, is identical."""
  rgba = np.concatenate([smooth_rgb(30, 40), np.full((30, 40, 1), 255, np.uint8)], -1)
  rgba[:, :15, 3] = 0
  rgba[:, 15:17, 3] = 128  # a soft edge
  magenta, black = rgba.copy(), rgba.copy()
  magenta[:, :15, :3] = (255, 0, 255)
  black[:, :15, :3] = 0
  np.testing.assert_array_equal(x2(magenta), x2(black))
  # Without the fill the junk shows in the visible pixels beside the edge.
  plain = [x2(image[..., :3].astype(np.float32) / 255)[:, 34:44] for image in (magenta, black)]
  assert np.abs(plain[0] - plain[1]).max() > 0.05


def matte(size: int, kind: str, seed: int = 0) -> np.ndarray:
  """A synthetic alpha matte (size x size, [0,1]), rendered at 8x and box-filtered:
  a soft-edged blob (edge width 0.5, 1.5 or 4 px) or hair-like strands over a head."""
  supersample = 8
  y, x = (np.mgrid[0 : size * supersample, 0 : size * supersample] + 0.5) / supersample
  if kind.startswith("soft"):
    width = float(kind[4:])
    angle = np.arctan2(y - size / 2, x - 0.45 * size)
    radius = 0.3 * size * (1 + 0.15 * np.sin(5 * angle))
    alpha = np.clip((radius - np.hypot(y - size / 2, x - 0.45 * size)) / width + 0.5, 0, 1)
  else:
    rng = np.random.default_rng(seed)
    alpha = np.zeros_like(y)
    for _ in range(40):
      amplitude, frequency = rng.uniform(2, size / 6), rng.uniform(1, 6) * np.pi / size
      centre = rng.uniform(0, size) + amplitude * np.sin(frequency * y + rng.uniform(0, 6.3))
      centre += 0.3 * (y - size / 2) * rng.uniform(-1, 1)
      cover = np.clip(rng.uniform(0.3, 1.5) / 2 - np.abs(x - centre) + 0.5, 0, 1)
      alpha = 1 - (1 - alpha) * (1 - cover * rng.uniform(0.5, 1) * (y > 0.3 * size))
    alpha = 1 - (1 - alpha) * (1 - np.clip((0.55 * size - y) / 3, 0, 1))
  return alpha.reshape(size, supersample, size, supersample).mean((1, 3)).astype(np.float32)


MATTES = ("soft0.5", "soft1.5", "soft4", "hair")


def psnr(x: np.ndarray, reference: np.ndarray) -> float:
  return float(10 * np.log10(1 / np.mean((x - reference) ** 2)))


def alpha_scores(upscaler, scale: int, size: int) -> dict:
  """{matte: (bicubic PSNR, Upscaler PSNR)} of mattes downscaled as the models' LR is."""
  scores = {}
  for kind in MATTES:
    hr = matte(size, kind)
    lr = np.asarray(degradation.degrade(np.repeat(hr[..., None], 3, -1), scale, 0.0))[..., :1]
    bicubic = np.clip(np.asarray(degradation.bicubic_upscale(lr, scale))[..., 0], 0, 1)
    rgba = np.concatenate([np.full(lr.shape[:2] + (3,), 0.5, np.float32), lr], -1)
    ours = upscaler(rgba)[..., 3]
    scores[kind] = (psnr(bicubic, hr), psnr(ours, hr))
  return scores


def test_alpha_is_upscaled_better_than_bicubic_on_mattes(x2):
  scores = alpha_scores(x2, 2, 64)
  print({kind: tuple(round(v, 2) for v in pair) for kind, pair in scores.items()})
  for kind, (bicubic, ours) in scores.items():
    assert ours > bicubic + 0.5, (kind, bicubic, ours)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["x2", "x3", "x4", "x4-perceptual"])
def test_alpha_against_bicubic_for_every_released_model(name):
  """The table of docs/upscaling.md (pytest -s prints it): 144 px mattes."""
  config, upscaler, _ = inference.load_upscaler(name=name)
  scores = alpha_scores(upscaler, config.data.scale, 144)
  print(name, " | ".join(f"{k} {b:.2f} / {o:.2f}" for k, (b, o) in scores.items()))
  assert np.mean([o - b for b, o in scores.values()]) > 1.0


def test_16_bit_stays_16_bit_and_is_not_quantised_between_tiles(x2, tmp_path):
  """A dark 16-bit gray PNG, upscaled in several tiles: a 16-bit gray PNG whose values
  are the float SR rounded once to 16 bits (not to 8 between tiles, not stretched)."""
  dark = (smooth_rgb(100, 112)[..., 0].astype(np.uint16) * 80).astype(np.uint16)  # max ~20000
  Image.fromarray(dark).save(tmp_path / "dark.png")
  tile = 2 * x2.margin + 16  # 16 LR px kept per window: several across 100 x 112.
  upscale.run(None, str(tmp_path / "dark.png"), str(tmp_path / "out"), model="x2", tile=tile)
  out = Image.open(tmp_path / "out" / "dark.png")
  assert (out.mode, out.size) == ("I;16", (224, 200))
  tiled = inference.Upscaler(*inference.load_model(name="x2")[1:3], scale=2, tile=tile)
  assert len(inference.window_spans(100, tile, tiled.margin)) > 1
  expected = np.rint(np.clip(x2(dark[..., None]), 0, 1) * 65535)[..., 0]
  np.testing.assert_allclose(np.asarray(out, np.float64), expected, atol=1)
  assert np.asarray(out).max() < 30000 and np.any(np.asarray(out) % 257)


def test_formats_profiles_and_exif_follow_the_input(tmp_path):
  from PIL import ImageCms

  profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
  exif = Image.Exif()
  exif[0x010F] = "TestCam"
  exif[0x0112] = 8  # stored rotated: upright it is 24 wide, 32 high.
  rgb = Image.fromarray(smooth_rgb(24, 32))
  inputs = tmp_path / "in"
  inputs.mkdir()
  rgb.save(inputs / "photo.jpg", quality=95, icc_profile=profile, exif=exif)
  rgb.save(inputs / "lossy.webp", quality=90, icc_profile=profile, exif=exif)
  cutout = np.asarray(rgb.convert("RGBA")).copy()
  cutout[:, :10, 3] = 0
  Image.fromarray(cutout).save(inputs / "cutout.webp", lossless=True)
  tifffile = pytest.importorskip("tifffile")
  tifffile.imwrite(inputs / "scan.tif", np.asarray(rgb).astype(np.uint16) * 257, photometric="rgb")
  result = upscale.run(None, str(inputs), str(tmp_path / "out"), model="x2")
  out = tmp_path / "out"
  assert sorted(result["written"]) == [
    str(out / n) for n in ("cutout.webp", "lossy.webp", "photo.jpg", "scan.tiff")
  ]
  for name, fmt, mode in (
    ("photo.jpg", "JPEG", "RGB"),
    ("lossy.webp", "WEBP", "RGB"),
    ("cutout.webp", "WEBP", "RGBA"),
  ):
    with Image.open(out / name) as image:
      assert (image.format, image.mode) == (fmt, mode), name
      if name != "cutout.webp":
        assert image.size == (48, 64), name  # upright
        assert image.info.get("icc_profile") == profile, name
        assert image.getexif()[0x0112] == 1 and image.getexif()[0x010F] == "TestCam", name
  scan = tifffile.imread(out / "scan.tiff")
  assert scan.dtype == np.uint16 and scan.shape == (48, 64, 3)


def test_format_and_quality_flags(tmp_path):
  rgba = np.concatenate([smooth_rgb(24, 24), np.full((24, 24, 1), 255, np.uint8)], -1)
  rgba[:, :8, 3] = 0
  Image.fromarray(rgba).save(tmp_path / "cut.png")
  sizes = {}
  for quality in (30, 95):
    folder = tmp_path / f"q{quality}"
    upscale.run(
      None, str(tmp_path / "cut.png"), str(folder), model="x2", output_format="jpg", quality=quality
    )
    with Image.open(folder / "cut.jpg") as image:
      assert (image.format, image.mode) == ("JPEG", "RGB")
      assert np.asarray(image)[:, :10].min() > 230  # transparent: over white
    sizes[quality] = (folder / "cut.jpg").stat().st_size
  assert sizes[30] < sizes[95]
  with pytest.raises(inference.InferenceError, match="--format='gif'"):
    upscale.run(
      None, str(tmp_path / "cut.png"), str(tmp_path / "x"), model="x2", output_format="gif"
    )


def test_bad_inputs_get_one_line_each_and_the_others_still_run(tmp_path, caplog):
  import logging

  inputs = tmp_path / "in"
  inputs.mkdir()
  rgb = Image.fromarray(smooth_rgb(20, 24))
  rgb.quantize(16).save(inputs / "palette.png", transparency=0)
  Image.new("RGB", (1, 1), (200, 100, 50)).save(inputs / "one.png")
  frames = [rgb, Image.fromarray(255 - np.asarray(rgb))]
  frames[0].save(inputs / "anim.gif", save_all=True, append_images=frames[1:])
  frames[0].save(inputs / "anim_w.webp", save_all=True, append_images=frames[1:])
  Image.new("RGB", (60, 60)).save(inputs / "huge.png")
  rgb.convert("CMYK").save(inputs / "cmyk.jpg")
  with caplog.at_level(logging.WARNING):
    result = upscale.run(None, str(inputs), str(tmp_path / "out"), model="x2", max_pixels=3000)
  out = tmp_path / "out"
  assert result["skipped"] == [str(inputs / "huge.png")]
  assert sorted(result["written"]) == [
    str(out / n) for n in ("anim.png", "anim_w.webp", "cmyk.jpg", "one.png", "palette.png")
  ]
  assert Image.open(out / "palette.png").mode == "RGBA"
  assert Image.open(out / "one.png").size == (2, 2)
  lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
  for name, words in (
    ("anim.gif", "first"),
    ("anim_w.webp", "first"),
    ("cmyk.jpg", "CMYK"),
    ("huge.png", "--max-pixels=3600"),
  ):
    said = [line for line in lines if name in line]
    assert len(said) == 1 and words in said[0] and "\n" not in said[0], (name, lines)


def test_outputs_never_overwrite_inputs_whatever_their_extension(tmp_path):
  Image.fromarray(smooth_rgb(8, 8)).save(tmp_path / "photo.jpg")
  with pytest.raises(data.DataError, match="photo.jpg would overwrite an input"):
    upscale.plan_outputs(str(tmp_path), str(tmp_path))
  # With --format png the output cannot be the JPEG: allowed.
  assert upscale.plan_outputs(str(tmp_path), str(tmp_path), output_format="png") == [
    (str(tmp_path / "photo.jpg"), str(tmp_path / "photo"))
  ]


@pytest.mark.slow
def test_benchmark_memory_reads_the_childs_peak(tmp_path):
  """scripts/benchmark_memory.py's measurement: the real upscale in a child process,
  its peak RSS from the kernel (that of the JAX runtime at least)."""
  bench = helpers.load_script("benchmark_memory")
  bench.write_lr(str(tmp_path / "lr.png"), 48)
  code, peak, _, tail = bench.run_upscale(
    [f"--input={tmp_path / 'lr.png'}", f"--output={tmp_path / 'out'}", "--model=x2"]
  )
  assert code == 0, tail
  assert 100 < peak < 2048
  assert Image.open(tmp_path / "out" / "lr.png").size == (96, 96)


def test_upscale_writes_one_file_per_input_when_names_clash(tiny_workdir, tmp_path, capsys):
  inputs = tmp_path / "in"
  inputs.mkdir()
  colours = {"photo.jpg": (200, 40, 40), "photo.png": (40, 200, 40), "photo_jpg.png": (40, 40, 200)}
  for name, colour in colours.items():
    Image.new("RGB", (40, 32), colour).save(inputs / name)
  result = upscale.run(tiny_workdir, str(inputs), str(tmp_path / "out"))
  written = result["written"]
  assert len(written) == len(set(written)) == 3
  assert sorted(os.listdir(tmp_path / "out")) == sorted(os.path.basename(p) for p in written)
  # Each output is its own input's upscaling (plan order: the inputs' sorted order).
  for name, path in zip(sorted(colours), written):
    output = np.asarray(Image.open(path), np.float32)
    assert output.shape == (64, 80, 3)
    np.testing.assert_allclose(output.reshape(-1, 3).mean(0), colours[name], atol=8)
  assert "Upscaled 3 of 3 images" in capsys.readouterr().out


def test_upscale_sample_names_never_clash_with_another_inputs_output(tiny_workdir, tmp_path):
  inputs = tmp_path / "in"
  inputs.mkdir()
  Image.new("RGB", (32, 32), (200, 40, 40)).save(inputs / "a.png")
  Image.new("RGB", (32, 32), (40, 40, 200)).save(inputs / "a_sample1.png")
  result = upscale.run(tiny_workdir, str(inputs), str(tmp_path / "out"), samples=1)
  assert len(result["written"]) == len(set(result["written"])) == 4
  assert len(os.listdir(tmp_path / "out")) == 4


def test_upscale_writes_a_sideways_jpeg_upright(tiny_workdir, tmp_path):
  helpers.write_sideways_jpeg(tmp_path / "phone.jpg")
  upscale.run(tiny_workdir, str(tmp_path / "phone.jpg"), str(tmp_path / "out"))
  output = np.asarray(Image.open(tmp_path / "out" / "phone.jpg"), np.float32)
  assert output.shape == (128, 96, 3)
  assert output[4:28, 4:28].mean(axis=(0, 1)) == pytest.approx((255, 0, 0), abs=30)
  assert output[-28:-4, -28:-4].mean(axis=(0, 1)) == pytest.approx((0, 0, 255), abs=30)
