"""Configs: every shipped one loads and validates; a harmful, invalid or unknown value is
refused in one line naming the field, before any work."""

import json

import pytest

from percvae_jax import cli, train
from percvae_jax import config as config_lib
from percvae_jax.errors import ConfigError
from tests import helpers
from tests.helpers import tiny_config


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


@pytest.mark.parametrize(
  "field,value,expected",
  [
    ("data.name", "imagenet", "config.data.name='imagenet' is not valid; choose one of"),
    (
      "model.name",
      "unet",
      "config.model.name='unet' is not valid; choose one of ['srvae', 'seed']",
    ),
    (
      "model.block",
      "dense",
      "config.model.block='dense' is not valid; choose one of ['residual', 'pixel_attention']",
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


SHIPPED = sorted(path.stem for path in helpers.CONFIGS.glob("*.py"))


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_config_loads_validates_and_says_how_to_run_it(name):
  config = helpers.load_config(name)
  if config.data.name == "folder":  # its sets must be under the data root.
    for names in (config.data.train_dir, config.data.eval_dir):
      for set_name in names.split(","):
        helpers.shared_data(set_name)
  config_lib.validate(config, num_devices=1)
  assert config_lib.from_dict(json.loads(config.to_json_best_effort())) == config
  doc = (helpers.CONFIGS / f"{name}.py").read_text().split('"""')[1]
  assert f"--config configs/{name}.py" in doc, "the docstring holds the command that runs it"


def test_all_configs_are_checked():
  assert len(SHIPPED) >= 7 and {"default", "paper", "quickstart", "release_x2"} <= set(SHIPPED)
