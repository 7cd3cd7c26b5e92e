"""Runs percvae_jax.cpu_settings in a fresh process, where its settings can take effect
(XLA reads XLA_FLAGS, and glibc's malloc its parameters, once per process):

  python -m tests.workers.cpu_settings_probe xla FLAG [FLAG ...]
  python -m tests.workers.cpu_settings_probe malloc {asis,tuned}
  python -m tests.workers.cpu_settings_probe late-xla-flags

xla: applies the training settings for a CPU with these /proc/cpuinfo flags, then
  compiles a convolution's gradient. Prints {"ynn": whether XLA fused it with YNNPACK,
  "xla_flags": XLA_FLAGS as applied}.
malloc: tunes malloc (tuned) or leaves it as is (asis), then allocates, fills and frees
  a 64 MiB block 5 times. Prints {"malloc": what the tuning did, "faults": the minor
  page faults those 5 took}.
late-xla-flags: imports the tools, then sets XLA_FLAGS to a flag XLA does not know and
  starts JAX. XLA aborts on it, unless a backend had already started during the imports:
  then the computation runs and it prints {"started_before": true}.

JAX is imported only where each mode says, never at the top: its backend must not start
before the settings are applied.
"""

from __future__ import annotations

import argparse
import json
import os


def xla(flags: list[str]) -> None:
  from percvae_jax import cpu_settings

  cpu_settings.apply("train", cpu_settings.Cpu("Test", frozenset(flags), 2))
  import jax
  import jax.numpy as jnp

  x, w = jnp.ones((2, 16, 16, 32)), jnp.ones((3, 3, 32, 32))  # YNNPACK takes 32 channels.

  def loss(w):
    y = jax.lax.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return jnp.sum(y**2)

  hlo = jax.jit(jax.grad(loss)).lower(w).compile().as_text()
  print(json.dumps({"ynn": '"__ynn_fusion"' in hlo, "xla_flags": os.environ.get("XLA_FLAGS", "")}))


def malloc(mode: str) -> None:
  import ctypes
  import resource

  from percvae_jax import cpu_settings

  tuning = cpu_settings.tune_malloc() if mode == "tuned" else "as is"
  libc = ctypes.CDLL(None)
  libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
  libc.free.argtypes = (ctypes.c_void_p,)
  size = 64 * 2**20  # over glibc's largest mmap threshold (32 MiB): mmapped as is.

  def allocate_fill_free():
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)

  allocate_fill_free()  # the first one faults in either case.
  start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(5):
    allocate_fill_free()
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start
  print(json.dumps({"malloc": tuning, "faults": faults}))


def late_xla_flags() -> None:
  import percvae_jax.evaluate  # noqa: F401
  import percvae_jax.main  # noqa: F401
  import percvae_jax.upscale  # noqa: F401

  os.environ["XLA_FLAGS"] = "--xla_cpu_no_such_flag=1"
  import jax

  jax.numpy.ones(2).block_until_ready()
  print(json.dumps({"started_before": True}))


def main() -> None:
  parser = argparse.ArgumentParser()
  modes = parser.add_subparsers(dest="mode", required=True)
  modes.add_parser("xla").add_argument("flags", nargs="+")
  modes.add_parser("malloc").add_argument("tuning", choices=("asis", "tuned"))
  modes.add_parser("late-xla-flags")
  args = parser.parse_args()
  if args.mode == "xla":
    xla(args.flags)
  elif args.mode == "malloc":
    malloc(args.tuning)
  else:
    late_xla_flags()


if __name__ == "__main__":
  main()
