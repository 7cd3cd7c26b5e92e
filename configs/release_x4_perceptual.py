"""The released `x4-perceptual` model: the x4 SR-VAE fine-tuned with the perceptual
term as the main one, and its outputs projected onto the LR.

Recipe: from the first `x4` release (4 blocks of 32 channels; the released `x4` is
now larger), on the 291 images with the classic degradation. The perceptual term:
VGG16's relu1_2, relu2_2, relu3_3 and relu4_3, features unit-normalised per channel
(loss.perceptual_norm=channel: each tap's distance in [0, 4] whatever its magnitude
or the crop size), measured on the
generated output (the prior's mean, what users get), weighted gamma=0.1: its
value is ~20-50x the pixel terms'. Every output is projected onto the images whose
bicubic downscale is the LR input (model.lr_consistent), so the detail it adds never
changes what the LR determines. The VAE's own terms (pixel MSE of its output, KL 1e-3)
keep the latent in use, so prior samples differ in texture.

Run (from the repository's root, ../shared/data beside it), the first `x4` (1.3 hours
on 2 cores), then the fine-tuning:
  python -m percvae_jax.main --config configs/release_x4.py --workdir runs/release_x4_32x4 \\
      --config.model.features=32 --config.model.num_blocks=4 \\
      --config.loss.pixel_loss=mse --config.train.num_steps=12000
  python -m percvae_jax.main --config configs/release_x4_perceptual.py \\
      --workdir runs/release_x4_perceptual
  python scripts/release_model.py --workdir runs/release_x4_perceptual --name x4-perceptual

Result (AMD EPYC, 2 cores, shared with other jobs: 0.4 hours of wall time for 1,000
steps; jax 0.10.2), classic protocol, Y-PSNR / SSIM / LPIPS (AlexNet) / LR-PSNR:
  Set5 30.50 / 0.8582 / 0.127 / 72.1, Set14 27.57 / 0.7473 / 0.220 / 69.6,
  BSD100 26.84 / 0.7042 / 0.294 / 71.8
  (the first x4: LPIPS 0.182, 0.297, 0.393, so 0.70x, 0.74x, 0.75x of it; Y-PSNR
  0.3-0.5 dB below its; Johnson et al. 27.09, 24.99, 24.95 dB).
It was trained with direct VGG16 convolutions, before loss.vgg_convolution=auto chose
Winograd's on CPUs (the same features to ~1e-5, faster): add
--config.loss.vgg_convolution=direct to repeat its arithmetic exactly.
"""

from percvae_jax import config as config_lib


def get_config():
  config = config_lib.fidelity_sr(4)
  config.model.lr_consistent = True
  config.loss.gamma = 0.1
  config.loss.perceptual_layers = "relu1_2,relu2_2,relu3_3,relu4_3"
  config.loss.perceptual_norm = "channel"
  config.loss.perceptual_on = "generated"
  config.train.init_from = "runs/release_x4_32x4"
  config.train.batch_size = 8
  config.train.learning_rate = 2e-4
  config.train.warmup_steps = 50
  config.train.num_steps = 1_000
  config.train.log_every = 50
  config.train.eval_every = 250
  config.train.checkpoint_every = 250
  return config
