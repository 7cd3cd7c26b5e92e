"""The released `x2-fast` model: the fidelity recipe at x2 on a 16-channel trunk.

Recipe: `percvae_jax.config.fidelity_sr(2, features=16)` — the `x2` recipe (the 291
images, bicubic LR without blur, pixel MSE, KL 1e-3, 64 px HR crops, batch 16, Adam
1e-3 with cosine decay) with 16 channels instead of 32: a quarter of the
multiply-adds, for laptops that want speed over the last tenths of a dB.

Run (from the repository's root, ../shared/data beside it):
  python -m percvae_jax.main --config configs/release_x2_fast.py --workdir runs/release_x2_fast
  python scripts/release_model.py --workdir runs/release_x2_fast --name x2-fast

Result (AMD EPYC with AVX2, no AVX-512; 2 cores, shared with scoring runs: 20 minutes
of wall time for 12,000 steps; jax 0.10.2), classic protocol, Y-PSNR / SSIM / LPIPS:
  Set5 37.01 / 0.9566 / 0.055, Set14 32.71 / 0.9096 / 0.098, BSD100 31.56 / 0.8918 / 0.152
  (x2: 37.27, 32.92, 31.76; OpenCV's FSRCNN and ESPCN on BSD100: 30.24, 30.10).
34K parameters, 16.7K FLOPs per output pixel (x2: 128K, 63.1K).
"""

from percvae_jax import config as config_lib


def get_config():
  config = config_lib.fidelity_sr(2, features=16)
  config.train.num_steps = 12_000
  return config
