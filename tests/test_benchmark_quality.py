"""scripts/benchmark_quality.py: the published rows it reads, its table for a model
beside bicubic and those rows, and its refusal of missing data. The benchmark itself
trains for an hour or more."""

import json

import jax
import pytest

from percvae_jax import inference
from percvae_jax.models import vae
from tests.helpers import load_config, load_script, shared_data

bq = load_script("benchmark_quality")


def test_published_rows_are_read_from_the_shared_readme():
  rows = bq.published_rows(shared_data("README.md"))
  assert rows["SRCNN (ImageNet)"][("Set5", 2)] == (36.66, 0.9542)
  assert rows["EDSR (DIV2K)"][("BSD100", 4)] == (27.71, 0.742)  # B100 is BSD100
  johnson = next(values for method, values in rows.items() if method.startswith("Johnson"))
  assert ("Set5", 2) not in johnson and johnson[("Set5", 4)] == (27.09, 0.768)
  assert rows["SRCNN (ImageNet)"][("Set5", 3)] == bq.SRCNN_X3["Set5"]  # x3: the paper's


@pytest.mark.slow
def test_tables_put_a_model_beside_bicubic_and_the_published_rows(
  tiny_workdir, tmp_path, monkeypatch
):
  shared_data("Set5")
  monkeypatch.setattr(bq, "SETS", ("Set5",))
  monkeypatch.setattr(bq, "SCALES", (2,))
  (tmp_path / "eval").mkdir()
  report = bq.tables([tiny_workdir], tmp_path)
  assert "| SRCNN (ImageNet) | 36.66 / 0.9542 |" in report
  assert "| **percvae_jax tiny_srvae** (7K params, " in report and " KFLOP/px) | " in report
  summary = json.loads((tmp_path / "tables.json").read_text())["x2"]
  # Bicubic as evaluate computes it: the published 33.66 dB.
  assert summary["bicubic"]["Set5"]["psnr_y"] == pytest.approx(33.66, abs=0.15)
  assert summary["ours"][tiny_workdir]["Set5"]["psnr_y"] > 20
  assert f"| bicubic (ours) | {summary['bicubic']['Set5']['psnr_y']:.2f} / " in report


def test_missing_data_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
  monkeypatch.setenv("PERCVAE_DATA_ROOT", str(tmp_path))  # data_root.use sets it.
  args = ["--budget", "tables", "--data-root", str(tmp_path / "absent")]
  assert bq.main([*args, "--output-dir", str(tmp_path / "out")]) == 1
  err = capsys.readouterr().err
  assert err.startswith("error: ") and "not found" in err and err.count("\n") == 1
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("init", ["x4", "x4-fast"])
def test_ablation_variants_take_the_shape_of_their_start(init):
  """Each variant starts from --init in its shape, whatever trunk that release has."""
  config = load_config("release_x4_perceptual")
  for override in bq.model_shape(init):
    key, value = override.split("=")
    field = key.split(".")[1]
    config.model[field] = type(config.model[field])(value)
  config.train.init_from = init
  fresh = vae.init_params(vae.create(config), config, jax.random.PRNGKey(0))
  started = inference.initial_params(config, fresh)
  released_params = inference.load_model(name=init)[2]
  assert jax.tree.all(
    jax.tree.map(lambda a, b: bool((a == b).all()), started["decoder"], released_params["decoder"])
  )
