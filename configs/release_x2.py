"""The released `x2` model: the SR-VAE trained for PSNR (fidelity) at x2.

Recipe: `percvae_jax.config.fidelity_sr` — the 291 images (T91 + BSD200), bicubic LR
without blur, pixel MSE on the VAE's and the generated output, KL 1e-3, 32x4 trunk,
64 px HR crops, batch 16, Adam 1e-3 with cosine decay.

Run (from the repository's root, ../shared/data beside it):
  python -m percvae_jax.main --config configs/release_x2.py --workdir runs/release_x2
  python scripts/release_model.py --workdir runs/release_x2 --name x2

Result (AMD EPYC, 2 cores, shared with another training most of the time: 2.6 hours
of wall time for 16,000 steps, resumed once; jax 0.10.2), classic protocol, Y-PSNR /
SSIM / LPIPS (AlexNet):
  Set5 37.27 / 0.9579 / 0.054, Set14 32.92 / 0.9116 / 0.096, BSD100 31.76 / 0.8943 / 0.149
  (SRCNN 36.66, 32.42, 31.36; FSRCNN 37.00, 32.63, 31.53; VDSR 37.53, 33.03, 31.90).
"""

from percvae_jax import config as config_lib


def get_config():
  config = config_lib.fidelity_sr(2)
  config.train.num_steps = 16_000
  return config
