"""Rebuilds a released model's files from a finished training run.

  python scripts/release_model.py --workdir runs/release_x2 --name x2
  python scripts/release_model.py --workdir runs/release_x4_perceptual --name x4-perceptual
  python scripts/release_model.py --workdir runs/a --workdir runs/b:3000 --name x4
  python scripts/release_model.py --model x4 --workdir runs/x4_finetune --name x4

Scores the run's checkpoint (the latest, or RUN:STEP) on Set5, Set14 and BSD100 with the
classic protocol (as `evaluate` does), and writes percvae_jax/released/<name>/ only
when it beats the release already there on its criterion: the mean Y-PSNR over the
sets for a fidelity model, the mean LPIPS for a perceptual one (gamma > 0); --force
writes it regardless. Several --workdir (each RUN or RUN:STEP) release the mean of their
parameters, a model soup: for fine-tunes of one model it scores above each of them
(docs/results.md); --model NAME adds a release already there to the mean (the model
the runs fine-tuned, for one). The scores go into the release's config.json (`release`), where
tests/test_released.py checks that the shipped files still reproduce them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import numpy as np

from percvae_jax import data_root, flops, inference, losses, released, scoring
from percvae_jax.errors import UserError

SETS = data_root.EVAL_SETS


def criterion(config) -> str:
  return "lpips" if losses.uses_perceptual(config.loss) else "psnr_y"


def better(new: dict, old: dict, metric: str) -> bool:
  mean = lambda scores: np.mean([scores[s][metric] for s in SETS if s in scores])
  return mean(new) < mean(old) if metric == "lpips" else mean(new) > mean(old)


def run_and_step(text: str) -> tuple[str, int | None]:
  """RUN:STEP -> (RUN, STEP); RUN -> (RUN, None), its latest checkpoint."""
  run, _, step = text.rpartition(":")
  return (run, int(step)) if run and step.isdigit() else (text, None)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--workdir",
    action="append",
    default=[],
    help="the finished training run, RUN or RUN:STEP (default: its latest step); given "
    "several times, the mean of their parameters (runs of one architecture and scale)",
  )
  parser.add_argument(
    "--model",
    action="append",
    default=[],
    help="a release in --root to add to the mean (same architecture and scale as the runs)",
  )
  parser.add_argument("--name", required=True, help="release name, e.g. x2 or x4-perceptual")
  parser.add_argument(
    "--data-root", help=f"folder holding Set5/, Set14/ and BSD100/ (default: {data_root.root()})"
  )
  parser.add_argument("--root", default=released.RELEASED_DIR, help="where releases live")
  parser.add_argument("--force", action="store_true", help="write even if not better")
  args = parser.parse_args(argv)
  if not args.workdir and not args.model:
    parser.error("give the run to release: --workdir RUN (or --model NAME to average in)")
  runs = [run_and_step(run) for run in args.workdir]
  try:
    config, model, params, sources = inference.restore_average(runs, args.model, args.root)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  upscaler = inference.Upscaler(model, params, config.data.scale)
  data_root.use(args.data_root)
  start = time.perf_counter()
  scores = scoring.score_sets(upscaler, config.data.scale)
  metric = criterion(config)
  for name, values in scores.items():
    print(
      f"{args.name} {name} x{config.data.scale}: Y-PSNR {values['psnr_y']:.2f} "
      f"SSIM {values['ssim_y']:.4f} LPIPS {values['lpips']:.4f} "
      f"LR-PSNR {values['lr_psnr']:.2f}"
    )
  print(f"(scored in {time.perf_counter() - start:.0f} s)")
  if args.name in released.names(args.root) and not args.force:
    old = released.metadata(args.name, args.root).get("scores", {})
    if old and not better(scores, old, metric):
      print(
        f"Not written: the release {args.name!r} already there is as good or better on "
        f"its criterion ({metric}); pass --force to replace it anyway."
      )
      return 1
  count = int(sum(np.size(x) for x in jax.tree.leaves(params)))
  flops_per_px = flops.per_output_pixel(model, params, config.data.scale)
  print(f"{args.name}: {count:,} parameters, {flops_per_px / 1e3:.1f} KFLOP per output pixel")
  release = {
    "name": args.name,
    "step": sources[0]["step"],
    "params": count,
    "flops_per_px": flops_per_px,
    "criterion": metric,
    "scores": scores,
    "protocol": "classic (HR mod-cropped, bicubic LR, Y-PSNR/SSIM with scale px "
    "shaved, LPIPS AlexNet, LR-PSNR RGB)",
  }
  if len(sources) > 1:
    release["averaged"] = sources
  folder = os.path.join(args.root, args.name)
  released.write(folder, config, params, release)
  size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
  print(f"Wrote {folder} ({size / 1e6:.2f} MB).")
  return 0


if __name__ == "__main__":
  sys.exit(main())
