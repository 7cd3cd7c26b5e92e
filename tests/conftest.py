"""Session hooks and fixtures; the shared helpers live in tests/helpers.py."""

import os
import shutil
import stat
import tempfile

import pytest

from tests import helpers


def pytest_configure(config):
  """One persistent XLA compilation cache and one converted-weights cache per run, shared
  through the environment with pytest-xdist's workers and every subprocess the tests
  start: the many runs of the same tiny models compile their programs once, not once per
  process. The process that made them (xdist's controller, or a plain run) removes them."""
  owned = config.percvae_owned_dirs = []
  for variable, prefix in (
    ("PERCVAE_TEST_XLA_CACHE", "percvae_xla_"),
    ("PERCVAE_JAX_TEST_CACHE", "percvae_weights_"),
  ):
    if not os.environ.get(variable):
      os.environ[variable] = tempfile.mkdtemp(prefix=prefix)
      owned.append(os.environ[variable])
  # The tests compile hundreds of tiny programs and run each a few times: XLA's backend
  # optimisations cost more than they save there (a tiny training's step compiles in
  # 1.9 s instead of 4.0 on 2 cores, its initialisation in 1.5 s instead of 5.5, for
  # the same numbers), and so do its MLIR fusion emitters (the legacy ones: that step
  # in 2.5-3.2 s instead of 3.5-5.0, the same loss). Subprocesses inherit them; the
  # backend starts after this hook.
  xla_flags = os.environ.get("XLA_FLAGS", "")
  for flag in ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false"):
    if flag.split("=")[0] not in xla_flags:
      xla_flags = f"{xla_flags} {flag}".strip()
  os.environ["XLA_FLAGS"] = xla_flags
  cache = os.environ["PERCVAE_TEST_XLA_CACHE"]
  os.environ.update(
    JAX_COMPILATION_CACHE_DIR=cache,
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
  )
  import jax  # already imported by the package; its cache settings are read at compile time.

  jax.config.update("jax_compilation_cache_dir", cache)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_unconfigure(config):
  for folder in getattr(config, "percvae_owned_dirs", []):
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(autouse=True)
def _weights_cache(monkeypatch):
  """Each run converts the offline VGG weights once, into the run's temporary cache."""
  monkeypatch.setenv("PERCVAE_JAX_CACHE", os.environ["PERCVAE_JAX_TEST_CACHE"])


@pytest.fixture(scope="session")
def tiny_workdir(tmp_path_factory):
  """A 4-step x2 srvae run on the embedded photos, trained once per session; tests
  that change it copy it first."""
  return helpers.train_tiny_srvae(tmp_path_factory.getbasetemp() / "tiny_srvae")


@pytest.fixture(scope="session")
def tiny_seed_workdir(tmp_path_factory):
  """A 2-step run of the paper's fixed-size seed model, x2, on the embedded photos."""
  from percvae_jax import train

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
