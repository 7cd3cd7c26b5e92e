"""The released models against OpenCV's dnn_superres models (FSRCNN, FSRCNN-small,
ESPCN, LapSRN) on the same LR inputs: Y-PSNR, Y-SSIM, LPIPS and output megapixels per
second, per set and scale, as markdown tables for the docs.

  python scripts/benchmark_peers.py --peers-dir ~/peers                 # ~1.5 h, 2 busy cores
  python scripts/benchmark_peers.py --peers-dir ~/peers --sets Set5 --scales 2 --lr cv2
  python scripts/benchmark_peers.py --peers-dir ~/peers --parts speed   # the MP/s alone

The peers' files are not in this repository: --peers-dir (or $PERCVAE_PEERS_DIR) is a
folder of OpenCV's `<Name>_x<S>.pb` (FSRCNN_x2.pb ... LapSRN_x8.pb, from the authors'
repositories that OpenCV's dnn_superres documentation links). A file that is absent
skips that peer at that scale, in one line. They need OpenCV 4 with its contrib modules
(`pip install 'percvae_jax[peers]'`): OpenCV 5 no longer reads these graphs.

LR (--lr): `pil` is the classic protocol's (PIL's antialiased bicubic, as the published
tables make it), `cv2` OpenCV's INTER_CUBIC (no antialiasing), which the peers were
trained on and which suits them (on Set5: about +1 dB at x2, +0.3-0.8 dB at x4). In each
block every method, ours included, upscales the same LR images, and bicubic is PIL's
bicubic upscaling of them. Scores are `percvae_jax.scoring`'s: HR mod-cropped, outputs
quantised to 8 bits, Y-PSNR and Y-SSIM with `scale` px shaved, LPIPS (AlexNet).

Speed: output megapixels per second on the PIL LR of the first --speed-images images of
--speed-set, the same images for every method. Start-up (loading the model and its first
call: OpenCV reads the graph, JAX compiles) is timed apart; the steady state is the
median of --rounds timed passes after one untimed pass (which compiles JAX's programs
for every image shape). OpenCV gets as many threads as the cores this process may use,
as XLA does; "MP per CPU-s" divides by the process's CPU time, the steadier figure on a
shared machine.

Writes OUT/peers.md and OUT/peers.json and prints the tables.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from percvae_jax import cpu_settings, data_root, degradation, inference, scoring
from percvae_jax.errors import UserError

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the harness.
import benchmark_common as common  # noqa: E402

# OpenCV's dnn_superres models: the file's name, the algorithm `setModel` takes, the
# scales its authors trained (LapSRN is a x2/x4/x8 pyramid: no x3).
PEERS = (
  ("FSRCNN", "fsrcnn", (2, 3, 4)),
  ("FSRCNN-small", "fsrcnn", (2, 3, 4)),
  ("ESPCN", "espcn", (2, 3, 4)),
  ("LapSRN", "lapsrn", (2, 4, 8)),
)
# --lr: the table's name for each LR, and what makes it.
LR_KINDS = {
  "pil": ("PIL", "PIL's bicubic downscaling, antialiased (the classic protocol's)"),
  "cv2": ("cv2", "OpenCV's cv2.resize INTER_CUBIC, no antialiasing (the peers' training LR)"),
}
PEERS_ENV = "PERCVAE_PEERS_DIR"

Upscale = Callable[[np.ndarray], np.ndarray]


class BenchmarkError(UserError):
  """Missing files, data or OpenCV; the message says what to do."""


class Method(NamedTuple):
  """One row of the tables: `load()` gives its upscaler (an HxWx3 float LR in [0,1]
  -> its float SR), and is what the start-up time counts."""

  name: str
  scale: int
  load: Callable[[], Upscale]


def opencv():
  """cv2, where it is OpenCV 4 with dnn_superres; else a BenchmarkError saying how."""
  try:
    import cv2  # only here: the rest of the package never needs OpenCV.
  except ImportError:
    cv2 = None
  if cv2 is not None and hasattr(cv2, "dnn_superres") and cv2.__version__.startswith("4."):
    return cv2
  found = "OpenCV is not installed"
  if cv2 is not None:
    found = f"OpenCV {cv2.__version__} " + (
      "cannot read the peers' .pb graphs"
      if hasattr(cv2, "dnn_superres")
      else "lacks the contrib module dnn_superres"
    )
  raise BenchmarkError(
    f"{found}; install OpenCV 4 with its contrib modules: pip install 'percvae_jax[peers]'."
  )


def opencv_peer(path: str, algorithm: str, scale: int) -> Upscale:
  """A dnn_superres model, as an upscaler of float RGB (it takes and gives 8-bit BGR)."""
  cv2 = opencv()
  model = cv2.dnn_superres.DnnSuperResImpl_create()
  try:
    model.readModel(path)
  except cv2.error as e:
    reason = str(e).strip().splitlines()[-1]
    raise BenchmarkError(
      f"OpenCV cannot read {path} ({reason}); replace it with the file from its authors."
    ) from None
  model.setModel(algorithm, scale)

  def upscale(lr: np.ndarray) -> np.ndarray:
    bgr = np.ascontiguousarray(inference.to_uint8(lr)[..., ::-1])
    return model.upsample(bgr)[..., ::-1].astype(np.float32) / 255.0

  return upscale


def peer_methods(peers_dir: str, scales, say=print) -> list[Method]:
  """The peers whose files `peers_dir` holds at `scales`; one line for each absent."""
  methods = []
  for name, algorithm, trained in PEERS:
    for scale in (s for s in scales if s in trained):
      path = os.path.join(peers_dir, f"{name}_x{scale}.pb")
      if not os.path.isfile(path):
        say(f"skipping {name} x{scale}: {path} is absent.")
        continue
      methods.append(Method(name, scale, functools.partial(opencv_peer, path, algorithm, scale)))
  return methods


def our_methods(models, scales) -> list[Method]:
  """Released models (names) or training runs (workdirs) whose scale is in `scales`."""
  methods = []
  for model in models:
    workdir, name = (model, None) if os.path.isdir(model) else (None, model)
    scale = inference.load_model(workdir, name)[0].data.scale
    if scale in scales:
      load = lambda w=workdir, n=name: inference.load_upscaler(w, n)[1]
      methods.append(Method(f"percvae_jax {Path(model).name}", scale, load))
  return methods


def bicubic_method(scale: int) -> Method:
  """The scorer's bicubic upscaling (PIL-exact, in JAX), for the speed table."""
  return Method(
    "bicubic", scale, lambda: lambda lr: np.asarray(degradation.bicubic_upscale(lr, scale))
  )


def opencv_lr(hr, scale: int):
  """The LR OpenCV's INTER_CUBIC makes from the 8-bit HR (the peers' training LR)."""
  cv2 = opencv()
  hr = inference.to_uint8(np.asarray(hr))  # exact: the scorer's HR is uint8 / 255.
  height, width = hr.shape[:2]
  lr = cv2.resize(hr, (width // scale, height // scale), interpolation=cv2.INTER_CUBIC)
  return lr.astype(np.float32) / 255.0


def quality(methods: list[Method], sets, scales, lr_kinds, say=print) -> dict:
  """{"x<S>": {lr kind: {set: {"bicubic": means, method name: means}}}}, every method
  loaded once and scored on the LR images bicubic is scored on."""
  lpips_fn = scoring.alex_lpips()
  results = {}
  for scale in scales:
    upscalers = {m.name: m.load() for m in methods if m.scale == scale}
    for kind in lr_kinds:
      for set_name in sets:
        sources = scoring.folder_sources(set_name, "--sets")
        means = {}
        for name, upscaler in list(upscalers.items()) or [(None, None)]:
          start = time.perf_counter()
          degrade = opencv_lr if kind == "cv2" else None  # None: the classic protocol's.
          scored = scoring.score_images(sources, scale, 0.0, lpips_fn, upscaler, degrade=degrade)
          rows = [scores for _, scores, _ in scored if scores is not None]
          if not rows:
            raise BenchmarkError(
              f"none of the images of {set_name} could be scored at x{scale} (see the "
              f"warnings above); each needs {scoring.MIN_HR_SIDE} px or more on a side."
            )
          means.setdefault("bicubic", scoring.mean_scores([r["bicubic"] for r in rows]))
          if name is not None:
            means[name] = scoring.mean_scores([r["model"] for r in rows])
            say(
              f"x{scale} {kind} LR {set_name} {name}: Y-PSNR {means[name]['psnr_y']:.2f} "
              f"(bicubic {means['bicubic']['psnr_y']:.2f}), {time.perf_counter() - start:.0f} s"
            )
        results.setdefault(f"x{scale}", {}).setdefault(kind, {})[set_name] = means
  return results


def speed_images(set_name: str, count: int, scale: int) -> list[np.ndarray]:
  """The PIL LR of the first `count` images of `set_name`, mod-cropped."""
  images = []
  for _, load in scoring.folder_sources(set_name, "--speed-set")[:count]:
    hr = scoring.mod_crop(load(), scale).astype(np.float32) / 255.0
    images.append(np.asarray(degradation.degrade(hr, scale, 0.0)))
  return images


def speed(methods: list[Method], set_name: str, count: int, rounds: int, say=print) -> dict:
  """{"x<S>": {method name: {"startup_s", "mp_per_s", "mp_per_cpu_s", ...}}}."""
  results = {}
  for scale in sorted({m.scale for m in methods}):
    images = speed_images(set_name, count, scale)
    megapixels = sum(lr.shape[0] * lr.shape[1] for lr in images) * scale**2 / 1e6
    for method in (m for m in methods if m.scale == scale):
      start = time.perf_counter()
      upscaler = method.load()
      upscaler(images[0])
      startup = time.perf_counter() - start
      # The untimed pass compiles JAX's programs for every image shape.
      one_pass = functools.partial(upscale_each, upscaler, images)
      timing = common.time_calls(one_pass, rounds, warmup=1, items=megapixels)
      row = dict(
        startup_s=startup,
        mp_per_s=timing["rate"],
        mp_per_cpu_s=timing["rate_by_cpu"],
        megapixels=megapixels,
        images=len(images),
        pass_s=timing["times_s"],
      )
      results.setdefault(f"x{scale}", {})[method.name] = row
      rate, by_cpu = rates(row)
      say(f"x{scale} {method.name}: start-up {startup:.2f} s, {rate} MP/s, {by_cpu} MP per CPU-s")
  return results


def upscale_each(upscaler: Upscale, images) -> list[np.ndarray]:
  """One timed pass: every speed image upscaled."""
  return [upscaler(lr) for lr in images]


def rates(row: dict) -> tuple[str, str]:
  """MP/s, and MP per CPU-s ("-" where the CPU time was too short to measure)."""
  return f"{row['mp_per_s']:.2f}", f"{row['mp_per_cpu_s']:.2f}" if row["mp_per_cpu_s"] else "-"


def label(name: str) -> str:
  """Ours in bold, as in docs/results.md."""
  prefix = "percvae_jax "
  return f"**{prefix}`{name[len(prefix) :]}`**" if name.startswith(prefix) else name


def quality_table(results: dict, scale_key: str) -> str:
  """One scale's table: per LR kind, bicubic, then each method, on every set."""
  blocks = results[scale_key]
  sets = list(next(iter(blocks.values())))
  cell = lambda m: f"{m['psnr_y']:.2f} / {m['ssim_y']:.4f} ({m['lpips']:.3f})"
  lines = [
    f"**{scale_key}**: Y-PSNR (dB) / Y-SSIM, LPIPS (AlexNet, lower is better) in brackets",
    "",
    "| method | LR | " + " | ".join(sets) + " |",
    "|---|---|" + "---|" * len(sets),
  ]
  for kind, per_set in blocks.items():
    for name in per_set[sets[0]]:
      cells = " | ".join(cell(per_set[s][name]) for s in sets)
      lines.append(f"| {label(name)} | {LR_KINDS[kind][0]} | {cells} |")
  return "\n".join(lines)


def speed_table(results: dict, set_name: str) -> str:
  first = next(iter(next(iter(results.values())).values()))
  lines = [
    f"Output megapixels per second on the PIL LR of {first['images']} images of {set_name} "
    "(the same for every method); start-up: loading the model and its first call",
    "",
    "| method | scale | start-up (s) | MP/s | MP per CPU-s |",
    "|---|---|---|---|---|",
  ]
  for scale_key, rows in results.items():
    for name, row in rows.items():
      cells = " | ".join((f"{row['startup_s']:.2f}", *rates(row)))
      lines.append(f"| {label(name)} | {scale_key} | {cells} |")
  return "\n".join(lines)


def machine(threads: int) -> dict:
  """The harness's description of the machine, with OpenCV's version and threads."""
  cv2 = sys.modules.get("cv2")
  return dict(common.host(), threads=threads, opencv=cv2.__version__ if cv2 else None)


def report(results: dict, notes: list[str], speed_set: str) -> str:
  """The markdown: a line on the machine, the quality tables, the speed table, notes."""
  host = results["machine"]
  opencv_line = f", OpenCV {host['opencv']} with {host['threads']} threads" * bool(host["opencv"])
  lines = [
    f"Measured {host['date']} on {host['cpu']}, {host['cores']} cores (load average "
    f"{host['load_average_start']:.1f} at the start, {host['load_average_end']:.1f} at the "
    f"end); jax {host['jax']}{opencv_line}."
  ]
  for scale_key in results.get("quality", {}):
    lines += ["", quality_table(results["quality"], scale_key)]
  if results.get("speed"):
    lines += ["", speed_table(results["speed"], speed_set)]
  if results.get("quality"):
    kinds = next(iter(results["quality"].values()))
    notes = [f"LR {LR_KINDS[k][0]}: {LR_KINDS[k][1]}." for k in kinds] + notes
  return "\n".join(lines + [""] + [f"- {n}" for n in notes])


def absent_scales(scales) -> list[str]:
  return [
    f"{name} has no x{scale} model (its authors trained x{'/x'.join(map(str, trained))})."
    for name, _, trained in PEERS
    for scale in scales
    if scale not in trained
  ]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--peers-dir",
    default=os.environ.get(PEERS_ENV),
    help=f"folder of OpenCV's <Name>_x<S>.pb files (default: ${PEERS_ENV})",
  )
  parser.add_argument(
    "--models",
    default="x2,x3,x4,x2-fast,x3-fast,x4-fast,x4-perceptual",
    help="ours: released names or training runs' workdirs, comma-separated",
  )
  parser.add_argument("--sets", default=",".join(data_root.EVAL_SETS))
  parser.add_argument("--scales", default="2,3,4")
  parser.add_argument("--lr", choices=("pil", "cv2", "both"), default="both")
  parser.add_argument("--parts", default="quality,speed", help="quality, speed or both")
  parser.add_argument("--speed-set", default="BSD100")
  parser.add_argument("--speed-images", type=int, default=10)
  parser.add_argument("--rounds", type=int, default=5, help="timed passes per method")
  parser.add_argument("--output-dir", default="runs/benchmark_peers")
  parser.add_argument("--data-root", help="where the sets live (default: the data root)")
  args = parser.parse_args(argv)
  try:
    return run(args)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1


def run(args) -> int:
  data_root.use(args.data_root)
  scales = [int(s) for s in data_root.split(args.scales)]
  parts = set(data_root.split(args.parts))
  lr_kinds = ["pil", "cv2"] if args.lr == "both" else [args.lr]
  sets = data_root.split(args.sets)
  if not args.peers_dir or not os.path.isdir(args.peers_dir):
    raise BenchmarkError(
      f"--peers-dir={args.peers_dir!r} is not a folder; point it (or ${PEERS_ENV}) at the "
      "folder of OpenCV's dnn_superres files (FSRCNN_x2.pb, ...)."
    )
  if not parts or parts - {"quality", "speed"}:
    raise BenchmarkError(f"--parts={args.parts!r}: name quality, speed or both.")
  for scale in scales:
    if scale not in degradation.SCALES:
      raise BenchmarkError(f"--scales: {scale} is not one of {degradation.SCALES}.")
  needed = (sets if "quality" in parts else []) + ([args.speed_set] if "speed" in parts else [])
  missing = [s for s in dict.fromkeys(needed) if not os.path.isdir(data_root.resolve(s))]
  if missing:
    raise BenchmarkError(
      f"{', '.join(missing)} not found under the data root {data_root.root()}; pass "
      "--data-root, set $PERCVAE_DATA_ROOT, or name folders of HR images."
    )
  say = lambda line: print(line, file=sys.stderr, flush=True)
  peers = peer_methods(args.peers_dir, scales, say)
  threads = cpu_settings.detect().cores
  if peers or "cv2" in lr_kinds:
    opencv().setNumThreads(threads)
  ours = our_methods(data_root.split(args.models), scales)
  cpu_settings.apply("infer")  # before JAX starts: XLA reads XLA_FLAGS once.
  import jax

  jax.devices()  # started here, so no method's start-up counts it.
  results = {"machine": machine(threads)}
  if "speed" in parts:
    methods = [bicubic_method(s) for s in scales] + peers + ours
    methods.sort(key=lambda m: m.scale)
    results["speed"] = speed(methods, args.speed_set, args.speed_images, args.rounds, say)
  if "quality" in parts:
    results["quality"] = quality(peers + ours, sets, scales, lr_kinds, say)
  results["machine"]["load_average_end"] = os.getloadavg()[0]
  notes = absent_scales(scales)
  notes += [
    f"not measured: {n} x{s} (no {n}_x{s}.pb in --peers-dir)."
    for n, _, trained in PEERS
    for s in scales
    if s in trained and not any(p.name == n and p.scale == s for p in peers)
  ]
  text = report(results, notes, args.speed_set)
  out = Path(args.output_dir)
  out.mkdir(parents=True, exist_ok=True)
  (out / "peers.md").write_text(text + "\n")
  (out / "peers.json").write_text(json.dumps(dict(results, notes=notes), indent=2) + "\n")
  print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
