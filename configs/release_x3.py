"""The released `x3` model: the SR-VAE trained for PSNR (fidelity) at x3.

Recipe: `percvae_jax.config.fidelity_sr` — the 291 images (T91 + BSD200), bicubic LR
without blur, pixel distance on the VAE's and the generated output, KL 1e-3, 72 px HR
crops, batch 16, Adam 1e-3 with cosine decay — with an `x4`'s trunk (8 blocks of 48
channels, Charbonnier) as its start (by default the released `x4`'s, a fine-tune; the
run below names x4's first stage, as the release did): the layers whose shape depends
on the scale (upsampling head, posterior input) start fresh, as EDSR fine-tunes one
scale from another. 12,000 steps, then 4,000 more from that model at Adam 2e-4 (a
second cosine cycle), then 4,000 more at Adam 5e-4 with each crop seen at a random
scale in [0.5, 1] (`data.min_downscale`, as LapSRN and VDSR train). The released one
started from the `x4` of 2026-12-06 (31.38 / 28.12 / 27.29), configs/release_x4.py's
first stage: the released `x4` is since trained from this `x3`, so the run names that
stage's workdir.

Run (from the repository's root, ../shared/data beside it):
  python -m percvae_jax.main --config configs/release_x3.py --workdir runs/release_x3 \
    --config.train.init_from=runs/release_x4
  python -m percvae_jax.main --config configs/release_x3.py --workdir runs/release_x3_more \
    --config.train.init_from=runs/release_x3 --config.train.num_steps=4000 \
    --config.train.learning_rate=2e-4
  python -m percvae_jax.main --config configs/release_x3.py --workdir runs/release_x3_scales \
    --config.train.init_from=runs/release_x3_more --config.data.min_downscale=0.5 \
    --config.train.num_steps=4000 --config.train.learning_rate=5e-4
  python scripts/release_model.py --workdir runs/release_x3_scales --name x3
(The released second stage started from the first stage's release, `x3` of
2026-12-06, with --config.train.init_from=x3 --config.train.posterior_from_prior=True:
a release keeps no posterior, and q = p starts its KL at 0; the third from the second's
release, the same way, on 2026-12-07.)

Result (first stage: AMD EPYC with AVX-512, 2 cores, 58 minutes for 12,000 steps;
second and third: AMD EPYC with AVX2 only, 2 cores, 39 and 38 minutes for 4,000 steps
each, about 30 images/s; jax 0.10.2; 2026-12-06 and 2026-12-07), classic protocol,
Y-PSNR / SSIM / LPIPS (AlexNet):
  Set5 33.83 / 0.9224 / 0.123, Set14 29.88 / 0.8336 / 0.214, BSD100 28.85 / 0.7995 / 0.290
  (VDSR 33.66, 29.77, 28.82; LapSRN 33.82, 29.87, 28.82); held out, the first 20
  images: Urban100 26.58, Manga109 32.72 dB. 455K parameters, 99.8K FLOPs per output
  pixel. After the first stage: 33.77 / 29.85 / 28.85 (Urban100 26.54, Manga109
  32.58); after the second: 33.79 / 29.85 / 28.85 (26.54, 32.59).
The previous `x3` (4 blocks of 32, MSE, from scratch: 33.22 / 29.61 / 28.63; Urban100
26.14, Manga109 31.87) is this config with --config.model.features=32
--config.model.num_blocks=4 --config.loss.pixel_loss=mse --config.train.init_from=''
--config.train.num_steps=10000.
"""

from percvae_jax import config as config_lib


def get_config():
  config = config_lib.fidelity_sr(3, features=48)
  config.model.num_blocks = 8
  config.loss.pixel_loss = "charbonnier"
  config.train.init_from = "x4"
  config.train.num_steps = 12_000
  return config
