"""scripts/sweep.py: grid syntax, run names, the dry-run commands, and a real sweep."""

import json
import os
import subprocess
import sys

import pytest

from percvae_jax import reporting
from tests.helpers import REPO, load_script

SCRIPT = REPO / "scripts" / "sweep.py"
sweep = load_script("sweep")

CONFIG = str(REPO / "configs" / "default.py")
TINY = [
  "data.name=embedded",
  "data.hr_size=32",
  "model.features=8",
  "model.num_blocks=2",
  "train.batch_size=4",
  "train.num_steps=2",
  "train.eval_every=2",
  "train.checkpoint_every=2",
  "data.num_eval_images=2",
  "loss.gamma=0",
  "train.warmup_steps=0",
]  # the default's 200-step warmup would leave 2 steps idle.


def test_axis_splits_on_commas_or_on_bars():
  assert sweep.parse_axis("loss.gamma=0,0.8") == ("loss.gamma", ["0", "0.8"])
  assert sweep.parse_axis("loss.perceptual_layers=relu2_2|relu2_2,relu3_3") == (
    "loss.perceptual_layers",
    ["relu2_2", "relu2_2,relu3_3"],
  )
  assert sweep.parse_axis("config.train.seed=1") == ("train.seed", ["1"])
  for bad in ("loss.gamma", "loss.gamma=", "=1,2", "loss.gamma=0,,1", "loss.gamma=1,1"):
    with pytest.raises(sweep.SweepError):
      sweep.parse_axis(bad)


def test_points_take_values_whole():
  assert sweep.parse_point("loss.gamma=1e-4;loss.perceptual_layers=relu2_2,relu3_3") == {
    "loss.gamma": "1e-4",
    "loss.perceptual_layers": "relu2_2,relu3_3",
  }
  with pytest.raises(sweep.SweepError):
    sweep.parse_point("loss.gamma=0;loss.gamma=1")


def test_expand_is_the_points_times_the_product_of_the_axes():
  axes = [("loss.gamma", ["0", "0.8"]), ("loss.perceptual_layers", ["relu2_2", "relu3_3"])]
  runs = sweep.expand(axes, [], {})
  assert runs == [
    {"loss.gamma": g, "loss.perceptual_layers": t}
    for g in ("0", "0.8")
    for t in ("relu2_2", "relu3_3")
  ]
  points = [{"loss.gamma": "0"}, {"loss.gamma": "1e-4", "loss.perceptual_layers": "relu2_2"}]
  runs = sweep.expand([("train.seed", ["0", "1"])], points, {"train.num_steps": "5"})
  assert runs == [{**p, "train.seed": s} for p in points for s in ("0", "1")]
  with pytest.raises(sweep.SweepError, match="loss.gamma"):
    sweep.expand(axes, [], {"loss.gamma": "1"})
  with pytest.raises(sweep.SweepError, match="nothing to sweep"):
    sweep.expand([], [], {})


def test_run_names_are_readable_single_path_components():
  assert sweep.run_name({"loss.gamma": "0", "loss.perceptual_layers": "relu2_2"}) == (
    "loss.gamma=0,loss.perceptual_layers=relu2_2"
  )
  assert os.sep not in sweep.run_name({"data.train_dir": "photos/train"})


@pytest.mark.slow
def test_dry_run_prints_one_main_command_per_point():
  result = subprocess.run(
    [
      sys.executable,
      str(SCRIPT),
      "--config",
      CONFIG,
      "--workdir-root",
      "runs",
      "--grid",
      "loss.gamma=0,0.8",
      "--grid",
      "loss.perceptual_layers=relu2_2|relu3_3",
      "--set",
      "train.num_steps=100",
      "--dry-run",
    ],
    capture_output=True,
    text=True,
    check=True,
    cwd=REPO,
  )
  lines = result.stdout.strip().splitlines()
  assert lines == [
    f"python -m percvae_jax.main --config {CONFIG} --workdir runs/loss.gamma={g},"
    f"loss.perceptual_layers={t} --config.train.num_steps=100 --config.loss.gamma={g} "
    f"--config.loss.perceptual_layers={t}"
    for g in ("0", "0.8")
    for t in ("relu2_2", "relu3_3")
  ]


@pytest.mark.slow
def test_a_misspelt_key_fails_before_any_run(tmp_path):
  result = subprocess.run(
    [
      sys.executable,
      str(SCRIPT),
      "--config",
      CONFIG,
      "--workdir-root",
      str(tmp_path),
      "--grid",
      "loss.gama=0,1",
    ],
    capture_output=True,
    text=True,
    cwd=REPO,
  )
  assert result.returncode == 2 and "loss.gama" in result.stderr
  assert not os.listdir(tmp_path)


@pytest.mark.slow
def test_a_real_two_point_sweep_collates_the_runs_metrics(tmp_path):
  root = tmp_path / "runs"
  args = [
    sys.executable,
    str(SCRIPT),
    "--config",
    CONFIG,
    "--workdir-root",
    str(root),
    "--grid",
    "train.seed=0,1",  # one compiled program for both runs (a learning rate is compiled in)
    "--json",
    str(tmp_path / "t.json"),
    "--markdown",
    str(tmp_path / "t.md"),
  ] + [a for s in TINY for a in ("--set", s)]
  result = subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = json.loads((tmp_path / "t.json").read_text())["runs"]
  assert [r["name"] for r in rows] == ["train.seed=0", "train.seed=1"]
  markdown = (tmp_path / "t.md").read_text()
  for row in rows:
    records = reporting.read_jsonl(str(root / row["name"] / "metrics.jsonl"))
    last_eval = [r for r in records if r.get("split") == "eval"][-1]
    last_train = [r for r in records if "split" not in r][-1]
    assert row["step"] == last_eval["step"] == 2 and row["status"] == "ok"
    assert row["loss"] == last_train["loss"]
    for metric in sweep.METRICS:
      assert row[metric] == last_eval[metric]
    assert f"| {row['psnr']:.2f} | {row['ssim']:.4f} |" in markdown
  assert rows[0]["psnr"] != rows[1]["psnr"]  # two distinct runs, not one read twice.
  assert markdown.strip() in result.stdout
