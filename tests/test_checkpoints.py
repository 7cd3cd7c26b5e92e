"""Checkpoints and the workdir, as a user meets their faults: exact resume after SIGKILL
anywhere, SIGTERM and Ctrl-C, a damaged checkpoint, a busy, missing or read-only
workdir, a lost config.json, a checkpoint of another shape. Trainings in subprocesses
run tests/workers/train_worker.py."""

import json
import logging
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from percvae_jax import checkpoints, data, evaluate, reporting, train, upscale
from percvae_jax.errors import (
  CheckpointError,
  WorkdirBusyError,
)
from tests import helpers
from tests.helpers import tiny_config


@pytest.mark.slow
def test_sigkill_anywhere_then_resume_equals_an_uninterrupted_run(photo_dirs, tmp_path):
  config = helpers.short_run(photo_dirs)
  straight = tmp_path / "straight"
  train.train_and_evaluate(tiny_config(**config), str(straight))  # here: no kill to survive.

  interrupted = tmp_path / "interrupted"
  # Killed after logging step 3 (between checkpoints), after the eval of step 4 (before
  # its checkpoint), and inside the checkpoint write of step 6.
  for kill_at in ("3:train", "4:eval", "6:in_save"):
    result = helpers.run_worker(interrupted, config, KILL_AT=kill_at)
    assert result.returncode == -signal.SIGKILL, (kill_at, result.stderr[-3000:])
  result = helpers.run_worker(interrupted, config)
  assert result.returncode == 0, result.stderr[-3000:]
  # Saves are asynchronous: the last complete one is step 4, or 2 if 4's was still
  # being written when the process died.
  assert (
    "Resuming from the checkpoint at step 4" in result.stderr
    or "Resuming from the checkpoint at step 2" in result.stderr
  ), result.stderr[-3000:]
  assert not any("tmp" in name for name in os.listdir(interrupted / "checkpoints"))

  step_a, params_a = helpers.restored(straight)
  step_b, params_b = helpers.restored(interrupted)
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
  config = helpers.short_run(
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
  step, params = helpers.restored(tmp_path)
  assert step == reached >= 3
  assert sorted(os.listdir(tmp_path / "checkpoints")) == [str(reached)]
  assert all(np.isfinite(p).all() for p in params)


def files_below(folder: Path) -> dict[str, int]:
  return {
    str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()
  }


def damage(checkpoint: Path, how: str) -> None:
  if how == "truncated_data_file":
    data_files = [p for p in checkpoint.rglob("*") if p.is_file() and p.parent.name == "d"]
    largest = max(data_files, key=lambda p: p.stat().st_size)
    with open(largest, "r+b") as f:
      f.truncate(largest.stat().st_size // 2)
  else:
    (checkpoint / "default" / "manifest.ocdbt").unlink()


@pytest.mark.slow
# Orbax leaves the reads of the damaged checkpoint's other arrays un-awaited: noise.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("how", ["truncated_data_file", "deleted_manifest"])
def test_a_damaged_latest_checkpoint_is_skipped_kept_and_the_run_resumes_before_it(
  tmp_path, caplog, how
):
  workdir = tmp_path / "run"
  helpers.train_tiny(workdir, train__num_steps=4)  # checkpoints at 2 and 4
  damage(workdir / "checkpoints" / "4", how)
  damaged_files = files_below(workdir / "checkpoints" / "4")

  with caplog.at_level(logging.INFO):
    state = helpers.train_tiny(workdir, train__num_steps=6)
  assert int(state.step) == 6
  messages = helpers.absl_messages(caplog)
  skipped = [m for m in messages if "cannot be restored" in m]
  assert len(skipped) == 1, messages
  # It names the step, why (the error), and where the files went.
  assert "The checkpoint at step 4 cannot be restored (" in skipped[0]
  assert "Error" in skipped[0] or "error" in skipped[0]
  assert "damaged_checkpoints" in skipped[0]
  assert "Resuming from the checkpoint at step 2 in" in "\n".join(messages)

  # Kept, whole as it was found: never silently deleted.
  (kept,) = (workdir / "damaged_checkpoints").iterdir()
  assert kept.name.startswith("4-") and str(kept) in skipped[0]
  assert files_below(kept) == damaged_files
  # Step 4 was trained and saved again, from step 2.
  assert sorted(os.listdir(workdir / "checkpoints"), key=int) == ["2", "4", "6"]
  assert [r["step"] for r in helpers.train_lines(workdir)] == [1, 2, 3, 4, 5, 6]
  assert helpers.restored(workdir, 4)[0] == 4


@pytest.mark.slow
def test_incompatible_checkpoint_is_refused_with_shapes(photo_dirs, tmp_path):
  result = helpers.run_worker(tmp_path, helpers.short_run(photo_dirs, train__num_steps=2))
  assert result.returncode == 0, result.stderr[-3000:]
  result = helpers.run_worker(
    tmp_path, helpers.short_run(photo_dirs, train__num_steps=4, model__features=12)
  )
  assert result.returncode != 0
  assert "was trained with another configuration" in result.stderr
  assert "checkpoint (3, 3, 8, 8), this config (3, 3, 12, 12)" in result.stderr
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]  # nothing overwritten


def test_a_second_hold_on_a_busy_workdir_is_refused_naming_the_holder(tmp_path, monkeypatch):
  workdir = tmp_path / "run"
  with checkpoints.WorkdirLock(str(workdir)):
    holder = (workdir / checkpoints.LOCK_FILE).read_text()
    assert f"pid {os.getpid()}" in holder
    with pytest.raises(WorkdirBusyError) as error:
      checkpoints.WorkdirLock(str(workdir)).__enter__()
    assert f"pid {os.getpid()}" in str(error.value) and "\n" not in str(error.value)
    # A training is refused at once: before it reads any data.
    monkeypatch.setattr(data, "load_split", lambda *a: pytest.fail("data was loaded"))
    with pytest.raises(WorkdirBusyError, match=f"in use by another training \\(pid {os.getpid()}"):
      train.train_and_evaluate(tiny_config(), str(workdir))
  # Released at exit: the next one takes it.
  with checkpoints.WorkdirLock(str(workdir)):
    pass


def test_a_stale_lock_file_left_by_a_dead_process_does_not_block(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / checkpoints.LOCK_FILE).write_text(
    "pid 999999 on a-host-long-gone, since 2026-01-01 00:00:00\n"
  )
  with checkpoints.WorkdirLock(str(workdir)):
    assert f"pid {os.getpid()}" in (workdir / checkpoints.LOCK_FILE).read_text()


@pytest.mark.slow
def test_two_trainings_on_one_workdir_the_second_is_refused_at_once(photo_dirs, tmp_path):
  workdir = tmp_path / "run"
  first = helpers.start_worker(
    workdir,
    helpers.folder_overrides(
      photo_dirs,
      train__num_steps=100_000,
      train__checkpoint_every=100_000,
      train__eval_every=100_000,
    ),
  )
  try:
    deadline = time.time() + 240
    while (
      time.time() < deadline
      and first.poll() is None
      and len(helpers.train_lines(workdir) if (workdir / "metrics.jsonl").exists() else []) < 2
    ):
      time.sleep(0.5)
    assert first.poll() is None, first.communicate()[1][-3000:]
    lines_before = len(helpers.train_lines(workdir))

    second = helpers.run_main(workdir)
    line = helpers.assert_one_line_error(
      second, "is in use by another training", f"pid {first.pid} on", codes=(1,)
    )
    assert "--workdir" in line
    assert "training images" not in second.stderr  # refused before reading any data.
    assert first.poll() is None  # the first goes on, undisturbed.
    assert len(helpers.train_lines(workdir)) >= lines_before

    # Killed outright, the first leaves its lock file behind: it blocks nothing.
    first.kill()
    first.communicate()
    assert f"pid {first.pid}" in (workdir / checkpoints.LOCK_FILE).read_text()
    third = helpers.run_worker(
      workdir,
      helpers.folder_overrides(photo_dirs, train__num_steps=2),
    )
    assert third.returncode == 0, third.stderr[-3000:]
  finally:
    if first.poll() is None:
      first.kill()
      first.communicate()


def test_a_workdir_that_is_a_file_is_refused(tmp_path):
  (tmp_path / "file").write_text("not a folder")
  with pytest.raises(CheckpointError, match="is a file; pass a folder"):
    train.train_and_evaluate(tiny_config(), str(tmp_path / "file"))


def test_a_read_only_workdir_is_refused(read_only_workdir):
  with pytest.raises(CheckpointError, match="cannot write to --workdir"):
    train.train_and_evaluate(tiny_config(), str(read_only_workdir))


def test_a_folder_that_is_no_workdir_is_refused(tmp_path):
  with pytest.raises(CheckpointError, match="neither config.json nor a checkpoint"):
    checkpoints.load_config(str(tmp_path))


@pytest.mark.slow
def test_a_deleted_config_json_is_written_again_on_resume(tmp_path, caplog):
  workdir = tmp_path / "run"
  config = tiny_config(train__num_steps=2)
  train.train_and_evaluate(config, str(workdir))
  (workdir / "config.json").unlink()
  with caplog.at_level(logging.INFO):
    helpers.train_tiny(workdir, train__num_steps=4)
  assert "Resuming from the checkpoint at step 2" in "\n".join(helpers.absl_messages(caplog))
  saved = json.loads((workdir / "config.json").read_text())
  assert saved == json.loads(tiny_config(train__num_steps=4).to_json_best_effort())


@pytest.fixture
def workdir_without_config_json(tiny_workdir, tmp_path):
  workdir = tmp_path / "no_config_json"
  shutil.copytree(tiny_workdir, workdir, ignore=shutil.ignore_patterns("training.lock"))
  (workdir / "config.json").unlink()
  return workdir


def test_config_of_a_workdir_without_config_json_comes_from_its_checkpoint(
  workdir_without_config_json, tiny_workdir
):
  expected = json.loads((Path(tiny_workdir) / "config.json").read_text())
  config = checkpoints.load_config(str(workdir_without_config_json))
  assert json.loads(config.to_json_best_effort()) == expected


def test_evaluate_and_upscale_work_without_config_json(workdir_without_config_json, tmp_path):
  folder = tmp_path / "images"
  folder.mkdir()
  helpers.crop_of(helpers.shared_data("Set5", "head.png"), 64).save(folder / "head.png")
  results = evaluate.run(
    str(workdir_without_config_json),
    data_dir=str(folder),
    output=str(tmp_path / "eval" / "r.json"),
    grids=0,
  )
  assert results["step"] == helpers.TINY_STEPS
  assert results["workdir"] == str(workdir_without_config_json)
  assert [image["name"] for image in results["images"]] == ["head.png"]
  done = upscale.run(str(workdir_without_config_json), str(folder), str(tmp_path / "out"))
  assert done["written"] == [str(tmp_path / "out" / "head.png")]
  assert Image.open(tmp_path / "out" / "head.png").size == (128, 128)
