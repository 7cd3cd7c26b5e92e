"""A training process for the tests, run from the repository root:

  python -m tests.workers.train_worker WORKDIR OVERRIDES_JSON \
      [--coordinator HOST:PORT --num-processes N --process-id I] [--save-params]

Trains `helpers.tiny_config(**OVERRIDES_JSON)` in WORKDIR as `python -m
percvae_jax.main` does: a user error is one `error: ...` line and exit code 1, and
SIGTERM or Ctrl-C save a checkpoint and exit 0. With --coordinator it joins a
multi-process run; the devices per process come from XLA_FLAGS. With --save-params
it writes the final parameters to WORKDIR/params_<process>_of_<processes>.npz.

Faults, injected through the environment:
  KILL_AT=<step>:<train|eval>  SIGKILL itself right after writing that step's metrics
                               line of that split;
  KILL_AT=<step>:in_save       SIGKILL itself inside the checkpoint write of that step,
                               its arrays written but the checkpoint not committed;
  NAN_FROM=<step>              the model's output, hence the loss and the gradients,
                               is NaN at that step and every later one.
"""

from __future__ import annotations

import argparse
import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from percvae_jax import cli, devices, train
from tests import helpers


def die() -> None:
  os.kill(os.getpid(), signal.SIGKILL)


def kill_after_metrics_line(kill_step: int, kill_split: str) -> None:
  original_write = train.reporting.Reporter.write

  def write(self, step, values, split="train"):
    original_write(self, step, values, split)
    if step == kill_step and split == kill_split:
      die()

  train.reporting.Reporter.write = write


def kill_inside_save(kill_step: int) -> None:
  """Dies when Orbax finalizes (commits) the checkpoint of `kill_step`."""
  import orbax.checkpoint as ocp
  import orbax.checkpoint._src.path.atomicity as atomicity

  saving = []
  original_save = ocp.CheckpointManager.save

  def save(self, step, *args, **kwargs):
    saving.append(step)
    return original_save(self, step, *args, **kwargs)

  ocp.CheckpointManager.save = save
  original_finalize = {}

  def killing_finalize(self, *args, **kwargs):
    if saving and saving[-1] == kill_step:
      die()
    return original_finalize[type(self)](self, *args, **kwargs)

  for name in dir(atomicity):
    cls = getattr(atomicity, name)
    if isinstance(cls, type) and "finalize" in vars(cls):
      original_finalize[cls] = cls.finalize
      cls.finalize = killing_finalize


def nan_from(first_bad_step: int) -> None:
  """From step `first_bad_step` (1-based, as the log counts) on, the model's outputs
  are NaN inside the train step, so its loss and every gradient are."""
  original = train.make_train_step

  def make_train_step(config, vgg_module):
    step_fn = original(config, vgg_module)

    def poisoned_step(state, batch):
      bad = state.step + 1 >= first_bad_step
      apply_fn = state.apply_fn

      def poisoned_apply(*args, **kwargs):
        outputs = apply_fn(*args, **kwargs)
        # Added, not selected with jnp.where: the good steps' gradients stay exact.
        poison = jnp.where(bad, jnp.nan, 0.0)
        return {
          k: v + poison.astype(v.dtype) if k in ("sr", "generated") else v
          for k, v in outputs.items()
        }

      new_state, terms = step_fn(state.replace(apply_fn=poisoned_apply), batch)
      return new_state.replace(apply_fn=apply_fn), terms

    return poisoned_step

  train.make_train_step = make_train_step


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("workdir")
  parser.add_argument("overrides", help="JSON: {section__field: value}")
  parser.add_argument("--coordinator", default="")
  parser.add_argument("--num-processes", type=int, default=1)
  parser.add_argument("--process-id", type=int, default=0)
  parser.add_argument("--save-params", action="store_true")
  args = parser.parse_args()

  logging.set_verbosity(logging.INFO)
  if args.coordinator:
    devices.initialize_distributed(args.coordinator, args.num_processes, args.process_id)
  kill = os.environ.get("KILL_AT")
  if kill:
    step, where = kill.split(":")
    if where == "in_save":
      kill_inside_save(int(step))
    else:
      kill_after_metrics_line(int(step), where)
  if os.environ.get("NAN_FROM"):
    nan_from(int(os.environ["NAN_FROM"]))

  config = helpers.tiny_config(**json.loads(args.overrides))
  state = cli.exit_on_user_error(train.train_and_evaluate, config, args.workdir)
  if args.save_params:
    leaves = {str(i): np.asarray(x) for i, x in enumerate(jax.tree.leaves(state.params))}
    np.savez(
      os.path.join(args.workdir, f"params_{jax.process_index()}_of_{jax.process_count()}.npz"),
      **leaves,
    )


if __name__ == "__main__":
  main()
