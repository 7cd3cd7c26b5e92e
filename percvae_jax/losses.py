"""The objective: total = alpha * L_vae + prior_recon_weight * L_prior + gamma * L_perceptual.

L_vae = recon_weight * D(SR, HR) + kl_weight * KL, on the VAE's training pass (the
decoder fed a posterior sample), D the pixel distance `loss.pixel_loss` (mse, l1, or
charbonnier: sqrt(d^2 + eps^2), L1 made smooth at 0), reduced by `loss.reduction`:
  "sum"  as the paper (torch's reduction="sum"): summed over the batch and every
         pixel value, and the KL summed over the batch and latent units;
  "mean" the pixel MSE averaged over all values, and the KL summed over latent
         units, averaged over the batch and divided by the HR values per image, so
         both are per HR value and their weights do not depend on image size.
L_prior = D of the generated output (decoded from the prior's mean: what `generate`,
`evaluate` and `upscale` give), reduced likewise. The posterior sees the HR, so a
decoder trained only through it learns to read the HR from the latent and leaves the
path users get untrained; this term trains that path (the "hybrid" objective of Sohn
et al., 2015, for conditional VAEs).
L_perceptual = sum over taps of weight * distance of the VGG16 features of one output
(`loss.perceptual_on`: the generated output, or the VAE's as in the paper) and of the
HR (both [0,1] RGB, normalised the same way inside the VGG). `loss.perceptual_norm`:
  "none"    the mean squared feature difference (the paper's); its scale is the
            features' squared magnitude, which differs by orders between taps;
  "channel" features unit-normalised over channels at each position, as LPIPS does,
            the squared difference summed over channels and averaged over positions:
            in [0, 4] whatever the tap or crop size, so a weight means the same at
            every tap.
The HR's features carry no gradient, and the VGG is never trained.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_NORM_EPS = 1e-10
# Charbonnier's epsilon: 1e-3 of the [0,1] range, LapSRN's; below a quantisation step.
CHARBONNIER_EPS = 1e-3


def reconstruction(sr, hr, reduction: str, pixel_loss: str = "mse"):
  diff = sr.astype(jnp.float32) - hr.astype(jnp.float32)
  if pixel_loss == "l1":
    values = jnp.abs(diff)
  elif pixel_loss == "charbonnier":
    values = jnp.sqrt(diff**2 + CHARBONNIER_EPS**2)
  else:
    values = diff**2
  return jnp.sum(values) if reduction == "sum" else jnp.mean(values)


def kl_term(kl_per_example, hr_shape, reduction: str):
  if reduction == "sum":
    return jnp.sum(kl_per_example)
  values_per_image = hr_shape[1] * hr_shape[2] * hr_shape[3]
  return jnp.mean(kl_per_example) / values_per_image


def unit_normalize(features):
  """Features divided by their L2 norm over channels at each position (LPIPS's)."""
  return features / (jnp.sqrt(jnp.sum(features**2, axis=-1, keepdims=True)) + _NORM_EPS)


def feature_distance(sr_features, hr_features, norm: str):
  """One tap's distance, by `norm` (see the module docstring)."""
  sr_features = sr_features.astype(jnp.float32)
  hr_features = hr_features.astype(jnp.float32)
  if norm == "none":
    return jnp.mean((sr_features - hr_features) ** 2)
  squared = (unit_normalize(sr_features) - unit_normalize(hr_features)) ** 2
  return jnp.mean(jnp.sum(squared, axis=-1))


def perceptual(vgg, vgg_params, sr, hr, tap_weights, norm: str = "none"):
  """Weighted sum of per-tap feature distances; `vgg` returns {tap: features}."""
  sr_features = vgg.apply({"params": vgg_params}, sr)
  hr_features = vgg.apply({"params": vgg_params}, jax.lax.stop_gradient(hr))
  total = 0.0
  for tap, weight in tap_weights:
    total += weight * feature_distance(sr_features[tap], hr_features[tap], norm)
  return total


def uses_perceptual(loss_config) -> bool:
  """Whether the objective has the perceptual term (and so needs the VGG16)."""
  return loss_config.gamma > 0


def needs_generated(loss_config) -> bool:
  """Whether the objective reads the generated output (one more decoder pass)."""
  return loss_config.prior_recon_weight > 0 or (
    uses_perceptual(loss_config) and loss_config.perceptual_on == "generated"
  )


def perceptual_input(loss_config, outputs):
  """The output the perceptual term measures."""
  return outputs["generated" if loss_config.perceptual_on == "generated" else "sr"]


def objective(loss_config, outputs, hr, perceptual_loss):
  """(total, terms) for the model's `outputs` ({"sr", "kl"[, "generated"]})."""
  pixel = loss_config.pixel_loss
  recon = reconstruction(outputs["sr"], hr, loss_config.reduction, pixel)
  kl = kl_term(outputs["kl"], hr.shape, loss_config.reduction)
  vae = loss_config.recon_weight * recon + loss_config.kl_weight * kl
  prior_recon = (
    reconstruction(outputs["generated"], hr, loss_config.reduction, pixel)
    if "generated" in outputs
    else jnp.zeros((), jnp.float32)
  )
  total = (
    loss_config.alpha * vae
    + loss_config.prior_recon_weight * prior_recon
    + loss_config.gamma * perceptual_loss
  )
  terms = {
    "loss": total,
    "vae": vae,
    "recon": recon,
    "kl": kl,
    "prior_recon": prior_recon,
    "perceptual": perceptual_loss,
  }
  return total, terms
