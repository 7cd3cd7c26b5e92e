"""The paper's objective: total = alpha * L_vae + gamma * L_perceptual.

L_vae = recon_weight * MSE(SR, HR) + kl_weight * KL, reduced by `loss.reduction`:
  "sum"  as the paper (torch's reduction="sum"): summed over the batch and every
         pixel value, and the KL summed over the batch and latent units;
  "mean" the pixel MSE averaged over all values, and the KL summed over latent
         units, averaged over the batch and divided by the HR values per image, so
         both are per HR value and their weights do not depend on image size.
L_perceptual = sum over taps of weight * mean squared difference of VGG16
features of SR and HR (both [0,1] RGB, normalised the same way inside the VGG); the
HR's features are computed without gradient, and the VGG is never trained.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def reconstruction(sr, hr, reduction: str):
  squared = (sr.astype(jnp.float32) - hr.astype(jnp.float32)) ** 2
  return jnp.sum(squared) if reduction == "sum" else jnp.mean(squared)


def kl_term(kl_per_example, hr_shape, reduction: str):
  if reduction == "sum":
    return jnp.sum(kl_per_example)
  values_per_image = hr_shape[1] * hr_shape[2] * hr_shape[3]
  return jnp.mean(kl_per_example) / values_per_image


def perceptual(vgg, vgg_params, sr, hr, tap_weights):
  """Weighted mean squared VGG feature difference; `vgg` returns {tap: features}."""
  sr_features = vgg.apply({"params": vgg_params}, sr)
  hr_features = vgg.apply({"params": vgg_params}, jax.lax.stop_gradient(hr))
  total = 0.0
  for tap, weight in tap_weights:
    diff = sr_features[tap].astype(jnp.float32) - hr_features[tap].astype(jnp.float32)
    total += weight * jnp.mean(diff ** 2)
  return total


def objective(loss_config, sr, hr, kl_per_example, perceptual_loss):
  """(total, terms) for the configured weights and reduction."""
  recon = reconstruction(sr, hr, loss_config.reduction)
  kl = kl_term(kl_per_example, hr.shape, loss_config.reduction)
  vae = loss_config.recon_weight * recon + loss_config.kl_weight * kl
  total = loss_config.alpha * vae + loss_config.gamma * perceptual_loss
  terms = {"loss": total, "vae": vae, "recon": recon, "kl": kl,
           "perceptual": perceptual_loss}
  return total, terms
