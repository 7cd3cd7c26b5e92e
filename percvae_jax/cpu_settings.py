"""Settings chosen for the CPU the package runs on: XLA's flags and glibc's malloc.

XLA reads XLA_FLAGS once, when JAX starts its first backend, so `apply` runs at the
top of each tool's `main` (percvae_jax.main, upscale, evaluate), before any JAX
computation. It detects the CPU (model, AVX2 / AVX-512 / AMX, cores), adds the flags
chosen for it and the task to XLA_FLAGS, tunes malloc, and logs its choice once.
A flag the user already put in XLA_FLAGS is kept as the user set it; the user's own
setting of the malloc parameters it tunes (GLIBC_TUNABLES=glibc.malloc.arena_max=...,
MALLOC_ARENA_MAX_=... and the like) turns the malloc tuning off (glibc.malloc.hugetlb
combines with it); PERCVAE_CPU_SETTINGS=none turns everything off.

What it chooses, and why (scripts/benchmark_speed.py measures each; README, Speed):

- malloc, on every CPU (glibc, CPU runs): XLA:CPU and YNNPACK allocate their buffers
  afresh at every execution, and glibc serves the large ones with mmap and unmaps them
  when they are freed, so each train step (and each upscaled tile) faults its memory
  in again, 4 KiB at a time: ~1.1 million minor faults and a quarter of the CPU time
  in the kernel per paper step. `mallopt` makes freed memory stay in the process for
  the next step: no mmap for large blocks (M_MMAP_MAX=0), no trimming
  (M_TRIM_THRESHOLD=-1), one arena (M_ARENA_MAX=1: a block freed by one thread serves
  the next step's request from another). After the first steps no page faults remain;
  the cost is that the process keeps its peak heap until it exits.
- convolutions, for training: XLA's Eigen convolutions and dots, not its YNNPACK
  fusions (XLA's default), on x86 CPUs with AVX2 or AVX-512. The train steps are
  1.07x (paper, with the perceptual VGG16's Winograd convolutions), 1.17x (quickstart)
  and 1.56x (default) faster so with AVX-512, and YNNPACK's AVX2 kernels lose more
  where AVX-512 is missing. CPUs with AMX take the same: AMX does no float32, which
  runs on their AVX-512 units (not measured on one). For inference (upscale,
  evaluate) the YNNPACK fusions win, so XLA keeps its default. Other CPUs (without
  AVX2, or not x86) keep XLA's defaults: not measured.

Every flag is checked against the flag names this jaxlib knows before it is set (XLA
aborts on an unknown one); accelerators ignore XLA's CPU flags.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import glob
import importlib.metadata
import importlib.util
import mmap
import os
import re
import struct

from absl import logging

TASKS = ("train", "infer")
# XLA flag: the YNNPACK fusion types XLA:CPU uses; empty: none (Eigen convolutions).
NO_YNN_FUSIONS = ("xla_cpu_experimental_ynn_fusion_type", "")
# mallopt parameters (glibc's malloc.h) and the values `tune_malloc` sets.
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
MALLOPT = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1), (M_ARENA_MAX, 1))
# glibc's names for them (and their neighbours): the user's own setting of any wins.
MALLOC_TUNABLES = (
  "mmap_max",
  "trim_threshold",
  "arena_max",
  "mmap_threshold",
  "arena_test",
  "top_pad",
)
OFF = "none"  # PERCVAE_CPU_SETTINGS=none: change nothing.

_applied = None  # the first `apply`'s Choice: a process applies its settings once.


@dataclasses.dataclass(frozen=True)
class Cpu:
  """What the settings depend on: the model name, /proc/cpuinfo's flags, the cores."""

  model: str
  flags: frozenset = dataclasses.field(default=frozenset(), repr=False)
  cores: int = 1
  machine: str = "x86_64"

  @property
  def isa(self) -> str:
    """The widest vector instruction set: "amx", "avx512", "avx2", or "other"."""
    if self.machine not in ("x86_64", "AMD64", "i686"):
      return "other"
    if {"amx_tile", "amx_bf16"} <= self.flags and "avx512f" in self.flags:
      return "amx"
    if {"avx512f", "avx512bw", "avx512vl"} <= self.flags:
      return "avx512"
    if {"avx2", "fma"} <= self.flags:
      return "avx2"
    return "other"

  def describe(self) -> str:
    """e.g. 'AMD EPYC 7B13, x86_64 with AVX2 (no AVX-512), 2 cores'."""
    names = {
      "amx": "AVX-512 and AMX",
      "avx512": "AVX-512",
      "avx2": "AVX2 (no AVX-512)",
      "other": "neither AVX2 nor AVX-512",
    }
    return f"{self.model}, {self.machine} with {names[self.isa]}, {self.cores} cores"


def detect(cpuinfo: str = "/proc/cpuinfo") -> Cpu:
  """This machine's CPU, from /proc/cpuinfo where there is one."""
  import platform

  fields = {}
  with contextlib.suppress(OSError), open(cpuinfo) as f:
    for line in f:
      key, _, value = line.partition(":")
      fields.setdefault(key.strip(), value.strip())
      if not line.strip() and "flags" in fields:
        break  # the first processor's block is enough.
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:
    cores = os.cpu_count() or 1
  return Cpu(
    model=fields.get("model name") or platform.processor() or "unknown CPU",
    flags=frozenset(fields.get("flags", "").split()),
    cores=cores,
    machine=platform.machine(),
  )


def choose(cpu: Cpu, task: str) -> dict[str, str]:
  """The XLA flags (name -> value) for `task` ("train" or "infer") on `cpu`."""
  if task not in TASKS:
    raise ValueError(f"task {task!r}; choose one of {TASKS}.")
  flags = {}
  if task == "train" and cpu.isa in ("avx2", "avx512", "amx"):
    flags[NO_YNN_FUSIONS[0]] = NO_YNN_FUSIONS[1]
  return flags


@dataclasses.dataclass(frozen=True)
class Choice:
  """What `apply` did: the CPU, the flags it added, those the user's XLA_FLAGS kept,
  those this jaxlib does not know (left out), and the malloc tuning."""

  cpu: Cpu
  task: str
  added: dict
  kept: tuple = ()
  unknown: tuple = ()
  malloc: str = ""

  def describe(self) -> str:
    added = " ".join(f"--{k}={v}" for k, v in self.added.items()) or "XLA's defaults"
    parts = [f"CPU settings for {self.task}: {self.cpu.describe()}; XLA_FLAGS: {added}"]
    if self.kept:
      parts.append(f"kept from your XLA_FLAGS: {', '.join(self.kept)}")
    if self.unknown:
      parts.append(f"not known to this jaxlib, left out: {', '.join(self.unknown)}")
    parts.append(f"malloc: {self.malloc}")
    return "; ".join(parts) + "."


def xla_flag_names(flags: str) -> set[str]:
  """The flag names set in an XLA_FLAGS string."""
  return {m.group(1) for m in re.finditer(r"--([A-Za-z0-9_]+)", flags or "")}


def apply(task: str, cpu: Cpu | None = None, environ=None) -> Choice:
  """Chooses and applies the settings for `task` on this CPU (or `cpu`); before JAX
  starts its backends. Returns what it did, and logs it, the first time only."""
  global _applied
  environ = os.environ if environ is None else environ
  if _applied is not None:
    return _applied
  cpu = cpu or detect()
  if environ.get("PERCVAE_CPU_SETTINGS", "").lower() == OFF:
    _applied = Choice(cpu, task, {}, malloc="unchanged (PERCVAE_CPU_SETTINGS=none)")
    logging.info("%s", _applied.describe())
    return _applied
  user_flags = environ.get("XLA_FLAGS", "")
  users = xla_flag_names(user_flags)
  wanted = choose(cpu, task)
  kept = tuple(sorted(name for name in wanted if name in users))
  known = known_xla_flags(tuple(name for name in wanted if name not in users))
  unknown = tuple(sorted(name for name in wanted if name not in users and name not in known))
  added = {name: value for name, value in wanted.items() if name in known}
  if added:
    environ["XLA_FLAGS"] = " ".join(
      [user_flags.strip()] * bool(user_flags.strip())
      + [f"--{name}={value}" for name, value in added.items()]
    )
  _applied = Choice(cpu, task, added, kept, unknown, tune_malloc(environ))
  logging.info("%s", _applied.describe())
  return _applied


def tune_malloc(environ=None) -> str:
  """Keeps freed memory in the process for reuse (see the module's docstring), unless
  the user set these malloc parameters or preloaded another allocator, off glibc, or
  when JAX will run on an accelerator. Returns what it did, in words."""
  environ = os.environ if environ is None else environ
  tunables = environ.get("GLIBC_TUNABLES", "")
  if any(f"glibc.malloc.{name}=" in tunables for name in MALLOC_TUNABLES) or any(
    f"MALLOC_{name.upper()}_" in environ for name in MALLOC_TUNABLES
  ):
    return "unchanged (your GLIBC_TUNABLES / MALLOC_*_ settings)"
  if re.search(r"jemalloc|tcmalloc|mimalloc", environ.get("LD_PRELOAD", "")):
    return "unchanged (another allocator is preloaded)"
  if accelerator_expected(environ):
    return "unchanged (JAX will run on an accelerator)"
  try:
    libc = ctypes.CDLL(None)
    libc.gnu_get_libc_version.restype = ctypes.c_char_p
    libc.gnu_get_libc_version()
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return "unchanged (not glibc)"
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  if not all(mallopt(param, value) == 1 for param, value in MALLOPT):
    return "partly tuned (mallopt refused a setting)"
  return "freed memory kept for reuse (mallopt: no mmap, no trim, 1 arena)"


def accelerator_expected(environ=None) -> bool:
  """Whether JAX will pick an accelerator: JAX_PLATFORMS names one, or (unset) a
  CUDA, ROCm or TPU plugin is installed."""
  environ = os.environ if environ is None else environ
  platforms = environ.get("JAX_PLATFORMS", "").lower()
  if platforms:
    return platforms.split(",")[0].strip() not in ("cpu", "")
  for dist in importlib.metadata.distributions():
    name = (dist.metadata.get("Name") or "").lower().replace("_", "-")
    if re.match(r"jax-(cuda\d*|rocm\d*)-plugin$|libtpu", name):
      return True
  return False


@functools.cache
def known_xla_flags(names: tuple[str, ...]) -> frozenset[str]:
  """Those of `names` that this jaxlib's XLA defines (XLA aborts on unknown flags):
  found as strings in its shared library's read-only data."""
  if not names:
    return frozenset()
  spec = importlib.util.find_spec("jaxlib")
  if spec is None or not spec.submodule_search_locations:
    return frozenset()
  libraries = [
    path
    for folder in spec.submodule_search_locations
    for path in glob.glob(os.path.join(folder, "*.so"))
  ]
  if not libraries:
    return frozenset()
  found = set()
  with (
    open(max(libraries, key=os.path.getsize), "rb") as f,
    mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data,
  ):
    start, end = _rodata(data)
    for name in names:
      if data.find(b"\0" + name.encode() + b"\0", start, end) >= 0:
        found.add(name)
  return frozenset(found)


def _rodata(data) -> tuple[int, int]:
  """(start, end) in an ELF file of its .rodata section, where flag names live; the
  whole file if it is not a 64-bit little-endian ELF with one."""
  whole = (0, len(data))
  if data[:6] != b"\x7fELF\x02\x01":
    return whole
  (shoff,) = struct.unpack_from("<Q", data, 0x28)
  shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
  if not shoff or shstrndx >= shnum:
    return whole
  header = lambda i: struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)
  names_offset = header(shstrndx)[4]
  for i in range(shnum):
    name, _, _, _, offset, size = header(i)
    at = names_offset + name
    if data[at : at + 8] == b".rodata\0":
      return offset, offset + size
  return whole
