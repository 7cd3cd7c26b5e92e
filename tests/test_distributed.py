"""Data parallelism: 8 devices, and 2 processes, train exactly as 1 device does, the
former through a checkpoint resumed on 1 device and back, the latter through a
preemption notice to one of them, which stops both at the same step.
Every training here runs in tests/workers/train_worker.py, in a fresh process
(XLA_FLAGS sets the CPU device count when a process starts)."""

import os
import signal
import time

import numpy as np
import pytest

from percvae_jax.errors import ConfigError
from tests import helpers
from tests.helpers import tiny_config

# A constant learning rate: the compiled step does not depend on num_steps, so every run
# of a device layout after the first reads its programs from the compilation cache. 30
# steps, so that a preemption notice lands mid-run; an evaluation every 10, where the
# checkpoint test stops and resumes, so that every run's metrics lines line up.
COMPARED = {
  "train__lr_schedule": "constant",
  "train__batch_size": 8,
  "train__num_steps": 30,
  "train__checkpoint_every": 100_000,
  "train__eval_every": 10,
  "data__num_eval_images": 2,
}


def start_worker(workdir, devices, overrides, coordinator="", num_processes=1, process_id=0):
  args = ["--save-params"]
  if coordinator:
    args += [
      "--coordinator",
      coordinator,
      "--num-processes",
      str(num_processes),
      "--process-id",
      str(process_id),
    ]
  return helpers.start_worker(
    workdir,
    overrides,
    *args,
    merge_output=True,
    # Added to the suite's flags (conftest.py), not in their place.
    XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}",
  )


def finish(processes, timeout=240):
  """Waits for every process; kills them all on a failure or time-out."""
  try:
    outputs = [p.communicate(timeout=timeout)[0] for p in processes]
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()
  for p, out in zip(processes, outputs):
    assert p.returncode == 0, out[-3000:]
  return outputs


def load_params(path):
  with np.load(path) as f:
    return [f[str(i)] for i in range(len(f.files))]


metrics = helpers.metrics


def assert_same_run(dir_a, params_a, dir_b, params_b):
  for a, b in zip(load_params(params_a), load_params(params_b)):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
  lines_a, lines_b = metrics(dir_a), metrics(dir_b)
  assert [r["step"] for r in lines_a] == [r["step"] for r in lines_b]
  for a, b in zip(lines_a, lines_b):
    for key in ("loss", "recon", "kl", "psnr", "ssim"):
      if key in a:
        assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-7), (key, a, b)


@pytest.fixture(scope="module")
def single_device_run(tmp_path_factory):
  make = lambda workdir: finish([start_worker(workdir, 1, COMPARED)])
  return helpers.once_per_session(tmp_path_factory, "one_device", make)


@pytest.mark.slow
def test_eight_devices_train_like_one_through_a_checkpoint_on_one_and_back(
  single_device_run, tmp_path
):
  """8 devices, stopped at each evaluation and resumed on the other layout (8 -> 1 -> 8):
  the single-device run's numbers, so 8 devices train as 1 does and a checkpoint moves
  between layouts. Each run ends on a checkpoint, whatever train.checkpoint_every says."""
  for devices, steps in ((8, 10), (1, 20), (8, 30)):
    finish([start_worker(tmp_path, devices, dict(COMPARED, train__num_steps=steps))])
  steps = [r["step"] for r in metrics(tmp_path) if "split" not in r]
  assert steps == list(range(1, 31))
  assert_same_run(
    single_device_run,
    single_device_run / "params_0_of_1.npz",
    tmp_path,
    tmp_path / "params_0_of_1.npz",
  )


def test_batch_not_divisible_by_devices_is_refused_before_compute():
  from percvae_jax import config as config_lib

  with pytest.raises(ConfigError, match="not divisible by the 8 devices"):
    config_lib.validate(tiny_config(train__batch_size=12), num_devices=8)


def start_pair(workdir, overrides):
  coordinator = f"127.0.0.1:{helpers.free_port()}"
  return [
    start_worker(workdir, 2, overrides, coordinator=coordinator, num_processes=2, process_id=i)
    for i in range(2)
  ]


@pytest.mark.slow
def test_two_processes_train_like_one_through_a_preemption_notice(single_device_run, tmp_path):
  """SIGTERM to one process of two: JAX's preemption sync point makes both save the
  same step and exit 0; the same command then resumes, and the two processes (two
  devices each) end with the single-device run's numbers."""
  config, steps = COMPARED, COMPARED["train__num_steps"]
  workdir = tmp_path / "preempted"
  workers = start_pair(workdir, config)
  try:
    deadline = time.time() + 240
    while time.time() < deadline and all(w.poll() is None for w in workers):
      if (workdir / "metrics.jsonl").exists() and len(helpers.train_lines(workdir)) >= 3:
        break
      time.sleep(0.2)
    os.kill(workers[1].pid, signal.SIGTERM)  # the notice reaches process 1 only.
  finally:
    outputs = finish(workers)
  stopped = []
  for output in outputs:
    assert "Stopped at step" in output, output[-3000:]
    stopped.append(int(output.split("Stopped at step ")[1].split()[0]))
  assert stopped[0] == stopped[1] < steps, stopped
  assert sorted(os.listdir(workdir / "checkpoints")) == [str(stopped[0])]
  assert max(r["step"] for r in helpers.train_lines(workdir)) == stopped[0]

  outputs = finish(start_pair(workdir, config))  # the same command again.
  assert f"Resuming from the checkpoint at step {stopped[0]}" in outputs[0], outputs[0][-3000:]
  assert [r["step"] for r in helpers.train_lines(workdir)] == list(range(1, steps + 1))
  assert [r["step"] for r in helpers.eval_lines(workdir)] == [10, 20, 30]
  for i in range(2):
    assert_same_run(
      single_device_run,
      single_device_run / "params_0_of_1.npz",
      workdir,
      workdir / f"params_{i}_of_2.npz",
    )
