"""Why a relu3_3 feature MSE weighted at 1e-3 of the pixel MSE "stalls at bicubic":
measurements on one batch of HR crops, for a model at initialisation and after a short
training (--workdir: a run's checkpoint).

  python scripts/diagnose_perceptual.py --data-dir T91 --output diag.json
  python scripts/diagnose_perceptual.py --workdir runs/x --data-dir T91

It prints and writes:
  1. features: per VGG16 tap, the HR features' mean square, the bicubic output's
     feature MSE to the HR's (the plain perceptual term) and its ratio to the pixel
     MSE, and the same distance with features unit-normalised over channels;
  2. output gradients: the norm of d(term)/d(SR) of the pixel MSE and of each tap's
     term, plain and normalised, so a weight can be read as "how many times the pixel
     term's pull";
  3. parameter gradients of the pixel term and of gamma x relu3_3 (gamma = each
     --weights value), on the VAE's training output (the decoder fed the posterior,
     which sees the HR) and on the generated output (the prior's mean, what users
     get), and how much of each reaches the prior, the part that makes the generated
     output differ from bicubic;
  4. Adam: the cosine between the first Adam update of pixel-only training and of
     pixel + gamma x relu3_3, and the fraction of the parameters the pixel term moves
     whose step changes sign.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys

import jax
import jax.flatten_util
import jax.numpy as jnp
import optax

from percvae_jax import config as config_lib
from percvae_jax import data, data_root, degradation, inference, losses, pretrained
from percvae_jax.models import vae, vgg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tree_norm(tree) -> float:
  return float(optax.tree.norm(tree))


def subtree_norm(grads, prefix: str) -> float:
  return tree_norm({k: v for k, v in grads.items() if k.startswith(prefix)})


def cosine(a, b) -> float:
  a, b = jax.flatten_util.ravel_pytree(a)[0], jax.flatten_util.ravel_pytree(b)[0]
  return float(jnp.dot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b) + 1e-30))


@functools.partial(jax.jit, static_argnames=("tap", "norm"))
def feature_term(x, hr_features, vgg_params, tap: str, norm: str):
  """One tap's feature distance at the output x, and its gradient there."""
  network = vgg.VGG16(taps=vgg.TAPS)
  term = lambda x: losses.feature_distance(
    network.apply({"params": vgg_params}, x)[tap], hr_features[tap], norm
  )
  return jax.value_and_grad(term)(x)


def feature_report(vgg_params, sr, hr, pixel_grad_norm: float) -> dict:
  """Per tap: magnitudes, plain and normalised distances, and their output gradients."""
  hr_features = jax.jit(vgg.VGG16(taps=vgg.TAPS).apply)({"params": vgg_params}, hr)
  rows = {}
  pixel_mse = float(jnp.mean((sr - hr) ** 2))
  for tap in vgg.TAPS:
    row = {"hr_mean_square": float(jnp.mean(hr_features[tap] ** 2))}
    for norm in ("none", "channel"):
      value, grad = feature_term(sr, hr_features, vgg_params, tap=tap, norm=norm)
      row[norm] = {
        "distance": float(value),
        "ratio_to_pixel_mse": float(value) / pixel_mse,
        "output_grad_norm": float(jnp.linalg.norm(grad)),
        "grad_ratio_to_pixel": float(jnp.linalg.norm(grad)) / pixel_grad_norm,
        "output_grad_cosine_to_pixel": cosine(grad, sr - hr),
      }
    rows[tap] = row
  return rows


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", help="a run's workdir; default: a fresh default model")
  parser.add_argument(
    "--data-dir", required=True, help="HR images to crop the batch from: sets or folders"
  )
  parser.add_argument("--scale", type=int, default=2)
  parser.add_argument("--hr-size", type=int, default=96)
  parser.add_argument("--batch-size", type=int, default=16)
  parser.add_argument(
    "--weights",
    default="1e-4,5e-4,1e-3,1e-2",
    help="gamma values of the plain relu3_3 term to compare",
  )
  parser.add_argument("--output", help="JSON file to write")
  args = parser.parse_args(argv)

  if args.workdir:
    config, model, params, step = inference.restore_model(args.workdir)
    config = config_lib.from_dict(config.to_dict())
  else:
    config = config_lib.load_file(os.path.join(REPO, "configs", "default.py"))
    config.data.scale, config.data.hr_size, config.data.blur_sigma = args.scale, args.hr_size, 0.0
    model = vae.create(config)
    params, step = vae.init_params(model, config, jax.random.PRNGKey(0)), 0
  images = data.read_folders(data_root.resolve_all(args.data_dir), args.hr_size)
  batch = data.TrainBatches(images, args.hr_size, args.batch_size, seed=0).batch(0)
  hr, lr = degradation.lr_from_hr(jnp.asarray(batch), config.data)
  vgg_params = pretrained.load_vgg16_params(config.loss.vgg_weights)
  relu3 = vgg.VGG16(taps=("relu3_3",))
  relu3_params = vgg.params_for_taps(vgg_params, ("relu3_3",))
  key = jax.random.PRNGKey(1)

  # Jitted, the weights as arguments: op by op, the gradients took 4x longer.
  @jax.jit
  def outputs(p):
    return model.apply({"params": p}, lr, hr, generated=True, rngs={"latent": key})

  @functools.partial(jax.jit, static_argnames="path")
  def pixel_gradient(p, path):
    return jax.grad(lambda p: jnp.mean((outputs(p)[path] - hr) ** 2))(p)

  @functools.partial(jax.jit, static_argnames="path")
  def perceptual_gradient(p, relu3_params, path):
    loss = lambda p: losses.perceptual(
      relu3, relu3_params, outputs(p)[path], hr, (("relu3_3", 1.0),)
    )
    return jax.grad(loss)(p)

  bicubic = degradation.bicubic_upscale(lr, config.data.scale)
  generated = outputs(params)["generated"]
  pixel_grad_norm = float(jnp.linalg.norm(jax.grad(lambda x: jnp.mean((x - hr) ** 2))(generated)))
  report = {
    "step": int(step),
    "scale": config.data.scale,
    "hr_size": args.hr_size,
    "batch_size": args.batch_size,
    "pixel_mse": {
      "bicubic": float(jnp.mean((bicubic - hr) ** 2)),
      "generated": float(jnp.mean((generated - hr) ** 2)),
      "vae": float(jnp.mean((outputs(params)["sr"] - hr) ** 2)),
    },
    "features_at_generated_output": feature_report(vgg_params, generated, hr, pixel_grad_norm),
  }

  gradients = {}
  for path in ("sr", "generated"):
    g_pixel = pixel_gradient(params, path=path)
    g_perc = perceptual_gradient(params, relu3_params, path=path)
    gradients[path] = (g_pixel, g_perc)
    report[f"param_grads_{'vae' if path == 'sr' else 'generated'}"] = {
      "pixel_norm": tree_norm(g_pixel),
      "relu3_3_norm": tree_norm(g_perc),
      "pixel_prior_norm": subtree_norm(g_pixel, "prior"),
      "relu3_3_prior_norm": subtree_norm(g_perc, "prior"),
      "cosine_pixel_relu3_3": cosine(g_pixel, g_perc),
    }

  adam = {}
  for path, (g_pixel, g_perc) in gradients.items():
    tx = optax.adam(1e-3)
    first_update = lambda g, tx=tx: tx.update(g, tx.init(params), params)[0]
    base = jax.flatten_util.ravel_pytree(first_update(g_pixel))[0]
    moving = base != 0  # parameters the pixel term moves (at initialisation, only the
    # zero-initialised output convs get gradients).
    for weight in [float(w) for w in args.weights.split(",")]:
      mixed = jax.tree.map(lambda a, b, w=weight: a + w * b, g_pixel, g_perc)
      update = jax.flatten_util.ravel_pytree(first_update(mixed))[0]
      share = tree_norm(jax.tree.map(lambda b, w=weight: w * b, g_perc)) / tree_norm(mixed)
      adam[f"{'vae' if path == 'sr' else 'generated'}@{weight:g}"] = {
        "cosine_to_pixel_only": float(
          jnp.dot(update, base) / (jnp.linalg.norm(update) * jnp.linalg.norm(base))
        ),
        "sign_flips": float(
          jnp.sum((jnp.sign(update) != jnp.sign(base)) & moving) / jnp.sum(moving)
        ),
        "perceptual_share_of_gradient": share,
      }
  report["adam_first_update"] = adam

  text = json.dumps(report, indent=2)
  print(text)
  if args.output:
    with open(args.output, "w") as f:
      f.write(text + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
