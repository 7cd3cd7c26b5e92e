"""What the tests share: the real photos under the data root (../shared/data), tiny
configs, tiny trained workdirs, image files of every troublesome kind, and
subprocesses of the package's commands and of the test workers (tests/workers/).

Imported as `from tests import helpers`: tests/ is a package, and both `python -m
pytest` and pytest's default import mode put the repository root on sys.path.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from percvae_jax import config as config_lib
from percvae_jax import data_root

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(data_root.root())
CONFIGS = REPO / "configs"
TINY_STEPS = 4  # steps of the tiny srvae run that evaluate and upscale tests share.


def shared_data(*parts: str) -> Path:
  """A path under the data root (../shared/data, or $PERCVAE_DATA_ROOT), or a clean skip
  where it is absent."""
  path = SHARED_DATA.joinpath(*parts)
  if not path.exists():
    pytest.skip(f"{path} is absent: the real photos live in ../shared/data beside the repo")
  return path


def load_script(name: str):
  """scripts/<name>.py as a module (scripts are not a package)."""
  spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_config(name: str):
  """configs/<name>.py's config, loaded as the --config flag loads it."""
  return config_lib.load_file(str(CONFIGS / f"{name}.py"))


def tiny_config(name: str = "quickstart", **overrides):
  """A config small enough to train a few steps in seconds on a CPU; overrides are
  `section__field=value`."""
  config = load_config(name)
  config.data.hr_size = 32
  config.data.num_eval_images = 4
  config.data.eval_crops_per_image = 1
  config.model.features = 8
  config.model.num_blocks = 2
  config.model.latent_dim = 16
  config.train.batch_size = 4
  config.train.num_steps = 4
  config.train.log_every = 1
  config.train.eval_every = 4
  config.train.checkpoint_every = 2
  config.train.warmup_steps = 0
  config.loss.gamma = 0.0
  for key, value in overrides.items():
    section, field = key.split("__")
    config[section][field] = value
  return config


def once_per_session(tmp_path_factory, name: str, make) -> Path:
  """The folder `make(folder)` filled, made once per test session even across
  pytest-xdist's workers: the first worker to ask makes it under a file lock, the
  others wait for it and read the same folder (which no test may change)."""
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent  # the session's folder, above each worker's own
  folder, done = root / name, root / f"{name}.done"
  with open(root / f"{name}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not done.exists():
      shutil.rmtree(folder, ignore_errors=True)
      folder.mkdir()
      make(folder)
      done.touch()
  return folder


def train_tiny_srvae(workdir: Path, steps: int = TINY_STEPS) -> str:
  """A `steps`-step x2 srvae run on the embedded photos (1 residual block); its workdir."""
  from percvae_jax import train

  config = tiny_config(
    model__num_blocks=1,
    train__num_steps=steps,
    train__warmup_steps=1,
    train__log_every=steps,
    train__eval_every=steps,
    train__checkpoint_every=steps,
  )
  train.train_and_evaluate(config, str(workdir))
  return str(workdir)


# ---------------------------------------------------------------- image files


def write_photos(folder: Path, count: int = 4, size: int = 48, seed: int = 0) -> Path:
  """`count` smooth random RGB PNGs of `size` px (upscaled noise, so they compress)."""
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  for i in range(count):
    smooth = rng.uniform(0, 255, (size // 4, size // 4, 3)).astype(np.uint8)
    Image.fromarray(smooth).resize((size, size), Image.BICUBIC).save(folder / f"{i}.png")
  return folder


def crop_of(path: Path, size: int, grayscale: bool = False) -> Image.Image:
  image = Image.open(path)
  image = image.convert("L") if grayscale else image.convert("RGB")
  return image.crop((0, 0, size, size))


def write_unreadable_files(folder: Path, source: Path) -> list[str]:
  """A corrupt PNG, truncated PNG and JPEG, and a text file named .png (made from the
  photo `source`); their names, sorted."""
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + np.random.default_rng(0).bytes(4000))
  png = source.read_bytes()
  (folder / "truncated.png").write_bytes(png[: len(png) // 2])
  Image.open(source).convert("RGB").save(folder / "full.jpg", quality=90)
  jpeg = (folder / "full.jpg").read_bytes()
  (folder / "full.jpg").unlink()
  (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
  (folder / "notes.png").write_text("not an image, just text renamed .png\n")
  return ["corrupt.png", "notes.png", "truncated.jpg", "truncated.png"]


def write_troublesome_files(folder: Path) -> dict[str, str]:
  """One file of each troublesome kind, and a good photo; returns {name: "kept" or
  "skipped"}, what reading the folder for 32 px training crops must do with each."""
  rng = np.random.default_rng(0)
  good = Image.fromarray(rng.integers(0, 256, (64, 64, 3), np.uint8))
  good.save(folder / "good.png")
  buffer = folder / "full.jpg"
  good.save(buffer, quality=90)
  raw = buffer.read_bytes()
  buffer.unlink()
  (folder / "truncated.jpg").write_bytes(raw[: len(raw) // 3])
  (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + rng.bytes(300))
  (folder / "text.png").write_text("this is not an image")
  Image.fromarray(rng.integers(0, 65536, (64, 64), np.uint16)).save(folder / "deep16.png")
  good.convert("CMYK").save(folder / "cmyk.jpg")
  good.convert("P").save(folder / "palette.png")
  Image.fromarray(rng.integers(0, 256, (20, 20, 3), np.uint8)).save(folder / "small.png")
  return {
    "good.png": "kept",
    "deep16.png": "kept",
    "cmyk.jpg": "kept",
    "palette.png": "kept",
    "truncated.jpg": "skipped",
    "corrupt.png": "skipped",
    "text.png": "skipped",
    "small.png": "skipped",
  }


EXIF_ORIENTATION = 0x0112


def write_sideways_jpeg(path: Path, height: int = 64, width: int = 48) -> np.ndarray:
  """A phone-style JPEG: pixels stored rotated, with EXIF orientation 6 ("rotate 90
  degrees clockwise to display"). Returns the upright image (height x width, a red
  block in its top-left corner, a blue one bottom-right) that viewers show."""
  upright = np.full((height, width, 3), 128, np.uint8)
  upright[:16, :16] = (255, 0, 0)
  upright[-16:, -16:] = (0, 0, 255)
  stored = np.rot90(upright, k=1)  # rotated 90 degrees counter-clockwise
  exif = Image.Exif()
  exif[EXIF_ORIENTATION] = 6
  Image.fromarray(np.ascontiguousarray(stored)).save(path, quality=95, exif=exif)
  return upright


# ---------------------------------------------------------------- subprocesses


def subprocess_env(**extra: str) -> dict:
  """The environment of a child process: CPU JAX, and this repository importable."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
  env.update(extra)
  return env


def run_module(
  module: str, *args: str, timeout: float = 300, env: dict | None = None
) -> subprocess.CompletedProcess:
  """`python -m module args...` from the repository root, as a user runs it."""
  return subprocess.run(
    [sys.executable, "-m", module, *map(str, args)],
    cwd=REPO,
    env=env or subprocess_env(),
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def main_command(workdir, *flags: str, config: str = "quickstart") -> list[str]:
  return [
    sys.executable,
    "-m",
    "percvae_jax.main",
    "--config",
    str(CONFIGS / f"{config}.py"),
    f"--workdir={workdir}",
    *flags,
  ]


def folder_overrides(photo_dirs, **extra) -> dict:
  """Worker config overrides that train on `photo_dirs`'s train/ and eval/ folders."""
  return {
    "data__name": "folder",
    "data__train_dir": str(photo_dirs / "train"),
    "data__eval_dir": str(photo_dirs / "eval"),
    **extra,
  }


def run_main(workdir, *flags: str, config: str = "quickstart") -> subprocess.CompletedProcess:
  """`python -m percvae_jax.main` on configs/<config>.py, as a user runs it."""
  return run_module(
    "percvae_jax.main", "--config", str(CONFIGS / f"{config}.py"), f"--workdir={workdir}", *flags
  )


def worker_command(workdir, overrides: dict, *args: str) -> list[str]:
  """tests/workers/train_worker.py on `helpers.tiny_config(**overrides)`."""
  return [
    sys.executable,
    "-m",
    "tests.workers.train_worker",
    str(workdir),
    json.dumps(overrides),
    *args,
  ]


def run_worker(
  workdir, overrides: dict, *args: str, timeout: float = 300, **env: str
) -> subprocess.CompletedProcess:
  return subprocess.run(
    worker_command(workdir, overrides, *args),
    cwd=REPO,
    env=subprocess_env(**env),
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def start_worker(
  workdir, overrides: dict, *args: str, merge_output: bool = False, **env: str
) -> subprocess.Popen:
  return subprocess.Popen(
    worker_command(workdir, overrides, *args),
    cwd=REPO,
    env=subprocess_env(**env),
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT if merge_output else subprocess.PIPE,
    text=True,
  )


def error_line(stderr: str) -> str:
  """The one `error: ...` line a command printed; fails unless there is exactly one and
  no traceback."""
  assert "Traceback" not in stderr, stderr[-3000:]
  lines = [line for line in stderr.splitlines() if line.startswith("error:")]
  assert len(lines) == 1, stderr[-3000:]
  return lines[0]


def assert_one_line_error(result: subprocess.CompletedProcess, *expected: str, codes=(1, 2)) -> str:
  """A refusal as a user must see it: exit code 1 or 2, no traceback, one `error:`
  line holding each of `expected`."""
  assert result.returncode in codes, (result.returncode, result.stderr[-3000:])
  line = error_line(result.stderr)
  for text in expected:
    assert text in line, (text, line)
  return line


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def metrics(workdir) -> list[dict]:
  from percvae_jax import reporting

  return reporting.read_jsonl(os.path.join(workdir, "metrics.jsonl"))


def train_lines(workdir) -> list[dict]:
  return [r for r in metrics(workdir) if "split" not in r]


def eval_lines(workdir) -> list[dict]:
  return [r for r in metrics(workdir) if r.get("split") == "eval"]


def restored(workdir, step: int | None = None) -> tuple[int, list[np.ndarray]]:
  """(step, parameter arrays) of a workdir's checkpoint, as inference restores them."""
  import jax

  from percvae_jax import inference

  _, _, params, step = inference.restore_model(str(workdir), step)
  return step, [np.asarray(x) for x in jax.tree.leaves(params)]


# ---------------------------------------------------------------- short runs, faults


def train_tiny(workdir, **overrides):
  """In-process training of the tiny config (embedded photos), checkpoints every 2."""
  from percvae_jax import train  # the trainer only where a test trains.

  return train.train_and_evaluate(tiny_config(**overrides), str(workdir))


def short_run(photo_dirs, **extra):
  """Worker overrides of an 8-step run on the photo folders, checkpoints every 2."""
  short = dict(
    train__num_steps=8,
    train__checkpoint_every=2,
    train__eval_every=2,
    train__lr_schedule="constant",
  )
  return folder_overrides(photo_dirs, **{**short, **extra})


def absl_messages(caplog, level=logging.INFO):
  return [r.getMessage() for r in caplog.records if r.levelno >= level]


class RunsShellCommand:
  """Pickles to a call of os.system: the classic malicious pickle."""

  def __init__(self, command):
    self.command = command

  def __reduce__(self):
    return (os.system, (self.command,))


def write_malicious_pth(path: Path, marker: Path) -> None:
  torch = pytest.importorskip("torch")
  torch.save(
    {"features.0.weight": torch.zeros(1), "evil": RunsShellCommand(f"touch {marker}")}, path
  )
