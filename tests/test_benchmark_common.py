"""scripts/benchmark_common.py, the harness both benchmarks share: timing after a
warm-up, rates, configs at a benchmark's sizes, and worker processes that report what
they measured even when killed. (Its TrainStep runs in the benchmarks' own tests.)"""

from __future__ import annotations

import json
import textwrap
import time

import numpy as np
import pytest

from tests import helpers


@pytest.fixture(scope="module")
def common():
  return helpers.load_script("benchmark_common")


def test_time_calls_leaves_the_warmup_out(common):
  calls = []

  def slow_then_fast():
    calls.append(None)
    time.sleep(0.05 if len(calls) <= 2 else 0.001)

  timing = common.time_calls(slow_then_fast, steps=5, warmup=2, items=10)
  assert len(calls) == 7 and len(timing["times_s"]) == 5
  assert timing["median_s"] < 0.02 <= 0.05 and timing["min_s"] <= timing["median_s"]
  assert timing["rate"] == pytest.approx(10 / timing["median_s"])
  assert timing["peak_rss_gb"] > 0 and timing["faults"] >= 0


def test_time_calls_stops_at_its_deadline_after_three(common):
  timing = common.time_calls(lambda: None, steps=100, warmup=0, deadline=time.time() - 1)
  assert len(timing["times_s"]) == 3


def test_items_per_second_times_after_the_first_items(common):
  def items():
    time.sleep(0.3)  # the first item's set-up, as a first transfer to a device.
    while True:
      yield np.zeros(1)

  assert common.items_per_second(items(), seconds=0.05, warmup=1) > 100


def test_load_config_at_a_benchmarks_sizes(common):
  config = common.load_config("paper", 32, 4, {"latent_dim": 16}, "bfloat16")
  assert (config.data.hr_size, config.train.batch_size) == (32, 4)
  assert (config.model.latent_dim, config.train.compute_dtype) == (16, "bfloat16")
  assert common.load_config("paper").data.hr_size == helpers.load_config("paper").data.hr_size


def test_with_xla_flags_appends(common):
  env = common.with_xla_flags({"XLA_FLAGS": "--a=1"}, ["--b=2"])
  assert env["XLA_FLAGS"] == "--a=1 --b=2"
  assert common.with_xla_flags({}, ["--b=2"])["XLA_FLAGS"] == "--b=2"


WORKER = """
import sys, time
sys.path.insert(0, {scripts!r})
import benchmark_common as common

def measure(worker):
  worker.result["first"] = 1
  worker.save()
  if worker.spec["how"] == "hang":
    time.sleep(60)
  if worker.spec["how"] == "fail":
    raise ValueError("boom")
  return {{"left": worker.left()}}

sys.exit(common.serve(sys.argv[2], {{"measure": measure}}))
"""


@pytest.mark.parametrize("how", ["ok", "fail", "hang"])
def test_spawn_reports_what_a_worker_saved(common, tmp_path, monkeypatch, how):
  monkeypatch.setattr(common, "GRACE_S", 0.5)  # a hung worker is killed this long after.
  script = tmp_path / "worker.py"
  script.write_text(textwrap.dedent(WORKER.format(scripts=str(helpers.REPO / "scripts"))))
  spec = {"task": "measure", "how": how}
  deadline = time.time() + (1.5 if how == "hang" else 60)
  result, status = common.spawn(str(script), str(tmp_path / "run"), spec, None, deadline)
  assert result["first"] == 1  # saved before it failed or was killed.
  saved = json.loads((tmp_path / "run.spec.json").read_text())
  assert saved["deadline"] < deadline and saved["result_path"].endswith("run.result.json")
  if how == "ok":
    assert status == "ok" and 0 < result["left"] < 60
  elif how == "fail":
    assert status == "failed" and "ValueError: boom" in result["error"]
  else:
    assert status == "killed at its time limit" and "left" not in result
