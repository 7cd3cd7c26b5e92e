"""Fixtures only; the shared helpers live in tests/helpers.py."""

import os
import stat

import pytest

from tests import helpers


@pytest.fixture(autouse=True)
def _weights_cache(tmp_path_factory, monkeypatch):
  """Each session converts the offline VGG weights once, into a temporary cache."""
  monkeypatch.setenv(
    "PERCVAE_JAX_CACHE",
    os.environ.get("PERCVAE_JAX_TEST_CACHE")
    or str(tmp_path_factory.getbasetemp() / "weights_cache"),
  )


@pytest.fixture(scope="session")
def tiny_workdir(tmp_path_factory):
  """A 4-step x2 srvae run on the embedded photos, trained once per session; tests
  that change it copy it first."""
  return helpers.train_tiny_srvae(tmp_path_factory.getbasetemp() / "tiny_srvae")


@pytest.fixture(scope="session")
def tiny_seed_workdir(tmp_path_factory):
  """A 2-step run of the paper's fixed-size seed model, x2, on the embedded photos."""
  from percvae_jax import train  # pylint: disable=g-import-not-at-top

  workdir = tmp_path_factory.getbasetemp() / "tiny_seed"
  train.train_and_evaluate(
    helpers.tiny_config(model__name="seed", train__num_steps=2, train__eval_every=2), str(workdir)
  )
  return workdir


@pytest.fixture(scope="session")
def photo_dirs(tmp_path_factory):
  """train/ and eval/ folders of 4 smooth 48 px photos each, for data.name=folder."""
  root = tmp_path_factory.mktemp("photos")
  helpers.write_photos(root / "train", seed=0)
  helpers.write_photos(root / "eval", seed=1)
  return root


@pytest.fixture
def read_only_workdir(tmp_path):
  """A folder this process cannot write to (the test skips where it can: root)."""
  workdir = tmp_path / "read_only"
  workdir.mkdir()
  workdir.chmod(stat.S_IRUSR | stat.S_IXUSR)
  try:
    if os.access(workdir, os.W_OK):
      pytest.skip("this user (root?) can write to a read-only folder")
    yield workdir
  finally:
    workdir.chmod(stat.S_IRWXU)
