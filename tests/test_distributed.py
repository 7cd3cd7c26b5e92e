"""Data parallelism: 8 devices, and 2 processes, train exactly as 1 device does."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, tiny_config

# Runs in a fresh interpreter, so that XLA_FLAGS can set the CPU device count.
WORKER = """
import json, sys
import jax, numpy as np
sys.path.insert(0, {tests!r})
from conftest import tiny_config
from percvae_jax import train
workdir, coordinator, num_processes, process_id = sys.argv[1:5]
if coordinator:
  train.initialize_distributed(coordinator, int(num_processes), int(process_id))
config = tiny_config(**json.loads(sys.argv[5]))
state = train.train_and_evaluate(config, workdir)
leaves = {{str(i): np.asarray(x) for i, x in enumerate(jax.tree.leaves(state.params))}}
np.savez(f"{{workdir}}/params_{{jax.process_index()}}_of_{{jax.process_count()}}.npz", **leaves)
"""

OVERRIDES = {"train__batch_size": 8, "train__num_steps": 3, "train__checkpoint_every": 3,
             "train__eval_every": 3, "data__num_eval_images": 2}


def start_worker(workdir, devices, coordinator="", num_processes=1, process_id=0,
                 overrides=None):
  import json  # pylint: disable=g-import-not-at-top
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_PLATFORMS="cpu")
  code = WORKER.format(tests=str(REPO / "tests"))
  return subprocess.Popen(
      [sys.executable, "-c", code, str(workdir), coordinator, str(num_processes),
       str(process_id), json.dumps(overrides or OVERRIDES)],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


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


def metrics(workdir):
  from percvae_jax import reporting  # pylint: disable=g-import-not-at-top
  return reporting.read_jsonl(os.path.join(workdir, "metrics.jsonl"))


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
  workdir = tmp_path_factory.mktemp("one_device")
  finish([start_worker(workdir, devices=1)])
  return workdir


def test_eight_devices_train_like_one(single_device_run, tmp_path):
  finish([start_worker(tmp_path, devices=8)])
  assert_same_run(single_device_run, single_device_run / "params_0_of_1.npz",
                  tmp_path, tmp_path / "params_0_of_1.npz")


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_train_like_one(single_device_run, tmp_path):
  coordinator = f"127.0.0.1:{free_port()}"
  workers = [start_worker(tmp_path, devices=2, coordinator=coordinator, num_processes=2,
                          process_id=i) for i in range(2)]
  finish(workers)
  for i in range(2):
    assert_same_run(single_device_run, single_device_run / "params_0_of_1.npz",
                    tmp_path, tmp_path / f"params_{i}_of_2.npz")


def test_checkpoint_from_eight_devices_resumes_on_one_and_back(tmp_path):
  first = dict(OVERRIDES, train__lr_schedule="constant")  # the same schedule at 3, 6 and 9
  finish([start_worker(tmp_path, devices=8, overrides=first)])
  finish([start_worker(tmp_path, devices=1, overrides=dict(first, train__num_steps=6))])
  finish([start_worker(tmp_path, devices=8, overrides=dict(first, train__num_steps=9))])
  steps = [r["step"] for r in metrics(tmp_path) if "split" not in r]
  assert steps == list(range(1, 10))
  straight = tmp_path / "straight"
  finish([start_worker(straight, devices=1, overrides=dict(first, train__num_steps=9))])
  assert_same_run(straight, straight / "params_0_of_1.npz",
                  tmp_path, tmp_path / "params_0_of_1.npz")


def test_batch_not_divisible_by_devices_is_refused_before_compute():
  from percvae_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  with pytest.raises(config_lib.ConfigError, match="not divisible by the 8 devices"):
    config_lib.validate(tiny_config(train__batch_size=12), num_devices=8)
