"""Why a relu3_3 feature MSE weighted at 1e-3 of the pixel MSE "stalls at bicubic":
measurements on one batch of HR crops, for a model at initialisation and after a short
training (--workdir: a run's checkpoint).

  python scripts/diagnose_perceptual.py --data-dir T91 --output diag.json
  python scripts/diagnose_perceptual.py --workdir runs/x --data-dir T91 --taps relu2_2,relu3_3

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


# Jitted: op by op, each of a model's hundred leaves compiles its own tiny programs.
def tree_norm(tree) -> float:
  return float(jax.jit(optax.tree.norm)(tree))


def subtree_norm(grads, prefix: str) -> float:
  return tree_norm({k: v for k, v in grads.items() if k.startswith(prefix)})


@jax.jit
def tree_cosine(a, b):
  a, b = jax.flatten_util.ravel_pytree(a)[0], jax.flatten_util.ravel_pytree(b)[0]
  return jnp.dot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b) + 1e-30)


def cosine(a, b) -> float:
  return float(tree_cosine(a, b))


@jax.jit
def adam_against_pixel_only(params, g_pixel, g_perc, weight):
  """The first Adam update of pixel + weight x perceptual against pixel-only's: their
  cosine, the share of the parameters the pixel term moves whose step changes sign, and
  the perceptual term's share of the gradient's norm."""
  tx = optax.adam(1e-3)
  first_update = lambda g: jax.flatten_util.ravel_pytree(tx.update(g, tx.init(params), params)[0])[
    0
  ]
  base = first_update(g_pixel)
  moving = base != 0  # parameters the pixel term moves (at initialisation, only the
  # zero-initialised output convs get gradients).
  weighted = jax.tree.map(lambda b: weight * b, g_perc)
  mixed = jax.tree.map(jnp.add, g_pixel, weighted)
  update = first_update(mixed)
  return {
    "cosine_to_pixel_only": jnp.dot(update, base)
    / (jnp.linalg.norm(update) * jnp.linalg.norm(base)),
    "sign_flips": jnp.sum((jnp.sign(update) != jnp.sign(base)) & moving) / jnp.sum(moving),
    "perceptual_share_of_gradient": optax.tree.norm(weighted) / optax.tree.norm(mixed),
  }


@functools.partial(jax.jit, static_argnames=("tap", "norm"))
def feature_term(x, hr_features, vgg_params, tap: str, norm: str):
  """One tap's feature distance at the output x, and its gradient there (the VGG16
  up to that tap only)."""
  network = vgg.VGG16(taps=(tap,))
  params = vgg.params_for_taps(vgg_params, (tap,))
  term = lambda x: losses.feature_distance(
    network.apply({"params": params}, x)[tap], hr_features[tap], norm
  )
  return jax.value_and_grad(term)(x)


def feature_report(vgg_params, sr, hr, pixel_grad_norm: float, taps=vgg.TAPS) -> dict:
  """Per tap: magnitudes, plain and normalised distances, and their output gradients."""
  hr_features = jax.jit(vgg.VGG16(taps=tuple(taps)).apply)(
    {"params": vgg.params_for_taps(vgg_params, tuple(taps))}, hr
  )
  rows = {}
  pixel_mse = float(jnp.mean((sr - hr) ** 2))
  for tap in taps:
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
  parser.add_argument(
    "--taps",
    default=",".join(vgg.TAPS),
    help="VGG16 taps to report on, comma-separated (each compiles its own gradient)",
  )
  parser.add_argument("--output", help="JSON file to write")
  args = parser.parse_args(argv)
  taps = args.taps.split(",")
  unknown = sorted(set(taps) - set(vgg.TAPS))
  if unknown:
    parser.error(f"--taps: no tap {', '.join(unknown)}; choose among {', '.join(vgg.TAPS)}")

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
    "features_at_generated_output": feature_report(
      vgg_params, generated, hr, pixel_grad_norm, taps
    ),
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
    for weight in [float(w) for w in args.weights.split(",")]:
      row = adam_against_pixel_only(params, g_pixel, g_perc, weight)
      adam[f"{'vae' if path == 'sr' else 'generated'}@{weight:g}"] = {
        k: float(v) for k, v in row.items()
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
