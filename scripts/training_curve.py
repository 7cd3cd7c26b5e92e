"""PSNR against training time: Y-PSNR on whole test sets at every kept checkpoint.

  python scripts/training_curve.py --workdir runs/release_x2 --sets Set5,BSD100 --every 2000

Scores each checkpoint of the run (scoring.py's classic protocol: HR mod-cropped,
bicubic LR, Y-PSNR with `scale` px shaved) and prints one markdown row
per step, with the training's wall time at that step read from metrics.jsonl (the
images/s of its log lines). Writes the rows to --output (JSON) as well. The run must
keep its checkpoints: train with --config.train.keep_checkpoints large enough.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from percvae_jax import checkpoints, data_root, inference, reporting, scoring


def training_hours(workdir: str) -> dict[int, float]:
  """Hours of training up to each logged step, from the log lines' images/s."""
  config = checkpoints.load_config(workdir)
  lines = [
    r
    for r in reporting.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    if "split" not in r and "images_per_sec" in r
  ]
  hours, total, previous = {}, 0.0, 0
  for record in lines:
    total += (record["step"] - previous) * config.train.batch_size / record["images_per_sec"]
    previous = record["step"]
    hours[record["step"]] = total / 3600
  return hours


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--sets", default="Set5,BSD100")
  parser.add_argument("--data-root", help=f"where the sets live (default: {data_root.root()})")
  parser.add_argument("--every", type=int, default=1, help="score every N-th step (and the last)")
  parser.add_argument("--output", help="JSON file for the rows")
  args = parser.parse_args(argv)
  data_root.use(args.data_root)

  manager = checkpoints.manager(args.workdir, read_only=True)
  steps = sorted(manager.all_steps())
  steps = [s for s in steps if s % args.every == 0 or s == steps[-1]]
  manager.close()
  hours = training_hours(args.workdir)
  sets = args.sets.split(",")
  print("| step | training hours | " + " | ".join(f"{s} Y-PSNR" for s in sets) + " |")
  print("| --- | --- | " + " | ".join("---" for _ in sets) + " |", flush=True)
  rows = []
  for step in steps:
    config, model, params, _ = inference.restore_model(args.workdir, step)
    upscaler = inference.Upscaler(model, params, config.data.scale)
    row = {"step": step, "hours": hours.get(step)}
    row.update(
      {
        name: scores["psnr_y"]
        for name, scores in scoring.score_sets(
          upscaler, config.data.scale, sets, with_lpips=False
        ).items()
      }
    )
    rows.append(row)
    shown = f"{row['hours']:.2f}" if row["hours"] is not None else "?"
    print(f"| {step} | {shown} | " + " | ".join(f"{row[s]:.2f}" for s in sets) + " |", flush=True)
  if args.output:
    with open(args.output, "w") as f:
      json.dump(rows, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
