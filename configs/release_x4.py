"""The released `x4` model: the SR-VAE trained for PSNR (fidelity) at x4.

Recipe: `percvae_jax.config.fidelity_sr` — the 291 images (T91 + BSD200), bicubic LR
without blur, pixel MSE on the VAE's and the generated output, KL 1e-3, 32x4 trunk,
96 px HR crops (one T91 image is smaller and is skipped), batch 16, Adam 1e-3 with
cosine decay.

Run (from the repository's root, ../shared/data beside it):
  python -m percvae_jax.main --config configs/release_x4.py --workdir runs/release_x4
  python scripts/release_model.py --workdir runs/release_x4 --name x4

Result (AMD EPYC, 2 cores, shared with another training most of the time: 1.3 hours
of wall time for 12,000 steps, resumed once; jax 0.10.2), classic protocol, Y-PSNR /
SSIM / LPIPS (AlexNet):
  Set5 31.01 / 0.8743 / 0.182, Set14 27.91 / 0.7629 / 0.297, BSD100 27.13 / 0.7204 / 0.393
  (SRCNN 30.48, 27.49, 26.90; FSRCNN 30.72, 27.61, 26.98; VDSR 31.35, 28.01, 27.29).
"""

from percvae_jax import config as config_lib


def get_config():
  config = config_lib.fidelity_sr(4)
  config.train.num_steps = 12_000
  return config
