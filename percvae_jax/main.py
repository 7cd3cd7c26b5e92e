"""Entry point: `percvae-train --config configs/<name>.py --workdir DIR` (or
`python -m percvae_jax.main ...`).

Every config field can be overridden with a flag, e.g.
`--config.train.learning_rate=1e-4`. Running the same command again on the same
workdir resumes from the latest checkpoint.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from percvae_jax import cli, cpu_settings, devices, train
from percvae_jax import config as config_lib

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Training configuration file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
_DISTRIBUTED = flags.DEFINE_bool(
  "distributed",
  False,
  "Join a multi-process run (jax.distributed.initialize); on Cloud "
  "TPU, Slurm, Open MPI and Kubernetes the other flags below are auto-detected.",
)
_COORDINATOR = flags.DEFINE_string(
  "coordinator_address", None, "host:port of process 0, for a manual multi-process launch."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv):
  """absl's flag parsing, with an unknown --config field as one line, not a traceback."""
  try:
    config_lib.check_overrides(argv)
  except config_lib.ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  return flags.FLAGS(argv)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  cpu_settings.apply("train")  # before JAX starts: XLA reads XLA_FLAGS once.
  if _DISTRIBUTED.value or _COORDINATOR.value:
    devices.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  cli.exit_on_user_error(train.train_and_evaluate, _CONFIG.value, _WORKDIR.value)


def console():
  """The `percvae-train` command."""
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  console()
