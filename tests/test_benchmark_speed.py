"""scripts/benchmark_speed.py: a --quick run fills the report, each row timed under the
setting it names, the settings leaving the train step's loss as it was; the rows,
the AVX2 emulation's pieces and the tables and summary do what they say."""

import argparse
import ctypes
import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from percvae_jax import cpu_settings, flops, pretrained
from percvae_jax.models import vgg_layout
from tests import helpers

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark_speed.py"


@pytest.fixture(scope="module")
def bench():
  return helpers.load_script("benchmark_speed")


@pytest.mark.slow
def test_quick_run_reports_a_step_under_each_setting(tmp_path):
  output = tmp_path / "results.json"
  run = subprocess.run(
    [sys.executable, str(SCRIPT), "--quick", "--only", "train:quickstart", "--output", str(output)]
    + ["--steps", "1", "--warmup", "0"],
    capture_output=True,
    text=True,
    timeout=900,
    check=False,
  )
  assert run.returncode == 0, run.stderr[-4000:]
  report = json.loads(output.read_text())
  assert report["table"] in run.stdout
  machine = report["machine"]
  assert machine["cpu"] in report["table"] and machine["cores"] >= 1 and machine["date"]
  assert set(machine["features"]) == {"AVX2", "AVX-512", "AMX"} and "AVX2" in report["table"]
  package, defaults = sorted(report["train"], key=lambda r: r["setting"] != "package")
  assert (package["setting"], defaults["setting"]) == ("package", "XLA defaults")
  config = helpers.load_config("quickstart")
  config.data.hr_size, config.train.batch_size = 32, 4
  config.model.update(features=8, num_blocks=2)
  for r in report["train"]:
    assert r["median_s"] > 0 and r["compile_s"] > 0 and math.isfinite(r["first_loss"]), r
    assert r["gflop_per_step"] == pytest.approx(flops.train_step(config) / 1e9) and r["rate"] > 0
    lines = report["table"].splitlines()
    assert any(x.startswith("quickstart, JAX") and r["setting"] in x for x in lines), r
  # Same state, batch and noise under both settings: the same loss.
  assert package["first_loss"] == pytest.approx(defaults["first_loss"], rel=1e-4)
  assert package["package_choice"].startswith("CPU settings for train")
  assert defaults["package_choice"] is None
  if os.path.isdir(helpers.SHARED_DATA / "Set5"):
    assert report["pipeline"]["fed_images_per_s"] > 0 and "input pipeline (Set5)" in run.stdout


def rows_for(bench, *argv):
  parser = argparse.ArgumentParser()
  for flag in ("--quick", "--explore", "--layers", "--quickstart"):
    parser.add_argument(flag, action="store_true")
  parser.add_argument("--only", type=lambda s: s.split(","))
  args = parser.parse_args(argv)
  args.tiles = args.upscale_models = None
  return [(r["kind"], r["name"], r["setting"]) for r in bench.rows_for(args)]


def test_only_keeps_the_matmul_rate_with_a_paper_row(bench):
  assert ("matmul", "float32", "package") in rows_for(bench, "--only", "train:paper,torch")
  assert rows_for(bench, "--only", "upscale") == [
    ("upscale", name, "package") for name in ("x2", "x4", "x4-fast")
  ]
  quick = rows_for(bench, "--quick", "--layers")
  assert ("train", "default", "package") not in quick and (
    "layers",
    "VGG16 to relu3_3",
    "package",
  ) in quick
  explored = rows_for(bench, "--explore", "--only", "train:quickstart")
  assert [s for _, _, s in explored] == list(bench.SETTINGS)[:6]


def test_avx2_emulation_changes_what_each_row_sees(bench):
  cpu = cpu_settings.Cpu("a CPU", frozenset({"avx2", "fma", "avx512f", "avx512bw", "avx512vl"}))
  assert cpu.isa == "avx512" and bench.emulated_cpu(cpu, "avx2").isa == "avx2"
  assert bench.emulated_cpu(cpu, "native") is cpu
  jax_row, torch_row = (
    bench.row("train", "paper", "Eigen"),
    bench.row("torch", "paper", "torch default"),
  )
  flags = bench.environment(jax_row, "avx2")["XLA_FLAGS"]
  assert "--xla_cpu_max_isa=AVX2" in flags and "--xla_cpu_experimental_ynn_fusion_type=" in flags
  torch_env = bench.environment(torch_row, "avx2")
  assert torch_env["ATEN_CPU_CAPABILITY"] == "avx2" and "max_isa" not in torch_env["XLA_FLAGS"]


@pytest.mark.skipif(platform.machine() != "x86_64", reason="cpuinfo's x86 layout")
def test_jaxlibs_cpuinfo_is_laid_out_as_the_emulation_expects(bench):
  """The symbols --isa avx2 edits are found in jaxlib, and the features it checks before
  editing them agree with /proc/cpuinfo on this machine (edited only in its workers)."""
  at = bench.jaxlib_symbols(("cpuinfo_initialize", "cpuinfo_isa", bench.YNN_GUARD))
  assert ctypes.CFUNCTYPE(ctypes.c_bool)(at["cpuinfo_initialize"])()
  isa = (ctypes.c_uint8 * 64).from_address(at["cpuinfo_isa"])
  flags = cpu_settings.detect().flags
  assert all(isa[i] == (flag in flags) for i, flag in bench.CPUINFO_CHECKED.items())


def report_of(bench, **kinds):
  report = dict(matmul=[], train=[], torch=[], upscale=[], quickstart=[], layers=[], pipeline={})
  report.update(kinds, compute_dtype="float32")
  report["machine"] = dict(
    cpu="A CPU",
    features={"AVX2": True, "AVX-512": ["avx512f", "avx512_bf16"], "AMX": []},
    cores=2,
    memory_gb=8.0,
    date="today",
    load_average_start=1.0,
    emulated_isa="avx2",
    package_settings={"train": {"xla_flag": "1"}, "infer": {}},
  )
  return report


def test_summary_and_table_set_each_paper_step_against_the_matmul_rate(bench):
  step = lambda kind, setting, seconds, **extra: dict(
    bench.row(kind, "paper", setting),
    median_s=seconds,
    cpu_s=2 * seconds,
    rate=32 / seconds,
    rate_by_cpu=16 / seconds,
    unit="img/s",
    gflop_per_s=600 / seconds,
    peak_rss_gb=1.0,
    **extra,
  )
  paper = step("train", "package", 4.0, gflop_per_step=600.0, compile_s=5.0)
  fast, slow = step("torch", "torch channels_last", 3.0), step("torch", "torch default", 5.0)
  matmul = dict(bench.row("matmul", "float32", "package"), n=4096, gflop_per_s=180.0)
  matmul["blas"] = {"library": "openblas", "gflop_per_s": 250.0}
  report = report_of(bench, matmul=[matmul], train=[paper], torch=[slow, fast])
  summary = bench.summarize(report)
  assert summary["JAX paper step / PyTorch torch channels_last (the fastest), images/s"] == {
    "wall": pytest.approx(0.75),
    "cpu": pytest.approx(0.75),
  }
  # PyTorch's fastest runs the JAX step's 600 GFLOP in 3 s: 200 GFLOP/s, against the
  # fastest rate measured, numpy's 250 GFLOP/s.
  assert summary["float32 rate, paper step, PyTorch torch channels_last, GFLOP/s"] == 200
  assert summary["JAX paper step, share of the fastest float32 rate"] == pytest.approx(0.6)
  assert summary["PyTorch's fastest, share of it"] == pytest.approx(0.8)
  # At 250 GFLOP/s the step would take 2.4 s: 3 / 2.4 = 1.25x PyTorch's fastest.
  assert summary["direct convolutions / PyTorch's fastest, at most"] == pytest.approx(1.25)
  table = bench.table(report)
  assert "A CPU: AVX2 yes; AVX-512 F BF16; AMX no; 2 cores" in table and "EMULATED" in table
  assert "package settings for train: --xla_flag=1" in table
  line = next(x for x in table.splitlines() if x.startswith("paper, JAX"))
  assert "4.000" in line and "8.00 img/s" in line and "150" in line and "0.75x" in line
  assert "openblas" in table and "    250" in table


def test_layers_of_pytorch_and_their_table(bench):
  pytest.importorskip("torch")
  rng = np.random.default_rng(0)
  x, cotangent = rng.random((1, 8, 8, 3), np.float32), rng.random((1, 8, 8, 4), np.float32)
  median = lambda f, *args: (f(*args), 0.5)[1]  # runs it, then says it took 0.5 s.
  timed = bench.torch_layer(x, rng.random((3, 3, 3, 4), np.float32), cotangent, median)
  assert timed == {"forward_s": 0.5, "input_gradient_s": 0.0}
  layer = dict(layer="conv1_1", side=8, c_in=3, c_out=4, gflop=1.0)
  xla = dict(layer, forward_s=0.1, input_gradient_s=0.1, package_forward_s=0.05)
  xla.update(package_input_gradient_s=0.05, package_relative_error=2e-5)
  rows = [
    dict(bench.row("layers", "VGG16", "package"), batch_size=1, layers=[xla]),
    dict(bench.row("layers", "VGG16", bench.TORCH_SETTINGS[-1]), layers=[dict(layer, **timed)]),
  ]
  table = bench.layers_table(report_of(bench, layers=rows))
  assert "XLA direct" in table[1] and "PyTorch channels_last" in table[1]
  assert table[2].split()[:4] == ["conv1_1", "8", "3->4", "1.0"] and "(  20)" in table[2]
  assert "2.0e-05" in table[-1]
  summary = bench.summarize(report_of(bench, layers=rows))
  assert summary["VGG16 convolutions of a paper step, s, XLA package (winograd.py)"] == (
    pytest.approx(0.15)
  )


def test_the_pytorch_row_times_the_paper_step_on_the_pipelines_batch(bench, tmp_path, monkeypatch):
  pytest.importorskip("torch")
  rng = np.random.default_rng(0)
  weights = {
    name: {"kernel": rng.normal(0, 0.05, (3, 3, c_in, c_out)).astype(np.float32)}
    for name, _, c_in, c_out in vgg_layout.conv_layout()[:7]
  }
  for layer in weights.values():
    layer["bias"] = np.zeros(layer["kernel"].shape[-1], np.float32)
  monkeypatch.setattr(pretrained, "load_vgg16_params", lambda source: weights)
  np.save(tmp_path / "hr.npy", rng.integers(0, 256, (2, 16, 16, 3), np.uint8))
  np.save(tmp_path / "lr.npy", rng.random((2, 8, 8, 3), np.float32))
  spec = dict(tmp=str(tmp_path), steps=2, warmup=0, compute_dtype="float32", isa="native")
  spec.update(row=bench.row("torch", "paper", "torch default"), result_path="unused")
  result = bench.worker_torch(bench.common.Worker(spec))
  assert len(result["times_s"]) == 2 and result["rate"] == pytest.approx(2 / result["median_s"])
  assert math.isfinite(result["first_loss"]) and result["setup_s"] > 0


def test_an_upscale_row_takes_a_released_name_a_model_folder_or_an_architecture(bench, tmp_path):
  """A candidate's folder (release_model.py --root) times as its release would; FxB is
  the fidelity recipe at x2 with random weights."""
  import shutil

  import jax

  from percvae_jax import released

  folder = tmp_path / "candidate" / "x4"
  shutil.copytree(os.path.join(released.RELEASED_DIR, "x4-fast"), folder)
  by_folder = bench.upscale_model(str(folder))
  by_name = bench.upscale_model("x4-fast")
  assert by_folder[2] == by_name[2] == 4
  shapes = lambda params: [a.shape for a in jax.tree_util.tree_leaves(params)]
  assert shapes(by_folder[1]) == shapes(by_name[1])
  model, params, scale = bench.upscale_model("16x3")
  assert scale == 2 and model.num_blocks == 3 and model.features == 16
  assert bench.label({"kind": "upscale", "name": str(folder), "tile": 512}).startswith(
    f"upscale {folder} "
  )
