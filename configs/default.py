"""The default: a conditional SR-VAE with a perceptual loss, on Oxford-IIIT Pet at x2.

The decoder sees the LR image and predicts a residual over bicubic upsampling; a
per-pixel latent, inferred from the HR while training and drawn from a learned
prior at test time, carries the detail the LR lacks.

Reductions: L_vae = recon_weight * mean pixel MSE + kl_weight * KL (summed over
latent units, averaged over the batch, divided by the HR values per image);
L_perceptual = mean squared relu3_3 difference. gamma=5e-4 weights the feature MSE
against the pixel MSE (>= 1e-3 stalls learning at bicubic). kl_weight=3e-5: at 1e-3
the mean output's LPIPS was worse (Set14 x2 0.79x bicubic's against 0.73x).

Run (GPU/TPU; TFDS downloads the pets on first use):
  python -m percvae_jax.main --config configs/default.py --workdir runs/default

Result: not run on Oxford pets here (no download, no accelerator on the machine
that built it). The same model, narrowed to 32 channels x 4 blocks and trained for
400 steps on SunHays80 crops in the CPU budget of scripts/benchmark_quality.py (2
cores, 17 min for the whole benchmark; blur 0, classic protocol), at x2:
Set5 35.13 dB Y-PSNR (bicubic 33.68), LPIPS 0.080 (bicubic 0.128);
Set14 31.48 dB (bicubic 30.33), LPIPS 0.136 (bicubic 0.186); prior samples at
temperature 0.75 differ by LPIPS 0.014 and lie within 6% of the mean output's LPIPS.
"""

from percvae_jax import config as config_lib


def get_config():
  return config_lib.base()
