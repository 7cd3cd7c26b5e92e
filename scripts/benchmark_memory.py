"""Peak memory of `upscale` on a large image: the real command in a child process, its
peak resident set read from the kernel (the child's VmHWM, reported as it exits), not
estimated in Python.

  python scripts/benchmark_memory.py                        # 5000x5000 LR, x2: 100 MP out
  python scripts/benchmark_memory.py --side 2000 --format tiff --format jpg

Writes a photo-like LR PNG (smooth colour fields with fine texture, so the PNG codec
and the model see photograph-like data), runs `python -m percvae_jax.upscale` on it
once per --format, checks the output's size, and prints one row per run with the
machine and the date, as docs/upscaling.md reports them.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_lr(path: str, side: int, seed: int = 0) -> None:
  """A side x side RGB PNG: bicubic-upsampled colour noise plus fine grain, written by
  bands of rows (so this process never holds a float copy of it)."""
  rng = np.random.default_rng(seed)
  coarse = Image.fromarray(rng.integers(0, 256, (side // 16 + 1, side // 16 + 1, 3), np.uint8))
  smooth = np.asarray(coarse.resize((side, side), Image.BICUBIC))
  grain = rng.integers(-12, 13, (side, side, 1), np.int16)
  image = np.clip(smooth.astype(np.int16) + grain, 0, 255).astype(np.uint8)
  Image.fromarray(image).save(path, compress_level=1)


def machine() -> str:
  """'AMD EPYC 7B13, 2 cores' from /proc/cpuinfo (or platform's name)."""
  name = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          name = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  return f"{name}, {len(os.sched_getaffinity(0))} cores"


# Runs upscale in this child and prints its own high-water mark at exit. VmHWM belongs
# to the child's address space alone; wait4's ru_maxrss would also carry the parent's
# resident set across fork and exec (a large pytest process would inflate it).
CHILD = """
import atexit, resource, runpy, sys

def report_peak():
  kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  try:
    with open("/proc/self/status") as status:
      kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
  except (OSError, StopIteration):
    kib = kib / 1024 if sys.platform == "darwin" else kib
  sys.stderr.write(f"\\npeak_kib={kib}\\n")

atexit.register(report_peak)
sys.argv[0] = "percvae_jax.upscale"
runpy.run_module("percvae_jax.upscale", run_name="__main__", alter_sys=True)
"""


def run_upscale(args: list[str]) -> tuple[int, float, float, str]:
  """(exit code, peak RSS in MiB, wall seconds, stderr tail) of `python -m
  percvae_jax.upscale args` in a child process."""
  env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
  start = time.monotonic()
  child = subprocess.run(
    [sys.executable, "-c", CHILD, *args],
    cwd=REPO,
    env=env,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
    errors="replace",
  )
  wall = time.monotonic() - start
  reports = re.findall(r"^peak_kib=([0-9.]+)$", child.stderr, re.MULTILINE)
  peak = float(reports[-1]) / 1024 if reports else float("nan")
  return child.returncode, peak, wall, child.stderr[-2000:]


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--side", type=int, default=5000, help="LR side in px (default 5000).")
  parser.add_argument("--model", default="x2", help="Released model (default x2).")
  parser.add_argument(
    "--format", action="append", choices=["png", "tiff", "jpg", "webp"], help="Repeatable."
  )
  parser.add_argument("--limit-mib", type=float, default=2048, help="Bound to check (2 GiB).")
  parser.add_argument("--workdir", default=None, help="Keep the files here (default: a temp).")
  args = parser.parse_args()
  formats = args.format or ["png"]
  with tempfile.TemporaryDirectory() as temporary:
    folder = args.workdir or temporary
    os.makedirs(folder, exist_ok=True)
    lr = os.path.join(folder, "lr.png")
    write_lr(lr, args.side)
    print(f"{machine()}; {datetime.date.today().isoformat()}; {args.side}x{args.side} LR")
    print("| model | output | format | peak RSS (MiB) | wall (s) |")
    print("| --- | --- | --- | --- | --- |")
    failed = False
    for fmt in formats:
      out = os.path.join(folder, f"out_{fmt}")
      code, peak, wall, tail = run_upscale(
        [f"--input={lr}", f"--output={out}", f"--model={args.model}", f"--format={fmt}"]
      )
      if code != 0:
        print(f"upscale failed ({code}):\n{tail}", file=sys.stderr)
        return 1
      written = [os.path.join(out, name) for name in os.listdir(out)]
      Image.MAX_IMAGE_PIXELS = None  # the header only, of an output we made.
      with Image.open(written[0]) as image:
        width, height = image.size
      print(
        f"| {args.model} | {width}x{height} ({width * height / 1e6:.0f} MP) | {fmt} | "
        f"{peak:.0f} | {wall:.0f} |",
        flush=True,
      )
      failed |= peak > args.limit_mib
  if failed:
    print(f"peak RSS above --limit-mib={args.limit_mib:.0f}", file=sys.stderr)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
