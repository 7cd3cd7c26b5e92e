"""Shared test fixtures: the real photos in ../shared/data, and tiny configs."""

import os
import runpy
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_data(*parts: str) -> Path:
  """A path under ../shared/data, or a clean skip where that folder is absent."""
  path = SHARED_DATA.joinpath(*parts)
  if not path.exists():
    pytest.skip(f"{path} is absent: the real photos live in ../shared/data beside the repo")
  return path


def load_config(name: str):
  return runpy.run_path(str(REPO / "configs" / f"{name}.py"))["get_config"]()


def tiny_config(name: str = "quickstart", **overrides):
  """A config small enough to train a few steps in seconds on a CPU."""
  config = load_config(name)
  config.data.hr_size = 32
  config.data.num_eval_images = 4
  config.data.eval_crops_per_image = 1
  config.model.features = 8
  config.model.num_blocks = 2
  config.model.latent_dim = 16
  config.train.batch_size = 4
  config.train.num_steps = 4
  config.train.log_every = 1
  config.train.eval_every = 4
  config.train.checkpoint_every = 2
  config.train.warmup_steps = 0
  config.loss.gamma = 0.0
  for key, value in overrides.items():
    section, field = key.split("__")
    config[section][field] = value
  return config


@pytest.fixture(autouse=True)
def _weights_cache(tmp_path_factory, monkeypatch):
  """Each session converts the offline VGG weights once, into a temporary cache."""
  monkeypatch.setenv("PERCVAE_JAX_CACHE",
                     os.environ.get("PERCVAE_JAX_TEST_CACHE")
                     or str(tmp_path_factory.getbasetemp() / "weights_cache"))
