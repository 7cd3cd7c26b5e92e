"""Super-resolves your images with a released model or a trained checkpoint.

  python -m percvae_jax.upscale --input photo.jpg --output out/ --scale 2
  python -m percvae_jax.upscale --input photos/ --output out/ --model x4-perceptual --samples 3
  python -m percvae_jax.upscale --workdir DIR --input photos/ --output out/ --format png

Writes out/<name>.<ext> (from the prior's mean), and with --samples K also
out/<name>_sample1.<ext> ... _sampleK (prior samples: the other plausible detail).
Images come back whole (image_io.py, docs/upscaling.md): grayscale stays grayscale,
alpha is upscaled too, 16-bit PNG and TIFF stay 16-bit, the ICC profile and EXIF are
carried over, and the format is the input's where it can hold the result (else PNG),
or --format. Large images run in tiles (inference.py) and PNG and TIFF are written band
by band as the tiles finish, so memory stays bounded whatever the output's size.
Unreadable files are reported in one line each and skipped. A checkpoint trained on
GPU/TPU loads on a CPU.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import jax
import numpy as np
from absl import app, flags, logging
from tqdm import tqdm

from percvae_jax import cli, cpu_settings, data, image_io, inference
from percvae_jax.errors import DataError, InferenceError, ensure_writable_folder


def plan_outputs(
  input_path: str, output_dir: str, samples: int = 0, output_format: str | None = None
) -> list[tuple[str, str]]:
  """(input file, output path without extension) pairs, every output different (the
  samples' `_sampleK` names included, whatever extension each image gets); subfolders
  are mirrored. Refuses, before any compute, an output that cannot be written or that
  would overwrite an input (with any extension it may get: --format's, or any)."""
  if os.path.isfile(input_path):
    pairs = [(input_path, os.path.basename(input_path))]
  elif os.path.isdir(input_path):
    pairs = [(p, os.path.relpath(p, input_path)) for p in image_io.list_images(input_path)]
    if not pairs:
      raise DataError(
        f"--input={input_path!r} holds no image files "
        f"({', '.join(image_io.IMAGE_EXTENSIONS)}); pass an image or a folder of images."
      )
  else:
    raise DataError(
      f"--input={input_path!r} does not exist; pass an image file or a folder of images."
    )
  check_output_dir(output_dir)
  extensions = (
    [image_io.EXTENSIONS[output_format]] if output_format else image_io.EXTENSIONS.values()
  )
  inputs = {os.path.abspath(path).lower() for path, _ in pairs}
  plan, used = [], set()
  for (path, relative), stem in zip(pairs, data.unique_stems([r for _, r in pairs])):
    base, k = stem, 1
    while any(name.lower() in used for name in output_names(stem, samples)):
      k += 1
      stem = f"{base}_{k}"
    used.update(name.lower() for name in output_names(stem, samples))
    target = os.path.join(output_dir, stem)
    for name in output_names(target, samples):
      for extension in extensions:
        if os.path.abspath(name + extension).lower() in inputs:
          raise DataError(
            f"writing {name}{extension} would overwrite an input; choose another --output folder."
          )
    if stem != os.path.splitext(relative)[0]:
      logging.info("%s -> %s (another input has the same name)", relative, stem)
    plan.append((path, target))
  return plan


def output_names(stem: str, samples: int) -> list[str]:
  return [stem] + [f"{stem}_sample{i}" for i in range(1, samples + 1)]


def check_output_dir(output_dir: str) -> None:
  ensure_writable_folder(output_dir, "--output", InferenceError, " for the images")


def over_white(bands: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
  """Bands with alpha composited over white, without it: what a format without alpha
  (JPEG) shows of them."""
  for band in bands:
    alpha = np.clip(band[..., -1:], 0.0, 1.0)
    yield band[..., :-1] * alpha + (1.0 - alpha)


def describe_source(source: dict) -> str:
  """'the released model x2', or 'runs/x step 2000'."""
  if "model" in source:
    return f"the released model {source['model']}"
  return f"{source['workdir']} step {source['step']}"


def check_options(samples: int, output_format: str | None, quality: int, max_pixels: int):
  if samples < 0:
    raise InferenceError(f"--samples={samples} must be 0 or more.")
  if output_format is not None and output_format not in image_io.EXTENSIONS:
    raise InferenceError(
      f"--format={output_format!r} is not one of {', '.join(image_io.EXTENSIONS)}; "
      "leave it out to keep each input's format where it can hold the result."
    )
  if not 1 <= quality <= 100:
    raise InferenceError(f"--quality={quality} must be 1 to 100 (100: lossless WebP).")
  if max_pixels < 0:
    raise InferenceError(f"--max-pixels={max_pixels} must be 0 (no limit) or more.")


def upscale_picture(
  upscaler: inference.Upscaler,
  picture: image_io.Picture,
  targets: list[tuple[str, jax.Array | None]],
  output_format: str | None,
  quality: int,
) -> list[str]:
  """Writes the SR of `picture` to each (path without extension, sample key or None for
  the mean) of `targets`; returns the paths written."""
  height, width = (side * upscaler.scale for side in picture.pixels.shape[:2])
  fmt, notes = image_io.choose_format(picture, output_format, height, width)
  for note in notes:
    logging.warning("%s: %s", targets[0][0], note)
  flatten = fmt == "jpg" and picture.has_alpha
  channels = picture.pixels.shape[-1] - (1 if flatten else 0)
  written = []
  for target, key in targets:
    bands = upscaler.bands(picture.pixels, key)
    path = target + image_io.EXTENSIONS[fmt]
    image_io.write(
      path,
      over_white(bands) if flatten else bands,
      height=height,
      width=width,
      channels=channels,
      bits=picture.bits if fmt in ("png", "tiff") else 8,
      fmt=fmt,
      icc_profile=picture.icc_profile,
      exif=picture.exif,
      quality=quality,
    )
    written.append(path)
  return written


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
  ensemble: bool = False,
  output_format: str | None = None,
  quality: int = image_io.DEFAULT_QUALITY,
  max_pixels: int = image_io.DEFAULT_MAX_PIXELS,
) -> dict:
  """Upscales every image of `input_path` with a checkpoint (`workdir`) or a released
  model (`model`, or the one for `scale`); returns {"written": paths, "skipped": paths}.
  An image that cannot be used is skipped with one line saying why; the others run."""
  check_options(samples, output_format, quality, max_pixels)
  if samples and ensemble:
    raise InferenceError("--ensemble averages the mean output only: drop it or --samples.")
  plan = plan_outputs(input_path, output_dir, samples, output_format)
  _, upscaler, source = inference.load_upscaler(
    workdir, model, scale, step, tile, temperature, ensemble
  )
  sample_key = jax.random.PRNGKey(seed)
  written, skipped = [], []
  for index, (path, target) in enumerate(tqdm(plan, desc="upscaling", unit="image")):
    image_key = jax.random.fold_in(sample_key, index)
    targets = [(target, None)] + [
      (f"{target}_sample{i}", jax.random.fold_in(image_key, i)) for i in range(1, samples + 1)
    ]
    try:
      picture = image_io.read(path, max_pixels)
      for note in picture.notes:
        logging.warning(note)
      written += upscale_picture(upscaler, picture, targets, output_format, quality)
    except data.BadImage as e:
      logging.warning("skipping %s", e)
      skipped.append(path)
  if not written:
    raise DataError(
      f"none of the {len(plan)} files of {input_path} could be upscaled (see the warnings "
      f"above); pass images ({', '.join(image_io.IMAGE_EXTENSIONS)})."
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
    "A released model's name (x2, x3, x4; x2-fast, x3-fast, x4-fast; x4-perceptual); "
    "default: the one for --scale.",
  )
  flags.DEFINE_integer(
    "scale",
    None,
    "Upscaling factor; picks the released model "
    "x<scale> when neither --model nor --workdir is given.",
  )
  flags.DEFINE_string(
    "input", None, "An image, or a folder of images (searched recursively).", required=True
  )
  flags.DEFINE_string("output", None, "Folder for the upscaled images.", required=True)
  flags.DEFINE_enum(
    "format",
    None,
    list(image_io.EXTENSIONS),
    "Output format; default: the input's (JPEG, WebP, TIFF, PNG) where it can hold "
    "the result (16-bit: PNG or TIFF; alpha: never JPEG), else PNG.",
  )
  flags.DEFINE_integer(
    "quality", image_io.DEFAULT_QUALITY, "JPEG and WebP quality, 1-100 (100: lossless WebP)."
  )
  flags.DEFINE_integer(
    "max-pixels",
    image_io.DEFAULT_MAX_PIXELS,
    "Refuse input images with more pixels than this (a guard against decompression "
    "bombs; 0: no limit).",
  )
  flags.DEFINE_integer("samples", 0, "Also write K samples of each image.")
  cli.define_inference_flags()


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
    ensemble=f.ensemble,
    output_format=f.format,
    quality=f.quality,
    max_pixels=f["max-pixels"].value,
  )


def console():
  """The percvae-upscale command."""
  define_flags()
  app.run(main)


if __name__ == "__main__":
  console()
