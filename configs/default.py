"""The default: a conditional SR-VAE with a perceptual loss, on Oxford-IIIT Pet at x2.

The decoder sees the LR image and predicts a residual over bicubic upsampling; a
per-pixel latent, inferred from the HR while training and drawn from a learned
prior at test time, carries the detail the LR lacks.

Reductions: L_vae = recon_weight * mean pixel MSE + kl_weight * KL (summed over
latent units, averaged over the batch, divided by the HR values per image);
L_perceptual = mean squared relu3_3 difference. gamma=1e-4 weights the feature MSE
against the pixel MSE: >= 1e-3 stalls learning at bicubic.

Run (GPU/TPU; TFDS downloads the pets on first use):
  python -m percvae_jax.main --config configs/default.py --workdir runs/default

Result: not run on Oxford pets here (no download, no accelerator on the machine
that built it). The same model trained on SunHays80 crops in the CPU budget of
scripts/benchmark_quality.py (2 cores, blur 0, evaluated with the classic protocol):
Set5 x2 35.25 dB Y-PSNR (bicubic 33.68), LPIPS 0.086 (bicubic 0.128).
"""

from percvae_jax import config as config_lib


def get_config():
  return config_lib.base()
