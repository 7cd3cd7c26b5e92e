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

With `loss.samples=K` the prior's samples are trained too, as outputs users draw
(`loss.sample_temperature`), by the same taps and norm, on one VGG16 pass with the
mean output and the HR:
  sample_weight * L_each + sample_best_weight * L_best
  L_each = the perceptual distance of every sample to the HR, averaged: each sample
           must be a believable HR on its own, not the mean plus noise;
  L_best = per tap, at each feature position, the distance of the nearest of the K
           samples, averaged over positions: the samples must cover the HR between
           them (best of many, Bhattacharyya et al. 2018; conditional IMLE, Li et al.
           2020), locally, as the NTIRE 2021 diversity score judges them. Alone,
           L_each would pull every sample onto the one output nearest the HR on
           average (the mean output's optimum) and collapse them.
and, with `sample_diversity_weight`, a floor on how far apart they lie:
  sample_diversity_weight * max(0, sample_diversity_target - L_pairwise)
  L_pairwise = the same distance between every two samples, averaged over pairs and
           positions: a hinge (no pull once the samples are that far apart), as
           diversity-sensitive GANs keep their samples from collapsing (Yang et al.
           2019; Mao et al. 2019). L_best pays for the quietest sample while every
           sample is the mean plus small noise (docs/model.md); this term pays for
           spread itself, wherever the model chooses to put it.
and, with `sample_texture_weight`, the texture each sample draws:
  L_texture = per tap, the squared distance between the Gram matrices (the mean of
           f f^T over a patch's positions, features normed as above) of each sample
           and of the HR in every `texture_patch` px patch, averaged: a texture loss
           as EnhanceNet's (Sajjadi et al. 2017). It judges the statistics of the
           detail, its orientation, colour and scale, not where each stroke lies,
           so grain is paid for wherever the HR holds none and a sample may draw
           any texture the HR's patch could hold. With the channel norm the Gram
           sees which features occur together, not how strongly: contrast is free
           (docs/model.md); `texture_norm="energy"` takes the features unnormed
           and divides each tap's distance by the square of the HR features' mean
           squared norm, so contrast counts and the taps weigh as before.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

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


def distance_map(sr_features, hr_features, norm: str):
  """One tap's distance at each feature position, by `norm` (the module docstring);
  its mean over positions is `feature_distance`."""
  sr_features = sr_features.astype(jnp.float32)
  hr_features = hr_features.astype(jnp.float32)
  if norm == "none":
    return jnp.mean((sr_features - hr_features) ** 2, axis=-1)
  squared = (unit_normalize(sr_features) - unit_normalize(hr_features)) ** 2
  return jnp.sum(squared, axis=-1)


def feature_distance(sr_features, hr_features, norm: str):
  """One tap's distance, by `norm` (see the module docstring)."""
  return jnp.mean(distance_map(sr_features, hr_features, norm))


def perceptual(vgg, vgg_params, sr, hr, tap_weights, norm: str = "none"):
  """Weighted sum of per-tap feature distances; `vgg` returns {tap: features}."""
  sr_features = vgg.apply({"params": vgg_params}, sr)
  hr_features = vgg.apply({"params": vgg_params}, jax.lax.stop_gradient(hr))
  total = 0.0
  for tap, weight in tap_weights:
    total += weight * feature_distance(sr_features[tap], hr_features[tap], norm)
  return total


def uses_perceptual(loss_config) -> bool:
  """Whether the objective has a perceptual term, on the mean output or on trained
  samples (and so needs the VGG16)."""
  return loss_config.gamma > 0 or loss_config.samples > 0


def output_features(vgg, vgg_params, outputs, hr, taps):
  """{tap: (features of M outputs (M, N, h, w, c), the HR's (N, h, w, c))}: one VGG16
  pass over the outputs (M, N, H, W, 3) and the HR (N, H, W, 3), so the HR's features
  are computed once."""
  m, n = outputs.shape[:2]
  images = jnp.concatenate([outputs.reshape(m * n, *outputs.shape[2:]), jax.lax.stop_gradient(hr)])
  features = vgg.apply({"params": vgg_params}, images)
  return {
    tap: (features[tap][: m * n].reshape(m, n, *features[tap].shape[1:]), features[tap][m * n :])
    for tap in taps
  }


def sample_terms(maps) -> dict:
  """L_each and L_best (the module docstring) from the samples' distance maps to the
  HR, [(weight, maps (K, N, h, w))] per tap."""
  each = sum(weight * jnp.mean(m) for weight, m in maps)
  best = sum(weight * jnp.mean(jnp.min(m, axis=0)) for weight, m in maps)
  return {"sample_perceptual": each, "sample_best": best}


def _patches(features, size: int):
  """(..., h, w, c) -> (..., patches, size * size, c): the whole size x size patches."""
  *lead, h, w, c = features.shape
  rows, cols = h // size, w // size
  cut = features[..., : rows * size, : cols * size, :]
  cut = cut.reshape(*lead, rows, size, cols, size, c)
  return jnp.swapaxes(cut, -4, -3).reshape(*lead, rows * cols, size * size, c)


def gram_distance(sample_features, hr_features, size: int, norm: str):
  """One tap's ||G(sample) - G(HR)||_F^2 per size x size patch of feature positions,
  G the mean of f f^T over the patch: (K, N, h, w, c) and (N, h, w, c) -> (K, N,
  patches). Computed through the positions' inner products where a patch has fewer
  positions than channels (||A^T A - B^T B||^2 = ||A A^T||^2 - 2 ||A B^T||^2 +
  ||B B^T||^2), so relu3_3's 256 channels never make 256 x 256 matrices."""
  if norm != "none":
    sample_features, hr_features = unit_normalize(sample_features), unit_normalize(hr_features)
  a = _patches(sample_features.astype(jnp.float32), size)
  b = _patches(hr_features.astype(jnp.float32), size)[None]
  positions, channels = a.shape[-2:]
  if channels <= positions:
    gram_a = jnp.einsum("...pc,...pd->...cd", a, a)
    gram_b = jnp.einsum("...pc,...pd->...cd", b, b)
    return jnp.sum((gram_a - gram_b) ** 2, axis=(-2, -1)) / positions**2
  inner = [
    jnp.sum(jnp.einsum("...pc,...qc->...pq", x, y) ** 2, axis=(-2, -1))
    for x, y in ((a, a), (a, b), (b, b))
  ]
  return jnp.maximum(inner[0] - 2 * inner[1] + inner[2], 0.0) / positions**2


def texture_distance(sample_features, hr_features, hr_side: int, patch: int, norm: str):
  """L_texture's tap term: the Gram distance over patches of `patch` HR px (at least
  2 x 2 feature positions), averaged over samples, images and patches. `norm` "energy":
  unnormed features, the distance divided by the square of the HR features' mean
  squared norm (the scale of its Gram matrices: what the channel norm makes 1), so
  that contrast counts and each tap weighs as under the channel norm."""
  stride = max(1, hr_side // hr_features.shape[-3])
  size = max(2, patch // stride)
  if norm != "energy":
    return jnp.mean(gram_distance(sample_features, hr_features, size, norm))
  energy = jnp.mean(jnp.sum(jnp.square(hr_features.astype(jnp.float32)), axis=-1))
  energy = jax.lax.stop_gradient(energy)
  distance = jnp.mean(gram_distance(sample_features, hr_features, size, "none"))
  return distance / (energy**2 + _NORM_EPS)


def pairwise_distance(sample_features, norm: str):
  """One tap's distance between every two of K samples' features (K, N, h, w, c),
  averaged over the pairs and positions (L_pairwise, the module docstring)."""
  first, second = np.triu_indices(sample_features.shape[0], 1)
  return jnp.mean(distance_map(sample_features[first], sample_features[second], norm))


def perceptual_terms(loss_config, vgg, vgg_params, outputs, hr, tap_weights):
  """(L_perceptual, the sample terms or {}) for the model's `outputs`."""
  measured = perceptual_input(loss_config, outputs)
  norm = loss_config.perceptual_norm
  if "samples" not in outputs:
    return perceptual(vgg, vgg_params, measured, hr, tap_weights, norm), {}
  stacked = jnp.concatenate([measured[None], outputs["samples"]])
  features = output_features(vgg, vgg_params, stacked, hr, [tap for tap, _ in tap_weights])
  maps = [
    (weight, distance_map(features[tap][0], features[tap][1][None], norm))
    for tap, weight in tap_weights
  ]
  mean_term = sum(weight * jnp.mean(m[0]) for weight, m in maps)
  terms = sample_terms([(weight, m[1:]) for weight, m in maps])
  terms["sample_pairwise"] = sum(
    weight * pairwise_distance(features[tap][0][1:], norm) for tap, weight in tap_weights
  )
  if loss_config.sample_texture_weight > 0:
    texture_norm = "energy" if loss_config.texture_norm == "energy" else norm
    terms["sample_texture"] = sum(
      weight
      * texture_distance(
        features[tap][0][1:],
        features[tap][1],
        hr.shape[1],
        loss_config.texture_patch,
        texture_norm,
      )
      for tap, weight in tap_weights
    )
  return mean_term, terms


def needs_generated(loss_config) -> bool:
  """Whether the objective reads the generated output (one more decoder pass)."""
  return loss_config.prior_recon_weight > 0 or (
    uses_perceptual(loss_config) and loss_config.perceptual_on == "generated"
  )


def perceptual_input(loss_config, outputs):
  """The output the perceptual term measures."""
  return outputs["generated" if loss_config.perceptual_on == "generated" else "sr"]


def trains_samples(loss_config) -> bool:
  return loss_config.samples > 0


def objective(loss_config, outputs, hr, perceptual_loss, samples=None):
  """(total, terms) for the model's `outputs` ({"sr", "kl"[, "generated"]}) and
  `samples`, the sample terms of `perceptual_terms` (if any)."""
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
  if samples:
    total += (
      loss_config.sample_weight * samples["sample_perceptual"]
      + loss_config.sample_best_weight * samples["sample_best"]
      + loss_config.sample_diversity_weight
      * jax.nn.relu(loss_config.sample_diversity_target - samples["sample_pairwise"])
    )
    if "sample_texture" in samples:
      total += loss_config.sample_texture_weight * samples["sample_texture"]
  terms = {
    "loss": total,
    "vae": vae,
    "recon": recon,
    "kl": kl,
    "prior_recon": prior_recon,
    "perceptual": perceptual_loss,
    **(samples or {}),
  }
  return total, terms
