"""The released `x3` model: the SR-VAE trained for PSNR (fidelity) at x3.

Recipe: `percvae_jax.config.fidelity_sr` — the 291 images (T91 + BSD200), bicubic LR
without blur, pixel MSE on the VAE's and the generated output, KL 1e-3, 32x4 trunk,
72 px HR crops, batch 16, Adam 1e-3 with cosine decay.

Run (from the repository's root, ../shared/data beside it):
  python -m percvae_jax.main --config configs/release_x3.py --workdir runs/release_x3
  python scripts/release_model.py --workdir runs/release_x3 --name x3

Result (AMD EPYC with AVX2, no AVX-512; 2 cores shared with two scoring jobs
throughout: 1.0 hour of wall time for 10,000 steps; jax 0.10.2), classic protocol,
Y-PSNR / SSIM / LPIPS (AlexNet):
  Set5 33.22 / 0.9161 / 0.124, Set14 29.61 / 0.8279 / 0.217, BSD100 28.63 / 0.7934 / 0.301
  (the previous release, 5,000 steps: 33.06, 29.51, 28.55; VDSR 33.66, 29.77, 28.82;
  LapSRN 33.82, 29.87, 28.82; SRCNN 32.75, 29.30, 28.41; bicubic 30.39, 27.55, 27.21).
"""

from percvae_jax import config as config_lib


def get_config():
  config = config_lib.fidelity_sr(3)
  config.train.num_steps = 10_000
  return config
