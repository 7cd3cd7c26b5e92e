"""The errors a user can fix. Each command-line tool prints one of these as one line
that names the problem and the fix (`cli.exit_on_user_error`); anything else is a bug
and keeps its traceback. Importing this module imports nothing else of the package.
"""

import os


class UserError(Exception):
  """A problem the user can fix; the message says how."""


class ConfigError(UserError, ValueError):
  """A configuration field that cannot work; the message names the field and the fix."""


class DataError(UserError, ValueError):
  """A data source that cannot be used; the message says what to change."""


class MissingWeightsError(UserError, FileNotFoundError):
  """Weights that are not on disk; the message says how to get them."""


class InvalidWeightsError(UserError, ValueError):
  """A weights file or dict with missing or misshapen entries; lists them all."""


class CheckpointError(UserError):
  """A workdir or checkpoint that cannot be trained on, evaluated or upscaled with."""


class WorkdirBusyError(CheckpointError):
  """Another training holds the workdir."""


class NonFiniteLossError(UserError, FloatingPointError):
  """The loss became NaN or Inf; the message names the step, the term and what to do."""

  @classmethod
  def at(cls, step: int, bad: list, terms: str, latest, directory: str):
    return cls(
      f"non-finite loss at step {step}: {', '.join(bad) or 'gradients'} ({terms}). The "
      f"newest checkpoint is step {latest} in {directory}; its numbers are finite, but "
      "training may have gone wrong before (check the eval lines in metrics.jsonl, and "
      "evaluate an earlier step with --step). Lower config.train.learning_rate, or set "
      "config.train.on_nonfinite=skip to skip such steps."
    )


class InferenceError(UserError, ValueError):
  """A request that inference cannot serve; the message says what to do."""


def ensure_writable_folder(path: str, flag: str, error: type[UserError], purpose: str = "") -> None:
  """Creates the folder `path` where missing; refuses, in one line naming `flag`, a
  file in its place or a folder this process cannot write to."""
  if os.path.exists(path) and not os.path.isdir(path):
    raise error(f"{flag}={path!r} is a file; pass a folder{purpose} (it is created if missing).")
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise error(
      f"cannot create {flag}={path!r} ({e.strerror}); pass a folder you can write to."
    ) from None
  if not os.access(path, os.W_OK | os.X_OK):
    raise error(f"cannot write to {flag}={path!r}; pass a folder you can write to.")
