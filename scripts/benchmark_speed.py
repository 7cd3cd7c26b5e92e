"""Throughput on this CPU with the settings the package chooses for it: the JAX train
steps against the PyTorch original, the input pipeline, upscaling to a 12-megapixel
output, and (--quickstart) README's command 1; docs/speed.md explains the tables.

  python scripts/benchmark_speed.py --output results.json           # ~10 min, 2 idle cores
  python scripts/benchmark_speed.py --isa avx2 --output avx2.json    # as without AVX-512
  python scripts/benchmark_speed.py --layers --only layers --output l.json   # per VGG16 conv
  python scripts/benchmark_speed.py --quick --output smoke.json      # smoke test, tiny sizes

Each row runs in a fresh process: XLA reads XLA_FLAGS, and malloc its tuning, once per
process. --isa avx2 emulates, on a CPU with AVX-512, one with AVX2 only: XLA, YNNPACK
(which picks its kernels from the cpuinfo library inside jaxlib: hidden AVX-512 there),
the package's choices, PyTorch and OpenBLAS; the microarchitecture stays the machine's.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import importlib.util
import mmap
import os
import shutil
import statistics
import struct
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the harness, torch_paper.
import benchmark_common as common  # noqa: E402

SCRIPT = os.path.abspath(__file__)
# XLA flags added to XLA_FLAGS, and whether malloc is tuned (cpu_settings.tune_malloc);
# "package": what percvae_jax.cpu_settings chooses for the CPU and the task. YNN is XLA's
# default convolution library (its YNNPACK fusions), Eigen its other one.
SETTINGS = {"package": {"package": True}, "XLA defaults": {"xla": {}, "malloc": False}}
for library, flags in (("YNN", {}), ("Eigen", {"xla_cpu_experimental_ynn_fusion_type": ""})):
  SETTINGS[library] = {"xla": flags, "malloc": True}
  SETTINGS[f"{library}, malloc as is"] = {"xla": flags, "malloc": False}
SETTINGS["torch default"] = {"malloc": False}
SETTINGS["torch channels_last"] = {"malloc": False, "channels_last": True}
SETTINGS["torch channels_last + malloc tuning"] = {"malloc": True, "channels_last": True}
TORCH_SETTINGS = tuple(s for s in SETTINGS if s.startswith("torch"))
runs_torch = lambda item: item["setting"] in TORCH_SETTINGS
TORCH_AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
TORCH_AVX2["MKL_ENABLE_INSTRUCTIONS"] = "AVX2"
SIZES = {  # (the real run's, --quick's)
  "hr_size": (128, 32),
  "batch_size": (32, 4),
  "upscale_sr": ((3000, 4000), (192, 256)),
  "pipeline_s": (3.0, 0.5),
  "model": ({}, {"features": 8, "num_blocks": 2}),
  "tile": (None, 64),
  "pipeline_set": ("SunHays80", "Set5"),
  "matmul": (4096, 256),
}
# The table's columns after the first two: (heading, result key, format).
COLUMNS = (("s/call", "median_s", "8.3f"), ("CPU s", "cpu_s", "7.2f"), ("sys s", "sys_s", "6.2f"))
COLUMNS += (("faults", "faults", "8.0f"), ("rate", "rate", "9.2f"), ("", "unit", "5"))
COLUMNS += (("GFLOP/s", "gflop_per_s", "7.0f"), ("compile", "compile_s", "7.1f"))
COLUMNS += (("RSS GB", "peak_rss_gb", "6.2f"),)


def row(kind, name, setting, quick=False, **options):
  """One task of the run; `quick`: --quick keeps it."""
  return dict(kind=kind, name=name, setting=setting, quick=quick, **options)


def rows_for(args) -> list[dict]:
  """The rows of this run, in the order they run (JAX and PyTorch interleaved)."""
  rows = [row("matmul", "float32", "package", True), row("train", "paper", "package", True)]
  rows += [row("torch", "paper", s, quick=s.endswith("tuning")) for s in TORCH_SETTINGS]
  rows += [row("train", "paper", "XLA defaults", True)]
  rows += [row("train", "quickstart", s, True) for s in ("package", "XLA defaults")]
  rows += [row("train", "default", "package"), row("train", "default", "package", gamma0=True)]
  tiles = args.tiles or ([None, 128, 192, 256, 384, 512] if args.explore else [None])
  defaults = ("8x2",) if args.quick else ("x2", "x4", "x4-fast") + ("32x4", "48x6") * args.explore
  models = args.upscale_models or defaults
  rows += [row("upscale", m, "package", quick=True, tile=t) for m in models for t in tiles]
  if args.explore:  # each setting apart.
    rows += [row("train", n, s) for s in list(SETTINGS)[2:6] for n in ("paper", "quickstart")]
    rows += [row("upscale", "x2", s, tile=None) for s in ("Eigen", "YNN, malloc as is")]
  if args.layers or args.explore:
    rows += [row("layers", "VGG16 to relu3_3", s, True) for s in ("package", TORCH_SETTINGS[-1])]
  if args.quickstart:
    rows.append(row("quickstart", "configs/quickstart.py", "package"))
  only = set(args.only or ())  # KIND or KIND:NAME; the matmul rate comes with any paper row.
  only |= {"matmul"} if only & {"train", "torch", "train:paper", "torch:paper"} else set()
  kept = lambda r: not only or r["kind"] in only or f"{r['kind']}:{r['name']}" in only
  return [r for r in rows if (r["quick"] or not args.quick) and kept(r)]


def emulated_cpu(cpu, isa: str):
  """The `cpu_settings.Cpu` the package sees: this one, or as AVX2 without AVX-512."""
  from percvae_jax import cpu_settings

  flags = frozenset(f for f in cpu.flags if not f.startswith(("avx512", "amx", "avx10")))
  return cpu if isa == "native" else cpu_settings.Cpu(f"{cpu.model} as AVX2", flags, cpu.cores)


def jaxlib_symbols(names) -> dict:
  """{name: address in this process} of local symbols of jaxlib's largest library
  (found in its ELF .symtab), which must be loaded."""
  import jaxlib
  import numpy as np

  folder = os.path.dirname(jaxlib.__file__)
  paths = [os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".so")]
  path = os.path.realpath(max(paths, key=os.path.getsize))
  with open("/proc/self/maps") as f:  # where its first page is mapped.
    base = next(int(m[0].split("-")[0], 16) for m in map(str.split, f) if m[5:] == [path])
  with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
    phoff, shoff = struct.unpack_from("<QQ", data, 0x20)
    phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", data, 0x36)
    section = lambda i: struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize)
    symtab = next(section(i) for i in range(shnum) if section(i)[1] == 2)  # SHT_SYMTAB
    strtab = section(symtab[6])
    strings = data[strtab[4] : strtab[4] + strtab[5]]
    fields = [("name", "<u4"), ("info_other_shndx", "<u4"), ("value", "<u8"), ("size", "<u8")]
    table = np.frombuffer(data[symtab[4] : symtab[4] + symtab[5]], np.dtype(fields))
    loads = [struct.unpack_from("<IIQQ", data, phoff + i * phentsize) for i in range(phnum)]
    base -= min(p[3] for p in loads if p[0] == 1)  # PT_LOAD's lowest p_vaddr.
    at = {n: strings.find(b"\0" + n.encode() + b"\0") + 1 for n in names}
    return {n: base + int(table["value"][table["name"] == at[n]][0]) for n in names}


# cpuinfo's `struct cpuinfo_x86_isa`, one bool per feature: those checked, and those
# cleared (avx512f ... avx_ne_convert: AVX-512, AVX10, AMX and later).
CPUINFO_CHECKED = {22: "avx", 24: "fma", 28: "avx2", 29: "avx512f"}
CPUINFO_CLEARED = range(29, 56)
YNN_GUARD = "_ZGVZN3ynn24get_supported_arch_flagsEvE5flags"  # set once YNNPACK read cpuinfo.


def hide_avx512_from_ynnpack(proc_flags) -> None:
  """Makes YNNPACK choose its kernels as on a CPU without AVX-512 or AMX: clears them
  in jaxlib's cpuinfo before YNNPACK first reads it; refuses (RuntimeError) where the
  structure does not match /proc/cpuinfo's flags."""
  importlib.import_module("jax")  # loads jaxlib's library, without starting a backend.
  at = jaxlib_symbols(("cpuinfo_initialize", "cpuinfo_isa", YNN_GUARD))
  if ctypes.c_uint8.from_address(at[YNN_GUARD]).value:
    raise RuntimeError("YNNPACK already read the CPU's features in this process.")
  if not ctypes.CFUNCTYPE(ctypes.c_bool)(at["cpuinfo_initialize"])():
    raise RuntimeError("cpuinfo_initialize failed.")
  isa = (ctypes.c_uint8 * 64).from_address(at["cpuinfo_isa"])
  if any(isa[i] != (flag in proc_flags) for i, flag in CPUINFO_CHECKED.items()):
    raise RuntimeError(f"jaxlib's cpuinfo_isa is not laid out as expected: {list(isa[:40])}")
  for i in CPUINFO_CLEARED:
    isa[i] = 0


def setup_worker(spec: dict, task: str) -> dict:
  """In a worker, before JAX starts: the emulation, then the row's setting. Returns
  what the worker runs with: the package's choice, XLA_FLAGS."""
  from percvae_jax import cpu_settings

  setting, native = SETTINGS[spec["row"]["setting"]], cpu_settings.detect()
  if spec["isa"] == "avx2" and not runs_torch(spec["row"]) and "avx512f" in native.flags:
    hide_avx512_from_ynnpack(native.flags)
  choice = setting.get("package") and cpu_settings.apply(task, emulated_cpu(native, spec["isa"]))
  if setting.get("malloc"):
    cpu_settings.tune_malloc()
  return dict(package_choice=choice and choice.describe(), xla_flags=os.environ.get("XLA_FLAGS"))


def sized_config(name: str, spec: dict):
  """configs/<name>.py at the run's sizes (the quickstart at its own, but with --quick;
  --quick also runs direct convolutions, which compile faster)."""
  sizes, own = spec["sizes"], name == "quickstart" and not spec["quick"]
  sized = (None, None, None) if own else (sizes["hr_size"], sizes["batch_size"], sizes["model"])
  config = common.load_config(name, *sized, compute_dtype=spec["compute_dtype"])
  config.loss.vgg_convolution = "direct" if spec["quick"] else config.loss.vgg_convolution
  return config


def worker_pipeline(worker) -> dict:
  """Input pipeline rates, after a warm-up: one thread, and the training loop's feed
  (data.device_batches); saves the HR batch, and its LR, that the steps all use."""
  import jax
  import numpy as np

  from percvae_jax import data, data_root, degradation, devices

  spec, far = worker.spec, 10**9
  result = {"set": spec["sizes"]["pipeline_set"]}
  setup_worker(spec, "train")
  config = sized_config("paper", spec)
  hr_size, batch = config.data.hr_size, config.train.batch_size
  folder = data_root.resolve(spec["sizes"]["pipeline_set"])
  hr = np.random.default_rng(0).integers(0, 256, (batch, hr_size, hr_size, 3), np.uint8)
  if os.path.isdir(folder):
    batches = data.TrainBatches(data.read_folder(folder, hr_size), hr_size, batch, seed=0)
    rate = lambda items: batch * common.items_per_second(items, spec["sizes"]["pipeline_s"])
    result["one_thread_images_per_s"] = rate(batches.batch(step) for step in range(far))
    result["fed_images_per_s"] = rate(data.device_batches(batches, devices.DataParallel(), 0, far))
    hr = batches.batch(0)
  np.save(os.path.join(spec["tmp"], "hr.npy"), hr)
  lr = jax.jit(lambda hr: degradation.lr_from_hr(hr, config.data)[1])(hr)
  np.save(os.path.join(spec["tmp"], "lr.npy"), np.asarray(lr))
  return result


def worker_train(worker) -> dict:
  """One config's train step as the training loop runs it, on the pipeline's HR batch."""
  spec, item = worker.spec, worker.spec["row"]
  ran = setup_worker(spec, "train")
  import numpy as np

  config = sized_config(item["name"], spec)
  config.loss.gamma = 0.0 if item.get("gamma0") else config.loss.gamma
  batch, hr_size = config.train.batch_size, config.data.hr_size
  hr = np.load(os.path.join(spec["tmp"], "hr.npy"))
  step = common.TrainStep(config, hr if hr.shape[:2] == (batch, hr_size) else None)
  timing = common.time_calls(step, spec["steps"], spec["warmup"], items=batch)
  result = dict(timing, unit="img/s", compile_s=step.compile_s, first_loss=step.first_loss, **ran)
  result.update(gflop_per_step=step.flops / 1e9, gflop_per_s=step.flops / 1e9 / timing["median_s"])
  result.update(gflop_executed_per_step=step.flops_executed / 1e9, vgg_winograd=step.winograd)
  return dict(result, ynn_fusions=step.compiled.as_text().count('"__ynn_fusion"'))


def worker_matmul(worker) -> dict:
  """The float32 rates of one n x n x n matmul: XLA's dot (the package's settings) and
  numpy's BLAS (OpenBLAS with AVX2 kernels under --isa avx2; others only natively)."""
  spec = worker.spec
  ran = setup_worker(spec, "train")
  import numpy as np

  n, timed = spec["sizes"]["matmul"], (spec["steps"], spec["warmup"])
  rate = common.matmul_rate(n, "float32", *timed)
  result = dict(rate, gflop_per_s=rate["rate"] / 1e9, **ran)
  blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"]
  if spec["isa"] == "native" or "openblas" in blas:
    a, b = np.random.default_rng(0).standard_normal((2, n, n), np.float32)
    blas += f", OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}" * (spec["isa"] == "avx2")
    numpy = common.time_calls(lambda: a @ b, *timed, items=2 * n**3 / 1e9)
    result["blas"] = dict(library=blas, gflop_per_s=numpy["rate"])
  return result


def worker_torch(worker) -> dict:
  """The paper's step in PyTorch on the pipeline row's HR batch and its LR, all cores."""
  spec = worker.spec
  setup_worker(spec, "train")
  import numpy as np
  import torch

  torch.set_num_threads(len(os.sched_getaffinity(0)))
  hr, lr = (np.load(os.path.join(spec["tmp"], f"{name}.npy")) for name in ("hr", "lr"))
  layout = SETTINGS[spec["row"]["setting"]].get("channels_last", False)
  timed = dict(steps=spec["steps"], warmup=spec["warmup"], dtype=spec["compute_dtype"])
  timing = common.time_torch_paper(lr, hr / 255.0, channels_last=layout, **timed)
  return dict(timing, unit="img/s", torch=torch.__version__)


def upscale_model(name: str):
  """(model, params, scale) of an upscale row: a released model by its name ("x4",
  "x4-fast") or its folder (`release_model.py --root`'s, a candidate before release),
  or "FEATURESxBLOCKS", the fidelity recipe at x2 with random weights (an
  architecture's speed, before it is trained)."""
  import jax

  from percvae_jax import config as config_lib
  from percvae_jax import released
  from percvae_jax.models import vae

  if name in released.names():
    config, params = released.load(name)
  elif os.path.isdir(name):
    config, params = released.load(os.path.basename(name), os.path.dirname(name))
  else:
    config = config_lib.fidelity_sr(2)
    config.model.features, config.model.num_blocks = (int(v) for v in name.split("x"))
    params = vae.init_params(vae.create(config), config, jax.random.PRNGKey(0))
  return vae.create(config), params, config.data.scale


def worker_upscale(worker) -> dict:
  """`inference.Upscaler` (`upscale`'s tiles) on one LR image whose SR is the
  `upscale_sr` size (12 MP), timed after the tile's program is compiled; where its
  time goes: the model's calls on its windows (of which the windows' overlap makes
  `work` x the image's LR pixels), and the rest (cutting, stitching, copies)."""
  spec, item = worker.spec, worker.spec["row"]
  ran = setup_worker(spec, "infer")
  import jax
  import numpy as np

  from percvae_jax import inference

  model, params, scale = upscale_model(item["name"])
  upscaler = inference.Upscaler(model, params, scale, spec["sizes"]["tile"] or item["tile"])
  height, width = (side // scale for side in spec["sizes"]["upscale_sr"])
  start = time.perf_counter()
  window_h, window_w = (
    inference.window_length(n, upscaler.tile, upscaler.margin) for n in (height, width)
  )
  upscaler(np.zeros((window_h, window_w, 3), np.float32))
  compile_s = time.perf_counter() - start
  lr = np.random.default_rng(0).random((height, width, 3), np.float32)
  megapixels = scale * scale * height * width / 1e6
  timing = common.time_calls(lambda: upscaler(lr), 1, 0, items=megapixels)
  windows = [len(inference.window_spans(n, upscaler.tile, upscaler.margin)) for n in lr.shape[:2]]
  result = dict(timing, unit="MP/s", sr_px=[scale * width, scale * height], compile_s=compile_s)
  # The windows' overlap: the LR pixels the model computes per LR pixel of the image.
  computed = windows[0] * windows[1] * window_h * window_w
  result.update(
    tile=upscaler.tile, windows=windows[0] * windows[1], work=computed / lr[..., 0].size
  )
  generate = jax.jit(lambda p, x: model.apply({"params": p}, x, method="generate"))
  window = lr[None, :window_h, :window_w]
  per_window = common.time_calls(lambda: generate(params, window), 3, 1)["median_s"]
  result["model_share"] = per_window * result["windows"] / result["median_s"]
  return dict(result, **ran)


def worker_quickstart(worker) -> dict:
  """README's command 1 (`python -m percvae_jax.main --config configs/quickstart.py`)
  as a user runs it, in this process; its summary from the workdir's metrics."""
  import resource
  import runpy

  spec, item = worker.spec, worker.spec["row"]
  importlib.import_module("jax")  # as percvae_jax.main does: timed, not set-up.
  start = time.perf_counter()
  setup_worker(spec, "train")  # then main's own `cpu_settings.apply` keeps this choice.
  result, workdir = {"emulation_setup_s": time.perf_counter() - start}, f"{spec['tmp']}/quickstart"
  shutil.rmtree(workdir, ignore_errors=True)
  sys.argv = ["percvae_jax.main", f"--config={common.REPO}/{item['name']}", f"--workdir={workdir}"]
  try:
    runpy.run_module("percvae_jax.main", run_name="__main__", alter_sys=True)
  except SystemExit as e:
    if e.code:
      raise RuntimeError(f"the quickstart exited with {e.code}") from None
  from percvae_jax import reporting

  usage = resource.getrusage(resource.RUSAGE_SELF)
  records = reporting.read_jsonl(f"{workdir}/metrics.jsonl")
  rates = [r["images_per_sec"] for r in records if "split" not in r and "images_per_sec" in r]
  last_eval = [r for r in records if r.get("split") == "eval"][-1]
  result.update(cpu_s=usage.ru_utime + usage.ru_stime, sys_s=usage.ru_stime, faults=usage.ru_minflt)
  result.update(rate=statistics.median(rates[1:] or rates), unit="img/s", steps=last_eval["step"])
  result.update(gain_db=last_eval["psnr"] - last_eval["bicubic_psnr"])
  return dict(result, peak_rss_gb=common.peak_rss_gb())


def worker_layers(worker) -> dict:
  """Each convolution of VGG16 to relu3_3 at the paper step's batch: forward and input
  gradient (what the perceptual term needs) by XLA's direct convolution and by the
  package's CPU algorithm (models/winograd.py), or by PyTorch (channels_last)."""
  spec = worker.spec
  setup_worker(spec, "train")
  import jax
  import numpy as np

  from percvae_jax.models import vgg_layout, winograd

  batch, side = spec["sizes"]["batch_size"], spec["sizes"]["hr_size"]
  median = lambda f, *a: common.time_calls(lambda: f(*a), spec["steps"], spec["warmup"])["median_s"]
  rng, layers = np.random.default_rng(0), []
  for name, block, c_in, c_out in vgg_layout.conv_layout()[:7]:  # to relu3_3.
    n = side >> (block - 1)
    x, cotangent = (rng.standard_normal((batch, n, n, c), np.float32) for c in (c_in, c_out))
    kernel = (rng.standard_normal((3, 3, c_in, c_out)) * (2 / 9 / c_in) ** 0.5).astype(np.float32)
    gflop = 2 * batch * n * n * 9 * c_in * c_out / 1e9
    layers.append(dict(layer=name, side=n, c_in=c_in, c_out=c_out, gflop=gflop))
    if runs_torch(spec["row"]):
      layers[-1].update(torch_layer(x, kernel, cotangent, median))
      continue
    for prefix, fn in (("", winograd.direct_conv3x3), ("package_", winograd.cpu_conv3x3)):
      gradient = jax.jit(lambda x, k, ct, fn=fn: jax.vjp(lambda x: fn(x, k), x)[1](ct)[0])
      layers[-1][f"{prefix}forward_s"] = median(jax.jit(fn), x, kernel)
      layers[-1][f"{prefix}input_gradient_s"] = median(gradient, x, kernel, cotangent)
    reference = np.asarray(jax.jit(winograd.direct_conv3x3)(x, kernel))
    error = np.abs(np.asarray(jax.jit(winograd.cpu_conv3x3)(x, kernel)) - reference).max()
    layers[-1]["package_relative_error"] = float(error / np.abs(reference).max())
  return {"layers": layers, "batch_size": batch}


def torch_layer(x, kernel, cotangent, median) -> dict:
  """PyTorch's (channels_last) forward and input-gradient seconds of one convolution."""
  import torch

  torch.set_num_threads(len(os.sched_getaffinity(0)))
  c_in, c_out = kernel.shape[2:]
  conv = torch.nn.Conv2d(c_in, c_out, 3, padding=1, bias=False).requires_grad_(False)
  conv.weight.copy_(torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()))
  conv = conv.to(memory_format=torch.channels_last)
  x, cotangent = (torch.from_numpy(a).permute(0, 3, 1, 2) for a in (x, cotangent))  # NHWC.
  x_grad = x.clone().requires_grad_(True)
  with torch.no_grad():
    forward = median(conv, x)
  both = median(lambda: torch.autograd.grad(conv(x_grad), x_grad, cotangent))
  return {"forward_s": forward, "input_gradient_s": max(both - forward, 0.0)}


WORKERS = dict(layers=worker_layers, matmul=worker_matmul, pipeline=worker_pipeline)
WORKERS.update(train=worker_train, torch=worker_torch, upscale=worker_upscale)
WORKERS["quickstart"] = worker_quickstart


def environment(item: dict, isa: str) -> dict:
  """A row's process's environment: its XLA flags, the emulation's variables."""
  from percvae_jax import cpu_settings

  env = dict(os.environ, **(TORCH_AVX2 if isa == "avx2" and runs_torch(item) else {}))
  flags = [f"--{k}={v}" for k, v in SETTINGS[item["setting"]].get("xla", {}).items()]
  flags += ["--xla_cpu_max_isa=AVX2"] if isa == "avx2" and not runs_torch(item) else []
  if isa == "avx2" and item["kind"] == "matmul":  # OpenBLAS's AVX2 kernels for this vendor.
    env["OPENBLAS_CORETYPE"] = "Zen" if "AMD" in cpu_settings.detect().model else "Haswell"
  return common.with_xla_flags(env, flags)


def run_row(item: dict, spec: dict) -> dict:
  """Runs `item` in a fresh process; what its worker returns, with the process's wall
  time and the load average before it."""
  load, start = os.getloadavg()[0], time.perf_counter()
  path = os.path.join(spec["tmp"], f"{item['kind']}-{time.monotonic_ns()}")
  spec = dict(spec, row=item, task=item["kind"])
  result, status = common.spawn(SCRIPT, path, spec, environment(item, spec["isa"]))
  if status != "ok":
    raise RuntimeError(f"{label(item)} ({item['setting']}): {status}\n{result.get('error')}")
  result.update(process_s=time.perf_counter() - start, load_before=load)
  what = f"{label(dict(item, **result)):50s} {item['setting']:36s}"
  print(f"  {what} {result['process_s']:6.1f} s (load average {load:.1f} before)", flush=True)
  return result


def label(item: dict) -> str:
  kind, name, gamma0 = item["kind"], item["name"], ", gamma=0" * bool(item.get("gamma0"))
  if kind == "matmul":
    return f"float32 matmul {item.get('n', 'n')}^3, XLA dot"
  if kind == "upscale":
    model = name if name.startswith(("x", "/", ".")) else f"x2 {name}, random weights"
    work = f", {item['work']:.2f}x px" if "work" in item else ""
    return f"upscale {model} {'x'.join(map(str, item.get('sr_px', ())))}, tile {item['tile']}{work}"
  library = {"train": ", JAX", "torch": ", PyTorch"}.get(kind)
  return f"{name}{gamma0}{library}" if library else f"{kind} {name}"


def machine_lines(report: dict) -> list[str]:
  """The header of every table: the CPU, its instruction sets, the emulation, when."""
  m, features = report["machine"], report["machine"]["features"]
  avx512 = " ".join(f.replace("avx512", "").strip("_").upper() for f in features["AVX-512"])
  amx = " ".join(f.replace("amx_", "").upper() for f in features["AMX"])
  end = f", {m['load_average_end']:.1f} at the end" if "load_average_end" in m else ""
  lines = [
    f"{m['cpu']}: AVX2 {'yes' if features['AVX2'] else 'no'}; AVX-512 {avx512 or 'no'}; AMX "
    f"{amx or 'no'}; {m['cores']} cores, {m['memory_gb']} GB; {m['date']}; jax {m.get('jax')}, "
    f"torch {m.get('torch', '-')}; load average {m['load_average_start']:.1f} at the start{end}."
  ]
  if m["emulated_isa"]:
    lines.append("EMULATED: as on a CPU with AVX2 and no AVX-512; same microarchitecture.")
  if report["compute_dtype"] != "float32":
    lines.append(f"train steps in {report['compute_dtype']} (PyTorch: autocast).")
  for task, flags in m["package_settings"].items():
    flags = " ".join(f"--{k}={v}" for k, v in flags.items()) or "XLA's defaults"
    lines.append(f"package settings for {task}: {flags}; malloc tuned.")
  return lines


def summarize(report: dict) -> dict:
  """The figures the targets are stated in ({"wall", "cpu"} where both tell)."""
  summary, train, torch = {}, report["train"], report["torch"]
  paper = next((r for r in train if (r["name"], r["setting"]) == ("paper", "package")), None)
  best = max(torch, key=lambda r: r["rate"], default=None)
  both = lambda f: {"wall": f("rate"), "cpu": f("rate_by_cpu")}
  for r in torch if paper else ():
    key = f"JAX paper step / PyTorch {r['setting']}{' (the fastest)' * (r is best)}, images/s"
    summary[key] = both(lambda k: paper[k] / r[k])  # noqa: B023
  rates = {f"matmul {m['n']}^3, XLA dot": m["gflop_per_s"] for m in report["matmul"]}
  for m in (m for m in report["matmul"] if "blas" in m):
    rates[f"matmul {m['n']}^3, numpy ({m['blas']['library']})"] = m["blas"]["gflop_per_s"]
  if paper and best:
    rates[f"paper step, PyTorch {best['setting']}"] = best["gflop_per_s"]
  summary.update({f"float32 rate, {k}, GFLOP/s": v for k, v in rates.items()})
  if paper and report["matmul"]:
    fastest = max(rates.values())
    summary["JAX paper step, share of the fastest float32 rate"] = paper["gflop_per_s"] / fastest
    if best:  # every FLOP at the fastest rate measured: the most direct convolution gives.
      summary["PyTorch's fastest, share of it"] = best["gflop_per_s"] / fastest
      summary["direct convolutions / PyTorch's fastest, at most"] = fastest / best["gflop_per_s"]
  default = [r for r in train if (r["name"], r["setting"]) == ("default", "package")]
  if len(default) == 2:
    full, no_vgg = sorted(default, key=lambda r: bool(r.get("gamma0")))
    summary["perceptual loss share of the default step"] = both(lambda k: 1 - full[k] / no_vgg[k])
  for up in (u for u in report["upscale"] if u["setting"] == "package"):
    summary[f"{label(up)}, MP/s"] = both(lambda k: up[k])  # noqa: B023
    summary[f"{label(up)}, the model's calls' share of the time"] = up["model_share"]
  for q in report["quickstart"]:
    summary["quickstart, s from start to end"] = q["median_s"]
    summary["quickstart, dB over bicubic"] = q["gain_db"]
  for r in report["layers"]:
    for library, prefix in layer_libraries(r):
      pair = lambda x: 2 * x[f"{prefix}forward_s"] + x[f"{prefix}input_gradient_s"]  # noqa: B023
      summary[f"VGG16 convolutions of a paper step, s, {library}"] = sum(map(pair, r["layers"]))
  steps = [r["rate"] for r in train if not r.get("gamma0")]
  if "fed_images_per_s" in report["pipeline"] and steps:
    fed = report["pipeline"]["fed_images_per_s"]
    summary["input pipeline (the training loop's feed) / fastest JAX step"] = fed / max(steps)
  return summary


def table(report: dict) -> str:
  """Each row under its setting: time, CPU time, faults, rate, GFLOP/s, compile, RSS."""
  width = lambda spec: int(spec.split(".")[0])
  cells = lambda r: [format(r[k], f) if r.get(k) is not None else "" for _, k, f in COLUMNS]
  line = lambda what, setting, texts, note="": (
    " ".join(
      [f"{what:50s} {setting:36s}", *(f"{t:>{width(f)}s}" for t, (_, _, f) in zip(texts, COLUMNS))]
    )
    + (note or "")
  )
  lines = machine_lines(report) + [line("step / task", "setting", [h for h, _, _ in COLUMNS])]
  best = max(report["torch"], key=lambda r: r["rate"], default=None)
  for r in sum((report[k] for k in ("matmul", "train", "torch", "upscale", "quickstart")), []):
    vs = best and r["name"] == "paper" and f" {r['rate'] / best['rate']:5.2f}x PyTorch's fastest"
    gain = "gain_db" in r and f" {r['gain_db']:+.2f} dB over bicubic ({r['steps']} steps)"
    lines.append(line(label(r), r["setting"], cells(r), vs or gain))
    if "blas" in r:
      lines.append(
        line(f"float32 matmul {r['n']}^3, numpy", r["blas"]["library"], cells(r["blas"]))
      )
  if report["torch"] and report["train"]:
    lines.append("  (GFLOP/s: the work direct convolutions do; PyTorch's, the JAX paper step's.)")
  pipeline = report["pipeline"]
  if "fed_images_per_s" in pipeline:
    lines.append(
      f"input pipeline ({pipeline['set']}): {pipeline['one_thread_images_per_s']:.0f} img/s on one "
      f"thread, {pipeline['fed_images_per_s']:.0f} img/s as the training loop feeds its steps."
    )
  return "\n".join(filter(None, lines + (["", *layers_table(report)] if report["layers"] else [])))


def layer_libraries(r: dict) -> list[tuple[str, str]]:
  """(library, key prefix) of what a "layers" row timed."""
  if runs_torch(r):
    return [("PyTorch channels_last", "")]
  return [("XLA direct", ""), ("XLA package (winograd.py)", "package_")]


def layers_table(report: dict) -> list[str]:
  """Per VGG16 convolution: ms of the forward pass / of the input gradient, by library."""
  columns = [(r, lib, prefix) for r in report["layers"] for lib, prefix in layer_libraries(r)]
  batch, libraries = report["layers"][0]["batch_size"], " ".join(f"{c[1]:>26s}" for c in columns)
  lines = [f"VGG16 convolutions at batch {batch}, ms forward / input gradient (GFLOP/s of both):"]
  lines.append(f"{'layer':8s} {'side':>4s} {'in->out':>8s} {'GFLOP':>6s} {libraries}")
  for i, x in enumerate(report["layers"][0]["layers"]):
    line = f"{x['layer']:8s} {x['side']:4d} {x['c_in']:>3d}->{x['c_out']:<4d} {x['gflop']:6.1f}"
    for r, _, prefix in columns:
      forward, gradient = (r["layers"][i][f"{prefix}{k}_s"] for k in ("forward", "input_gradient"))
      rate = 2 * x["gflop"] / (forward + gradient)
      line += " " + f"{1e3 * forward:7.0f} / {1e3 * gradient:6.0f} ({rate:4.0f})".rjust(26)
    lines.append(line)
  errors = [x.get("package_relative_error", 0) for r in report["layers"] for x in r["layers"]]
  if any(errors):
    lines.append(f"The package's largest error, relative to the largest output: {max(errors):.1e}.")
  return lines


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  add, listed = parser.add_argument, lambda kind: lambda s: [kind(v) for v in s.split(",")]
  add("--output", default="results.json", help="JSON file to write.")
  add("--isa", default="native", choices=("native", "avx2"), help="avx2: emulate AVX2 only.")
  add("--steps", type=int, default=None, help="Timed calls per row (default 5; 2 --quick).")
  add("--warmup", type=int, default=None, help="Untimed calls first (default 3; 1 --quick).")
  add("--rounds", type=int, default=1, help="Run every row this many times, interleaved.")
  add("--quick", action="store_true", help="Tiny sizes and fewer rows: a smoke test.")
  add("--explore", action="store_true", help="Also each setting apart, tiles, a 48x6 model.")
  add("--layers", action="store_true", help="Also each VGG16 convolution of the paper step.")
  add("--quickstart", action="store_true", help="Also README's command 1 to its end.")
  add("--tiles", type=listed(int), default=None, help="Upscaling tiles, e.g. 192,256.")
  add(
    "--upscale-models",
    type=listed(str),
    default=None,
    help="Released (x4) or a model's folder, x2 FxB (32x4).",
  )
  add("--only", type=listed(str), default=None, help="Kinds, or KIND:NAME (train:paper,torch).")
  add("--compute-dtype", default="float32", choices=("float32", "bfloat16"), help="Steps' dtype.")
  add("--data-root", default=None, help="Where the sets are (the pipeline reads SunHays80).")
  add("--worker", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.worker:
    return common.serve(args.worker, WORKERS)
  from percvae_jax import cpu_settings, data_root

  data_root.use(args.data_root)
  cpu = cpu_settings.detect()
  if args.isa == "avx2" and cpu.isa not in ("avx2", "avx512", "amx"):
    parser.error("--isa avx2 needs a CPU with AVX2 (x86-64).")
  sizes = {name: value[args.quick] for name, value in SIZES.items()}
  steps = args.steps or (2 if args.quick else 5)
  warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
  items = rows_for(args)
  if not importlib.util.find_spec("torch"):
    print("PyTorch is not installed: no PyTorch rows (pip install 'percvae_jax[test]').")
    items = [r for r in items if not runs_torch(r)]
  seen, machine = emulated_cpu(cpu, args.isa), common.host()
  machine["emulated_isa"] = args.isa != "native" and cpu.isa in ("avx512", "amx")
  machine["package_settings"] = {t: cpu_settings.choose(seen, t) for t in cpu_settings.TASKS}
  report = dict(machine=machine, sizes=sizes, steps=steps, warmup=warmup, rounds=args.rounds)
  report["compute_dtype"] = args.compute_dtype
  print("\n".join(machine_lines(report)), flush=True)
  if args.quick:  # a smoke test: its times are not measurements, so compile fast.
    os.environ.update(common.with_xla_flags(os.environ, common.FAST_COMPILE))
  with tempfile.TemporaryDirectory() as tmp:
    spec = dict(tmp=tmp, sizes=sizes, steps=steps, warmup=warmup, isa=args.isa, quick=args.quick)
    spec["compute_dtype"] = args.compute_dtype
    report["pipeline"] = run_row(row("pipeline", sizes["pipeline_set"], "XLA defaults"), spec)
    results = [[] for _ in items]
    for _ in range(args.rounds):
      for i, item in enumerate(items):
        results[i].append(run_row(item, spec))
  report.update(matmul=[], train=[], torch=[], upscale=[], quickstart=[], layers=[])
  for item, rounds in zip(items, results):  # the median round (by wall time), all kept.
    key = "median_s" if "median_s" in rounds[0] else "process_s"
    median = sorted(rounds, key=lambda r: r[key])[len(rounds) // 2]  # noqa: B023
    report[item["kind"]].append(dict(item, **median, rounds=[r[key] for r in rounds]))
  paper = [r for r in report["train"] if (r["name"], r["setting"]) == ("paper", "package")]
  for r in report["torch"] if paper else ():  # PyTorch's step does the JAX step's work.
    r["gflop_per_s"] = paper[0]["gflop_per_step"] / r["median_s"]
  for q in report["quickstart"]:  # the process, less the emulation's set-up.
    q["median_s"] = q["process_s"] - q["emulation_setup_s"]
  report["machine"]["load_average_end"] = os.getloadavg()[0]
  report.update(summary=summarize(report), table=table(report))
  print(f"\n{report['table']}\n")
  for key, value in report["summary"].items():
    both = isinstance(value, dict) and f"{value['wall']:.2f} (by CPU time {value['cpu']:.2f})"
    print(f"{key}: {both or format(value, '.2f')}")
  common.write_json(args.output, report)
  print(f"\nWrote {args.output}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
