"""What the command-line tools share: errors a user can fix end in their message.

Each tool's `main` runs its work through `exit_on_user_error`, so a bad flag, config,
folder or checkpoint prints one line naming the problem and the fix (exit code 1),
never a traceback from deep inside JAX.
"""

import sys

from percvae_jax import config as config_lib
from percvae_jax import data
from percvae_jax import inference
from percvae_jax import pretrained
from percvae_jax import train

USER_ERRORS = (config_lib.ConfigError, data.DataError, pretrained.MissingWeightsError,
               pretrained.InvalidWeightsError, train.NonFiniteLossError, FileNotFoundError,
               inference.InferenceError)


def exit_on_user_error(function, *args, **kwargs):
  try:
    return function(*args, **kwargs)
  except USER_ERRORS as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
