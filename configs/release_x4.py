"""The released `x4` model: the SR-VAE trained for PSNR (fidelity) at x4.

Recipe: `percvae_jax.config.fidelity_sr` — the 291 images (T91 + BSD200), bicubic LR
without blur, pixel distance on the VAE's and the generated output, KL 1e-3, 96 px HR
crops (one T91 image is smaller and is skipped), batch 16, Adam 1e-3 with cosine
decay — with a trunk of 8 blocks of 48 channels (464K parameters, 57.2K FLOPs per
output pixel) and the Charbonnier distance, for 16,000 steps (docs/results.md, "What
buys dB per FLOP": depth and width bought the most).

Its trunk then trains the released `x3` (configs/release_x3.py), and a last stage
brings it back to x4: 7,000 steps at Adam 5e-4 from that `x3` (the layers whose shape
depends on the scale start fresh), each crop taken from a window 1/s its side (s
uniform in [0.5, 1]) and downscaled to it (`data.min_downscale`), as LapSRN and VDSR
train. Two fine-tunes of that model follow (8,000 steps with an EMA of the weights;
3,000 steps with the MSE on 128 px crops), and the release is the mean of the three
models' parameters, a model soup (one model's fine-tunes stay in one basin).

Run (from the repository's root, ../shared/data beside it; the middle line is
configs/release_x3.py's docstring, whose first stage starts from runs/release_x4):
  python -m percvae_jax.main --config configs/release_x4.py --workdir runs/release_x4
  (configs/release_x3.py's three stages, into runs/release_x3_scales)
  python -m percvae_jax.main --config configs/release_x4.py --workdir runs/release_x4_scales \
    --config.train.init_from=runs/release_x3_scales --config.data.min_downscale=0.5 \
    --config.train.num_steps=7000 --config.train.learning_rate=5e-4
  python -m percvae_jax.main --config configs/release_x4.py --workdir runs/release_x4_ema \
    --config.train.init_from=runs/release_x4_scales --config.data.min_downscale=0.5 \
    --config.train.num_steps=8000 --config.train.learning_rate=5e-4 \
    --config.train.ema_decay=0.999
  python -m percvae_jax.main --config configs/release_x4.py --workdir runs/release_x4_mse \
    --config.train.init_from=runs/release_x4_scales --config.data.min_downscale=0.5 \
    --config.data.hr_size=128 --config.loss.pixel_loss=mse --config.train.num_steps=3000 \
    --config.train.learning_rate=2e-4 --config.train.warmup_steps=100
  python scripts/release_model.py --name x4 --workdir runs/release_x4_scales \
    --workdir runs/release_x4_ema --workdir runs/release_x4_mse
(The released last stage started from the released `x3` of 2026-12-07, with
--config.train.init_from=x3 --config.train.posterior_from_prior=True: a release keeps
no posterior, and q = p starts its KL at 0; the two fine-tunes started from that
release the same way, with --config.train.init_from=x4.)

Result (first stage: AMD EPYC with AVX-512, 2 cores, shared with another training for
most of it: 1.5 hours of wall time for 16,000 steps; last stage: AMD EPYC with AVX2
only, 2 cores, 56 minutes of training for 7,000 steps, ~35 images/s; the fine-tunes 66
and 56 minutes; jax 0.10.2; 2026-12-06 and 2026-12-07), classic protocol, Y-PSNR /
SSIM / LPIPS (AlexNet):
  Set5 31.58 / 0.8863 / 0.171, Set14 28.18 / 0.7715 / 0.289, BSD100 27.35 / 0.7284 / 0.383
  (Set14 28.177; VDSR 31.35, 28.01, 27.29; LapSRN 31.54, 28.19, 27.32); held out, the
  first 20 images: Urban100 24.80, Manga109 29.66 dB. With --ensemble: 31.77 / 28.31 /
  27.41. The last stage alone (released
  until the soup): 31.55 / 28.16 / 27.34 (Urban100 24.79, Manga109 29.62); with
  --ensemble 31.74 / 28.30 / 27.40; the EMA fine-tune alone 31.55 / 28.16 / 27.34, the
  MSE one 31.51 / 28.15 / 27.35. The first
  stage alone: 31.38 / 28.12 / 27.29 (Urban100 24.69, Manga109 29.42); 5,000 steps with
  the scales from it instead of x3's trunk (the morning's `x4` of 2026-12-07): 31.43 /
  28.13 / 27.31 (Urban100 24.75, Manga109 29.49).
The previous `x4` (4 blocks of 32, MSE, 12,000 steps: 31.01 / 27.91 / 27.13) is this
config with --config.model.features=32 --config.model.num_blocks=4
--config.loss.pixel_loss=mse --config.train.num_steps=12000; `x4-perceptual` starts
from it (configs/release_x4_perceptual.py).
"""

from percvae_jax import config as config_lib


def get_config():
  config = config_lib.fidelity_sr(4, features=48)
  config.model.num_blocks = 8
  config.loss.pixel_loss = "charbonnier"
  config.train.num_steps = 16_000
  return config
