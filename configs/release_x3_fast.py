"""The released `x3-fast` model: the fidelity recipe at x3 on a 16-channel trunk.

Recipe: `percvae_jax.config.fidelity_sr(3, features=16)` — the `x3` recipe (the 291
images, bicubic LR without blur, pixel MSE, KL 1e-3, 72 px HR crops, batch 16, Adam
1e-3 with cosine decay) with 16 channels instead of 32: a quarter of the
multiply-adds, for laptops that want speed over the last tenths of a dB.

Run (from the repository's root, ../shared/data beside it):
  python -m percvae_jax.main --config configs/release_x3_fast.py --workdir runs/release_x3_fast
  python scripts/release_model.py --workdir runs/release_x3_fast --name x3-fast

Result (AMD EPYC with AVX2, no AVX-512; 2 cores, shared with scoring runs: 18 minutes
of wall time for 12,000 steps; jax 0.10.2), classic protocol, Y-PSNR / SSIM / LPIPS:
  Set5 32.94 / 0.9124 / 0.126, Set14 29.45 / 0.8244 / 0.221, BSD100 28.49 / 0.7900 / 0.306
  (x3: 33.22, 29.61, 28.63; OpenCV's FSRCNN and ESPCN on BSD100: 27.19, 27.13).
36K parameters, 7.9K FLOPs per output pixel (x3: 132K, 29.0K).
"""

from percvae_jax import config as config_lib


def get_config():
  config = config_lib.fidelity_sr(3, features=16)
  config.train.num_steps = 12_000
  return config
