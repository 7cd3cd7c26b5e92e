"""The default: the conditional SR-VAE with the full objective, on Oxford-IIIT Pet at x2.

The decoder sees the LR image and predicts a residual over bicubic upsampling; a
per-pixel latent, inferred from the HR while training and drawn from a learned
prior at test time, carries the detail the LR lacks. The degradation is the paper's
(Gaussian blur, sigma 1, then bicubic downscaling).

Objective (percvae_jax/losses.py): pixel MSE of the VAE's output and of the generated
output (the prior's mean: what users get), KL at 1e-3 per HR value, and the perceptual
term at gamma=0.01: VGG16's relu1_2, relu2_2 and relu3_3, features unit-normalised per
channel (each tap's distance in [0, 4]), measured on the generated output. The paper's
plain relu3_3 MSE stalled learning at weights of 1e-3 or more; README ("The perceptual
loss: why it stalled") has the measurements and the fix.

Run (GPU/TPU; needs `pip install 'percvae_jax[pets]'`; TFDS downloads the pets on
first use):
  python -m percvae_jax.main --config configs/default.py --workdir runs/default

Result: not run on Oxford pets (no download and no accelerator where it was built).
The same objective at x4 on the 291 images is configs/release_x4_perceptual.py, with
its measured results.
"""

from percvae_jax import config as config_lib


def get_config():
  return config_lib.base()
