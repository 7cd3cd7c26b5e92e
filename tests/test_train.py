"""The training loop: a learning step, the whole loop on mock TFDS data, resume, the
skipping of non-finite steps, and the prior-mean reconstruction term."""

import json
import os
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from percvae_jax import data, degradation, inference, reporting, train, train_state
from percvae_jax import losses as losses_lib
from percvae_jax.errors import NonFiniteLossError
from percvae_jax.models import vae
from tests import helpers
from tests.helpers import REPO, tiny_config


def fixed_batch(batch_size=4, hr_size=32):
  photos = data.TrainBatches(data.embedded_images("train"), hr_size, batch_size, seed=0)
  return {"hr": jnp.asarray(photos.batch(0))}


def train_on_fixed_batch(config, steps=40):
  """`steps` train steps on one batch; (state, per-step terms as floats)."""
  model = vae.create(config)
  vgg_module, vgg_params = train_state.perceptual_network(config)
  state = train_state.create_train_state(config, model, vgg_params)
  step = jax.jit(train.make_train_step(config, vgg_module))
  batch = fixed_batch()
  history = []
  for _ in range(steps):
    state, terms = step(state, batch)
    history.append({k: float(v) for k, v in terms.items()})
  return state, history


@pytest.mark.slow
@pytest.mark.parametrize(
  "model_name,gamma,learning_rate",
  [("srvae", 0.0, 1e-3), ("srvae", 1e-3, 1e-3), ("seed", 0.0, 5e-3)],
)
def test_train_steps_lower_the_loss_on_a_fixed_batch(model_name, gamma, learning_rate):
  config = tiny_config(
    model__name=model_name,
    loss__gamma=gamma,
    loss__perceptual_layers="relu2_2",
    loss__perceptual_norm="none",
    loss__perceptual_on="vae",
    loss__prior_recon_weight=0.0,
    train__learning_rate=learning_rate,
    train__warmup_steps=10,
    model__features=16,
  )
  state, history = train_on_fixed_batch(config)
  losses = [terms["loss"] for terms in history]
  assert int(state.step) == 40
  assert np.mean(losses[-5:]) < 0.98 * losses[0], losses
  if gamma:
    assert history[-1]["perceptual"] > 0
  # Without loss.prior_recon_weight the prior-mean output is neither computed nor
  # trained: its term reads 0.
  assert all(terms["prior_recon"] == 0 for terms in history)
  assert all(terms["skipped_steps"] == 0 for terms in history)


@pytest.mark.slow
def test_prior_recon_term_is_reported_and_lowered_on_a_fixed_batch():
  """loss.prior_recon_weight > 0 trains the output users get (from the prior's mean)."""
  config = tiny_config(
    loss__prior_recon_weight=1.0,
    loss__alpha=1.0,
    loss__gamma=0.0,
    train__learning_rate=1e-3,
    train__warmup_steps=10,
    model__features=16,
  )
  _, history = train_on_fixed_batch(config)
  prior_recon = [terms["prior_recon"] for terms in history]
  assert prior_recon[0] > 0
  assert np.mean(prior_recon[-5:]) < 0.9 * prior_recon[0], prior_recon
  for terms in history:  # the total holds it, at its weight.
    assert terms["loss"] == pytest.approx(
      terms["vae"] + terms["prior_recon"] + config.loss.gamma * terms["perceptual"], rel=1e-5
    )


def test_perceptual_term_on_the_generated_output_with_channel_norm():
  """loss.perceptual_on=generated measures the prior-mean output (what users get);
  loss.perceptual_norm=channel compares unit-normalised features, LPIPS-style."""
  config = tiny_config(
    loss__gamma=1e-2,
    loss__perceptual_layers="relu1_2,relu2_2",
    loss__perceptual_weights="1,0.5",
    loss__perceptual_norm="channel",
    loss__perceptual_on="generated",
  )
  model = vae.create(config)
  vgg_module, vgg_params = train_state.perceptual_network(config)
  state = train_state.create_train_state(config, model, vgg_params)
  batch = fixed_batch()
  _, terms = jax.jit(train.make_train_step(config, vgg_module))(state, batch)

  hr, lr = degradation.lr_from_hr(batch["hr"], config.data)
  generated = jax.jit(lambda p, x: model.apply({"params": p}, x, method="generate"))(
    state.params, lr
  )
  features = jax.jit(lambda x: vgg_module.apply({"params": vgg_params}, x))
  ours, theirs = features(generated), features(hr)
  expected = sum(
    weight * float(losses_lib.feature_distance(ours[tap], theirs[tap], "channel"))
    for tap, weight in (("relu1_2", 1.0), ("relu2_2", 0.5))
  )
  assert 0 < float(terms["perceptual"]) <= 4 * 1.5
  assert float(terms["perceptual"]) == pytest.approx(expected, rel=1e-4)
  assert float(terms["loss"]) == pytest.approx(
    float(terms["vae"])
    + config.loss.prior_recon_weight * float(terms["prior_recon"])
    + 1e-2 * float(terms["perceptual"]),
    rel=1e-5,
  )


def with_poisoned_output(state, poison):
  """`state` whose model adds `poison` to its outputs: NaN makes the loss and every
  gradient NaN, 0 changes nothing."""
  apply_fn = state.apply_fn

  def apply(*args, **kwargs):
    outputs = apply_fn(*args, **kwargs)
    return dict(outputs, sr=outputs["sr"] + poison)

  return state.replace(apply_fn=apply)


def test_a_nonfinite_step_is_skipped_its_parameters_kept_and_counted():
  config = tiny_config(train__on_nonfinite="skip", train__learning_rate=1e-3)
  model = vae.create(config)
  step = jax.jit(train.make_train_step(config, None))
  batch = fixed_batch()
  state, terms = step(train_state.create_train_state(config, model, None), batch)
  assert float(terms["finite"]) == 1 and float(terms["skipped_steps"]) == 0

  after, terms = step(with_poisoned_output(state, jnp.nan), batch)
  assert not np.isfinite(float(terms["loss"])) and float(terms["finite"]) == 0
  assert int(after.step) == 2
  assert float(terms["skipped_steps"]) == 1 == int(after.opt_state.total_notfinite)
  # apply_if_finite dropped the update: the parameters and Adam's moments are those of
  # the last good step.
  for kept, before in (
    (after.params, state.params),
    (after.opt_state.inner_state, state.opt_state.inner_state),
  ):
    for x, y in zip(jax.tree.leaves(kept), jax.tree.leaves(before)):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

  # The next good step updates again; the count stays.
  again, terms = step(after.replace(apply_fn=model.apply), batch)
  assert float(terms["finite"]) == 1 and float(terms["skipped_steps"]) == 1
  assert any(
    not np.array_equal(np.asarray(x), np.asarray(y))
    for x, y in zip(jax.tree.leaves(again.params), jax.tree.leaves(after.params))
  )


def test_reparameterisation_uses_half_the_log_variance():
  logvar = jnp.full((200_000,), jnp.log(4.0))  # variance 4, standard deviation 2
  z = vae.reparameterise(jax.random.PRNGKey(0), jnp.zeros_like(logvar), logvar)
  assert abs(float(jnp.std(z)) - 2.0) < 0.02


def test_temperature_scales_the_spread_of_samples():
  logvar = jnp.full((200_000,), jnp.log(4.0))
  z = vae.reparameterise(jax.random.PRNGKey(0), jnp.ones_like(logvar), logvar, 0.5)
  assert abs(float(jnp.std(z)) - 1.0) < 0.01 and abs(float(jnp.mean(z)) - 1.0) < 0.01


def test_gaussian_kl_matches_the_closed_form():
  kl = vae.gaussian_kl(jnp.array(1.0), jnp.log(jnp.array(2.0)), jnp.array(0.0), jnp.array(0.0))
  assert abs(float(kl) - 0.5 * (2.0 + 1.0 - 1.0 - np.log(2.0))) < 1e-6


def test_evaluation_uses_the_latent_mean():
  config = tiny_config()
  model = vae.create(config)
  state = train_state.create_train_state(config, model, None)
  lr = jnp.full((2, 16, 16, 3), 0.5)
  mean_a = model.apply({"params": state.params}, lr, method="generate")
  mean_b = model.apply({"params": state.params}, lr, method="generate")
  np.testing.assert_array_equal(mean_a, mean_b)


@pytest.mark.slow
def test_whole_loop_on_mock_oxford_pets(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  config = tiny_config(data__name="oxford_iiit_pet", model__name="seed")
  with tfds.testing.mock_data(num_examples=8):
    state = train.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 4
  records = reporting.read_jsonl(str(tmp_path / "metrics.jsonl"))
  train_lines = [r for r in records if "split" not in r]
  eval_lines = [r for r in records if r.get("split") == "eval"]
  assert [r["step"] for r in train_lines] == [1, 2, 3, 4]
  for key in ("loss", "recon", "kl", "perceptual", "images_per_sec"):
    assert all(np.isfinite(r[key]) for r in train_lines), key
  assert eval_lines[-1]["step"] == 4
  assert {"psnr", "ssim", "bicubic_psnr", "bicubic_ssim"} <= set(eval_lines[-1])
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path))
  assert json.loads((tmp_path / "config.json").read_text())["model"]["name"] == "seed"


def run_main(workdir, photo_dirs, *flags, timeout=300):
  """Runs the CLI as a user would; returns (exit code, combined output)."""
  command = helpers.main_command(
    workdir,
    "--config.data.name=folder",
    f"--config.data.train_dir={photo_dirs / 'train'}",
    f"--config.data.eval_dir={photo_dirs / 'eval'}",
    "--config.data.hr_size=32",
    "--config.model.features=8",
    "--config.model.num_blocks=2",
    "--config.train.batch_size=4",
    "--config.train.log_every=1",
    "--config.train.eval_every=3",
    "--config.train.checkpoint_every=3",
    "--config.train.lr_schedule=constant",
    "--config.data.num_eval_images=4",
    "--config.loss.gamma=0",
    *flags,
    config="default",
  )
  result = subprocess.run(
    command, cwd=REPO, env=helpers.subprocess_env(), capture_output=True, text=True, timeout=timeout
  )
  return result.returncode, result.stdout + result.stderr


@pytest.mark.slow
def test_cli_checkpoints_and_resumes_where_it_stopped(tmp_path, photo_dirs):
  """The command a user types, stopped and run again with more steps: nothing trained
  twice or lost (that the numbers equal an uninterrupted run's is
  tests/test_checkpoints.py's sigkill test)."""
  workdir = tmp_path / "run"
  code, output = run_main(workdir, photo_dirs, "--config.train.num_steps=6")
  assert code == 0, output
  assert "Evaluation at step 6" in output and "bicubic" in output
  code, output = run_main(workdir, photo_dirs, "--config.train.num_steps=9")
  assert code == 0, output
  assert "Resuming from the checkpoint at step 6" in output
  records = reporting.read_jsonl(str(workdir / "metrics.jsonl"))
  steps = [r["step"] for r in records if "split" not in r]
  assert steps == list(range(1, 10))  # nothing trained twice, nothing lost
  assert [r["step"] for r in records if r.get("split") == "eval"] == [3, 6, 9]
  _, _, _, step = inference.restore_model(str(workdir))
  assert step == 9


@pytest.mark.slow
def test_bfloat16_computes_in_bf16_with_float32_parameters_and_loss():
  config = tiny_config(
    train__compute_dtype="bfloat16", loss__gamma=1e-3, loss__perceptual_layers="relu1_2"
  )
  model = vae.create(config, train_state.compute_dtype(config))
  vgg_module, vgg_params = train_state.perceptual_network(config)
  state = train_state.create_train_state(config, model, vgg_params)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(state.params))
  batch = {"hr": jnp.asarray(data.TrainBatches(data.embedded_images("train"), 32, 4, 0).batch(0))}
  step = jax.jit(train.make_train_step(config, vgg_module))
  hlo = step.lower(state, batch).as_text()
  assert "bf16" in hlo  # the convolutions run in bfloat16
  state, terms = step(state, batch)
  assert terms["loss"].dtype == jnp.float32 and np.isfinite(float(terms["loss"]))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(state.params))
  reference = tiny_config(loss__gamma=1e-3, loss__perceptual_layers="relu1_2")
  f32_state = train_state.create_train_state(reference, vae.create(reference), vgg_params)
  _, f32_terms = jax.jit(train.make_train_step(reference, vgg_module))(f32_state, batch)
  assert float(terms["recon"]) == pytest.approx(float(f32_terms["recon"]), rel=0.05)


def test_a_time_budget_stops_checkpointed_and_evaluated_and_a_rerun_continues(tmp_path):
  config = tiny_config(train__num_steps=1000, train__max_seconds=1e-3, train__eval_every=1000)
  state = train.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 1  # the first step alone outlasts a millisecond.
  assert os.listdir(tmp_path / "checkpoints") == ["1"]
  assert [r["step"] for r in helpers.eval_lines(tmp_path)] == [1]
  config = tiny_config(train__num_steps=3, train__eval_every=1000)
  assert int(train.train_and_evaluate(config, str(tmp_path)).step) == 3
  assert [r["step"] for r in helpers.train_lines(tmp_path)] == [1, 2, 3]


@pytest.mark.slow
def test_nonfinite_loss_stops_naming_step_and_term_and_keeps_last_checkpoint(photo_dirs, tmp_path):
  # The worker makes the model's output NaN from step 5 on (a learning rate large
  # enough to overflow is refused up front now).
  config = helpers.short_run(photo_dirs, train__checkpoint_every=1)
  result = helpers.run_worker(tmp_path, config, NAN_FROM="5")
  line = helpers.assert_one_line_error(result, "error: non-finite loss at step 5: ", codes=(1,))
  named = line.split("step 5: ", 1)[1].split(" (")[0].split(", ")
  assert "loss" in named and "kl" not in named  # the terms that are not finite
  # It points at what to check: training may have gone wrong before the NaN.
  assert "check the eval lines in metrics.jsonl" in line and "--step" in line
  assert "The newest checkpoint is step 4" in line
  step, params = helpers.restored(tmp_path)
  assert step == 4
  assert all(np.isfinite(p).all() for p in params)


@pytest.mark.slow
def test_nonfinite_policy_skip_counts_and_goes_on(photo_dirs, tmp_path):
  config = helpers.short_run(photo_dirs, train__on_nonfinite="skip")
  result = helpers.run_worker(tmp_path, config, NAN_FROM="5")
  assert result.returncode == 0, result.stderr[-3000:]
  step, params = helpers.restored(tmp_path)
  assert step == 8
  assert all(np.isfinite(p).all() for p in params)
  # Steps 5 to 8 were all skipped: the parameters are those of step 4.
  _, params_at_4 = helpers.restored(tmp_path, 4)
  for a, b in zip(params, params_at_4):
    np.testing.assert_array_equal(a, b)
  lines = helpers.train_lines(tmp_path)
  assert [r["skipped_steps"] for r in lines] == [0, 0, 0, 0, 1, 2, 3, 4]


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
    train.check_finite(config, 42, terms, FakeManager())
  message = str(error.value)
  assert message.startswith("non-finite loss at step 42: ")
  named = message.split(": ", 1)[1].split(" (")[0].split(", ")
  assert sorted(named) == ["kl", "loss"]  # the terms that are not finite, and no other.
  assert "The newest checkpoint is step 40" in message
  assert "check the eval lines in metrics.jsonl" in message and "--step" in message
  assert "on_nonfinite=skip" in message and "\n" not in message
  config.train.on_nonfinite = "skip"
  train.check_finite(config, 42, terms, FakeManager())
