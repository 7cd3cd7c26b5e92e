"""The test helpers themselves: a clean skip without ../shared/data, tiny configs that
are valid, and the one-line-error check the command tests rely on."""

import subprocess

import pytest

from percvae_jax import config as config_lib
from tests import helpers


def test_shared_data_skips_cleanly_where_the_folder_is_absent(monkeypatch, tmp_path):
  monkeypatch.setattr(helpers, "SHARED_DATA", tmp_path / "absent")
  with pytest.raises(pytest.skip.Exception, match="is absent: the real photos live in"):
    helpers.shared_data("Set5", "bird.png")


def test_tiny_configs_are_valid_and_take_overrides():
  config = helpers.tiny_config(model__name="seed", train__num_steps=7)
  assert (config.model.name, config.train.num_steps, config.data.hr_size) == ("seed", 7, 32)
  config_lib.validate(config, num_devices=1)
  assert (
    helpers.load_config("default").to_dict()
    == config_lib.load_file(str(helpers.CONFIGS / "default.py")).to_dict()
  )


def completed(code, stderr):
  return subprocess.CompletedProcess([], code, "", stderr)


def test_one_line_error_check():
  assert helpers.assert_one_line_error(
    completed(1, "W0 a log line\nerror: config.x=1 is bad.\n"), "config.x"
  ) == ("error: config.x=1 is bad.")
  for bad in (
    completed(1, "Traceback (most recent call last):\nerror: x\n"),
    completed(1, "error: x\nerror: y\n"),
    completed(1, "no error line\n"),
    completed(3, "error: x\n"),
    completed(0, "error: x\n"),
  ):
    with pytest.raises(AssertionError):
      helpers.assert_one_line_error(bad)
