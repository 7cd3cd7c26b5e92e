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

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark_speed.py"


@pytest.mark.slow
def test_quick_run_reports_every_section(tmp_path):
  pytest.importorskip("torch")
  output = tmp_path / "results.json"
  run = subprocess.run(
    [sys.executable, str(SCRIPT), "--quick", "--output", str(output)],
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
