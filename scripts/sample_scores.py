"""A perceptual model's prior samples against the release targets, at one or more
temperatures: the curve that places --temperature's default.

  python scripts/sample_scores.py --model x4-perceptual --sets BSD100,Set14
  python scripts/sample_scores.py --model runs/x --temperatures 0.5,0.75,1,1.25 \\
      --sets BSD100 --output-dir runs/x/temperature

Each set is scored by `percvae_jax.evaluate`'s classic protocol (HR mod-cropped,
bicubic LR, LPIPS AlexNet, K samples per image as NTIRE 2021 scores them), the model
at every temperature and the --reference model (the fidelity model the targets are
relative to) once, on the same images. Targets (issue 23): the mean output's LPIPS at
most 0.70x the reference's; the samples' mean LPIPS to the HR at most the mean
output's; diversity at least 25 (SRFlow 25.36); pairwise LPIPS at least 0.05; the
worst sample's LR-PSNR at least 45 dB; on BSD100 the mean output's Y-PSNR at least
Johnson et al.'s 24.95 dB. Writes OUT/scores.json; evaluations are kept in OUT/eval/
and reused when the command is rerun.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from percvae_jax import data_root, evaluate, inference

MEAN_RATIO = 0.70
DIVERSITY = 25.0
PAIRWISE = 0.05
WORST_LR_PSNR = 45.0
JOHNSON_Y_PSNR = {"BSD100": 24.95, "Set14": 24.99, "Set5": 27.09}


def evaluation(model: str, data_dir: Path, output: Path, samples: int, temperature: float, n: int):
  """`evaluate.run`'s results for a released name or a workdir, cached in `output`."""
  if output.exists():
    return json.loads(output.read_text())
  is_workdir = os.path.isdir(model)
  return evaluate.run(
    model if is_workdir else None,
    model=None if is_workdir else model,
    data_dir=str(data_dir),
    output=str(output),
    grids=0,
    num_images=n,
    samples=samples,
    temperature=temperature,
  )


def checks(row: dict, set_name: str) -> dict:
  """{target: passed} for one set and temperature."""
  result = {
    "mean_lpips_ratio": row["mean_lpips_ratio"] <= MEAN_RATIO,
    "samples_vs_mean": row["sample_lpips"] <= row["mean_lpips"],
    "diversity": row["diversity"] >= DIVERSITY,
    "pairwise": row["pairwise_lpips"] >= PAIRWISE,
    "worst_lr_psnr": row["worst_lr_psnr"] >= WORST_LR_PSNR,
  }
  if set_name in JOHNSON_Y_PSNR:
    result["y_psnr"] = row["mean_psnr_y"] >= JOHNSON_Y_PSNR[set_name]
  return result


def score(args) -> dict:
  out = Path(args.output_dir)
  (out / "eval").mkdir(parents=True, exist_ok=True)
  tag = Path(args.model).name
  rows = []
  for set_name in data_root.split(args.sets):
    data_dir = Path(data_root.resolve(set_name, args.data_root))
    reference = evaluation(
      args.reference,
      data_dir,
      out / "eval" / f"ref_{args.reference}_{set_name}.json",
      0,
      1.0,
      args.num_images,
    )
    for temperature in [float(t) for t in args.temperatures.split(",")]:
      name = f"{tag}_{set_name}_K{args.samples}_T{temperature:g}.json"
      result = evaluation(
        args.model, data_dir, out / "eval" / name, args.samples, temperature, args.num_images
      )
      s, m = result["samples"], result["model"]
      row = {
        "set": set_name,
        "images": len(result["images"]),
        "temperature": temperature,
        "mean_lpips": m["lpips"],
        "reference_lpips": reference["model"]["lpips"],
        "mean_lpips_ratio": m["lpips"] / reference["model"]["lpips"],
        "sample_lpips": s["lpips"],
        "sample_over_mean": s["lpips"] / m["lpips"],
        "best_of_k_lpips": s["best_of_k_lpips"],
        "diversity": s["diversity"],
        "pairwise_lpips": s["pairwise_lpips"],
        "lr_psnr": s["lr_psnr"],
        "worst_lr_psnr": s["worst_lr_psnr"],
        "mean_psnr_y": m["psnr_y"],
        "mean_lr_psnr": m["lr_psnr"],
      }
      row["passed"] = checks(row, set_name)
      rows.append(row)
  return {"model": args.model, "reference": args.reference, "samples": args.samples, "rows": rows}


def format_rows(rows: list[dict]) -> str:
  header = (
    f"{'set':8s} {'n':>3s} {'T':>5s} {'mean':>6s} {'/ref':>5s} {'sample':>6s} {'/mean':>5s} "
    f"{'best':>6s} {'divers':>6s} {'pair':>6s} {'LR-PSNR':>7s} {'worst':>6s} {'Y-PSNR':>6s}  failed"
  )
  lines = [header]
  for r in rows:
    failed = ",".join(k for k, ok in r["passed"].items() if not ok) or "-"
    lines.append(
      f"{r['set']:8s} {r['images']:3d} {r['temperature']:5.2f} {r['mean_lpips']:6.4f} "
      f"{r['mean_lpips_ratio']:5.3f} {r['sample_lpips']:6.4f} {r['sample_over_mean']:5.3f} "
      f"{r['best_of_k_lpips']:6.4f} {r['diversity']:6.2f} {r['pairwise_lpips']:6.4f} "
      f"{r['lr_psnr']:7.2f} {r['worst_lr_psnr']:6.2f} {r['mean_psnr_y']:6.2f}  {failed}"
    )
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="x4-perceptual", help="a released name or a workdir")
  parser.add_argument("--reference", default="x4", help="the fidelity model the ratio is to")
  parser.add_argument("--sets", default="BSD100,Set14", help="comma-separated folders")
  parser.add_argument(
    "--data-root", default=None, help=f"default: ${data_root.ENV}, else ../shared/data"
  )
  parser.add_argument("--num-images", type=int, default=0, help="first N of each set; 0: all")
  parser.add_argument("--samples", type=int, default=10)
  parser.add_argument("--temperatures", default=str(inference.DEFAULT_TEMPERATURE))
  parser.add_argument("--output-dir", default="runs/sample_scores")
  args = parser.parse_args(argv)
  report = score(args)
  text = format_rows(report["rows"])
  print(text)
  (Path(args.output_dir) / "scores.json").write_text(json.dumps(report, indent=2) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
