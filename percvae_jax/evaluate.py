"""Scores a model as the published SR tables do, with bicubic side by side.

  percvae-evaluate --scale 2 --data-dir Set5            # released x2, a set under the data root
  percvae-evaluate --model x4-perceptual --data-dir BSD100 --samples 10
  percvae-evaluate --workdir DIR --data-dir path/to/images
  percvae-evaluate --workdir DIR --dataset oxford_iiit_pet --num_images 100

(`python -m percvae_jax.evaluate` is the same.) Protocols: `classic` (the tables'
convention, scoring.py) and `train` (the degradation the checkpoint was trained with,
its blur). Writes a JSON file and LR | bicubic | SR | HR grids of the first images next
to it (by default in DIR/eval/).
"""

from __future__ import annotations

import functools
import json
import os

import ml_collections
import numpy as np
from absl import app, flags
from PIL import Image
from tqdm import tqdm

from percvae_jax import cli, cpu_settings, data, data_root, inference, lpips, reporting, scoring
from percvae_jax.errors import InferenceError

PROTOCOLS = ("classic", "train")
DATASETS = ("oxford_iiit_pet", "embedded")
GRID_CROP = 192  # HR px on a side of the crop each grid shows.


def dataset_sources(data_config, name: str, tfds_data_dir: str | None) -> list:
  """(name, load) per image of a dataset's evaluation split, decoded when loaded."""
  data_config = ml_collections.ConfigDict(data_config.to_dict())
  data_config.name = name
  if tfds_data_dir is not None:
    data_config.tfds_data_dir = tfds_data_dir
  images = data.load_split(data_config, "eval")
  # `images.load`, not `images[i]`: the latter caches every decoded image.
  return [(images.names[i], functools.partial(images.load, i)) for i in range(len(images))]


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
  ensemble: bool = False,
) -> dict:
  """Evaluates a checkpoint or a released model on a folder or a dataset; writes and
  returns the results."""
  if (data_dir is None) == (dataset is None):
    raise InferenceError("pass exactly one of --data-dir and --dataset.")
  if protocol not in PROTOCOLS:
    raise InferenceError(f"--protocol={protocol!r}; choose one of {PROTOCOLS}.")
  if samples < 0:
    raise InferenceError(f"--samples={samples} must be 0 or more.")
  if samples and ensemble:
    raise InferenceError("--ensemble averages the mean output only: drop it or --samples.")
  sources = scoring.folder_sources(data_dir) if data_dir is not None else None
  if output is not None:
    check_output(output)  # before any work; a default output is checked below.
  config, upscaler, source = inference.load_upscaler(
    workdir, model, scale, step, tile, temperature, ensemble
  )
  scale = config.data.scale
  blur_sigma = config.data.blur_sigma if protocol == "train" else 0.0
  data_name = dataset or os.path.basename(os.path.normpath(data_root.resolve(data_dir)))
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

  scoring.alex_lpips()  # its weights are read, or refused in one line, before the progress bar.
  drawing = (
    scoring.Samples(samples, lpips.make_lpips("alex", spatial=True), seed) if samples else None
  )
  written = []

  def save_grid(name, images):
    if len(written) < grids:
      Image.fromarray(grid(images, scale)).save(f"{grid_prefix}_{grid_names[name]}.png")
      written.append(name)

  scores = scoring.score_sources(
    tqdm(sources, desc="evaluating", unit="image"),
    scale,
    upscaler,
    blur_sigma=blur_sigma,
    samples=drawing,
    on_image=save_grid,
    label=data_dir or dataset,
  )
  results = dict(
    source_fields(source),
    scale=scale,
    protocol=protocol,
    data=data_name,
    model=scores["model"],
    bicubic=scores["bicubic"],
    images=scores["images"],
    skipped=scores["skipped"],
  )
  if drawing is not None:
    results["samples"] = dict(scores["samples"], temperature=temperature)
  with open(output, "w") as f:
    json.dump(results, f, indent=2)
  print(format_table(results))
  print(
    f"Wrote {output}" + (f" and {len(written)} grids next to it." if written else "."),
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
  flags.DEFINE_string(
    "data-dir",
    None,
    "Folder of HR images, searched recursively, or a set's name under the data root (Set5).",
  )
  flags.DEFINE_string(
    "data-root",
    None,
    f"Where named sets live; default: ${data_root.ENV}, else ../shared/data beside the repo.",
  )
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
    "samples",
    0,
    "Also draw K prior samples of each image and score "
    "them (LPIPS to HR, pairwise LPIPS, LR-PSNR, diversity).",
  )
  cli.define_inference_flags()
  flags.mark_flags_as_mutual_exclusive(["data-dir", "dataset"], required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  cpu_settings.apply("infer")  # before JAX starts: XLA reads XLA_FLAGS once.
  f = flags.FLAGS
  data_root.use(f["data-root"].value)
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
    ensemble=f.ensemble,
    seed=f.seed,
  )


def console():
  """The `percvae-evaluate` command."""
  define_flags()
  app.run(main)


if __name__ == "__main__":
  console()
