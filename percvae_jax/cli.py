"""What the command-line tools share: errors a user can fix end in their message.

Each tool's `main` runs its work through `exit_on_user_error`, so a bad flag, config,
folder or checkpoint prints one line naming the problem and the fix (exit code 1),
never a traceback from deep inside JAX; a second Ctrl-C exits with 130, quietly.
`upscale` and `evaluate` run a model the same way, so they define those flags here.
"""

import sys

from absl import flags

from percvae_jax import inference
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


def define_inference_flags() -> None:
  """How `upscale` and `evaluate` run a model on each image: --step, --ensemble,
  --tile, --temperature and --seed."""
  flags.DEFINE_integer("step", None, "With --workdir: the checkpoint step; default: the latest.")
  flags.DEFINE_bool(
    "ensemble",
    False,
    "Average the mean output over the eight flips and rotations of the input (EDSR's "
    "'+'): about +0.2 dB on Set5 for 8x the time; not with --samples.",
  )
  flags.DEFINE_integer(
    "tile",
    None,
    "Most LR px on a side of the tiles the model runs on (each image's are sized to "
    "cover it with the fewest); lower it to use less memory. "
    f"Default: {inference.KEPT_TILE} plus twice the model's margin (512 for x2, x3, x4).",
  )
  flags.DEFINE_float(
    "temperature",
    inference.DEFAULT_TEMPERATURE,
    "Scale of the prior's spread when sampling: lower keeps samples "
    "nearer the mean output, higher makes them differ more.",
  )
  flags.DEFINE_integer("seed", 0, "Random seed of the samples.")
