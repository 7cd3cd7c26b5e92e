"""Preemption and bad input: SIGKILL anywhere, SIGTERM, NaN losses, bad configs, bad files."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, tiny_config
from percvae_jax import config as config_lib
from percvae_jax import data
from percvae_jax import reporting

# A training process for these tests: tiny config, folder data made by the test.
# KILL_AT=<step>:<where> makes it SIGKILL itself at that point of that step.
WORKER = """
import os, signal, sys, json
sys.path.insert(0, {tests!r})
import orbax.checkpoint as ocp
from absl import logging
from conftest import tiny_config
from percvae_jax import train
logging.set_verbosity(logging.INFO)
workdir, overrides = sys.argv[1], json.loads(sys.argv[2])
kill = os.environ.get("KILL_AT")
if kill:
  kill_step, where = kill.split(":")
  die = lambda: os.kill(os.getpid(), signal.SIGKILL)
  if where == "in_save":  # the arrays written, the checkpoint not yet committed.
    import orbax.checkpoint._src.path.atomicity as atomicity
    saving = []
    original_save = ocp.CheckpointManager.save
    def save(self, step, *args, **kwargs):
      saving.append(step)
      return original_save(self, step, *args, **kwargs)
    ocp.CheckpointManager.save = save
    def killing_finalize(self, *args, **kwargs):
      if saving[-1] == int(kill_step):
        die()
      return original_finalize[type(self)](self, *args, **kwargs)
    original_finalize = {{}}
    for name in dir(atomicity):
      cls = getattr(atomicity, name)
      if isinstance(cls, type) and "finalize" in vars(cls):
        original_finalize[cls] = cls.finalize
        cls.finalize = killing_finalize
  else:  # right after the metrics line of that step and split is written.
    original_write = train.reporting.Reporter.write
    def write(self, step, values, split="train"):
      original_write(self, step, values, split)
      if step == int(kill_step) and split == where:
        die()
    train.reporting.Reporter.write = write
config = tiny_config(**overrides)
train.train_and_evaluate(config, workdir)
"""


@pytest.fixture(scope="module")
def photo_dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("photos")
  rng = np.random.default_rng(0)
  for split in ("train", "eval"):
    (root / split).mkdir()
    for i in range(4):
      smooth = rng.uniform(0, 255, (12, 12, 3)).astype(np.uint8)
      Image.fromarray(smooth).resize((48, 48), Image.BICUBIC).save(root / split / f"{i}.png")
  return root


def overrides(photo_dirs, **extra):
  base = {"data__name": "folder", "data__train_dir": str(photo_dirs / "train"),
          "data__eval_dir": str(photo_dirs / "eval"), "train__num_steps": 8,
          "train__checkpoint_every": 2, "train__eval_every": 2,
          "train__lr_schedule": "constant"}
  base.update(extra)
  return base


def run_worker(workdir, config_overrides, kill_at=None, timeout=240):
  import json  # pylint: disable=g-import-not-at-top
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  if kill_at:
    env["KILL_AT"] = kill_at
  code = WORKER.format(tests=str(REPO / "tests"))
  return subprocess.run([sys.executable, "-c", code, str(workdir), json.dumps(config_overrides)],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def final_params(workdir):
  from percvae_jax import train  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  _, _, params, step = train.restore_for_inference(str(workdir))
  return step, [np.asarray(x) for x in jax.tree.leaves(params)]


def test_sigkill_anywhere_then_resume_equals_an_uninterrupted_run(photo_dirs, tmp_path):
  config = overrides(photo_dirs)
  straight = tmp_path / "straight"
  result = run_worker(straight, config)
  assert result.returncode == 0, result.stderr[-3000:]

  interrupted = tmp_path / "interrupted"
  # Killed after logging step 3 (between checkpoints), after the eval of step 4 (before
  # its checkpoint), and inside the checkpoint write of step 6.
  for kill_at in ("3:train", "4:eval", "6:in_save"):
    result = run_worker(interrupted, config, kill_at=kill_at)
    assert result.returncode == -signal.SIGKILL, (kill_at, result.stderr[-3000:])
  result = run_worker(interrupted, config)
  assert result.returncode == 0, result.stderr[-3000:]
  # Saves are asynchronous: the last complete one is step 4, or 2 if 4's was still
  # being written when the process died.
  assert ("Resuming from the checkpoint at step 4" in result.stderr
          or "Resuming from the checkpoint at step 2" in result.stderr), result.stderr[-3000:]
  assert not any("tmp" in name for name in os.listdir(interrupted / "checkpoints"))

  step_a, params_a = final_params(straight)
  step_b, params_b = final_params(interrupted)
  assert step_a == step_b == 8
  for a, b in zip(params_a, params_b):
    np.testing.assert_array_equal(a, b)
  lines_a = reporting.read_jsonl(str(straight / "metrics.jsonl"))
  lines_b = reporting.read_jsonl(str(interrupted / "metrics.jsonl"))
  strip = lambda lines: [{k: v for k, v in r.items() if k != "images_per_sec"} for r in lines]
  assert strip(lines_a) == strip(lines_b)


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(photo_dirs, tmp_path):
  import json  # pylint: disable=g-import-not-at-top
  config = overrides(photo_dirs, train__num_steps=100_000, train__checkpoint_every=100_000,
                     train__eval_every=100_000)
  code = WORKER.format(tests=str(REPO / "tests"))
  process = subprocess.Popen([sys.executable, "-c", code, str(tmp_path), json.dumps(config)],
                             cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 180
    metrics_path = tmp_path / "metrics.jsonl"
    while time.time() < deadline:
      if metrics_path.exists() and len(reporting.read_jsonl(str(metrics_path))) >= 3:
        break
      time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
  finally:
    if process.poll() is None:
      process.kill()
  assert process.returncode == 0, stderr[-3000:]
  assert "Stopped at step" in stderr
  reached = max(r["step"] for r in reporting.read_jsonl(str(metrics_path)))
  step, _ = final_params(tmp_path)
  assert step == reached >= 3


def test_nonfinite_loss_stops_naming_step_and_term_and_keeps_last_checkpoint(photo_dirs,
                                                                            tmp_path):
  # A learning rate of 1e30 makes the parameters overflow within a few steps.
  config = overrides(photo_dirs, train__learning_rate=1e30, train__checkpoint_every=1)
  result = run_worker(tmp_path, config)
  assert result.returncode != 0
  assert "non-finite loss at step" in result.stderr
  message = result.stderr[result.stderr.index("non-finite loss at step"):]
  bad_step = int(message.split("non-finite loss at step ")[1].split(":")[0])
  assert "loss" in message.split("(")[0]
  step, params = final_params(tmp_path)
  assert step == bad_step - 1
  assert all(np.isfinite(p).all() for p in params)


def test_nonfinite_policy_skip_counts_and_goes_on(photo_dirs, tmp_path):
  config = overrides(photo_dirs, train__learning_rate=1e30, train__on_nonfinite="skip")
  result = run_worker(tmp_path, config)
  assert result.returncode == 0, result.stderr[-3000:]
  from percvae_jax import train  # pylint: disable=g-import-not-at-top
  _, _, params, step = train.restore_for_inference(str(tmp_path))
  assert step == 8
  import jax  # pylint: disable=g-import-not-at-top
  assert all(np.isfinite(np.asarray(p)).all() for p in jax.tree.leaves(params))
  lines = reporting.read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert max(r.get("skipped_steps", 0) for r in lines) >= 1


@pytest.mark.parametrize("field,value,expected", [
    ("data.name", "imagenet", "config.data.name='imagenet' is not valid; choose one of"),
    ("model.name", "unet", "config.model.name='unet' is not valid; choose one of ['srvae', 'seed']"),
    ("data.scale", 5, "config.data.scale=5 is not valid; choose one of [2, 3, 4, 8]"),
    ("data.hr_size", 30, "config.data.hr_size=30 is not a positive multiple of config.data.scale=4"),
    ("data.train_dir", "/no/such/folder", "config.data.train_dir='/no/such/folder' is not a directory"),
    ("train.batch_size", 6, "config.train.batch_size=6 is not divisible by the 4 devices"),
    ("loss.perceptual_layers", "relu3_4", "config.loss.perceptual_layers='relu3_4' is not valid"),
    ("train.compute_dtype", "float16", "choose one of ['float32', 'bfloat16']"),
])
def test_invalid_config_is_refused_naming_field_and_choices(field, value, expected):
  config = tiny_config(data__scale=4, data__hr_size=32, data__name="folder",
                       data__train_dir="/", data__eval_dir="/", train__batch_size=8,
                       loss__gamma=1.0)
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(config_lib.ConfigError) as error:
    config_lib.validate(config, num_devices=4)
  assert expected in str(error.value)


def test_incompatible_checkpoint_is_refused_with_shapes(photo_dirs, tmp_path):
  result = run_worker(tmp_path, overrides(photo_dirs, train__num_steps=2))
  assert result.returncode == 0, result.stderr[-3000:]
  result = run_worker(tmp_path, overrides(photo_dirs, train__num_steps=4, model__features=12))
  assert result.returncode != 0
  assert "was trained with another configuration" in result.stderr
  assert "checkpoint (3, 3, 8, 8), this config (3, 3, 12, 12)" in result.stderr
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]  # nothing overwritten


def write_bad_files(folder):
  """One file of each troublesome kind, and a good photo; returns {name: fate}."""
  rng = np.random.default_rng(0)
  good = Image.fromarray(rng.integers(0, 256, (64, 64, 3), np.uint8))
  good.save(folder / "good.png")
  buffer = folder / "full.jpg"
  good.save(buffer, quality=90)
  raw = buffer.read_bytes()
  buffer.unlink()
  (folder / "truncated.jpg").write_bytes(raw[: len(raw) // 3])
  (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + rng.bytes(300))
  (folder / "text.png").write_text("this is not an image")
  Image.fromarray(rng.integers(0, 65536, (64, 64), np.uint16)).save(folder / "deep16.png")
  good.convert("CMYK").save(folder / "cmyk.jpg")
  good.convert("P").save(folder / "palette.png")
  Image.fromarray(rng.integers(0, 256, (20, 20, 3), np.uint8)).save(folder / "small.png")
  return {"good.png": "kept", "deep16.png": "kept", "cmyk.jpg": "kept", "palette.png": "kept",
          "truncated.jpg": "skipped", "corrupt.png": "skipped", "text.png": "skipped",
          "small.png": "skipped"}


def test_bad_image_files_are_converted_or_skipped_with_one_warning_each(tmp_path, caplog):
  fates = write_bad_files(tmp_path)
  with caplog.at_level("WARNING"):
    images = data.read_folder(str(tmp_path), min_size=32)
  kept = {n for n, fate in fates.items() if fate == "kept"}
  assert set(images.names) == kept
  for name in kept:
    image = images[images.names.index(name)]
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
  deep = images[images.names.index("deep16.png")]
  assert deep.max() > 200  # 16-bit range scaled down, not clipped to white
  warnings = [r.getMessage() for r in caplog.records]
  for name, fate in fates.items():
    if fate == "skipped":
      assert sum(name in w for w in warnings) == 1, (name, warnings)
  assert any("skipped 4 of 8 image files" in w for w in warnings)


def test_folder_without_usable_images_is_an_error(tmp_path):
  (tmp_path / "a.png").write_text("not an image")
  with pytest.raises(data.DataError, match="holds no usable image"):
    data.read_folder(str(tmp_path), min_size=32)
