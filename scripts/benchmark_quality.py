"""Quality beside the published SR tables, and the paper's question at x4.

  python scripts/benchmark_quality.py --budget tables
  python scripts/benchmark_quality.py --budget ablation --init x4
  python scripts/benchmark_quality.py --budget ablation --init x4 --steps 20  # a smoke run

`tables` scores models (released names, or training runs' workdirs) on Set5, Set14 and
BSD100 with the classic protocol (`percvae_jax.evaluate`: HR mod-cropped, bicubic LR,
Y-PSNR / Y-SSIM with `scale` px shaved, LPIPS AlexNet, LR-PSNR) and prints, per scale,
one table: bicubic as `evaluate` computes it, the published rows of
the data root's README.md (SRCNN, FSRCNN, VDSR, LapSRN, EDSR, Johnson et al.; x3 from
the SRCNN paper) and ours.

`ablation` answers the paper's question (reconstruction alone, or with a VGG16
perceptual term?) at x4 with models trained the same way: each variant is
configs/release_x4_perceptual.py (the 291 images, classic degradation) fine-tuned
from the same fidelity model (--init) for the same steps, and only the perceptual term
differs: none (reconstruction only), the paper's formulation (the plain relu2_2 or
relu3_3 feature MSE of the VAE's output, weighted 5e-4 of the pixel MSE: the paper's
ratio), and this project's (features unit-normalised per channel, on the generated
output, as the main term, with the output projected onto the LR). It scores them on
the three sets, draws --samples prior samples of the new formulation's outputs, and
draws OUT/ablation_x4.png (bicubic | fidelity | perceptual | two samples | HR).

Writes OUT/<budget>.md and OUT/<budget>.json; trainings live in OUT/ablation/ and
resume when the command is rerun, so a rerun only rescores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SETS = ("Set5", "Set14", "BSD100")
SCALES = (2, 3, 4)
PERCEPTUAL_CONFIG = REPO / "configs" / "release_x4_perceptual.py"
# The SRCNN paper's x3 results (Dong et al., TPAMI 2016); the README's table has no x3.
SRCNN_X3 = {"Set5": (32.75, 0.9090), "Set14": (29.30, 0.8215), "BSD100": (28.41, 0.7863)}
# Paper's formulation: plain feature MSE of the VAE's output at 5e-4 of the pixel MSE.
PAPER_TERM = [
  "loss.perceptual_norm=none",
  "loss.perceptual_on=vae",
  "loss.gamma=5e-4",
  "model.lr_consistent=False",
]
ABLATION = {
  "recon only": ["loss.gamma=0", "model.lr_consistent=False"],
  "+ relu2_2 (paper's)": PAPER_TERM
  + ["loss.perceptual_layers=relu2_2", "loss.perceptual_weights="],
  "+ relu3_3 (paper's)": PAPER_TERM
  + ["loss.perceptual_layers=relu3_3", "loss.perceptual_weights="],
  "new formulation": [],
}
GRID_IMAGES = (("Set5", "butterfly.png"), ("Set14", "baboon.png"), ("BSD100", "img_002.png"))
GRID_CROP = 128


def data_path(*parts: str) -> Path:
  from percvae_jax import data_root

  return Path(data_root.root(), *parts)


class BenchmarkError(RuntimeError):
  """Missing data or a failed training; the message says what to do."""


def published_rows(readme: Path) -> dict:
  """{method: {(set, scale): (psnr, ssim)}} from the data root's README.md table."""
  lines = readme.read_text().splitlines()
  header = next(k for k, line in enumerate(lines) if line.startswith("| method"))
  columns = [c.strip() for c in lines[header].strip("|").split("|")][1:]
  keys = []
  for column in columns:
    set_name, scale = column.split(" x")
    keys.append(("BSD100" if set_name == "B100" else set_name, int(scale)))
  rows = {}
  for line in lines[header + 2 :]:
    if not line.startswith("|"):
      break
    cells = [c.strip() for c in line.strip("|").split("|")]
    values = {}
    for key, cell in zip(keys, cells[1:]):
      match = re.match(r"([\d.]+) / ([\d.]+)", cell)
      if match:
        values[key] = (float(match[1]), float(match[2]))
    rows[cells[0]] = values
  rows.setdefault("SRCNN (ImageNet)", {}).update({(s, 3): v for s, v in SRCNN_X3.items()})
  return rows


def evaluate_model(model: str, set_name: str, out: Path, samples: int = 0) -> dict:
  """`percvae_jax.evaluate` on one set: a released model's name or a workdir."""
  from percvae_jax import evaluate

  is_workdir = os.path.isdir(model)
  tag = Path(model).name if is_workdir else model
  output = out / "eval" / f"{tag}_{set_name}.json"
  if output.exists() and not samples:
    return json.loads(output.read_text())
  return evaluate.run(
    model if is_workdir else None,
    model=None if is_workdir else model,
    data_dir=set_name,
    output=str(output),
    grids=0,
    samples=samples,
  )


def bicubic_scores(scale: int, set_name: str) -> dict:
  from percvae_jax import scoring

  return scoring.score_folder(set_name, scale)["bicubic"]


def tables(models: list[str], out: Path) -> str:
  """Per scale: bicubic, the published rows and ours on the three sets."""
  import jax

  from percvae_jax import flops, inference

  published = published_rows(data_path("README.md"))
  ours: dict[int, dict] = {}
  cost: dict[str, str] = {}
  for model in models:
    is_workdir = os.path.isdir(model)
    config, net, params, _ = inference.load_model(
      model if is_workdir else None, None if is_workdir else model
    )
    scale = config.data.scale
    ours.setdefault(scale, {})[model] = {s: evaluate_model(model, s, out) for s in SETS}
    count = sum(x.size for k, v in params.items() if k != "posterior" for x in jax.tree.leaves(v))
    flops_per_px = flops.per_output_pixel(net, params, scale)
    cost[model] = f"{count / 1e3:.0f}K params, {flops_per_px / 1e3:.1f} KFLOP/px"
  lines, summary = [], {}
  for scale in SCALES:
    bicubic = {
      s: (
        next(iter(ours[scale].values()))[s]["bicubic"]
        if scale in ours
        else bicubic_scores(scale, s)
      )
      for s in SETS
    }
    lines += [
      f"\n**x{scale}** (Y-PSNR / Y-SSIM; LPIPS AlexNet in brackets where measured)\n",
      "| method | " + " | ".join(SETS) + " |",
      "|---|" + "---|" * len(SETS),
    ]
    cell = lambda m: f"{m['psnr_y']:.2f} / {m['ssim_y']:.4f} ({m['lpips']:.3f})"
    lines.append("| bicubic (ours) | " + " | ".join(cell(bicubic[s]) for s in SETS) + " |")
    for method, values in published.items():
      if any((s, scale) in values for s in SETS):
        lines.append(
          f"| {method} | "
          + " | ".join(
            f"{values[(s, scale)][0]:.2f} / {values[(s, scale)][1]:.4f}"
            if (s, scale) in values
            else ""
            for s in SETS
          )
          + " |"
        )
    for model, results in ours.get(scale, {}).items():
      lines.append(
        f"| **percvae_jax {Path(model).name}** ({cost[model]}) | "
        + " | ".join(cell(results[s]["model"]) for s in SETS)
        + " |"
      )
    summary[f"x{scale}"] = {
      "bicubic": bicubic,
      "ours": {m: {s: r[s]["model"] for s in SETS} for m, r in ours.get(scale, {}).items()},
    }
  (out / "tables.json").write_text(json.dumps(summary, indent=2) + "\n")
  return "\n".join(lines)


def model_shape(init: str) -> list[str]:
  """Overrides that give a variant `init`'s trunk (a released name or a workdir)."""
  from percvae_jax import inference

  is_workdir = os.path.isdir(init)
  config = inference.load_model(init if is_workdir else None, None if is_workdir else init)[0]
  fields = ("features", "num_blocks", "block", "latent_channels", "latent_blocks")
  return [f"model.{field}={config.model[field]}" for field in fields]


def train_variant(label: str, init: str, steps: int, out: Path) -> Path:
  """configs/release_x4_perceptual.py with the variant's perceptual term, from `init`
  (in its shape)."""
  workdir = out / "ablation" / re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")
  overrides = [
    *model_shape(init),
    f"train.init_from={init}",
    f"train.num_steps={steps}",
    f"train.checkpoint_every={max(1, steps // 4)}",
    f"train.eval_every={steps}",
    f"train.log_every={max(1, steps // 10)}",
    *ABLATION[label],
  ]
  command = [
    sys.executable,
    "-m",
    "percvae_jax.main",
    "--config",
    str(PERCEPTUAL_CONFIG),
    "--workdir",
    str(workdir),
    *[f"--config.{o}" for o in overrides],
  ]
  print("$ " + " ".join(command), flush=True)
  if subprocess.run(command, check=False, cwd=REPO).returncode:
    raise BenchmarkError(f"the {label!r} run in {workdir} failed; see the log above.")
  return workdir


def picture(fidelity: str, perceptual: str, path: Path) -> None:
  """Crops of GRID_IMAGES: bicubic | fidelity | perceptual | two samples | HR."""
  import jax

  from percvae_jax import data, degradation, inference, reporting, scoring

  load = lambda m: inference.load_upscaler(
    m if os.path.isdir(m) else None, None if os.path.isdir(m) else m
  )[1]
  fid, per = load(fidelity), load(perceptual)
  rows = []
  for set_name, file_name in GRID_IMAGES:
    hr = scoring.mod_crop(data.decode_image(str(data_path(set_name, file_name))), 4)
    lr = np.asarray(degradation.degrade(hr.astype(np.float32) / 255.0, 4, 0.0))
    panels = [
      degradation.bicubic_upscale(lr, 4),
      fid(lr),
      per(lr),
      per(lr, jax.random.PRNGKey(1)),
      per(lr, jax.random.PRNGKey(2)),
    ]
    panels = [inference.to_uint8(np.asarray(p)) for p in panels] + [hr]
    size = min(GRID_CROP, *hr.shape[:2])
    top, left = (hr.shape[0] - size) // 2, (hr.shape[1] - size) // 2
    rows.append([p[top : top + size, left : left + size] for p in panels])
  Image.fromarray(
    reporting.image_grid(
      rows,
      titles=["bicubic x4", "fidelity (x4)", "perceptual (mean)", "sample 1", "sample 2", "HR"],
    )
  ).save(path)


def ablation(init: str, steps: int, samples: int, out: Path) -> str:
  runs = {label: train_variant(label, init, steps, out) for label in ABLATION}
  lines = [
    f"\nx4, each fine-tuned {steps} steps from {init} (Y-PSNR / Y-SSIM / LPIPS / LR-PSNR):\n",
    "| variant | " + " | ".join(SETS) + " |",
    "|---|" + "---|" * len(SETS),
  ]
  results = {label: {s: evaluate_model(str(w), s, out) for s in SETS} for label, w in runs.items()}
  cell = lambda m: f"{m['psnr_y']:.2f} / {m['ssim_y']:.4f} / {m['lpips']:.3f} / {m['lr_psnr']:.1f}"
  first = next(iter(results.values()))
  lines.append("| bicubic | " + " | ".join(cell(first[s]["bicubic"]) for s in SETS) + " |")
  for label, per_set in results.items():
    lines.append(f"| {label} | " + " | ".join(cell(per_set[s]["model"]) for s in SETS) + " |")
  if samples:
    scored = evaluate_model(str(runs["new formulation"]), "BSD100", out, samples)
    s = scored["samples"]
    lines.append(
      f"\nNew formulation, {samples} samples per BSD100 image at temperature "
      f"{s['temperature']:g}: LPIPS to HR {s['lpips']:.4f} (mean output "
      f"{scored['model']['lpips']:.4f}), pairwise {s['pairwise_lpips']:.4f}, "
      f"LR-PSNR {s['lr_psnr']:.2f} (worst {s['worst_lr_psnr']:.2f}), best of "
      f"{samples} {s['best_of_k_lpips']:.4f}, diversity {s['diversity']:.2f}."
    )
  picture(init, str(runs["new formulation"]), out / "ablation_x4.png")
  (out / "ablation.json").write_text(
    json.dumps({label: {s: r[s]["model"] for s in SETS} for label, r in results.items()}, indent=2)
  )
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--budget", choices=("tables", "ablation"), required=True)
  parser.add_argument(
    "--models",
    default="x2,x3,x4,x2-fast,x3-fast,x4-fast,x4-perceptual",
    help="tables: released names or workdirs, comma-separated",
  )
  parser.add_argument(
    "--init",
    default="x4",
    help="ablation: the fidelity model to start from (a released name or a workdir)",
  )
  parser.add_argument("--steps", type=int, default=1000, help="ablation: steps per variant")
  parser.add_argument(
    "--samples",
    type=int,
    default=10,
    help="ablation: prior samples per BSD100 image for the new formulation",
  )
  parser.add_argument("--output-dir", default="runs/benchmark_quality")
  parser.add_argument("--data-root", help="where Set5, Set14, BSD100 live (default: the data root)")
  args = parser.parse_args(argv)
  from percvae_jax import data_root

  data_root.use(args.data_root)
  missing = [s for s in SETS if not data_path(s).is_dir()]
  if missing:
    print(
      f"error: {', '.join(str(data_path(s)) for s in missing)} not found: the test sets "
      "live under the data root (--data-root, $PERCVAE_DATA_ROOT or ../shared/data).",
      file=sys.stderr,
    )
    return 1
  out = Path(args.output_dir)
  (out / "eval").mkdir(parents=True, exist_ok=True)
  start = time.perf_counter()
  try:
    if args.budget == "tables":
      report = tables([m.strip() for m in args.models.split(",") if m.strip()], out)
    else:
      report = ablation(args.init, args.steps, args.samples, out)
  except BenchmarkError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  report += f"\n\n({(time.perf_counter() - start) / 60:.1f} min on {os.cpu_count()} CPUs)"
  (out / f"{args.budget}.md").write_text(report + "\n")
  print(report)
  return 0


if __name__ == "__main__":
  sys.exit(main())
