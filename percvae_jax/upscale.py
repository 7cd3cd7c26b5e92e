"""Super-resolves your images with a released model or a trained checkpoint.

  python -m percvae_jax.upscale --input photo.jpg --output out/ --scale 2
  python -m percvae_jax.upscale --input photos/ --output out/ --model x4-perceptual --samples 3
  python -m percvae_jax.upscale --workdir DIR --input photos/ --output out/

Writes out/<name>.png (from the prior's mean), and with --samples K also
out/<name>_sample1.png ... _sampleK.png (prior samples: the other plausible detail).
Images of any size, grayscale or with transparency (over white), are read as RGB;
large ones run in tiles (see inference.py), so memory stays bounded. Unreadable
files are reported and skipped. A checkpoint trained on GPU/TPU loads on a CPU.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from absl import app, flags, logging
from PIL import Image
from tqdm import tqdm

from percvae_jax import cli, cpu_settings, data, inference
from percvae_jax.errors import DataError, InferenceError, ensure_writable_folder


def plan_outputs(input_path: str, output_dir: str, samples: int = 0) -> list[tuple[str, str]]:
  """(input file, output path without extension) pairs, every output different (the
  samples' `_sampleK` names included); subfolders are mirrored. Refuses, before any
  compute, an output that cannot be written or would overwrite an input."""
  if os.path.isfile(input_path):
    pairs = [(input_path, os.path.basename(input_path))]
  elif os.path.isdir(input_path):
    pairs = [(p, os.path.relpath(p, input_path)) for p in data.list_images(input_path)]
    if not pairs:
      raise DataError(
        f"--input={input_path!r} holds no image files "
        f"({', '.join(data.IMAGE_EXTENSIONS)}); pass an image or a folder of images."
      )
  else:
    raise DataError(
      f"--input={input_path!r} does not exist; pass an image file or a folder of images."
    )
  check_output_dir(output_dir)
  plan, used = [], set()
  for (path, relative), stem in zip(pairs, data.unique_stems([r for _, r in pairs])):
    base, k = stem, 1
    while any(name.lower() in used for name in output_names(stem, samples)):
      k += 1
      stem = f"{base}_{k}"
    used.update(name.lower() for name in output_names(stem, samples))
    target = os.path.join(output_dir, stem)
    if os.path.abspath(target + ".png") == os.path.abspath(path):
      raise DataError(
        f"writing {target}.png would overwrite its input; choose another --output folder."
      )
    if stem != os.path.splitext(relative)[0]:
      logging.info("%s -> %s.png (another input has the same name)", relative, stem)
    plan.append((path, target))
  return plan


def output_names(stem: str, samples: int) -> list[str]:
  return [stem] + [f"{stem}_sample{i}" for i in range(1, samples + 1)]


def check_output_dir(output_dir: str) -> None:
  ensure_writable_folder(output_dir, "--output", InferenceError, " for the PNGs")


def save_png(image: np.ndarray, path: str) -> None:
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  # zlib level 1: for a 48-megapixel output, 6x faster than PIL's 6, files ~10% larger.
  Image.fromarray(inference.to_uint8(image)).save(path, compress_level=1)


def describe_source(source: dict) -> str:
  """'the released model x2', or 'runs/x step 2000'."""
  if "model" in source:
    return f"the released model {source['model']}"
  return f"{source['workdir']} step {source['step']}"


def run(
  workdir: str | None,
  input_path: str,
  output_dir: str,
  *,
  model: str | None = None,
  scale: int | None = None,
  step: int | None = None,
  samples: int = 0,
  tile: int | None = None,
  seed: int = 0,
  temperature: float = inference.DEFAULT_TEMPERATURE,
) -> dict:
  """Upscales every image of `input_path` with a checkpoint (`workdir`) or a released
  model (`model`, or the one for `scale`); returns {"written": paths, "skipped": paths}."""
  if samples < 0:
    raise InferenceError(f"--samples={samples} must be 0 or more.")
  plan = plan_outputs(input_path, output_dir, samples)
  _, upscaler, source = inference.load_upscaler(workdir, model, scale, step, tile, temperature)
  sample_key = jax.random.PRNGKey(seed)
  written, skipped = [], []
  for index, (path, target) in enumerate(tqdm(plan, desc="upscaling", unit="image")):
    try:
      lr = data.decode_image(path).astype(np.float32) / 255.0
    except data.BadImage as e:
      logging.warning("skipping unreadable image %s", e)
      skipped.append(path)
      continue
    save_png(upscaler(lr), target + ".png")
    written.append(target + ".png")
    image_key = jax.random.fold_in(sample_key, index)
    for i in range(1, samples + 1):
      save_png(upscaler(lr, jax.random.fold_in(image_key, i)), f"{target}_sample{i}.png")
      written.append(f"{target}_sample{i}.png")
  if not written:
    raise DataError(
      f"none of the {len(plan)} files of {input_path} could be read "
      "(see the warnings above); pass PNG, JPEG or BMP images."
    )
  print(
    f"Upscaled {len(plan) - len(skipped)} of {len(plan)} images by "
    f"x{upscaler.scale} with {describe_source(source)} into {output_dir}"
    + (f"; skipped {len(skipped)}: {', '.join(skipped)}." if skipped else "."),
    flush=True,
  )
  return {"written": written, "skipped": skipped}


def define_flags() -> None:
  """The flags, defined only when run as a program: importing this module next to
  another tool with the same flag names (--workdir) must not clash."""
  flags.DEFINE_string(
    "workdir",
    None,
    "A training run's --workdir, to upscale with its checkpoint; default: a released model.",
  )
  flags.DEFINE_string(
    "model",
    None,
    "A released model's name (x2, x3, x4, x4-perceptual); default: the one for --scale.",
  )
  flags.DEFINE_integer(
    "scale",
    None,
    "Upscaling factor; picks the released model "
    "x<scale> when neither --model nor --workdir is given.",
  )
  flags.DEFINE_integer("step", None, "With --workdir: the checkpoint step; default: the latest.")
  flags.DEFINE_string(
    "input", None, "An image, or a folder of images (searched recursively).", required=True
  )
  flags.DEFINE_string("output", None, "Folder for the PNGs.", required=True)
  flags.DEFINE_integer("samples", 0, "Also write K samples of each image.")
  flags.DEFINE_integer("seed", 0, "Random seed of the samples.")
  flags.DEFINE_float(
    "temperature",
    inference.DEFAULT_TEMPERATURE,
    "Scale of the prior's spread when sampling: lower keeps samples "
    "nearer the mean output, higher makes them differ more.",
  )
  flags.DEFINE_integer(
    "tile",
    None,
    "LR px on a side of the tiles the model runs on; lower it to use less memory. "
    f"Default: {inference.KEPT_TILE} plus twice the model's margin (256 for x2, x3, x4).",
  )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  cpu_settings.apply("infer")  # before JAX starts: XLA reads XLA_FLAGS once.
  f = flags.FLAGS
  cli.exit_on_user_error(
    run,
    f.workdir,
    f.input,
    f.output,
    model=f.model,
    scale=f.scale,
    step=f.step,
    samples=f.samples,
    tile=f.tile,
    seed=f.seed,
    temperature=f.temperature,
  )


if __name__ == "__main__":
  define_flags()
  app.run(main)
