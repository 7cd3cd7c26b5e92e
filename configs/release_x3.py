"""The released `x3` model: the SR-VAE trained for PSNR (fidelity) at x3.

Recipe: `percvae_jax.config.fidelity_sr` — the 291 images (T91 + BSD200), bicubic LR
without blur, pixel MSE on the VAE's and the generated output, KL 1e-3, 32x4 trunk,
72 px HR crops, batch 16, Adam 1e-3 with cosine decay.

Run (from the repository's root, ../shared/data beside it):
  python -m percvae_jax.main --config configs/release_x3.py --workdir runs/release_x3
  python scripts/release_model.py --workdir runs/release_x3 --name x3

Result (AMD EPYC, 2 cores, shared with another training part of the time: 0.3 hours
of wall time for 5,000 steps; jax 0.10.2), classic protocol, Y-PSNR / SSIM / LPIPS
(AlexNet):
  Set5 33.06 / 0.9138 / 0.126, Set14 29.51 / 0.8258 / 0.220, BSD100 28.55 / 0.7913 / 0.306
  (SRCNN 32.75, 29.30, 28.41; bicubic 30.39, 27.55, 27.21).
"""

from percvae_jax import config as config_lib


def get_config():
  config = config_lib.fidelity_sr(3)
  config.train.num_steps = 5_000
  return config
