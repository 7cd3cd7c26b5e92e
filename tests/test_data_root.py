"""The data root: configs and scripts name sets ("Set5", "T91,BSD200"), resolved under
one folder set by a config field, a flag or $PERCVAE_DATA_ROOT."""

import os

import pytest

from percvae_jax import config as config_lib
from percvae_jax import data, data_root, scoring
from percvae_jax.errors import ConfigError, DataError
from tests import helpers


@pytest.fixture
def root(tmp_path, monkeypatch):
  """A data root holding sets A and B, made the process's root by the variable."""
  helpers.write_photos(tmp_path / "A", count=2, seed=0)
  helpers.write_photos(tmp_path / "B", count=3, seed=1)
  monkeypatch.setenv(data_root.ENV, str(tmp_path))
  return tmp_path


def test_names_resolve_under_the_root_and_paths_stay_paths(root, tmp_path_factory):
  assert data_root.resolve("A") == os.path.join(str(root), "A")
  elsewhere = tmp_path_factory.mktemp("elsewhere")
  assert data_root.resolve(str(elsewhere)) == str(elsewhere)
  assert data_root.resolve_all(" A , B ,") == [str(root / "A"), str(root / "B")]


def test_the_variable_then_the_default(monkeypatch):
  monkeypatch.delenv(data_root.ENV, raising=False)
  assert data_root.root() == data_root.DEFAULT
  assert data_root.DEFAULT.endswith(os.path.join("shared", "data"))
  monkeypatch.setenv(data_root.ENV, "/somewhere")
  assert data_root.root() == "/somewhere"
  assert data_root.root("/explicit") == "/explicit"


def test_a_config_names_its_sets_and_trains_on_them(root):
  config = helpers.tiny_config(data__name="folder", data__train_dir="A,B", data__eval_dir="A")
  config_lib.validate(config, num_devices=1)
  names = data.load_split(config.data, "train").names
  assert sorted(n.split(os.sep)[0] for n in names) == ["A", "A", "B", "B", "B"]


def test_the_config_field_beats_the_variable(root, tmp_path_factory, monkeypatch):
  other = tmp_path_factory.mktemp("other")
  helpers.write_photos(other / "A", count=1, seed=2)
  config = helpers.tiny_config(data__name="folder", data__train_dir="A", data__eval_dir="A")
  config.data.root = str(other)
  assert len(data.load_split(config.data, "train")) == 1
  config.data.root = ""
  assert len(data.load_split(config.data, "train")) == 2


def test_a_missing_set_names_the_root_and_how_to_set_it(root):
  config = helpers.tiny_config(data__name="folder", data__train_dir="A,Nope", data__eval_dir="A")
  with pytest.raises(ConfigError, match=f"'Nope' is not a directory.*{root}.*PERCVAE_DATA_ROOT"):
    config_lib.validate(config, num_devices=1)
  with pytest.raises(DataError, match="'Nope' is not a directory.*data root"):
    scoring.folder_sources("Nope")


def test_use_sets_the_root_for_this_process(root, tmp_path_factory):
  other = tmp_path_factory.mktemp("used")
  data_root.use(str(other))
  assert data_root.root() == str(other)
  data_root.use(None)  # keeps it.
  assert data_root.root() == str(other)
