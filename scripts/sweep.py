"""Trains every point of a grid of config overrides, then collates them into one table.

  python scripts/sweep.py --config configs/default.py --workdir-root runs/ \
      --grid loss.gamma=0,1e-4 --grid 'loss.perceptual_layers=relu2_2|relu3_3' \
      [--set train.num_steps=100 ...] [--point 'KEY=V;KEY=V' ...] [--dry-run] \
      [--json runs/sweep.json] [--markdown runs/sweep.md]

Each point runs `python -m percvae_jax.main` in its own workdir under --workdir-root,
named after the point (`runs/loss.gamma=0,loss.perceptual_layers=relu2_2`), one after
the other. Rerunning the same sweep resumes: main continues each workdir from its last
checkpoint, so finished points only reload and stop, and interrupted ones go on. With
--dry-run the commands are printed instead, to launch elsewhere (one per accelerator
job, say), and nothing is trained.

Syntax, chosen so that comma-string fields (loss.perceptual_layers) can be swept:
  --grid KEY=V1,V2     one axis; values are split on `|` where the list holds one,
                       otherwise on `,`: 'loss.perceptual_layers=relu2_2|relu2_2,relu3_3'
                       is two points, the second with both taps.
  --point 'K=V;K2=V2'  one explicit point (settings separated by `;`, values taken
                       whole); the points, if any, form one more axis. They express
                       what a product cannot without duplicate runs, e.g. an ablation
                       where the taps matter only when gamma > 0:
                       --point loss.gamma=0 --point 'loss.perceptual_layers=relu2_2'.
  --set KEY=VALUE      an override shared by every point (value taken whole).
The table takes, from each run's metrics.jsonl, the last evaluation (psnr, ssim,
bicubic_psnr, bicubic_ssim; RGB on the eval crops) and the last training loss.
"""

from __future__ import annotations

import itertools
import json
import os
import shlex
import subprocess
import sys

from absl import app, flags

from percvae_jax import config as config_lib
from percvae_jax import reporting

METRICS = ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim")


class SweepError(ValueError):
  """A sweep specification that cannot work; the message says how to write it."""


def parse_setting(text: str, flag: str) -> tuple[str, str]:
  key, sep, value = text.partition("=")
  key = key.strip()
  if not sep or not key or not value:
    raise SweepError(f"{flag} {text!r} is not KEY=VALUE, e.g. loss.gamma=0.")
  return key.removeprefix("config."), value


def parse_axis(text: str) -> tuple[str, list[str]]:
  """`KEY=V1,V2` or `KEY=V1|V2` -> (KEY, [V1, V2])."""
  key, values = parse_setting(text, "--grid")
  values = [v.strip() for v in values.split("|" if "|" in values else ",")]
  if not all(values):
    raise SweepError(f"--grid {text!r} has an empty value.")
  if len(set(values)) != len(values):
    raise SweepError(f"--grid {text!r} repeats a value.")
  return key, values


def parse_point(text: str) -> dict[str, str]:
  """`K=V;K2=V2` -> {K: V, K2: V2}."""
  settings = [parse_setting(s, "--point") for s in text.split(";") if s.strip()]
  keys = [k for k, _ in settings]
  if not settings or len(set(keys)) != len(keys):
    raise SweepError(f"--point {text!r} must set each key once, e.g. 'loss.gamma=0'.")
  return dict(settings)


def expand(
  axes: list[tuple[str, list[str]]], points: list[dict[str, str]], shared: dict[str, str]
) -> list[dict[str, str]]:
  """The settings of every run: the points (if any) times the product of the axes."""
  axis_keys = [k for k, _ in axes]
  point_keys = {k for p in points for k in p}
  clashes = sorted((set(axis_keys) & (point_keys | shared.keys())) | (point_keys & shared.keys()))
  if len(set(axis_keys)) != len(axis_keys) or clashes:
    repeated = clashes or sorted({k for k in axis_keys if axis_keys.count(k) > 1})
    raise SweepError(
      f"{', '.join(repeated)} set more than once across --grid, --point "
      "and --set; give each key in one place."
    )
  if not axes and not points:
    raise SweepError("nothing to sweep: give at least one --grid or --point.")
  return [
    {**point, **dict(zip(axis_keys, combo))}
    for point in (points or [{}])
    for combo in itertools.product(*[values for _, values in axes])
  ]


def run_name(settings: dict[str, str]) -> str:
  """A readable workdir name, `k=v,k2=v2`, safe as one path component."""
  return ",".join(f"{k}={v}" for k, v in settings.items()).replace(os.sep, "_")


def check_keys(config_path: str, keys) -> None:
  """Refuses a key the config lacks now, not after the runs before it have trained."""
  if not os.path.isfile(config_path):
    raise SweepError(f"--config={config_path!r} is not a file; e.g. configs/default.py.")
  config = config_lib.load_file(config_path)
  for key in keys:
    node = config
    for part in key.split("."):
      if not hasattr(node, "keys") or part not in node:
        raise SweepError(f"{key!r} is not a field of {config_path}; see percvae_jax/config.py.")
      node = node[part]


def command(python: str, config_path: str, workdir: str, settings: dict[str, str]) -> list[str]:
  return [
    python,
    "-m",
    "percvae_jax.main",
    "--config",
    config_path,
    "--workdir",
    workdir,
    *[f"--config.{k}={v}" for k, v in settings.items()],
  ]


def plan(
  config_path: str,
  workdir_root: str,
  grids: list[str],
  points: list[str],
  sets: list[str],
  python: str = sys.executable,
) -> list[dict]:
  """One {"name", "settings", "workdir", "command"} per run, in launch order."""
  shared = dict(parse_setting(s, "--set") for s in sets)
  runs = expand([parse_axis(g) for g in grids], [parse_point(p) for p in points], shared)
  check_keys(config_path, shared.keys() | {k for r in runs for k in r})
  planned = []
  for settings in runs:
    workdir = os.path.join(workdir_root, run_name(settings))
    planned.append(
      {
        "name": run_name(settings),
        "settings": settings,
        "workdir": workdir,
        "command": command(python, config_path, workdir, {**shared, **settings}),
      }
    )
  return planned


def collate(runs: list[dict]) -> list[dict]:
  """One row per run: its settings, last evaluation and last training loss."""
  rows = []
  for run in runs:
    records = reporting.read_jsonl(os.path.join(run["workdir"], "metrics.jsonl"))
    evals = [r for r in records if r.get("split") == "eval"]
    trains = [r for r in records if "split" not in r]
    row = {
      "name": run["name"],
      "workdir": run["workdir"],
      **run["settings"],
      "status": run.get("status", ""),
    }
    if evals:
      row.update({"step": evals[-1]["step"], **{m: evals[-1][m] for m in METRICS}})
      row["gain_psnr"] = row["psnr"] - row["bicubic_psnr"]
    if trains:
      row["loss"] = trains[-1]["loss"]
    rows.append(row)
  return rows


def markdown_table(rows: list[dict], keys: list[str]) -> str:
  columns = [(k, k, str) for k in keys] + [
    ("status", "status", str),
    ("step", "step", str),
    ("loss", "train loss", "{:.4g}".format),
    ("psnr", "PSNR", "{:.2f}".format),
    ("ssim", "SSIM", "{:.4f}".format),
    ("bicubic_psnr", "bicubic PSNR", "{:.2f}".format),
    ("bicubic_ssim", "bicubic SSIM", "{:.4f}".format),
    ("gain_psnr", "gain (dB)", "{:+.2f}".format),
  ]
  lines = ["| " + " | ".join(title for _, title, _ in columns) + " |", "|" + "---|" * len(columns)]
  for row in rows:
    cells = [fmt(row[k]) if k in row else "-" for k, _, fmt in columns]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def run_all(runs: list[dict]) -> None:
  """Trains each run in turn; a failed one is reported and the others still run."""
  for index, run in enumerate(runs, start=1):
    print(f"[sweep {index}/{len(runs)}] {shlex.join(run['command'])}", flush=True)
    code = subprocess.run(run["command"], check=False).returncode
    run["status"] = "ok" if code == 0 else f"failed (exit {code})"
    if code:
      print(f"[sweep] {run['name']} failed with exit status {code}; going on.", flush=True)


def define_flags() -> None:
  """The flags, defined only when run as a program (tests import this module)."""
  flags.DEFINE_string("config", None, "Config file every run starts from.", required=True)
  flags.DEFINE_string("workdir-root", None, "Folder for the runs' workdirs.", required=True)
  flags.DEFINE_multi_string("grid", [], "KEY=V1,V2 (or V1|V2): one axis of the grid.")
  flags.DEFINE_multi_string("point", [], "'K=V;K2=V2': one explicit point (repeatable).")
  flags.DEFINE_multi_string("set", [], "KEY=VALUE override shared by every run.")
  flags.DEFINE_bool("dry-run", False, "Print the commands instead of running them.")
  flags.DEFINE_string("json", None, "Also write the table (and the runs) as JSON here.")
  flags.DEFINE_string("markdown", None, "Also write the table as markdown here.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  f = flags.FLAGS
  try:
    runs = plan(
      f.config,
      f["workdir-root"].value,
      f.grid,
      f.point,
      f.set,
      python="python" if f["dry-run"].value else sys.executable,
    )
  except SweepError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  if f["dry-run"].value:
    print("\n".join(shlex.join(run["command"]) for run in runs))
    return
  run_all(runs)
  rows = collate(runs)
  table = markdown_table(rows, list(dict.fromkeys(k for r in runs for k in r["settings"])))
  print(table, flush=True)
  if f.markdown:
    with open(f.markdown, "w") as out:
      out.write(table + "\n")
  if f.json:
    with open(f.json, "w") as out:
      json.dump({"config": f.config, "set": f.set, "runs": rows}, out, indent=2)
  if any(run["status"] != "ok" for run in runs):
    sys.exit(1)


if __name__ == "__main__":
  define_flags()
  app.run(main)
