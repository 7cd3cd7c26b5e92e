"""Why an SR-VAE's prior samples look like grain on structured scenes: where the prior's
spread is large, what the decoder makes of the latent at edges and in flat regions,
and how a sample's departure from the mean output differs from the HR's.

  python scripts/diagnose_samples.py --model x4-perceptual \\
      --data-dir Set14,BSD100 --num-images 34 --output d.json
  python scripts/diagnose_samples.py --workdir runs/x --data-dir Set14

Each HR pixel is classed by the HR's structure tensor (Gaussian window, sigma 1.5 px,
on BT.601 Y): flat (gradient RMS below --flat), edge (coherence above --coherence: one
orientation dominates, as on a straight edge) or texture (the rest). Per class, on
whole images by the classic protocol (bicubic LR, no blur), it reports:
  1. the prior: sigma = exp(logvar / 2) and |mu| averaged over latent channels, read
     at the LR pixel that holds each HR pixel;
  2. the decoder: d = sample - mean output and r = HR - mean output (what the mean
     lacks), their RMS and its ratio (d/r > 1: the sample adds more than the HR
     holds there), the decoder's gain (RMS of d per unit RMS of the latent's offset
     T * sigma * eps, or of the noise T * n for a model with model.noise_channels,
     whose samples draw smooth noise n instead), and how linear it is (RMS of d at
     T over RMS at T/2, 2 if linear);
  3. orientation at edges: the energy of d's derivative along the edge over that
     across it (HR orientation), and the same for r; a clean edge's detail varies
     across the edge only (ratio << 1), grain is isotropic (ratio ~ 1) and jags edges;
  4. colour: the share of d's and r's energy in chroma (BT.601 Cb, Cr) rather than Y;
then, over whole images, the share of the power of Y(d) and Y(r) in three bands of
spatial frequency (cycles per HR px: below 1/8, the LR's Nyquist at x4; 1/8 to 1/4;
above 1/4, the finest octave) and their correlation at lags of 1, 2 and 4 px (how far
a pattern extends). With a --workdir (whose checkpoint has the posterior) also the
prior's calibration: per class, E[(mu_q - mu_p)^2 + sigma_q^2] / sigma_p^2 (1: the
prior's spread matches what the HR needs; > 1 too narrow, < 1 too wide) and the lag-1
spatial correlation of the posterior's offsets (mu_q - mu_p) / sigma_p, which prior
samples draw independently (correlation 0).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from percvae_jax import data_root, degradation, inference, scoring
from percvae_jax.models import vae

CLASSES = ("flat", "edge", "texture")
BANDS = ((0.0, 0.125), (0.125, 0.25), (0.25, 1.0))
LAGS = (1, 2, 4)


def luma(rgb):
  return rgb @ np.array([0.299, 0.587, 0.114], np.float32)


def chroma(rgb):
  """BT.601 Cb and Cr (unscaled): the colour differences, zero for grey."""
  y = luma(rgb)[..., None]
  return np.concatenate([rgb[..., 2:3] - y, rgb[..., 0:1] - y], axis=-1)


def structure(y, window: float = 1.5):
  """(gradient RMS, coherence, unit normal across the edge) per pixel of `y`."""
  gy, gx = np.gradient(y)
  smooth = lambda a: ndimage.gaussian_filter(a, window)
  jxx, jyy, jxy = smooth(gx * gx), smooth(gy * gy), smooth(gx * gy)
  trace = jxx + jyy
  root = np.sqrt((jxx - jyy) ** 2 + 4 * jxy**2)
  coherence = root / (trace + 1e-12)
  angle = 0.5 * np.arctan2(2 * jxy, jxx - jyy)  # of the dominant gradient
  return np.sqrt(trace), coherence, np.stack([np.cos(angle), np.sin(angle)], -1)


def classes(hr, flat: float, coherent: float):
  """{class: boolean mask} per HR pixel, and the normal across edges."""
  rms, coherence, normal = structure(luma(hr))
  is_flat = rms < flat
  is_edge = ~is_flat & (coherence > coherent)
  return {"flat": is_flat, "edge": is_edge, "texture": ~is_flat & ~is_edge}, normal


def directional_energy(y, normal, mask):
  """(energy along the edge, across it) of y's derivatives on `mask`."""
  gy, gx = np.gradient(y)
  across = gx * normal[..., 0] + gy * normal[..., 1]
  along = -gx * normal[..., 1] + gy * normal[..., 0]
  return float(np.sum(along[mask] ** 2)), float(np.sum(across[mask] ** 2))


def band_power(y):
  """Power of y (Hann-windowed) in each of BANDS."""
  h, w = y.shape
  window = np.outer(np.hanning(h), np.hanning(w))
  power = np.abs(np.fft.fft2((y - y.mean()) * window)) ** 2
  fy, fx = np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij")
  radius = np.sqrt(fx**2 + fy**2)
  return np.array([power[(radius >= lo) & (radius < hi)].sum() for lo, hi in BANDS])


def lag_products(y, lag: int):
  """(sum of y(p) y(p + lag), sum of y^2 over the same pixels), both axes."""
  y = y - y.mean()
  num = np.sum(y[lag:] * y[:-lag]) + np.sum(y[:, lag:] * y[:, :-lag])
  den = 0.5 * (np.sum(y[lag:] ** 2 + y[:-lag] ** 2) + np.sum(y[:, lag:] ** 2 + y[:, :-lag] ** 2))
  return float(num), float(den)


def to_hr_grid(lr_map, scale: int):
  """An LR-resolution map read at each HR pixel (nearest)."""
  return np.repeat(np.repeat(lr_map, scale, 0), scale, 1)


class Model:
  """The pieces of an SRVAE the diagnosis reads, jitted once per image shape."""

  def __init__(self, model, params):
    self.model, self.params = model, params
    self.has_posterior = "posterior" in params

    def prior(params, lr):
      return self.model.apply(
        {"params": params}, lr, method=lambda m, x: vae.split_gaussian(m.prior(m.lr_encoder(x)))
      )

    def decode(params, lr, z, noise=None):
      def run(m, x, z, noise):
        upscaled = degradation.bicubic_upscale(x, m.scale)
        return m._decode(x, upscaled, m.lr_encoder(x), z, noise)

      return self.model.apply({"params": params}, lr, z, noise, method=run)

    def posterior(params, lr, hr):
      def run(m, x, y):
        features = m.lr_encoder(x)
        missing = vae.space_to_depth(y - degradation.bicubic_upscale(x, m.scale), m.scale)
        return vae.split_gaussian(m.posterior(jnp.concatenate([features, missing], -1)))

      return self.model.apply({"params": params}, lr, hr, method=run)

    self.prior, self.decode, self.posterior = jax.jit(prior), jax.jit(decode), jax.jit(posterior)


def diagnose_image(net: Model, hr_uint8, scale, temperature, samples, key, flat, coherent):
  """Sums per class (and over the image) of every quantity the report averages."""
  hr = scoring.mod_crop(hr_uint8, scale).astype(np.float32) / 255.0
  lr = np.asarray(degradation.degrade(hr, scale, 0.0))[None]
  mu, logvar = (np.asarray(a) for a in net.prior(net.params, lr))
  sigma = np.exp(0.5 * logvar)
  mean = np.asarray(net.decode(net.params, lr, mu))[0]
  masks, normal = classes(hr, flat, coherent)
  sigma_hr = to_hr_grid(sigma[0].mean(-1), scale)
  mu_hr = to_hr_grid(np.abs(mu[0]).mean(-1), scale)
  r = hr - mean
  sums = {c: {"pixels": int(m.sum())} for c, m in masks.items()}
  for c, m in masks.items():
    s = sums[c]
    s["sigma"], s["abs_mu"] = float(sigma_hr[m].sum()), float(mu_hr[m].sum())
    s["r2"] = float(np.sum(r[m] ** 2))
    s["r_chroma2"] = float(np.sum(chroma(r)[m] ** 2))
    s["r_luma2"] = float(np.sum(luma(r)[m] ** 2))
    s["r_along"], s["r_across"] = directional_energy(luma(r), normal, m)
    for k in ("d2", "d_half2", "z2", "d_chroma2", "d_luma2", "d_along", "d_across"):
      s[k] = 0.0
  whole = {"r_bands": band_power(luma(r)), "d_bands": np.zeros(len(BANDS))}
  for lag in LAGS:
    whole[f"r_lag{lag}"] = np.array(lag_products(luma(r), lag))
    whole[f"d_lag{lag}"] = np.zeros(2)
  noise_channels = getattr(net.model, "noise_channels", 0)
  for k in range(samples):
    if noise_channels:  # the samples draw smooth noise; the latent stays at its mean.
      shape = (*mu.shape[:3], noise_channels)
      draw = vae.smooth_noise(jax.random.fold_in(key, k), shape, net.model.noise_blur)
      offset = temperature * np.asarray(draw)
      d = np.asarray(net.decode(net.params, lr, mu, offset))[0] - mean
      d_half = np.asarray(net.decode(net.params, lr, mu, offset / 2))[0] - mean
    else:
      offset = (
        temperature * sigma * np.asarray(jax.random.normal(jax.random.fold_in(key, k), mu.shape))
      )
      d = np.asarray(net.decode(net.params, lr, mu + offset))[0] - mean
      d_half = np.asarray(net.decode(net.params, lr, mu + offset / 2))[0] - mean
    z2 = to_hr_grid(np.sum(offset[0] ** 2, -1), scale)
    for c, m in masks.items():
      s = sums[c]
      s["d2"] += float(np.sum(d[m] ** 2))
      s["d_half2"] += float(np.sum(d_half[m] ** 2))
      s["z2"] += float(np.sum(z2[m]))
      s["d_chroma2"] += float(np.sum(chroma(d)[m] ** 2))
      s["d_luma2"] += float(np.sum(luma(d)[m] ** 2))
      along, across = directional_energy(luma(d), normal, m)
      s["d_along"] += along
      s["d_across"] += across
    whole["d_bands"] += band_power(luma(d))
    for lag in LAGS:
      whole[f"d_lag{lag}"] += np.array(lag_products(luma(d), lag))
  if net.has_posterior:
    mu_q, logvar_q = (np.asarray(a)[0] for a in net.posterior(net.params, lr, hr[None]))
    var_p = sigma[0] ** 2
    need = to_hr_grid(np.mean(((mu_q - mu[0]) ** 2 + np.exp(logvar_q)) / var_p, -1), scale)
    for c, m in masks.items():
      sums[c]["calibration"] = float(need[m].sum())
    offsets = (mu_q - mu[0]) / sigma[0]
    whole["posterior_lag1"] = np.sum(
      [lag_products(offsets[..., j], 1) for j in range(offsets.shape[-1])], axis=0
    )
  return sums, whole


def summarise(per_class: dict, whole: dict, samples: int) -> dict:
  """Means and ratios from the summed quantities."""
  report = {"classes": {}}
  total_pixels = sum(s["pixels"] for s in per_class.values())
  for c, s in per_class.items():
    n = max(s["pixels"], 1)
    row = {
      "share_of_pixels": s["pixels"] / total_pixels,
      "prior_sigma": s["sigma"] / n,
      "prior_abs_mu": s["abs_mu"] / n,
      "rms_sample_minus_mean": np.sqrt(s["d2"] / (3 * n * samples)),
      "rms_hr_minus_mean": np.sqrt(s["r2"] / (3 * n)),
      "decoder_gain": np.sqrt(s["d2"] / 3 / max(s["z2"], 1e-12)),
      "linearity": np.sqrt(s["d2"] / max(s["d_half2"], 1e-12)),
      "chroma_share_sample": s["d_chroma2"] / max(s["d_chroma2"] + s["d_luma2"], 1e-12),
      "chroma_share_hr": s["r_chroma2"] / max(s["r_chroma2"] + s["r_luma2"], 1e-12),
      "along_over_across_sample": s["d_along"] / max(s["d_across"], 1e-12),
      "along_over_across_hr": s["r_along"] / max(s["r_across"], 1e-12),
    }
    row["sample_over_hr"] = row["rms_sample_minus_mean"] / max(row["rms_hr_minus_mean"], 1e-12)
    if "calibration" in s:
      row["prior_calibration"] = s["calibration"] / n
    report["classes"][c] = {k: float(v) for k, v in row.items()}
  for name in ("d", "r"):
    bands = whole[f"{name}_bands"]
    label = "sample_minus_mean" if name == "d" else "hr_minus_mean"
    report[f"band_share_{label}"] = {
      f"{lo:g}-{min(hi, 0.5):g}": float(b / bands.sum()) for (lo, hi), b in zip(BANDS, bands)
    }
    report[f"correlation_{label}"] = {
      f"lag{lag}": float(whole[f"{name}_lag{lag}"][0] / whole[f"{name}_lag{lag}"][1])
      for lag in LAGS
    }
  if "posterior_lag1" in whole:
    num, den = whole["posterior_lag1"]
    report["posterior_offset_lag1_correlation"] = float(num / den)
  return report


def diagnose(net, sources, scale, temperature, samples, seed, flat, coherent) -> dict:
  per_class, whole = None, None
  key = jax.random.PRNGKey(seed)
  for index, (_, load) in enumerate(sources):
    sums, image_whole = diagnose_image(
      net, load(), scale, temperature, samples, jax.random.fold_in(key, index), flat, coherent
    )
    if per_class is None:
      per_class, whole = sums, image_whole
      continue
    for c in per_class:
      for k, v in sums[c].items():
        per_class[c][k] += v
    for k, v in image_whole.items():
      whole[k] = whole[k] + v
  return summarise(per_class, whole, samples)


def format_report(report: dict) -> str:
  rows = [
    ("share of pixels", "share_of_pixels", "{:.2f}"),
    ("prior sigma (mean over channels)", "prior_sigma", "{:.3f}"),
    ("prior |mu|", "prior_abs_mu", "{:.3f}"),
    ("RMS sample - mean", "rms_sample_minus_mean", "{:.4f}"),
    ("RMS HR - mean", "rms_hr_minus_mean", "{:.4f}"),
    ("  ratio (sample / HR)", "sample_over_hr", "{:.2f}"),
    ("decoder gain (px per unit z)", "decoder_gain", "{:.4f}"),
    ("linearity (2 if linear)", "linearity", "{:.2f}"),
    ("along/across edge, sample", "along_over_across_sample", "{:.2f}"),
    ("along/across edge, HR", "along_over_across_hr", "{:.2f}"),
    ("chroma share, sample", "chroma_share_sample", "{:.2f}"),
    ("chroma share, HR", "chroma_share_hr", "{:.2f}"),
    ("prior calibration (1: right)", "prior_calibration", "{:.2f}"),
  ]
  classes_ = report["classes"]
  lines = [f"{'':34s}" + "".join(f"{c:>10s}" for c in CLASSES)]
  for label, key, fmt in rows:
    if key in classes_["flat"]:
      cells = "".join(f"{fmt.format(classes_[c][key]):>10s}" for c in CLASSES)
      lines.append(f"{label:34s}{cells}")
  for label in ("sample_minus_mean", "hr_minus_mean"):
    bands = ", ".join(f"{k}: {v:.2f}" for k, v in report[f"band_share_{label}"].items())
    lags = ", ".join(f"{k}: {v:.2f}" for k, v in report[f"correlation_{label}"].items())
    lines.append(f"{label}: power by band (cycles/px) {bands}; correlation {lags}")
  if "posterior_offset_lag1_correlation" in report:
    lines.append(
      "posterior offsets (mu_q - mu_p) / sigma_p, lag-1 correlation: "
      f"{report['posterior_offset_lag1_correlation']:.2f} (prior samples: 0)"
    )
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", help="a released model's name (default x4-perceptual)")
  parser.add_argument("--workdir", help="or a run's workdir (with the posterior)")
  parser.add_argument("--step", type=int, help="with --workdir: the checkpoint step")
  parser.add_argument("--data-dir", required=True, help="HR image folders, comma-separated")
  parser.add_argument("--num-images", type=int, default=0, help="first N per folder; 0: all")
  parser.add_argument("--samples", type=int, default=4)
  parser.add_argument("--temperature", type=float, default=inference.DEFAULT_TEMPERATURE)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--flat", type=float, default=0.02, help="gradient RMS below: flat")
  parser.add_argument("--coherence", type=float, default=0.6, help="coherence above: edge")
  parser.add_argument("--output", help="JSON file to write")
  args = parser.parse_args(argv)
  if args.workdir:
    config, model, params, _ = inference.restore_model(args.workdir, args.step)
    source = {"workdir": args.workdir}
  else:
    config, model, params, source = inference.load_model(name=args.model or "x4-perceptual")
  sources = []
  for folder in data_root.split(args.data_dir):
    found = scoring.folder_sources(folder)
    sources += found[: args.num_images] if args.num_images else found
  report = diagnose(
    Model(model, jax.device_get(params)),
    sources,
    config.data.scale,
    args.temperature,
    args.samples,
    args.seed,
    args.flat,
    args.coherence,
  )
  report = dict(
    source,
    data=args.data_dir,
    images=len(sources),
    samples=args.samples,
    temperature=args.temperature,
    **report,
  )
  print(format_report(report))
  if args.output:
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
      json.dump(report, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
