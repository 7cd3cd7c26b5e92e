"""Scores a model as the published SR tables do, with bicubic side by side.

  python -m percvae_jax.evaluate --scale 2 --data-dir ../shared/data/Set5  # released x2
  python -m percvae_jax.evaluate --model x4-perceptual --data-dir ../shared/data/BSD100
  python -m percvae_jax.evaluate --workdir DIR --data-dir ../shared/data/Set5
  python -m percvae_jax.evaluate --workdir DIR --dataset oxford_iiit_pet --num_images 100

Protocols: `classic` (the tables' convention) mod-crops each HR image to a multiple of
the scale and makes its LR by PIL-exact bicubic downscaling, quantised to 8 bits;
`train` uses the degradation the checkpoint was trained with (its blur). The model
runs on each whole image (by tiles, see inference.py) and, like bicubic, its output
is clipped and quantised to 8 bits before it is measured, as a saved PNG would be.
Metrics per image and averaged: PSNR and SSIM on RGB, on BT.601 Y with `scale` px of
border shaved, and LPIPS (AlexNet). Writes a JSON file and LR | bicubic | SR | HR
grids of the first images next to it (by default in DIR/eval/).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging
from PIL import Image
from tqdm import tqdm

from percvae_jax import cli, cpu_settings, data, degradation, inference, lpips, metrics, reporting
from percvae_jax.errors import DataError, InferenceError

PROTOCOLS = ("classic", "train")
DATASETS = ("oxford_iiit_pet", "embedded")
METRICS = ("psnr_rgb", "ssim_rgb", "psnr_y", "ssim_y", "lpips", "lr_psnr")
SAMPLE_METRICS = (
  "lpips",
  "pairwise_lpips",
  "lr_psnr",
  "worst_lr_psnr",
  "best_of_k_lpips",
  "diversity",
)
# LPIPS's AlexNet needs 31 px on a side; SSIM's 11 px window fits inside the shaved Y.
MIN_HR_SIDE = 32
GRID_CROP = 192  # HR px on a side of the crop each grid shows.


def folder_sources(root: str) -> list:
  """(name, load) per image file below `root`; `load()` may raise data.BadImage."""
  if not os.path.isdir(root):
    raise DataError(
      f"--data-dir={root!r} is not a directory; point it at a folder of HR images, such as Set5."
    )
  paths = data.list_images(root)
  if not paths:
    raise DataError(
      f"--data-dir={root!r} holds no image files ({', '.join(data.IMAGE_EXTENSIONS)}); "
      "point it at a folder of HR images, such as Set5."
    )
  return [(os.path.relpath(p, root), functools.partial(data.decode_image, p)) for p in paths]


def dataset_sources(data_config, name: str, tfds_data_dir: str | None) -> list:
  """(name, load) per image of a dataset's evaluation split, decoded when loaded."""
  data_config = ml_collections.ConfigDict(data_config.to_dict())
  data_config.name = name
  if tfds_data_dir is not None:
    data_config.tfds_data_dir = tfds_data_dir
  images = data.load_split(data_config, "eval")
  # `images.load`, not `images[i]`: the latter caches every decoded image.
  return [(images.names[i], functools.partial(images.load, i)) for i in range(len(images))]


def mod_crop(image: np.ndarray, scale: int) -> np.ndarray:
  """The top-left crop whose sides are multiples of `scale` (MATLAB's modcrop)."""
  height, width = image.shape[:2]
  return image[: height - height % scale, : width - width % scale]


@functools.partial(jax.jit, static_argnames="border")
def _quality(images, targets, border):
  return metrics.quality(images, targets, border)


@functools.partial(jax.jit, static_argnames=("scale", "blur_sigma"))
def _lr_psnr(images, lr, scale, blur_sigma):
  """NTIRE 2021's LR consistency: RGB PSNR of the SR downscaled with the degradation's
  kernel against the LR input."""
  return metrics.psnr(degradation.downscale(images, scale, blur_sigma), lr)


@dataclasses.dataclass
class Samples:
  """Draw K prior samples of each image (`upscale --samples K`) and score them."""

  count: int
  lpips_map: Any  # spatial LPIPS: (N, H, W) maps, for the diversity score.
  seed: int = 0


def score(
  hr_uint8: np.ndarray,
  scale: int,
  blur_sigma: float,
  lpips_fn,
  upscaler: inference.Upscaler | None = None,
  samples: Samples | None = None,
  index: int = 0,
) -> tuple[dict, dict]:
  """Metrics of bicubic (and of `upscaler`, if given) on one mod-cropped HR image.

  Returns ({"bicubic": M, "model": M[, "samples": S]}, the uint8 images {"lr",
  "bicubic", "model", "hr"}), M holding METRICS and S SAMPLE_METRICS (`sample_scores`).
  Both outputs are measured in one batch: one compile.
  """
  hr = hr_uint8.astype(np.float32) / 255.0
  lr = np.asarray(degradation.degrade(hr, scale, blur_sigma))
  images = {"bicubic": inference.to_uint8(np.asarray(degradation.bicubic_upscale(lr, scale)))}
  if upscaler is not None:
    images["model"] = inference.to_uint8(upscaler(lr))
  outputs = np.stack(list(images.values())).astype(np.float32) / 255.0
  targets = np.broadcast_to(hr, outputs.shape)
  values = dict(
    _quality(outputs, targets, scale),
    lpips=lpips_fn(outputs, targets),
    lr_psnr=_lr_psnr(outputs, lr[None], scale, blur_sigma),
  )
  values = jax.device_get(values)
  scores = {kind: {m: float(values[m][k]) for m in METRICS} for k, kind in enumerate(images)}
  if upscaler is not None and samples is not None and samples.count > 0:
    key = jax.random.fold_in(jax.random.PRNGKey(samples.seed), index)
    scores["samples"] = sample_scores(hr, lr, scale, blur_sigma, upscaler, lpips_fn, samples, key)
  return scores, dict(images, lr=inference.to_uint8(lr), hr=hr_uint8)


def sample_scores(
  hr, lr, scale: int, blur_sigma: float, upscaler, lpips_fn, samples: Samples, key
) -> dict:
  """K prior samples of one image, judged as SRFlow and NTIRE 2021's "Learning the
  Super-Resolution Space" do: each sample's LPIPS to the HR (mean), the mean pairwise
  LPIPS between samples, LR-PSNR (mean and worst), the best sample's LPIPS, and the
  diversity score (global - local) / global x 100, where global is the best sample's
  LPIPS and local the mean over pixels of the per-pixel minimum of the samples' LPIPS
  maps (0 for identical samples)."""
  drawn = (
    np.stack(
      [inference.to_uint8(upscaler(lr, jax.random.fold_in(key, k))) for k in range(samples.count)]
    ).astype(np.float32)
    / 255.0
  )
  targets = np.broadcast_to(hr, drawn.shape)
  to_hr = np.asarray(lpips_fn(drawn, targets))
  maps = np.asarray(samples.lpips_map(drawn, targets))
  pairs = [(i, j) for i in range(len(drawn)) for j in range(i + 1, len(drawn))]
  pairwise = (
    np.asarray(lpips_fn(drawn[[i for i, _ in pairs]], drawn[[j for _, j in pairs]]))
    if pairs
    else np.zeros(1)
  )
  lr_psnr = np.asarray(_lr_psnr(drawn, lr[None], scale, blur_sigma))
  best = float(np.min(maps.mean(axis=(1, 2))))
  local = float(np.mean(np.min(maps, axis=0)))
  return {
    "lpips": float(np.mean(to_hr)),
    "pairwise_lpips": float(np.mean(pairwise)),
    "lr_psnr": float(np.mean(lr_psnr)),
    "worst_lr_psnr": float(np.min(lr_psnr)),
    "best_of_k_lpips": float(np.min(to_hr)),
    "diversity": (best - local) / best * 100.0 if best > 0 else 0.0,
    "per_sample_lpips": [float(v) for v in to_hr],
  }


def score_images(
  sources,
  scale: int,
  blur_sigma: float,
  lpips_fn,
  upscaler: inference.Upscaler | None = None,
  samples: Samples | None = None,
) -> Iterator:
  """`score` over (name, load) sources: yields (name, scores, images) per image, and
  (name, None, None) for one that cannot be used, after a warning that says why."""
  for index, (name, load) in enumerate(sources):
    try:
      hr = mod_crop(load(), scale)
    except data.BadImage as e:
      logging.warning("skipping unreadable image %s", e)
      yield name, None, None
      continue
    if min(hr.shape[:2]) < MIN_HR_SIDE:
      logging.warning(
        "skipping %s: %dx%d px (mod-cropped) is smaller than the %d px evaluation needs.",
        name,
        hr.shape[1],
        hr.shape[0],
        MIN_HR_SIDE,
      )
      yield name, None, None
      continue
    yield (name, *score(hr, scale, blur_sigma, lpips_fn, upscaler, samples, index))


def grid(images: dict, scale: int, crop: int = GRID_CROP) -> np.ndarray:
  """LR (enlarged) | bicubic | SR | HR: the same central crop of each, uint8."""
  height, width = images["hr"].shape[:2]
  size = min(crop, height, width) // scale * scale
  top = (height - size) // 2 // scale * scale
  left = (width - size) // 2 // scale * scale
  lr = images["lr"][top // scale : (top + size) // scale, left // scale : (left + size) // scale]
  return reporting.image_grid(
    [
      [lr]
      + [images[kind][top : top + size, left : left + size] for kind in ("bicubic", "model", "hr")]
    ]
  )


def mean_scores(rows: list[dict], names=METRICS) -> dict:
  return {m: float(np.mean([row[m] for row in rows])) for m in names}


def format_table(results: dict) -> str:
  header = f"{'PSNR-Y':>7s} {'SSIM-Y':>7s} {'PSNR':>7s} {'SSIM':>7s} {'LPIPS':>6s} {'LR-PSNR':>7s}"
  row = lambda m: (
    f"{m['psnr_y']:7.2f} {m['ssim_y']:7.4f} {m['psnr_rgb']:7.2f} "
    f"{m['ssim_rgb']:7.4f} {m['lpips']:6.4f} {m['lr_psnr']:7.2f}"
  )
  width = max([len(image["name"]) for image in results["images"]] + [6])
  what = (
    f"step {results['step']}"
    if "step" in results
    else f"released model {results['released_model']}"
  )
  lines = [
    f"{results['data']}, x{results['scale']}, {results['protocol']} protocol, "
    f"{what}: {len(results['images'])} images "
    "(Y: BT.601 luma, border shaved; RGB: whole image)",
    f"{'':{width}s}  {'bicubic':^46s}  |  {'model':^46s}",
    f"{'image':{width}s}  {header}  |  {header}",
  ]
  lines += [
    f"{image['name']:{width}s}  {row(image['bicubic'])}  |  {row(image['model'])}"
    for image in results["images"]
  ]
  lines.append(f"{'mean':{width}s}  {row(results['bicubic'])}  |  {row(results['model'])}")
  if "samples" in results:
    s = results["samples"]
    lines.append(
      f"{s['count']} samples per image at temperature {s['temperature']:g}: LPIPS to HR "
      f"{s['lpips']:.4f} (mean output {results['model']['lpips']:.4f}, best of "
      f"{s['count']} {s['best_of_k_lpips']:.4f}), pairwise LPIPS {s['pairwise_lpips']:.4f}, "
      f"LR-PSNR {s['lr_psnr']:.2f} (worst {s['worst_lr_psnr']:.2f}), diversity "
      f"{s['diversity']:.2f}"
    )
  return "\n".join(lines)


def default_output(source: dict, data_name: str, scale: int, protocol: str) -> str:
  if "workdir" in source:
    return os.path.join(
      source["workdir"], "eval", f"{data_name}_x{scale}_{protocol}_step{source['step']}.json"
    )
  return os.path.join("eval", f"{source['model']}_{data_name}_x{scale}_{protocol}.json")


def source_fields(source: dict) -> dict:
  """The results' fields that say what was evaluated: workdir and step, or released_model."""
  if "workdir" in source:
    return {"workdir": source["workdir"], "step": source["step"]}
  return {"released_model": source["model"]}


def check_output(output: str) -> None:
  """Refuses, before any compute, a JSON path that cannot be written."""
  if os.path.isdir(output):
    raise InferenceError(
      f"--output={output!r} is a folder; pass the path of a JSON file to write, e.g. {{}}.".format(
        os.path.join(output, "results.json")
      )
    )
  folder = os.path.dirname(os.path.abspath(output))
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError as e:
    raise InferenceError(
      f"cannot create the folder of --output={output!r} ({e.strerror}); "
      "pass a path in a folder you can write to."
    ) from None
  if not os.access(folder, os.W_OK):
    raise InferenceError(
      f"cannot write to {folder!r}, the folder of --output; pass a path "
      "in a folder you can write to."
    )


def run(
  workdir: str | None = None,
  *,
  model: str | None = None,
  data_dir: str | None = None,
  dataset: str | None = None,
  step: int | None = None,
  scale: int | None = None,
  protocol: str = "classic",
  output: str | None = None,
  grids: int = 4,
  num_images: int = 0,
  tfds_data_dir: str | None = None,
  tile: int | None = None,
  samples: int = 0,
  temperature: float = inference.DEFAULT_TEMPERATURE,
  seed: int = 0,
) -> dict:
  """Evaluates a checkpoint or a released model on a folder or a dataset; writes and
  returns the results."""
  if (data_dir is None) == (dataset is None):
    raise InferenceError("pass exactly one of --data-dir and --dataset.")
  if protocol not in PROTOCOLS:
    raise InferenceError(f"--protocol={protocol!r}; choose one of {PROTOCOLS}.")
  if samples < 0:
    raise InferenceError(f"--samples={samples} must be 0 or more.")
  sources = folder_sources(data_dir) if data_dir is not None else None
  if output is not None:
    check_output(output)  # before any work; a default output is checked below.
  config, upscaler, source = inference.load_upscaler(workdir, model, scale, step, tile, temperature)
  scale = config.data.scale
  blur_sigma = config.data.blur_sigma if protocol == "train" else 0.0
  data_name = dataset or os.path.basename(os.path.normpath(data_dir))
  output = output or default_output(source, data_name, scale, protocol)
  check_output(output)
  if sources is None:
    sources = dataset_sources(config.data, dataset, tfds_data_dir)
  if num_images > 0:
    sources = sources[:num_images]
  grid_prefix = os.path.splitext(os.path.abspath(output))[0]
  grid_names = dict(
    zip(
      [name for name, _ in sources],
      data.unique_stems([name.replace(os.sep, "_").replace("/", "_") for name, _ in sources]),
    )
  )

  lpips_fn = lpips.make_lpips("alex")
  drawing = Samples(samples, lpips.make_lpips("alex", spatial=True), seed) if samples else None
  rows, skipped = [], []
  progress = tqdm(sources, desc="evaluating", unit="image")
  for name, scores, images in score_images(
    progress, scale, blur_sigma, lpips_fn, upscaler, drawing
  ):
    if scores is None:
      skipped.append(name)
      continue
    rows.append(dict(name=name, **scores))
    if len(rows) <= grids:
      Image.fromarray(grid(images, scale)).save(f"{grid_prefix}_{grid_names[name]}.png")
  if not rows:
    raise DataError(
      f"none of the {len(sources)} images of {data_dir or dataset} could be evaluated "
      f"(see the warnings above); each must be a readable image of at least "
      f"{MIN_HR_SIDE} px on a side."
    )

  results = dict(
    source_fields(source),
    scale=scale,
    protocol=protocol,
    data=data_name,
    model=mean_scores([r["model"] for r in rows]),
    bicubic=mean_scores([r["bicubic"] for r in rows]),
    images=rows,
    skipped=skipped,
  )
  if drawing is not None:
    results["samples"] = dict(
      mean_scores([r["samples"] for r in rows], SAMPLE_METRICS),
      count=samples,
      temperature=temperature,
      worst_lr_psnr=float(min(r["samples"]["worst_lr_psnr"] for r in rows)),
    )
  with open(output, "w") as f:
    json.dump(results, f, indent=2)
  print(format_table(results))
  print(
    f"Wrote {output}" + (f" and {min(grids, len(rows))} grids next to it." if grids > 0 else "."),
    flush=True,
  )
  return results


def define_flags() -> None:
  """The flags, defined only when run as a program: importing this module next to
  another tool with the same flag names (--workdir) must not clash."""
  flags.DEFINE_string("workdir", None, "A training run's --workdir.")
  flags.DEFINE_string(
    "model",
    None,
    "A released model's name (e.g. x4-perceptual); "
    "default, without --workdir: the one for --scale.",
  )
  flags.DEFINE_integer("step", None, "With --workdir: the checkpoint step; default: the latest.")
  flags.DEFINE_string("data-dir", None, "Folder of HR images (e.g. Set5), searched recursively.")
  flags.DEFINE_enum(
    "dataset", None, DATASETS, "Instead of --data-dir: this dataset's evaluation split."
  )
  flags.DEFINE_string(
    "tfds_data_dir",
    None,
    "With --dataset oxford_iiit_pet: TFDS's "
    "data_dir; default: the one the checkpoint was trained with.",
  )
  flags.DEFINE_integer("num_images", 0, "Evaluate only the first N images; 0: all.")
  flags.DEFINE_integer("scale", None, "Upscaling factor; must be the model's (the default).")
  flags.DEFINE_enum(
    "protocol",
    "classic",
    PROTOCOLS,
    "classic: bicubic LR, as the published tables; train: the checkpoint's training degradation.",
  )
  flags.DEFINE_string(
    "output",
    None,
    "JSON file to write; the grids go next to it. "
    "Default: DIR/eval/<data>_x<scale>_<protocol>_step<N>.json, or for "
    "a released model eval/<model>_<data>_x<scale>_<protocol>.json.",
  )
  flags.DEFINE_integer("grids", 4, "Write image grids for the first K images.")
  flags.DEFINE_integer(
    "tile",
    None,
    "LR px on a side of the tiles the model runs on. "
    f"Default: {inference.KEPT_TILE} plus twice the model's margin (256 for x2, x3, x4).",
  )
  flags.DEFINE_integer(
    "samples",
    0,
    "Also draw K prior samples of each image and score "
    "them (LPIPS to HR, pairwise LPIPS, LR-PSNR, diversity).",
  )
  flags.DEFINE_float(
    "temperature", inference.DEFAULT_TEMPERATURE, "Scale of the prior's spread when sampling."
  )
  flags.DEFINE_integer("seed", 0, "Random seed of the samples.")
  flags.mark_flags_as_mutual_exclusive(["data-dir", "dataset"], required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  cpu_settings.apply("infer")  # before JAX starts: XLA reads XLA_FLAGS once.
  f = flags.FLAGS
  cli.exit_on_user_error(
    run,
    f.workdir,
    model=f.model,
    data_dir=f["data-dir"].value,
    dataset=f.dataset,
    step=f.step,
    scale=f.scale,
    protocol=f.protocol,
    output=f.output,
    grids=f.grids,
    num_images=f.num_images,
    tfds_data_dir=f.tfds_data_dir,
    tile=f.tile,
    samples=f.samples,
    temperature=f.temperature,
    seed=f.seed,
  )


if __name__ == "__main__":
  define_flags()
  app.run(main)
