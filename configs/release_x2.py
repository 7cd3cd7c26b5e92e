"""The released `x2` model: the SR-VAE trained for PSNR (fidelity) at x2.

Recipe: `percvae_jax.config.fidelity_sr` — the 291 images (T91 + BSD200), bicubic LR
without blur, pixel distance on the VAE's and the generated output, KL 1e-3, 64 px HR
crops, batch 16, Adam 1e-3 with cosine decay — with an `x4`'s trunk (8
blocks of 48 channels, Charbonnier) as its start (by default the released `x4`'s, a
fine-tune; the run below names x4's first stage, as the release did): the layers
whose shape depends on the scale (upsampling head, posterior input) start fresh, as
EDSR fine-tunes one scale from another. 5,000 steps.

A second stage then sees the same images at several scales, as LapSRN and VDSR train:
4,000 steps at Adam 5e-4 from the first stage, each crop taken from a window 1/s its
side (s uniform in [0.5, 1]) and downscaled to it (`data.min_downscale`).

Run (from the repository's root, ../shared/data beside it):
  python -m percvae_jax.main --config configs/release_x2.py --workdir runs/release_x2 \
    --config.train.init_from=runs/release_x4
  python -m percvae_jax.main --config configs/release_x2.py --workdir runs/release_x2_scales \
    --config.train.init_from=runs/release_x2 --config.data.min_downscale=0.5 \
    --config.train.num_steps=4000 --config.train.learning_rate=5e-4
  python scripts/release_model.py --workdir runs/release_x2_scales --name x2
(The released first stage started from the `x4` of 2026-12-06, configs/release_x4.py's
first stage, as the run names it: the released `x4` is since trained from `x3`; the second from the
first stage's release, `x2` of 2026-12-06, with --config.train.init_from=x2
--config.train.posterior_from_prior=True: a release keeps no posterior, and q = p
starts its KL at 0.)

Result (first stage: AMD EPYC with AVX-512, 2 cores, shared with a scoring job for a
few minutes: 44 minutes for 5,000 steps; second stage: AMD EPYC with AVX2 only, 2
cores, 62 minutes for 4,000 steps, ~19 images/s; jax 0.10.2; 2026-12-06 and
2026-12-07), classic protocol, Y-PSNR / SSIM / LPIPS (AlexNet):
  Set5 37.57 / 0.9592 / 0.055, Set14 33.13 / 0.9138 / 0.096, BSD100 31.92 / 0.8965 / 0.149
  (VDSR 37.53, 33.03, 31.90; LapSRN 37.52, 33.08, 31.80); held out, the first 20
  images: Urban100 30.28, Manga109 38.19 dB. 448K parameters, 221K FLOPs per output
  pixel. The first stage alone: 37.47 / 33.10 / 31.91 (Urban100 30.25, Manga109 37.86).
The previous `x2` (4 blocks of 32, MSE, from scratch: 37.27 / 32.92 / 31.76; Urban100
29.82, Manga109 37.40) is this config with --config.model.features=32
--config.model.num_blocks=4 --config.loss.pixel_loss=mse --config.train.init_from=''
--config.train.num_steps=16000.
"""

from percvae_jax import config as config_lib


def get_config():
  config = config_lib.fidelity_sr(2, features=48)
  config.model.num_blocks = 8
  config.loss.pixel_loss = "charbonnier"
  config.train.init_from = "x4"
  config.train.num_steps = 5_000
  return config
