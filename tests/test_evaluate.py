"""evaluate: the published bicubic baselines, scikit-image's metrics, and the command
on the session's tiny checkpoint (conftest.tiny_workdir, shared with test_upscale.py)."""

import json
import logging

import numpy as np
import pytest
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from percvae_jax import data, degradation, evaluate, inference, scoring, upscale
from tests import helpers
from tests.helpers import TINY_STEPS, crop_of

# Bicubic, Y-PSNR (dB), as the SR papers tabulate it (see ../shared/data/README.md).
# Set14 (its grayscale image among them) at one scale: each of its 14 sizes compiles anew.
PUBLISHED_BICUBIC_PSNR_Y = {
  ("Set5", 2): 33.66,
  ("Set14", 2): 30.24,
  ("Set5", 4): 28.42,
}
require_set = helpers.shared_data


def skip_lpips(x, y):
  """Stands in for LPIPS where the test does not look at it (it is the slow part)."""
  del y
  return np.zeros(len(x))


@pytest.mark.parametrize(
  "set_name,scale",
  [
    # Every image size compiles anew: Set5 x2 is the quick tier's, the rest are slow.
    key if key == ("Set5", 2) else pytest.param(*key, marks=pytest.mark.slow)
    for key in PUBLISHED_BICUBIC_PSNR_Y
  ],
)
def test_bicubic_reproduces_published_psnr_y(set_name, scale):
  sources = scoring.folder_sources(str(require_set(set_name)))
  rows = [
    scores["bicubic"] for _, scores, _ in scoring.score_images(sources, scale, 0.0, skip_lpips)
  ]
  assert len(rows) == len(sources)  # Set14's grayscale image included.
  mean = scoring.mean_scores(rows)
  assert mean["psnr_y"] == pytest.approx(PUBLISHED_BICUBIC_PSNR_Y[set_name, scale], abs=0.15)


def luma(image_uint8: np.ndarray) -> np.ndarray:
  """MATLAB's rgb2ycbcr Y, in [0, 1], computed here independently of metrics.py."""
  rgb = image_uint8.astype(np.float64) / 255.0
  return (16.0 + rgb @ np.array([65.481, 128.553, 24.966])) / 255.0


def test_metrics_match_scikit_image():
  sources = [
    ("bird", lambda: data.decode_image(str(require_set("Set5") / "bird.png"))),
    ("bridge (grayscale)", lambda: data.decode_image(str(require_set("Set14") / "bridge.png"))),
  ]
  scale = 3
  for name, scores, images in scoring.score_images(sources, scale, 0.0, skip_lpips):
    hr, bicubic = images["hr"], images["bicubic"]
    assert hr.shape[0] % scale == 0 and hr.shape[1] % scale == 0, name
    expected = {
      "psnr_rgb": peak_signal_noise_ratio(hr / 255.0, bicubic / 255.0, data_range=1.0),
      "ssim_rgb": structural_similarity(
        hr / 255.0,
        bicubic / 255.0,
        channel_axis=-1,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1.0,
      ),
    }
    y_hr, y_bicubic = (luma(x)[scale:-scale, scale:-scale] for x in (hr, bicubic))
    expected["psnr_y"] = peak_signal_noise_ratio(y_hr, y_bicubic, data_range=1.0)
    expected["ssim_y"] = structural_similarity(
      y_hr, y_bicubic, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0
    )
    for metric, value in expected.items():
      assert scores["bicubic"][metric] == pytest.approx(value, abs=1e-3), (name, metric)


@pytest.fixture(scope="module")
def set5_results(tiny_workdir, tmp_path_factory):
  output = tmp_path_factory.mktemp("eval") / "set5.json"
  results = evaluate.run(
    tiny_workdir,
    data_dir=str(require_set("Set5")),
    scale=2,
    output=str(output),
    grids=2,
    num_images=3,
  )
  return results, output


def test_results_json_and_grids(set5_results, tiny_workdir):
  results, output = set5_results
  written = json.loads(output.read_text())
  assert written == results
  assert {"workdir", "step", "scale", "protocol", "model", "bicubic", "images"} <= set(written)
  assert "released_model" not in written
  assert (written["step"], written["scale"], written["protocol"]) == (TINY_STEPS, 2, "classic")
  assert written["workdir"] == tiny_workdir
  for kind in ("model", "bicubic"):
    assert set(written[kind]) == set(scoring.METRICS)
    assert written[kind]["psnr_y"] == pytest.approx(
      np.mean([image[kind]["psnr_y"] for image in written["images"]])
    )
    assert 0 < written[kind]["lpips"] < 1
  assert [image["name"] for image in written["images"]] == ["baby.png", "bird.png", "butterfly.png"]
  assert all(set(image) == {"name", "model", "bicubic"} for image in written["images"])
  grids = sorted(output.parent.glob("set5_*.png"))
  assert [g.name for g in grids] == ["set5_baby.png", "set5_bird.png"]
  assert Image.open(grids[0]).size == (4 * evaluate.GRID_CROP, evaluate.GRID_CROP)


def test_model_psnr_equals_psnr_of_upscaled_pngs(set5_results, tiny_workdir, tmp_path):
  """The classic protocol's LR written as PNGs, upscaled by the upscale command."""
  results, _ = set5_results
  lr_dir, hr, bicubic = tmp_path / "lr", {}, {}
  lr_dir.mkdir()
  for image in results["images"]:
    name = image["name"]
    hr[name] = scoring.mod_crop(data.decode_image(str(require_set("Set5") / name)), 2)
    lr = degradation.degrade(hr[name].astype(np.float32) / 255.0, 2, blur_sigma=0.0)
    Image.fromarray(inference.to_uint8(np.asarray(lr))).save(lr_dir / name)
    bicubic[name] = inference.to_uint8(np.asarray(degradation.bicubic_upscale(lr, 2)))
  upscale.run(tiny_workdir, str(lr_dir), str(tmp_path / "sr"))
  for image in results["images"]:
    name = image["name"]
    sr = np.asarray(Image.open(tmp_path / "sr" / name))
    psnr = peak_signal_noise_ratio(hr[name], sr, data_range=255)
    assert image["model"]["psnr_rgb"] == pytest.approx(psnr, abs=0.05), name
    assert np.mean(sr != bicubic[name]) > 0.1, f"{name}: the model added nothing to bicubic"


def test_bad_files_are_named_and_skipped(tiny_workdir, tmp_path, caplog):
  folder = tmp_path / "mixed"
  bad = helpers.write_unreadable_files(folder, require_set("Set5") / "bird.png")
  crop_of(require_set("Set5") / "baby.png", 64).save(folder / "good_rgb.png")
  crop_of(require_set("Set14") / "bridge.png", 48, grayscale=True).save(folder / "good_gray.png")
  with caplog.at_level(logging.WARNING):
    results = evaluate.run(
      tiny_workdir, data_dir=str(folder), output=str(tmp_path / "out" / "r.json"), grids=0
    )
  assert sorted(results["skipped"]) == bad
  assert sorted(image["name"] for image in results["images"]) == ["good_gray.png", "good_rgb.png"]
  for name in bad:
    assert (
      sum(
        name in record.getMessage()
        for record in caplog.records
        if record.levelno == logging.WARNING
      )
      == 1
    ), name


def test_refuses_a_scale_the_checkpoint_was_not_trained_for(tiny_workdir):
  with pytest.raises(inference.InferenceError, match="--scale=2"):
    evaluate.run(tiny_workdir, data_dir=str(require_set("Set5")), scale=4)


@pytest.mark.slow
def test_refuses_the_fixed_size_seed_model(tiny_seed_workdir):
  with pytest.raises(inference.InferenceError, match="model.name=srvae"):
    evaluate.run(str(tiny_seed_workdir), data_dir=str(require_set("Set5")))


def test_refuses_a_workdir_without_checkpoints(tiny_workdir, tmp_path):
  (tmp_path / "config.json").write_text((helpers.Path(tiny_workdir) / "config.json").read_text())
  with pytest.raises(inference.CheckpointError, match="no checkpoints/ folder"):
    evaluate.run(str(tmp_path), data_dir=str(require_set("Set5")))
  with pytest.raises(
    inference.CheckpointError, match=r"no checkpoint at step 3 .* steps there: \[4\]"
  ):
    evaluate.run(tiny_workdir, data_dir=str(require_set("Set5")), step=3)


@pytest.mark.slow
def test_train_protocol_on_the_mocked_pets_test_split(tiny_workdir, tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=6):
    results = evaluate.run(
      tiny_workdir,
      dataset="oxford_iiit_pet",
      protocol="train",
      output=str(tmp_path / "pets.json"),
      grids=1,
    )
  names = [image["name"] for image in results["images"]] + results["skipped"]
  assert sorted(names) == sorted(f"test/{i}" for i in range(6))
  assert results["images"] and results["protocol"] == "train"
  assert results["model"]["psnr_rgb"] > 10


run_module = helpers.run_module


@pytest.mark.slow
def test_command_line(tiny_workdir, tmp_path):
  folder = tmp_path / "images"
  folder.mkdir()
  crop_of(require_set("Set5") / "head.png", 96).save(folder / "head.png")
  output = tmp_path / "out" / "results.json"
  done = run_module(
    "percvae_jax.evaluate",
    f"--workdir={tiny_workdir}",
    f"--data-dir={folder}",
    "--scale=2",
    f"--output={output}",
  )
  assert done.returncode == 0, done.stderr
  assert "head.png" in done.stdout and "mean" in done.stdout
  assert [image["name"] for image in json.loads(output.read_text())["images"]] == ["head.png"]
  assert (output.parent / "results_head.png").is_file()


@pytest.mark.slow
def test_command_line_folder_with_nothing_usable(tiny_workdir, tmp_path):
  bad = helpers.write_unreadable_files(tmp_path / "bad", require_set("Set5") / "bird.png")
  done = run_module(
    "percvae_jax.evaluate",
    f"--workdir={tiny_workdir}",
    f"--data-dir={tmp_path / 'bad'}",
    f"--output={tmp_path / 'r.json'}",
  )
  helpers.assert_one_line_error(done, "error: none of the 4 images", codes=(1,))
  assert all(name in done.stderr for name in bad)


def test_evaluate_writes_one_grid_per_image_when_names_clash(tiny_workdir, tmp_path):
  folder = tmp_path / "clash"
  folder.mkdir()
  source = helpers.shared_data("Set5", "baby.png")
  helpers.crop_of(source, 48).save(folder / "photo.jpg", quality=95)
  helpers.crop_of(source, 48).save(folder / "photo.png")
  helpers.crop_of(source, 40).save(folder / "photo_jpg.png")
  output = tmp_path / "eval" / "r.json"
  results = evaluate.run(tiny_workdir, data_dir=str(folder), output=str(output), grids=3)
  assert len(results["images"]) == 3
  grids = sorted(output.parent.glob("r_*.png"))
  assert len(grids) == 3, grids


def test_evaluate_scores_a_sideways_jpeg_upright(tiny_workdir, tmp_path):
  (tmp_path / "phone").mkdir()
  (tmp_path / "upright").mkdir()
  helpers.write_sideways_jpeg(tmp_path / "phone" / "phone.jpg")
  stored = np.asarray(Image.open(tmp_path / "phone" / "phone.jpg").convert("RGB"))
  # The same pixels turned upright by hand, lossless.
  Image.fromarray(np.ascontiguousarray(np.rot90(stored, k=-1))).save(
    tmp_path / "upright" / "phone.png"
  )
  scores = [
    evaluate.run(
      tiny_workdir,
      data_dir=str(tmp_path / folder),
      output=str(tmp_path / f"{folder}.json"),
      grids=0,
    )
    for folder in ("phone", "upright")
  ]
  assert scores[0]["model"] == scores[1]["model"]
  assert scores[0]["bicubic"] == scores[1]["bicubic"]
