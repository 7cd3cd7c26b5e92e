"""scripts/benchmark_speed.py: the code changes it times compute what the package does,
and its --quick run fills every section of the report."""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark_speed.py"


@pytest.fixture(scope="module")
def bench():
  spec = importlib.util.spec_from_file_location("benchmark_speed", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("kernel,strides,padding", [
    ((3, 3), (2, 2), "SAME"), ((4, 3), (3, 2), "VALID"), ((5, 5), (2, 2), ((1, 3), (0, 2))),
    ((2, 2), (2, 2), "SAME")])
def test_transposed_conv_kernel_gradient_matches_lax(bench, kernel, strides, padding):
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 5, 4))
  w = jax.random.normal(jax.random.PRNGKey(1), kernel + (4, 5))
  loss = lambda conv: lambda x, w: jnp.sum(jnp.sin(conv(x, w, strides, padding)))
  expected = jax.value_and_grad(loss(jax.lax.conv_transpose), (0, 1))(x, w)
  actual = jax.jit(jax.value_and_grad(loss(bench.conv_transpose), (0, 1)))(x, w)
  jax.tree.map(lambda e, a: np.testing.assert_allclose(a, e, rtol=2e-5, atol=2e-5),
               expected, actual)


@pytest.mark.slow
def test_quick_run_reports_every_section(tmp_path):
  pytest.importorskip("torch")
  output = tmp_path / "results.json"
  run = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--output", str(output)],
                       capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-4000:]
  report = json.loads(output.read_text())
  assert report["table"] in run.stdout
  rows = {(r["section"], r["name"]): r for r in report["train"]}
  as_is, best = rows["paper", "package as is"], rows[
      "paper", "convT dW, YNN off, huge pages"]
  for r in report["train"]:
    assert r["median_s"] > 0 and r["compile_s"] > 0 and r["gflop_per_step"] > 0, r
    assert math.isfinite(r["first_loss"]), r
  # Same state, batch and latent noise: the changes leave the loss as it was.
  assert best["first_loss"] == pytest.approx(as_is["first_loss"], rel=1e-4)
  assert report["torch"] and all(r["images_per_s"] > 0 for r in report["torch"])
  pipeline = report["pipeline"]
  assert pipeline["degradation"]["images_per_s"] > 0
  if os.path.isdir(SCRIPT.parents[2] / "shared" / "data" / "SunHays80"):
    assert pipeline["crops"]["images_per_s"] > 0 and pipeline["images"] == 80
  else:
    assert "not found" in pipeline["skipped"]
  (upscale,) = report["upscale"].values()
  assert upscale["sr_px"] == [2 * upscale["lr_px"][0], 2 * upscale["lr_px"][1]]
  assert upscale["windows"] > 1 and upscale["peak_rss_gb"] > 0
  assert any("/ PyTorch" in key for key in report["summary"])
