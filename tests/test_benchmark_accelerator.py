"""The prepared accelerator run: its dry run fills every field of results.json from a
carried folder, its parts (goals, folder mapping, profile, the PyTorch peer, the packed
images) do what they say, and the parallel input pipeline gives the same batches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from percvae_jax import data
from tests import helpers

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SCRIPTS = REPO / "scripts"


@pytest.fixture(scope="module")
def bench():
  return helpers.load_script("benchmark_accelerator")


def needs_shared_data():
  if not (SHARED_DATA / "BSD100").is_dir():
    pytest.skip(f"{SHARED_DATA} is absent: the real photos live in ../shared/data beside the repo")


# ----------------------------------------------------------------- the dry run


@pytest.mark.slow
def test_dry_run_from_a_carried_folder_writes_every_field(tmp_path):
  """prepare_accelerator.py (3 images a set, no wheels) then the dry run on it, as the
  wrapper would run it on the host: every stage, every field, a model written."""
  needs_shared_data()
  pytest.importorskip("torch")
  carried = tmp_path / "carried"
  env = dict(os.environ, PERCVAE_JAX_CACHE=str(tmp_path / "cache"))
  prepare = subprocess.run(
    [
      sys.executable,
      str(SCRIPTS / "prepare_accelerator.py"),
      "--output",
      str(carried),
      "--limit",
      "3",
      "--no-wheels",
    ],
    capture_output=True,
    text=True,
    timeout=240,
    env=env,
    cwd=REPO,
    check=False,
  )
  assert prepare.returncode == 0, prepare.stdout[-3000:] + prepare.stderr[-3000:]
  manifest = json.loads((carried / "manifest.json").read_text())
  assert manifest["sets"]["Set5"]["psnr_db"] == "lossless"
  assert sorted(os.listdir(carried / "weights")) == ["lpips_alexnet.npz", "vgg16_relu3_3.npz"]

  output = tmp_path / "out"
  deep = tmp_path / "deep.py"  # a config tapping VGG16 past the carried relu3_3.
  deep.write_text(
    "import runpy\n\ndef get_config():\n"
    f"  config = runpy.run_path({str(REPO / 'configs' / 'release_x2.py')!r})"
    "['get_config']()\n"
    "  config.loss.gamma = 0.01\n"
    "  config.loss.perceptual_layers = 'relu5_3'\n"
    "  return config\n"
  )
  run = subprocess.run(
    [
      sys.executable,
      str(SCRIPTS / "benchmark_accelerator.py"),
      "--dry-run",
      "--output",
      str(output),
      "--carried",
      str(carried),
      "--configs",
      f"configs/release_x2.py,{deep},configs/no_such_release.py",
    ],
    capture_output=True,
    text=True,
    timeout=330,
    env=env,
    cwd=REPO,
    check=False,
  )
  assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
  results = json.loads((output / "results.json").read_text())
  assert results["dry_run"] and results["weights"] == str(carried / "weights")
  for stage in ("device", "speed", "peer", "pipeline", "train x2"):
    assert results["stages"][stage]["status"] == "ok", (stage, results["stages"][stage])
  assert "does not exist" in results["stages"]["train no-such-release"]["status"]
  # A config tapping relu5_3, past the carried relu3_3, is never trained.
  assert "relu3_3, random past it" in results["speed_vgg_weights"]
  assert "stop at block 3" in results["stages"]["train deep"]["error"]
  assert results["device"]["platform"] == "cpu"
  assert results["matmul_peak"]["bfloat16"]["tflops_per_sec"] > 0

  speed = results["speed"]
  for config in ("paper", "default"):
    for dtype in ("float32", "bfloat16"):
      rows = [r for r in speed if r["config"] == config and r["dtype"] == dtype]
      assert rows, (config, dtype)
      assert sum(r.get("best", False) for r in rows) == 1
  for row in speed:
    for key in ("batch_size", "step_seconds", "images_per_sec", "tflops_per_sec", "peak_fraction"):
      assert row[key] > 0, (key, row)
    assert np.isfinite(row["first_loss"]), row

  peer = results["peer"]
  assert peer["rows"] and peer["best"]
  assert {(r["dtype"], r["batch_size"]) for r in peer["best"]} >= {("float32", 4), ("bfloat16", 4)}
  assert all(r["images_per_sec"] > 0 and np.isfinite(r["first_loss"]) for r in peer["rows"])

  assert results["pipeline_images_per_sec"] > 0
  assert results["pipeline"]["images"] == 6  # the first 3 of T91 and of BSD200
  assert "batch, one thread" in results["pipeline"]["rates"]

  quality = results["quality"]["x2"]
  assert quality["trained_steps"] == 6
  for set_name in ("Set5", "Set14", "BSD100"):
    scores = quality[set_name]
    assert scores["images"] == 2
    for metric in ("psnr_y", "ssim_y", "lpips"):
      assert np.isfinite(scores[metric]) and np.isfinite(scores["bicubic"][metric])
  model = output / quality["model_dir"]
  saved = json.loads((model / "config.json").read_text())
  assert str(carried) not in json.dumps(saved["data"])  # the config's own data, not the copies.
  assert saved["release"]["steps"] == 6
  assert set(saved["release"]["scores"]) == {"Set5", "Set14", "BSD100"}
  assert saved["release"]["scores"]["Set5"]["psnr_y"] == pytest.approx(quality["Set5"]["psnr_y"])
  written = {p.name for p in (carried / "data").rglob("*") if p.is_file()}
  assert all(name.endswith(".webp") for name in written), written  # only the packed images.
  assert (model / "params.msgpack").stat().st_size > 0
  assert set(results["goals"]) >= {
    "jax_paper_vs_peer",
    "default_bf16_peak_fraction",
    "pipeline_vs_fastest_step",
  }


@pytest.mark.slow
def test_profile_names_the_ops_of_a_step(bench):
  config = bench.load_config(str(REPO / "configs" / "default.py"), bench.DRY)
  profile = bench.profile_step(config, 2, "bfloat16", bench.DRY)
  assert profile["top_ops"] and profile["op_seconds_per_step"] > 0
  assert abs(sum(op["share"] for op in profile["top_ops"]) - 1) < 0.5


# ----------------------------------------------------------------- the parent


def make_run(bench, tmp_path, **results):
  args = bench.parse_args(
    [
      "--output",
      str(tmp_path / "out"),
      "--dry-run",
      "--data",
      str(tmp_path),
      "--weights",
      str(tmp_path),
    ]
  )
  run = bench.Run(args)
  run.results.update(results)
  return run


def test_goals_compare_the_best_rows(bench, tmp_path):
  row = lambda config, dtype, batch, ips, tflops: {
    "config": config,
    "dtype": dtype,
    "batch_size": batch,
    "images_per_sec": ips,
    "tflops_per_sec": tflops,
  }
  run = make_run(
    bench,
    tmp_path,
    matmul_peak={"bfloat16": {"tflops_per_sec": 800.0}},
    speed=[
      row("paper", "bfloat16", 32, 1000.0, 20.0),
      row("paper", "bfloat16", 512, 9000.0, 160.0),
      row("default", "bfloat16", 32, 500.0, 150.0),
      row("default", "bfloat16", 256, 900.0, 260.0),
    ],
    peer={
      "rows": [],
      "best": [
        {
          "dtype": "bfloat16",
          "batch_size": 512,
          "images_per_sec": 6000.0,
          "variant": "compiled channels_last",
        }
      ],
    },
    pipeline_images_per_sec=20000.0,
  )
  run.goals()
  goals = run.results["goals"]
  assert goals["jax_paper_vs_peer"]["value"] == pytest.approx(1.5)
  assert goals["jax_paper_vs_peer"]["met"]
  assert goals["jax_paper_vs_peer"]["by_row"][0]["ratio"] == pytest.approx(1.5)
  assert goals["default_bf16_peak_fraction"]["value"] == pytest.approx(260 / 800)
  assert goals["default_bf16_peak_fraction"]["batch_size"] == 256
  assert goals["pipeline_vs_fastest_step"]["value"] == pytest.approx(20000 / 9000)
  assert json.loads((tmp_path / "out" / "results.json").read_text())["dry_run"]


def test_release_names_and_packed_folders(bench, tmp_path):
  assert bench.release_name("configs/release_x4_perceptual.py") == "x4-perceptual"
  assert bench.release_name("configs/release_x2.py") == "x2"
  for name in ("T91", "BSD200", "Set5"):
    (tmp_path / name).mkdir()
  packed = bench.packed_folders(
    "../shared/data/T91, ../shared/data/BSD200", str(tmp_path), ("T91",)
  )
  assert packed == f"{tmp_path / 'T91'},{tmp_path / 'BSD200'}"
  assert bench.packed_folders("", str(tmp_path), ("Set5",)) == str(tmp_path / "Set5")


def test_a_missing_stage_result_is_a_recorded_failure(bench, tmp_path):
  run = make_run(bench, tmp_path)
  run.merge("speed", {})
  run.record("speed", "failed (exit code 1)", 0.0, {"error": "boom"})
  saved = json.loads((tmp_path / "out" / "results.json").read_text())
  assert saved["stages"]["speed"]["status"] == "failed (exit code 1)"
  assert saved["speed"] == [] and "device" in saved and "quality" in saved


def test_the_wrapper_is_valid_bash():
  assert (
    subprocess.run(["bash", "-n", str(SCRIPTS / "run_accelerator.sh")], check=False).returncode == 0
  )


# ----------------------------------------------------------------- the pieces


def test_torch_paper_step_learns():
  pytest.importorskip("torch")
  import torch

  sys.path.insert(0, str(SCRIPTS))
  try:
    import torch_paper
  finally:
    sys.path.remove(str(SCRIPTS))
  rng = np.random.default_rng(0)
  weights = {
    name: {
      "kernel": rng.normal(0, 0.05, (3, 3, i, o)).astype(np.float32),
      "bias": np.zeros(o, np.float32),
    }
    for name, i, o in (
      ("conv1_1", 3, 64),
      ("conv1_2", 64, 64),
      ("conv2_1", 64, 128),
      ("conv2_2", 128, 128),
      ("conv3_1", 128, 256),
      ("conv3_2", 256, 256),
      ("conv3_3", 256, 256),
    )
  }
  torch.set_num_threads(1)
  hr = torch.rand(2, 3, 32, 32)
  lr = torch.nn.functional.avg_pool2d(hr, 2)
  for dtype, channels_last in (("float32", False), ("bfloat16", True)):
    step = torch_paper.make_paper_step(weights, 32, 2, "cpu", dtype, channels_last)
    losses = [float(step(lr, hr).detach()) for _ in range(8)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], (dtype, losses)


def test_packed_evaluation_images_are_lossless(tmp_path):
  prepare = helpers.load_script("prepare_accelerator")
  rng = np.random.default_rng(0)
  smooth = Image.fromarray(rng.integers(0, 256, (12, 16, 3), np.uint8)).resize((64, 48))
  noisy = np.asarray(smooth) // 2 + rng.integers(0, 128, (48, 64, 3), np.uint8)
  Image.fromarray(noisy).save(tmp_path / "a.png")
  Image.fromarray(noisy[..., 0]).save(tmp_path / "gray.png")
  for name in ("a", "gray"):
    result = prepare.pack_image(
      (str(tmp_path / f"{name}.png"), str(tmp_path / f"{name}.webp"), "lossless", 100)
    )
    assert result["mse"] == 0
    np.testing.assert_array_equal(
      data.decode_image(str(tmp_path / f"{name}.webp")),
      data.decode_image(str(tmp_path / f"{name}.png")),
    )
  smooth.save(tmp_path / "smooth.png")
  lossy = prepare.pack_image(
    (str(tmp_path / "smooth.png"), str(tmp_path / "a_lossy.webp"), "webp", 90)
  )
  assert 0 < lossy["mse"] < 300  # lossy, yet the same picture (PSNR > 23 dB)
  assert data.list_images(str(tmp_path)) == sorted(
    str(tmp_path / n)
    for n in ("a.png", "a.webp", "a_lossy.webp", "gray.png", "gray.webp", "smooth.png")
  )


def _images(n=7, size=40):
  rng = np.random.default_rng(1)
  arrays = [rng.integers(0, 256, (size + 3 * i, size + 2 * i, 3), np.uint8) for i in range(n)]
  return arrays, data.ImageSet([str(i) for i in range(n)], arrays.__getitem__)


def test_stream_gives_the_batches_of_batch_whatever_the_workers():
  _, images = _images()
  batches = data.TrainBatches(images, 32, 6, seed=5)
  expected = [batches.batch(step) for step in range(3, 15)]
  for workers, ahead in ((1, None), (3, None), (4, 1), (8, 30)):
    got = list(batches.stream(3, 15, workers=workers, ahead=ahead))
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
      np.testing.assert_array_equal(a, b)
  # A resumed stream (from step 9) continues with the uninterrupted one's batches.
  for a, b in zip(batches.stream(9, 15, workers=3), expected[6:]):
    np.testing.assert_array_equal(a, b)
  stream = batches.stream(0, 10**9, workers=2)
  next(stream)
  stream.close()  # stops its workers.


def test_batch_flips_and_transposes_as_plain_numpy_does():
  """The per-channel copies give what a plain flipped/transposed copy gives."""
  arrays, images = _images(n=3, size=64)
  batches = data.TrainBatches(images, 32, 16, seed=2)
  batch = batches.batch(4)
  rng = np.random.default_rng([2, 1, 4])
  corners = rng.random((16, 2))
  flips = rng.random((16, 2)) < 0.5
  indices = batches._image_indices(4)
  assert flips.any(axis=0).all()
  for row in range(16):
    image = arrays[indices[row]]
    top = int(corners[row, 0] * (image.shape[0] - 31))
    left = int(corners[row, 1] * (image.shape[1] - 31))
    crop = image[top : top + 32, left : left + 32]
    crop = crop[:, ::-1] if flips[row, 0] else crop
    crop = np.swapaxes(crop, 0, 1) if flips[row, 1] else crop
    np.testing.assert_array_equal(batch[row], crop)


def test_image_cache_is_bounded():
  arrays, _ = _images(n=4, size=40)
  loads = []

  def load(index):
    loads.append(index)
    return arrays[index].copy()

  limit = arrays[0].nbytes + arrays[1].nbytes
  images = data.ImageSet([str(i) for i in range(4)], load, cache_bytes=limit)
  for _ in range(3):
    for i in range(4):
      np.testing.assert_array_equal(images[i], arrays[i])
  assert loads.count(0) == loads.count(1) == 1  # cached: within the bound.
  assert loads.count(2) == loads.count(3) == 3  # past it: decoded at each use.
  unbounded = data.ImageSet(["0"], load)
  assert unbounded[0] is unbounded[0]


def test_module_imports_nothing_heavy_in_the_parent(bench):
  """The parent process never imports JAX: each stage's process owns the device."""
  env = helpers.subprocess_env()
  # scripts/ first on the path, as when the script runs.
  env["PYTHONPATH"] = os.pathsep.join([str(SCRIPTS), env["PYTHONPATH"]])
  run = helpers.run_module("tests.workers.import_probe", "benchmark_accelerator", env=env)
  assert run.returncode == 0, run.stderr[-3000:]
  loaded = set(json.loads(run.stdout)["modules"])
  assert "benchmark_accelerator" in loaded  # the probe did import it.
  assert "jax" not in loaded
  assert isinstance(bench, types.ModuleType)
