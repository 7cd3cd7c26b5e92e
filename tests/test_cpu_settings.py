"""percvae_jax.cpu_settings: the CPU it detects, the settings it chooses per CPU and
task, how it merges them with the user's XLA_FLAGS, and that each one takes effect
(checked in fresh processes: tests/workers/cpu_settings_probe.py)."""

import json
import os
import sys

import pytest

from percvae_jax import cpu_settings
from tests import helpers

AVX2 = frozenset(["fpu", "sse2", "avx", "fma", "avx2", "f16c"])
AVX512 = AVX2 | {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni"}
AMX = AVX512 | {"amx_tile", "amx_bf16", "amx_int8"}
NO_YNN = "--xla_cpu_experimental_ynn_fusion_type="


def cpu(flags, machine="x86_64"):
  return cpu_settings.Cpu("Test CPU", frozenset(flags), cores=2, machine=machine)


@pytest.fixture
def fresh(monkeypatch):
  """`apply` as in a new process, with malloc left alone (tested in a subprocess)."""
  monkeypatch.setattr(cpu_settings, "_applied", None)
  monkeypatch.setattr(cpu_settings, "tune_malloc", lambda environ=None: "untouched (test)")


def run_probe(*args: str, timeout=300, **env: str):
  """tests/workers/cpu_settings_probe.py, on CPU JAX (plus `env`), from the repository
  root."""
  return helpers.run_module(
    "tests.workers.cpu_settings_probe", *args, timeout=timeout, env=helpers.subprocess_env(**env)
  )


def test_detect_reads_the_model_and_flags_of_the_first_processor(tmp_path):
  path = tmp_path / "cpuinfo"
  path.write_text(
    "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu avx fma avx2\n\n"
    "processor\t: 1\nmodel name\t: other\nflags\t\t: avx512f\n"
  )
  found = cpu_settings.detect(str(path))
  assert found.model == "AMD EPYC 7B13" and found.flags == {"fpu", "avx", "fma", "avx2"}
  assert found.cores >= 1 and "AMD EPYC 7B13" in found.describe()
  assert cpu_settings.detect(str(tmp_path / "missing")).cores >= 1  # no /proc: still a Cpu.


@pytest.mark.parametrize(
  "flags,machine,isa",
  [
    (AVX2, "x86_64", "avx2"),
    (AVX512, "x86_64", "avx512"),
    (AMX, "x86_64", "amx"),
    (AVX2 - {"fma"}, "x86_64", "other"),
    ({"avx", "sse2"}, "x86_64", "other"),
    (AVX512, "aarch64", "other"),
  ],
)
def test_instruction_set(flags, machine, isa):
  assert cpu(flags, machine).isa == isa


def test_choice_per_cpu_and_task():
  # Training: Eigen's convolutions from AVX2 on; XLA's defaults (YNNPACK) elsewhere.
  for flags in (AVX2, AVX512, AMX):
    assert cpu_settings.choose(cpu(flags), "train") == {"xla_cpu_experimental_ynn_fusion_type": ""}
  assert cpu_settings.choose(cpu({"avx"}), "train") == {}
  # Inference: YNNPACK everywhere (XLA's default).
  for flags in (AVX2, AVX512, AMX):
    assert cpu_settings.choose(cpu(flags), "infer") == {}
  with pytest.raises(ValueError, match="task"):
    cpu_settings.choose(cpu(AVX2), "serve")


def test_apply_adds_the_choice_to_the_users_flags(fresh):
  environ = {"XLA_FLAGS": "--xla_dump_to=/tmp/x"}
  choice = cpu_settings.apply("train", cpu(AVX2), environ)
  assert environ["XLA_FLAGS"] == f"--xla_dump_to=/tmp/x {NO_YNN}"
  assert choice.added == {"xla_cpu_experimental_ynn_fusion_type": ""} and not choice.kept
  assert "AVX2 (no AVX-512)" in choice.describe() and NO_YNN in choice.describe()
  # Once per process: a second call (another task) changes nothing more.
  assert cpu_settings.apply("infer", cpu(AVX512), environ) is choice
  assert environ["XLA_FLAGS"] == f"--xla_dump_to=/tmp/x {NO_YNN}"


def test_apply_keeps_a_flag_the_user_set(fresh):
  environ = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=individual_convolution"}
  choice = cpu_settings.apply("train", cpu(AVX2), environ)
  assert environ["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=individual_convolution"
  assert choice.kept == ("xla_cpu_experimental_ynn_fusion_type",) and not choice.added
  assert "kept from your XLA_FLAGS" in choice.describe()


def test_apply_leaves_out_a_flag_this_jaxlib_does_not_know(fresh, monkeypatch):
  monkeypatch.setattr(cpu_settings, "choose", lambda cpu, task: {"xla_cpu_no_such_flag": "1"})
  environ = {}
  choice = cpu_settings.apply("train", cpu(AVX2), environ)
  assert "XLA_FLAGS" not in environ and choice.unknown == ("xla_cpu_no_such_flag",)


def test_apply_can_be_turned_off(fresh):
  environ = {"PERCVAE_CPU_SETTINGS": "none"}
  choice = cpu_settings.apply("train", cpu(AVX2), environ)
  assert "XLA_FLAGS" not in environ and not choice.added
  assert "PERCVAE_CPU_SETTINGS=none" in choice.describe()


def test_this_jaxlib_knows_the_flags_chosen():
  chosen = {
    name
    for flags in (AVX2, AVX512)
    for task in cpu_settings.TASKS
    for name in cpu_settings.choose(cpu(flags), task)
  }
  assert cpu_settings.known_xla_flags(tuple(sorted(chosen))) == chosen
  assert not cpu_settings.known_xla_flags(("xla_cpu_no_such_flag",))


def test_accelerator_expected():
  assert not cpu_settings.accelerator_expected({"JAX_PLATFORMS": "cpu"})
  assert cpu_settings.accelerator_expected({"JAX_PLATFORMS": "cuda,cpu"})
  assert cpu_settings.accelerator_expected({"JAX_PLATFORMS": "tpu"})


@pytest.mark.parametrize("flags,ynn", [(AVX2, False), (AVX512, False), ({"avx"}, True)])
def test_the_choice_takes_effect_in_xla(flags, ynn):
  """XLA accepts the flags (it aborts on unknown ones), and compiles a train step's
  convolutions with the library chosen: Eigen from AVX2 on, else XLA's YNNPACK."""
  run = run_probe("xla", *sorted(flags), XLA_FLAGS="")
  assert run.returncode == 0, run.stderr[-3000:]
  if sys.platform != "linux" or os.uname().machine != "x86_64":
    return  # YNNPACK's fusions: XLA:CPU's default on x86-64 Linux, where this is measured.
  result = json.loads(run.stdout)
  assert result["ynn"] is ynn, result


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt")
def test_tuned_malloc_reuses_freed_memory():
  """With the tuning, a large buffer freed and allocated again is not faulted in again
  (XLA's per-step buffers); as is, glibc unmaps it and every allocation faults."""
  counts = {}
  for mode in ("as is", "tuned"):
    run = run_probe("malloc", mode.replace(" ", ""), timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout)
    if mode == "tuned" and "not glibc" in result["malloc"]:
      pytest.skip("not glibc")
    assert "kept for reuse" in result["malloc"] or mode == "as is", result
    counts[mode] = result["faults"]
  assert counts["as is"] >= 5 * 32  # 5 x 64 MiB faulted in again (4 KiB or 2 MiB pages).
  assert counts["tuned"] < counts["as is"] / 10, counts


def test_the_users_malloc_settings_win():
  assert "unchanged" in cpu_settings.tune_malloc(
    {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1:glibc.malloc.arena_max=4"}
  )
  assert "unchanged" in cpu_settings.tune_malloc({"MALLOC_ARENA_MAX_": "2"})
  assert "unchanged" in cpu_settings.tune_malloc({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"})
  assert "unchanged" in cpu_settings.tune_malloc({"JAX_PLATFORMS": "cuda"})


def test_the_tools_apply_the_settings_before_jax_starts():
  """Importing the tools starts no JAX backend, so the `cpu_settings.apply` at the top
  of their `main` is in time: an XLA_FLAGS set after the imports still reaches XLA
  (here an unknown flag, on which XLA aborts)."""
  run = run_probe("late-xla-flags")
  assert "started_before" not in run.stdout
  assert "xla_cpu_no_such_flag" in run.stderr, run.stderr[-3000:]
  for tool, task in (("main", "train"), ("upscale", "infer"), ("evaluate", "infer")):
    with open(os.path.join(os.path.dirname(cpu_settings.__file__), f"{tool}.py")) as f:
      source = f.read()
    main = source[source.index("\ndef main(") :]
    assert f'cpu_settings.apply("{task}")' in main.split("\ndef ")[1], tool
