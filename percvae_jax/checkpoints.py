"""Checkpoints and the files of a workdir: save, restore onto any devices, fall back
past damaged checkpoints, refuse another architecture's, and load parameters alone for
inference (no optimiser state is built or read).

A workdir holds `checkpoints/<step>/` (Orbax: the train state under `default/`, the
config under `config/`), `config.json` (the config of the run, rewritten on resume
when missing) and `metrics.jsonl` (see reporting.py).
"""

from __future__ import annotations

import fcntl
import json
import logging as std_logging
import os
import shutil
import socket
import time

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging

from percvae_jax import config as config_lib
from percvae_jax.errors import (
  CheckpointError,
  ConfigError,
  WorkdirBusyError,
  ensure_writable_folder,
)

# What a checkpoint holds of the train state: everything that decides the rest of
# the run (the data order is a function of seed and step), and the weights' moving
# average where the run keeps one (train.ema_decay), which inference then uses.
CHECKPOINTED = ("step", "params", "opt_state", "rng")
EMA = "ema_params"
STATE_ITEM = "default"  # the name single-item checkpoints of earlier versions used.
CONFIG_ITEM = "config"
CONFIG_FILE = "config.json"
DAMAGED_DIR = "damaged_checkpoints"
LOCK_FILE = "training.lock"


class WorkdirLock:
  """Holds a workdir for one training at a time: `with WorkdirLock(workdir):`.

  Process 0 of a run takes an exclusive `flock` on DIR/training.lock and writes its
  host and pid there; a second run is refused at once, naming that process. The
  kernel drops the lock when its process dies, so a lock file left by a dead process
  never blocks. The other processes of a multi-process run share process 0's hold.
  Also refuses, before any work, a workdir that is a file or cannot be written.
  """

  def __init__(self, workdir: str):
    self.workdir = workdir
    self._file = None

  def __enter__(self):
    ensure_writable_folder(self.workdir, "--workdir", CheckpointError)
    if jax.process_index() != 0:
      return self
    path = os.path.join(self.workdir, LOCK_FILE)
    self._file = open(path, "a+")  # pylint: disable=consider-using-with  # held until __exit__
    try:
      fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      self._file.seek(0)
      holder = self._file.read().strip() or "another process"
      self._file.close()
      raise WorkdirBusyError(
        f"{self.workdir!r} is in use by another training ({holder}); wait for it to "
        "end or stop it, or pass another --workdir."
      ) from None
    self._file.seek(0)
    self._file.truncate()
    self._file.write(
      f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
    )
    self._file.flush()
    return self

  def __exit__(self, *exc):
    if self._file is not None:
      self._file.close()  # releases the lock; the file stays, harmless.
    return False


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def manager(
  workdir: str, keep: int | None = None, read_only: bool = False
) -> ocp.CheckpointManager:
  """The workdir's checkpoint manager; `keep` newest checkpoints are kept. A read-only
  one (for inference) can restore parts of the state (`restore_params`)."""
  quiet_orbax()
  options = ocp.CheckpointManagerOptions(
    max_to_keep=keep, create=not read_only, read_only=read_only
  )
  state_handler = ocp.PyTreeCheckpointHandler() if read_only else ocp.StandardCheckpointHandler()
  return ocp.CheckpointManager(
    checkpoint_dir(workdir),
    options=options,
    item_handlers={STATE_ITEM: state_handler, CONFIG_ITEM: ocp.JsonCheckpointHandler()},
  )


def quiet_orbax() -> None:
  """Keeps Orbax's per-save INFO lines out of the training log, and its warnings that a
  read-only manager (inference's) is read-only; other warnings stay."""
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _DropOrbaxInfo) for f in handler.filters):
    handler.addFilter(_DropOrbaxInfo())


class _DropOrbaxInfo:
  def filter(self, record) -> bool:
    if "/orbax/" in record.pathname and "read_only" in record.getMessage().replace(" ", "_"):
      return False
    return record.levelno >= std_logging.WARNING or (
      "/orbax/" not in record.pathname and "signaling_client" not in record.pathname
    )


def checkpointed(state) -> dict:
  saved = {k: getattr(state, k) for k in CHECKPOINTED}
  if getattr(state, EMA, None) is not None:
    saved[EMA] = getattr(state, EMA)
  return saved


def save(checkpoints: ocp.CheckpointManager, step: int, state, config) -> None:
  """Saves `state` at `step` with the config beside it (asynchronously)."""
  checkpoints.save(
    step,
    args=ocp.args.Composite(
      **{
        STATE_ITEM: ocp.args.StandardSave(checkpointed(state)),
        CONFIG_ITEM: ocp.args.JsonSave(config.to_dict()),
      }
    ),
  )


def restore(checkpoints: ocp.CheckpointManager, state, step: int, sharding=None):
  """`state` with the checkpoint at `step`, laid out like `state` (any device count)."""
  to_struct = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding or x.sharding)
  target = jax.tree.map(to_struct, checkpointed(state))
  check_compatible(checkpoints, step, target["params"])
  restored = checkpoints.restore(
    step, args=ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardRestore(target)})
  )
  return state.replace(**restored[STATE_ITEM])


def restore_latest(checkpoints: ocp.CheckpointManager, state, workdir: str):
  """(state, step) from the newest checkpoint that restores, or (state, None).

  A checkpoint that cannot be read (a truncated or missing file) is skipped with a
  warning that says why, and moved to DIR/damaged_checkpoints/ (kept, never deleted),
  so that the run can save that step again. One of another architecture is refused.
  """
  for step in sorted(checkpoints.all_steps(), reverse=True):
    try:
      return restore(checkpoints, state, step), step
    except ConfigError:
      raise
    except Exception as e:  # pylint: disable=broad-except  # Orbax/TensorStore errors vary.
      reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
      kept = _set_aside(workdir, step)
      logging.warning(
        "The checkpoint at step %d cannot be restored (%s: %s); skipping it. "
        "Its files are kept in %s.",
        step,
        type(e).__name__,
        reason,
        kept,
      )
      checkpoints.reload()
  return state, None


def _set_aside(workdir: str, step: int) -> str:
  """Moves a damaged checkpoint out of the way; returns where it went."""
  source = os.path.join(checkpoint_dir(workdir), str(step))
  target = os.path.join(
    os.path.abspath(workdir), DAMAGED_DIR, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
  )
  if jax.process_index() == 0 and os.path.exists(source):
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.move(source, target)
  return target


def _shapes(tree) -> dict[str, tuple]:
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf in flat}


def _saved_state_tree(checkpoints: ocp.CheckpointManager, step: int) -> dict:
  metadata = checkpoints.item_metadata(step)[STATE_ITEM]
  return dict(getattr(metadata, "tree", metadata))


def check_compatible(checkpoints: ocp.CheckpointManager, step: int, params) -> None:
  """Refuses a checkpoint of another architecture, listing what differs."""
  saved = _shapes(_saved_state_tree(checkpoints, step)["params"])
  wanted = _shapes(params)
  problems = [
    f"  {k}: checkpoint {saved.get(k, 'missing')}, this config {wanted.get(k, 'missing')}"
    for k in sorted(saved.keys() | wanted.keys())
    if saved.get(k) != wanted.get(k)
  ]
  if problems:
    shown = "\n".join(problems[:12]) + (
      f"\n  ... and {len(problems) - 12} more" if len(problems) > 12 else ""
    )
    raise ConfigError(
      f"the checkpoint at step {step} in {checkpoints.directory} was trained with another "
      f"configuration; {len(problems)} arrays differ:\n{shown}\nUse the configuration "
      "it was trained with (see config.json beside it), or a new --workdir."
    )


def restore_params(checkpoints: ocp.CheckpointManager, step: int, abstract_params, sharding):
  """The parameters alone of the checkpoint at `step` (their moving average where it
  holds one), placed by `sharding`; needs a read-only `manager`. The optimiser state is
  neither built nor read."""
  check_compatible(checkpoints, step, abstract_params)
  key = EMA if EMA in _saved_state_tree(checkpoints, step) else "params"
  restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=sharding), abstract_params)
  restored = checkpoints.restore(
    step,
    args=ocp.args.Composite(
      **{
        STATE_ITEM: ocp.args.PyTreeRestore(
          item={key: abstract_params},
          restore_args={key: restore_args},
          partial_restore=True,
        )
      }
    ),
  )
  return restored[STATE_ITEM][key]


def save_config(config, workdir: str) -> None:
  """Writes DIR/config.json (atomically: a reader never sees half of it)."""
  path = os.path.join(workdir, CONFIG_FILE)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  os.replace(tmp, path)


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The configuration a workdir's run was trained with: config.json, or the one saved
  with its latest checkpoint where that file is gone; fields added to the package
  since take their defaults."""
  path = os.path.join(workdir, CONFIG_FILE)
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
  else:
    saved = _config_from_checkpoints(workdir)
    if saved is None:
      raise CheckpointError(
        f"{workdir!r} holds neither {CONFIG_FILE} nor a checkpoint: it is not the "
        "--workdir of a training run; pass the --workdir you trained with."
      )
  return config_lib.from_dict(saved)


def _config_from_checkpoints(workdir: str) -> dict | None:
  if not os.path.isdir(checkpoint_dir(workdir)):
    return None
  checkpoints = manager(workdir, read_only=True)
  try:
    for step in sorted(checkpoints.all_steps(), reverse=True):
      try:
        return checkpoints.restore(
          step, args=ocp.args.Composite(**{CONFIG_ITEM: ocp.args.JsonRestore()})
        )[CONFIG_ITEM]
      except Exception:  # pylint: disable=broad-except  # an older or damaged checkpoint.
        continue
    return None
  finally:
    checkpoints.close()
