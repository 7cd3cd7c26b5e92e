"""The scripts behind the releases and the README's figures: release_model.py writes a
release only when it scores better, training_curve.py scores every kept checkpoint,
diagnose_perceptual.py measures each term's gradients, diagnose_samples.py where the
samples differ from the mean. Run on the session's tiny model and small generated
photos, so they cannot rot."""

import json
import math

import jax
import numpy as np
import pytest

from percvae_jax import flops, inference, released
from percvae_jax.models import vae
from tests import helpers
from tests.helpers import tiny_config


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  """Set5/, Set14/ and BSD100/ of two small generated photos each."""
  root = tmp_path_factory.mktemp("sets")
  for seed, name in enumerate(("Set5", "Set14", "BSD100")):
    helpers.write_photos(root / name, count=2, size=64, seed=seed)
  return root


@pytest.mark.slow
def test_release_model_writes_only_a_better_release(tiny_workdir, data_root, tmp_path, capsys):
  release_model = helpers.load_script("release_model")
  root = tmp_path / "released"
  args = ["--workdir", tiny_workdir, "--name", "x2", "--data-root", str(data_root)]
  assert release_model.main([*args, "--root", str(root)]) == 0
  assert released.names(str(root)) == ["x2"]
  recorded = released.metadata("x2", str(root))
  assert recorded["criterion"] == "psnr_y" and recorded["step"] == helpers.TINY_STEPS
  # Its cost beside its scores: the shipped parameters and their FLOPs per pixel.
  config, params = released.load("x2", str(root))
  assert recorded["params"] == sum(v.size for v in jax.tree.leaves(params))
  assert recorded["flops_per_px"] == flops.per_output_pixel(vae.create(config), params, 2) > 0
  for name in ("Set5", "Set14", "BSD100"):
    assert math.isfinite(recorded["scores"][name]["psnr_y"])
  written = (root / "x2" / "params.msgpack").stat().st_mtime_ns
  # The same model again is not better: refused, the files untouched; --force writes.
  assert release_model.main([*args, "--root", str(root)]) == 1
  assert "Not written" in capsys.readouterr().out
  assert (root / "x2" / "params.msgpack").stat().st_mtime_ns == written
  assert release_model.main([*args, "--root", str(root), "--force"]) == 0


@pytest.mark.slow
def test_release_model_averages_several_runs(
  tiny_workdir, tiny_seed_workdir, data_root, tmp_path, capsys
):
  """Several --workdir release the mean of their parameters (a model soup), and say
  which checkpoints went in; a run of another architecture is refused in one line."""
  release_model = helpers.load_script("release_model")
  other = helpers.train_tiny_srvae(tmp_path / "other", steps=2)
  root = tmp_path / "released"
  common = ["--name", "x2", "--data-root", str(data_root), "--root", str(root)]
  assert release_model.main(["--workdir", tiny_workdir, "--workdir", f"{other}:2", *common]) == 0
  _, shipped = released.load("x2", str(root))
  trees = [inference.restore_model(run)[2] for run in (tiny_workdir, other)]
  expected = jax.tree.map(lambda a, b: (a + b) / 2, *trees)
  assert jax.tree.structure(shipped) == jax.tree.structure(
    {k: v for k, v in expected.items() if k in shipped}
  )
  for name in shipped:
    for got, want in zip(jax.tree.leaves(shipped[name]), jax.tree.leaves(expected[name])):
      np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  assert not np.allclose(jax.tree.leaves(trees[0])[0], jax.tree.leaves(trees[1])[0])
  averaged = released.metadata("x2", str(root))["averaged"]
  assert averaged == [
    {"run": "tiny_srvae", "step": helpers.TINY_STEPS},
    {"run": "other", "step": 2},
  ]
  # A release can be an ingredient: the soup above, averaged with one of its runs again.
  again = ["--name", "x2-again", "--data-root", str(data_root), "--root", str(root)]
  assert release_model.main(["--model", "x2", "--workdir", f"{other}:2", *again]) == 0
  _, twice = released.load("x2-again", str(root))
  for name in twice:
    for got, soup, run in zip(
      jax.tree.leaves(twice[name]), jax.tree.leaves(shipped[name]), jax.tree.leaves(trees[1][name])
    ):
      np.testing.assert_allclose(got, (soup + run) / 2, rtol=1e-6, atol=1e-7)
  assert released.metadata("x2-again", str(root))["averaged"] == [
    {"run": "other", "step": 2},
    {"model": "x2", "step": helpers.TINY_STEPS, "averaged": averaged},
  ]
  capsys.readouterr()
  args = ["--workdir", tiny_workdir, "--workdir", str(tiny_seed_workdir), *common, "--force"]
  assert release_model.main(args) == 1
  error = capsys.readouterr().err.strip()
  assert error.startswith("error:") and "not the same model" in error and "\n" not in error


@pytest.mark.slow
def test_training_curve_scores_each_kept_checkpoint(tiny_workdir, data_root, tmp_path, capsys):
  output = tmp_path / "curve.json"
  training_curve = helpers.load_script("training_curve")
  code = training_curve.main(
    [
      "--workdir",
      tiny_workdir,
      "--sets",
      "Set5,BSD100",
      "--data-root",
      str(data_root),
      "--output",
      str(output),
    ]
  )
  assert code == 0
  rows = json.loads(output.read_text())
  assert [r["step"] for r in rows] == [helpers.TINY_STEPS]
  assert all(math.isfinite(r["Set5"]) and math.isfinite(r["BSD100"]) for r in rows)
  assert f"| {helpers.TINY_STEPS} |" in capsys.readouterr().out


@pytest.mark.slow
def test_diagnose_perceptual_measures_each_term(data_root, tmp_path):
  output = tmp_path / "diag.json"
  code = helpers.load_script("diagnose_perceptual").main(
    [
      "--data-dir",
      str(data_root / "Set5"),
      "--hr-size",
      "32",
      "--batch-size",
      "2",
      "--weights",
      "1e-3",
      "--taps",
      "relu1_2,relu3_3",
      "--output",
      str(output),
    ]
  )
  assert code == 0
  report = json.loads(output.read_text())
  features = report["features_at_generated_output"]
  assert set(features) == {"relu1_2", "relu3_3"}
  # The plain relu3_3 MSE dwarfs the pixel MSE; unit-normalised features stay in [0, 4].
  assert features["relu3_3"]["none"]["ratio_to_pixel_mse"] > 10
  for tap in features.values():
    assert 0 <= tap["channel"]["distance"] <= 4
  assert report["pixel_mse"]["generated"] > 0


def test_diagnose_samples_reports_each_class_and_band(tiny_workdir, data_root, tmp_path):
  output = tmp_path / "samples.json"
  code = helpers.load_script("diagnose_samples").main(
    ["--workdir", tiny_workdir, "--data-dir", str(data_root / "Set5"), "--samples", "2"]
    + ["--output", str(output)]
  )
  assert code == 0
  report = json.loads(output.read_text())
  assert report["images"] == 2
  shares = [report["classes"][c]["share_of_pixels"] for c in ("flat", "edge", "texture")]
  assert sum(shares) == pytest.approx(1.0, abs=1e-6)
  for label in ("sample_minus_mean", "hr_minus_mean"):
    assert sum(report[f"band_share_{label}"].values()) == pytest.approx(1.0, abs=1e-3)
  assert "posterior_offset_lag1_correlation" in report  # a workdir holds the posterior.


def test_diagnose_samples_reads_a_noise_model_by_its_noise():
  """For a model whose samples draw smooth noise (model.noise_channels) the diagnosis
  decodes that noise, the latent at its mean: the departure is the noise's, and
  halving the noise roughly halves it."""
  script = helpers.load_script("diagnose_samples")
  config = tiny_config(model__noise_channels=2)
  model = vae.create(config)
  params = vae.init_params(model, config, jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda x: x + 0.1 * rng.normal(size=x.shape).astype(np.float32), params)
  hr = (rng.uniform(0, 1, (32, 32, 3)) * 255).astype(np.uint8)
  net = script.Model(model, params)
  sums, whole = script.diagnose_image(net, hr, 2, 1.0, 2, jax.random.PRNGKey(1), 0.02, 0.6)
  noise = [
    vae.smooth_noise(jax.random.fold_in(jax.random.PRNGKey(1), k), (1, 16, 16, 2), 2.0)
    for k in range(2)
  ]
  # The offset's energy, read at each HR pixel (2 x 2 per LR pixel), is the noise's.
  expected = 4 * sum(float(np.sum(np.square(n))) for n in noise)
  assert sum(c["z2"] for c in sums.values()) == pytest.approx(expected, rel=1e-4)
  d2 = sum(c["d2"] for c in sums.values())
  half2 = sum(c["d_half2"] for c in sums.values())
  assert 2.0 < d2 / half2 < 8.0  # near 4 (2x the RMS) for a near-linear decoder.
