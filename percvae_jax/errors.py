"""The errors a user can fix. Each command-line tool prints one of these as one line
that names the problem and the fix (`cli.exit_on_user_error`); anything else is a bug
and keeps its traceback. Importing this module imports nothing else of the package.
"""


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


class InferenceError(UserError, ValueError):
  """A request that inference cannot serve; the message says what to do."""
