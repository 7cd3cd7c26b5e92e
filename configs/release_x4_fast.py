"""The released `x4-fast` model: the fidelity recipe at x4 on a 16-channel trunk.

Recipe: `percvae_jax.config.fidelity_sr(4, features=16)` — the `x4` recipe (the 291
images, bicubic LR without blur, pixel MSE, KL 1e-3, 96 px HR crops, batch 16, Adam
1e-3 with cosine decay) with 16 channels instead of 32: a quarter of the
multiply-adds, for laptops that want speed over the last tenths of a dB.

Run (from the repository's root, ../shared/data beside it):
  python -m percvae_jax.main --config configs/release_x4_fast.py --workdir runs/release_x4_fast
  python scripts/release_model.py --workdir runs/release_x4_fast --name x4-fast

Result (AMD EPYC with AVX2, no AVX-512; 2 cores, alone for most of the run: 12 minutes
of wall time for 12,000 steps; jax 0.10.2), classic protocol, Y-PSNR / SSIM / LPIPS:
  Set5 30.61 / 0.8656 / 0.195, Set14 27.65 / 0.7567 / 0.310, BSD100 26.99 / 0.7155 / 0.407
  (x4: 31.01, 27.91, 27.13; OpenCV's LapSRN and FSRCNN on BSD100: 26.02, 25.89).
39K parameters, 4.8K FLOPs per output pixel (x4: 138K, 17.1K).
"""

from percvae_jax import config as config_lib


def get_config():
  config = config_lib.fidelity_sr(4, features=16)
  config.train.num_steps = 12_000
  return config
