"""What the command-line tools share: errors a user can fix end in their message.

Each tool's `main` runs its work through `exit_on_user_error`, so a bad flag, config,
folder or checkpoint prints one line naming the problem and the fix (exit code 1),
never a traceback from deep inside JAX; a second Ctrl-C exits with 130, quietly.
"""

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
