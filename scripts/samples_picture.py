"""The README's picture: crops with straight edges, text-like patterns and texture, each
as bicubic | `x4` | `x4-perceptual`'s mean output | three of its prior samples | HR.

  python scripts/samples_picture.py                      # docs/images/x4_comparison.webp
  python scripts/samples_picture.py --crop Set14/ppt3.png:40,60 --output /tmp/p.webp
  python scripts/samples_picture.py --model runs/x --temperature 0.75 --output /tmp/p.webp

Each image goes through the classic protocol of `evaluate` (HR mod-cropped, PIL-exact
bicubic LR of the whole image, outputs clipped and quantised to 8 bits); the crop is
cut from the outputs afterwards, so it shows what a user's whole-image upscale gives.
Under each crop: its LPIPS (AlexNet) to the HR crop, lower is closer. Crops are
enlarged --zoom times with nearest neighbours, so single pixels stay visible.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from percvae_jax import data, data_root, degradation, inference, scoring

# SET/FILE:LEFT,TOP of each HR crop: repeated windows, a glass roof's straight edges,
# text, cloth texture and stripes, from BSD100 and Set14.
CROPS = (
  "BSD100/img_095.png:110,60",
  "BSD100/img_045.png:200,100",
  "Set14/ppt3.png:30,250",
  "Set14/barbara.png:50,410",
  "Set14/zebra.png:300,120",
)
SAMPLES = 3


def parse_crop(text: str) -> tuple[str, int, int]:
  """'Set14/ppt3.png:250,330' -> ('Set14/ppt3.png', 250, 330)."""
  try:
    path, corner = text.rsplit(":", 1)
    left, top = (int(v) for v in corner.split(","))
  except ValueError:
    raise SystemExit(
      f"--crop {text!r} is not SET/FILE:LEFT,TOP (e.g. Set14/ppt3.png:250,330)"
    ) from None
  return path, left, top


def columns(path: str, scale: int, mean_model, perceptual, seed: int) -> tuple[dict, np.ndarray]:
  """{label: uint8 SR} of one whole image, and its mod-cropped HR."""
  hr = scoring.mod_crop(data.decode_image(path), scale)
  lr = np.asarray(degradation.degrade(hr.astype(np.float32) / 255.0, scale, 0.0))
  outputs = {
    "bicubic": inference.to_uint8(np.asarray(degradation.bicubic_upscale(lr, scale))),
    "x4": inference.to_uint8(mean_model(lr)),
    "x4-perceptual mean": inference.to_uint8(perceptual(lr)),
  }
  key = jax.random.PRNGKey(seed)
  for k in range(SAMPLES):
    outputs[f"sample {k + 1}"] = inference.to_uint8(perceptual(lr, jax.random.fold_in(key, k)))
  return outputs, hr


def label_font(size: int):
  try:
    return ImageFont.load_default(size=size)
  except (TypeError, OSError):  # Pillow without FreeType: its fixed bitmap font
    return ImageFont.load_default()


def draw_grid(rows: list[list[tuple[str, np.ndarray, str]]], zoom: int) -> Image.Image:
  """One row per crop of (column label, uint8 crop, caption under it)."""
  side = rows[0][0][1].shape[0] * zoom
  gap, head, foot = 6, 26, 20
  width = len(rows[0]) * (side + gap) - gap
  height = head + len(rows) * (side + foot + gap) - gap
  canvas = Image.new("RGB", (width, height), "white")
  pen = ImageDraw.Draw(canvas)
  font = label_font(15)
  for c, (label, _, _) in enumerate(rows[0]):
    pen.text((c * (side + gap) + side // 2, head // 2), label, fill="black", font=font, anchor="mm")
  for r, row in enumerate(rows):
    top = head + r * (side + foot + gap)
    for c, (_, crop, caption) in enumerate(row):
      tile = Image.fromarray(crop).resize((side, side), Image.NEAREST)
      canvas.paste(tile, (c * (side + gap), top))
      pen.text(
        (c * (side + gap) + side // 2, top + side + foot // 2),
        caption,
        fill="dimgray",
        font=font,
        anchor="mm",
      )
  return canvas


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--crop", action="append", help="SET/FILE:LEFT,TOP of an HR crop; repeat for more rows"
  )
  parser.add_argument("--size", type=int, default=96, help="HR crop side, px")
  parser.add_argument("--zoom", type=int, default=2)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument(
    "--model", default="x4-perceptual", help="the perceptual model: a released name or a workdir"
  )
  parser.add_argument("--temperature", type=float, default=inference.DEFAULT_TEMPERATURE)
  parser.add_argument("--quality", type=int, default=88, help="WebP quality")
  parser.add_argument(
    "--data-root", default=None, help="default: $PERCVAE_DATA_ROOT, else ../shared/data"
  )
  parser.add_argument("--output", default="docs/images/x4_comparison.webp")
  args = parser.parse_args(argv)

  return render([parse_crop(text) for text in args.crop or CROPS], args)


def render(entries, args) -> int:
  _, fidelity, _ = inference.load_upscaler(name="x4")
  is_workdir = os.path.isdir(args.model)
  _, perceptual, _ = inference.load_upscaler(
    workdir=args.model if is_workdir else None,
    name=None if is_workdir else args.model,
    temperature=args.temperature,
  )
  lpips_fn = scoring.alex_lpips()
  rows = []
  for path, left, top in entries:
    full = os.path.join(data_root.root(args.data_root), path)
    if not os.path.isfile(full):
      print(f"{full} is absent: lay the sets out as docs/datasets.md says, or pass --data-root.")
      return 1
    outputs, hr = columns(full, 4, fidelity, perceptual, args.seed)
    window = (slice(top, top + args.size), slice(left, left + args.size))
    hr_crop = hr[window]
    if hr_crop.shape[:2] != (args.size, args.size):
      height, width = hr.shape[:2]
      print(f"{path}:{left},{top} with --size={args.size} runs past its {width}x{height} px.")
      return 1
    crops = {label: image[window] for label, image in outputs.items()}
    stacked = np.stack(list(crops.values())).astype(np.float32) / 255.0
    target = np.broadcast_to(hr_crop.astype(np.float32) / 255.0, stacked.shape)
    distances = np.asarray(lpips_fn(stacked, target))
    row = [(label, crop, f"LPIPS {d:.3f}") for (label, crop), d in zip(crops.items(), distances)]
    rows.append(row + [("HR", hr_crop, os.path.basename(path))])
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  draw_grid(rows, args.zoom).save(args.output, quality=args.quality, method=6)
  print(f"wrote {args.output} ({os.path.getsize(args.output) / 1024:.0f} KiB)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
