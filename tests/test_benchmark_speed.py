"""scripts/benchmark_speed.py: its --quick run fills every section of the report, each
row timed under the setting it names, and the settings leave the train step's loss as
it was."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import helpers

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark_speed.py"


@pytest.mark.slow
def test_quick_run_reports_every_section(tmp_path):
  pytest.importorskip("torch")
  output = tmp_path / "results.json"
  run = subprocess.run(
    [sys.executable, str(SCRIPT), "--quick", "--layers", "--output", str(output)],
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert run.returncode == 0, run.stderr[-4000:]
  report = json.loads(output.read_text())
  assert report["table"] in run.stdout
  machine = report["machine"]
  assert machine["cpu"] and machine["cores"] >= 1 and machine["date"]
  assert set(machine["features"]) == {"AVX2", "AVX-512", "AMX"}
  assert machine["cpu"] in report["table"] and "AVX2" in report["table"]
  rows = {(r["name"], r["setting"]): r for r in report["train"]}
  package, defaults = rows["paper", "package"], rows["paper", "XLA defaults"]
  for r in report["train"]:
    assert r["median_s"] > 0 and r["compile_s"] > 0 and r["gflop_per_step"] > 0, r
    assert math.isfinite(r["first_loss"]), r
  # The perceptual VGG16 runs Winograd on a CPU: fewer FLOPs run than are counted.
  assert package["vgg_winograd"]
  assert package["gflop_executed_per_step"] < package["gflop_per_step"]
  # The package's settings and XLA's defaults: same state, batch and noise, same loss.
  assert package["first_loss"] == pytest.approx(defaults["first_loss"], rel=1e-4)
  assert package["package_choice"].startswith("CPU settings for train")
  assert defaults["package_choice"] is None
  assert report["torch"] and all(r["images_per_s"] > 0 for r in report["torch"])
  pipeline = report["pipeline"]
  assert pipeline["degradation"]["images_per_s"] > 0
  if os.path.isdir(SCRIPT.parents[2] / "shared" / "data" / "SunHays80"):
    assert pipeline["crops"]["images_per_s"] > 0 and pipeline["images"] == 80
  else:
    assert "not found" in pipeline["skipped"]
  (upscale,) = report["upscale"]
  assert upscale["sr_px"] == [2 * upscale["lr_px"][0], 2 * upscale["lr_px"][1]]
  assert upscale["windows"] > 1 and upscale["peak_rss_gb"] > 0
  assert upscale["sr_megapixels_per_s"] > 0
  assert any("/ PyTorch" in key for key in report["summary"])
  (matmul,) = report["matmul"]
  assert matmul["n"] == 256 and matmul["gflop_per_s"] > 0
  assert "float32 matmul 256^3" in report["table"]
  summary = report["summary"]
  assert summary["float32 rate, matmul 256^3, XLA dot, GFLOP/s"] == matmul["gflop_per_s"]
  assert matmul["blas"]["gflop_per_s"] > 0 and "numpy" in report["table"]
  xla, torch_layers = report["layers"]
  names = ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3"]
  assert [layer["layer"] for layer in xla["layers"]] == names
  assert [layer["layer"] for layer in torch_layers["layers"]] == names
  for layer in xla["layers"]:
    assert layer["forward_s"] > 0 and layer["package_input_gradient_s"] > 0, layer
    assert layer["package_relative_error"] < 1e-4, layer
  assert all(layer["forward_s"] > 0 for layer in torch_layers["layers"])
  assert "VGG16 convolutions at batch 4" in report["table"]


def test_only_keeps_the_matmul_rate_with_a_paper_row():
  bench = helpers.load_script("benchmark_speed")
  matmul = bench.row("matmul", "float32", "package")
  assert bench.selected(matmul, None)
  assert bench.selected(matmul, ["train:paper", "torch"])
  assert not bench.selected(matmul, ["upscale", "quickstart"])
  assert not bench.selected(bench.row("train", "paper", "package"), ["upscale"])


def test_summary_sets_each_paper_step_against_the_matmul_rate():
  bench = helpers.load_script("benchmark_speed")
  paper = dict(
    bench.row("train", "paper", "package"),
    median_s=4.0,
    cpu_s=8.0,
    images_per_s=8.0,
    images_per_cpu_s=4.0,
    gflop_per_step=600.0,
    gflop_per_s=150.0,
  )
  fast, slow = (
    dict(bench.row("torch", "paper", s), median_s=t, cpu_s=2 * t, images_per_s=32 / t)
    for s, t in (("torch channels_last", 3.0), ("torch default", 5.0))
  )
  for r in (fast, slow):
    r["images_per_cpu_s"] = 32 / r["cpu_s"]
  report = dict(
    matmul=[
      dict(
        bench.row("matmul", "float32", "package"),
        n=4096,
        gflop_per_s=180.0,
        blas={"library": "openblas", "coretype": None, "gflop_per_s": 250.0},
      )
    ],
    train=[paper],
    torch=[slow, fast],
    upscale=[],
    quickstart=[],
    pipeline={},
  )
  summary = bench.summarize(report)
  assert summary["float32 rate, matmul 4096^3, XLA dot, GFLOP/s"] == 180.0
  # PyTorch's fastest runs the JAX step's 600 GFLOP in 3 s: 200 GFLOP/s.
  assert summary["float32 rate, paper step, PyTorch torch channels_last, GFLOP/s"] == pytest.approx(
    200.0
  )
  # Against the fastest of the three rates, numpy's 250 GFLOP/s:
  assert summary["JAX paper step, share of the fastest float32 rate measured"] == (
    pytest.approx(0.6)
  )
  assert summary["PyTorch's fastest (torch channels_last), share of the fastest rate"] == (
    pytest.approx(0.8)
  )
  # At 250 GFLOP/s the JAX step would take 2.4 s: 3 / 2.4 = 1.25x PyTorch's fastest.
  key = "direct convolutions / PyTorch's fastest, at most (every FLOP at the fastest rate)"
  assert summary[key] == pytest.approx(1.25)


def test_upscale_rows_take_released_models_at_their_scale_or_x2_shapes():
  bench = helpers.load_script("benchmark_speed")
  config, params = bench.upscale_model("x4")
  assert config.data.scale == 4 and "posterior" not in params
  config, params = bench.upscale_model("8x2")
  assert config.data.scale == 2 and config.model.features == 8 and config.model.num_blocks == 2
