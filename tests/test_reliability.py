"""Preemption and bad input: SIGKILL anywhere, SIGTERM and Ctrl-C, NaN losses, bad
configs, bad files. Trainings run in tests/workers/train_worker.py."""

import os
import signal
import time

import numpy as np
import pytest

from percvae_jax import config as config_lib
from percvae_jax import data, reporting
from percvae_jax.errors import ConfigError
from tests import helpers
from tests.helpers import tiny_config


def overrides(photo_dirs, **extra):
  short = dict(
    train__num_steps=8,
    train__checkpoint_every=2,
    train__eval_every=2,
    train__lr_schedule="constant",
  )
  return helpers.folder_overrides(photo_dirs, **{**short, **extra})


final_params = helpers.restored
run_worker = helpers.run_worker


@pytest.mark.slow
def test_sigkill_anywhere_then_resume_equals_an_uninterrupted_run(photo_dirs, tmp_path):
  config = overrides(photo_dirs)
  straight = tmp_path / "straight"
  result = run_worker(straight, config)
  assert result.returncode == 0, result.stderr[-3000:]

  interrupted = tmp_path / "interrupted"
  # Killed after logging step 3 (between checkpoints), after the eval of step 4 (before
  # its checkpoint), and inside the checkpoint write of step 6.
  for kill_at in ("3:train", "4:eval", "6:in_save"):
    result = run_worker(interrupted, config, KILL_AT=kill_at)
    assert result.returncode == -signal.SIGKILL, (kill_at, result.stderr[-3000:])
  result = run_worker(interrupted, config)
  assert result.returncode == 0, result.stderr[-3000:]
  # Saves are asynchronous: the last complete one is step 4, or 2 if 4's was still
  # being written when the process died.
  assert (
    "Resuming from the checkpoint at step 4" in result.stderr
    or "Resuming from the checkpoint at step 2" in result.stderr
  ), result.stderr[-3000:]
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


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_saves_a_checkpoint_at_the_step_reached_and_exits_cleanly(
  photo_dirs, tmp_path, signum
):
  """A preemption notice (SIGTERM) and Ctrl-C (SIGINT) both save, then exit 0."""
  config = overrides(
    photo_dirs, train__num_steps=100_000, train__checkpoint_every=100_000, train__eval_every=100_000
  )
  process = helpers.start_worker(tmp_path, config)
  try:
    deadline = time.time() + 240
    metrics_path = tmp_path / "metrics.jsonl"
    while time.time() < deadline and process.poll() is None:
      if metrics_path.exists() and len(reporting.read_jsonl(str(metrics_path))) >= 3:
        break
      time.sleep(0.5)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
  finally:
    if process.poll() is None:
      process.kill()
      process.communicate()
  assert process.returncode == 0, stderr[-3000:]
  assert f"Received {signal.Signals(signum).name}" in stderr
  assert "Stopped at step" in stderr
  reached = max(r["step"] for r in reporting.read_jsonl(str(metrics_path)))
  assert f"Stopped at step {reached} on request" in stderr
  step, params = final_params(tmp_path)
  assert step == reached >= 3
  assert sorted(os.listdir(tmp_path / "checkpoints")) == [str(reached)]
  assert all(np.isfinite(p).all() for p in params)


@pytest.mark.slow
def test_nonfinite_loss_stops_naming_step_and_term_and_keeps_last_checkpoint(photo_dirs, tmp_path):
  # The worker makes the model's output NaN from step 5 on (a learning rate large
  # enough to overflow is refused up front now).
  config = overrides(photo_dirs, train__checkpoint_every=1)
  result = run_worker(tmp_path, config, NAN_FROM="5")
  line = helpers.assert_one_line_error(result, "error: non-finite loss at step 5: ", codes=(1,))
  named = line.split("step 5: ", 1)[1].split(" (")[0].split(", ")
  assert "loss" in named and "kl" not in named  # the terms that are not finite
  # It points at what to check: training may have gone wrong before the NaN.
  assert "check the eval lines in metrics.jsonl" in line and "--step" in line
  assert "The newest checkpoint is step 4" in line
  step, params = final_params(tmp_path)
  assert step == 4
  assert all(np.isfinite(p).all() for p in params)


@pytest.mark.slow
def test_nonfinite_policy_skip_counts_and_goes_on(photo_dirs, tmp_path):
  config = overrides(photo_dirs, train__on_nonfinite="skip")
  result = run_worker(tmp_path, config, NAN_FROM="5")
  assert result.returncode == 0, result.stderr[-3000:]
  step, params = final_params(tmp_path)
  assert step == 8
  assert all(np.isfinite(p).all() for p in params)
  # Steps 5 to 8 were all skipped: the parameters are those of step 4.
  _, params_at_4 = final_params(tmp_path, 4)
  for a, b in zip(params, params_at_4):
    np.testing.assert_array_equal(a, b)
  lines = helpers.train_lines(tmp_path)
  assert [r["skipped_steps"] for r in lines] == [0, 0, 0, 0, 1, 2, 3, 4]


@pytest.mark.parametrize(
  "field,value,expected",
  [
    ("data.name", "imagenet", "config.data.name='imagenet' is not valid; choose one of"),
    (
      "model.name",
      "unet",
      "config.model.name='unet' is not valid; choose one of ['srvae', 'seed']",
    ),
    ("data.scale", 5, "config.data.scale=5 is not valid; choose one of [2, 3, 4, 8]"),
    ("data.hr_size", 30, "config.data.hr_size=30 is not a multiple of config.data.scale=4"),
    (
      "data.train_dir",
      "/no/such/folder",
      "config.data.train_dir='/no/such/folder': '/no/such/folder' is not a directory",
    ),
    ("train.batch_size", 6, "config.train.batch_size=6 is not divisible by the 4 devices"),
    ("loss.perceptual_layers", "relu3_4", "config.loss.perceptual_layers='relu3_4' is not valid"),
    ("train.compute_dtype", "float16", "choose one of ['float32', 'bfloat16']"),
  ],
)
def test_invalid_config_is_refused_naming_field_and_choices(field, value, expected):
  config = tiny_config(
    data__scale=4,
    data__hr_size=32,
    data__name="folder",
    data__train_dir="/",
    data__eval_dir="/",
    train__batch_size=8,
    loss__gamma=1.0,
  )
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(ConfigError) as error:
    config_lib.validate(config, num_devices=4)
  assert expected in str(error.value)
  assert f"config.{field}" in str(error.value)


@pytest.mark.slow
def test_incompatible_checkpoint_is_refused_with_shapes(photo_dirs, tmp_path):
  result = run_worker(tmp_path, overrides(photo_dirs, train__num_steps=2))
  assert result.returncode == 0, result.stderr[-3000:]
  result = run_worker(tmp_path, overrides(photo_dirs, train__num_steps=4, model__features=12))
  assert result.returncode != 0
  assert "was trained with another configuration" in result.stderr
  assert "checkpoint (3, 3, 8, 8), this config (3, 3, 12, 12)" in result.stderr
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]  # nothing overwritten


def test_bad_image_files_are_converted_or_skipped_with_one_warning_each(tmp_path, caplog):
  fates = helpers.write_troublesome_files(tmp_path)
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
