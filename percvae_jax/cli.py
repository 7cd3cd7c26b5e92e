"""What the command-line tools share: errors a user can fix end in their message.

Each tool's `main` runs its work through `exit_on_user_error`, so a bad flag, config,
folder or checkpoint prints one line naming the problem and the fix (exit code 1),
never a traceback from deep inside JAX; a second Ctrl-C exits with 130, quietly.
"""

import os
import sys

from percvae_jax.errors import UserError


def exit_on_user_error(function, *args, **kwargs):
  try:
    return function(*args, **kwargs)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  except KeyboardInterrupt:
    print("Interrupted.", file=sys.stderr)
    sys.exit(130)


def prefer_eigen_cpu_convolutions() -> None:
  """For training on a CPU: XLA's Eigen convolutions run the train step ~17% faster
  than its YNNPACK fusions (scripts/benchmark_speed.py), which stay the default for
  inference, where they win. Takes effect before JAX's first computation; an
  explicit XLA_FLAGS choice is kept. Accelerators ignore it."""
  xla_flags = os.environ.get("XLA_FLAGS", "")
  if "xla_cpu_experimental_ynn_fusion_type" not in xla_flags:
    os.environ["XLA_FLAGS"] = f"{xla_flags} --xla_cpu_experimental_ynn_fusion_type=".strip()
