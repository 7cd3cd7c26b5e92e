"""Where the named image sets live: one data root, so configs and scripts say "Set5"
or "T91,BSD200" instead of paths.

The root is, in order: an explicit value (`--config.data.root`, a script's
`--data-root`), the environment variable PERCVAE_DATA_ROOT, or `../shared/data` beside
the repository (docs/datasets.md says how to lay it out). A name that is already a path
to an existing folder, or an absolute path, is used as it is.
"""

from __future__ import annotations

import os

ENV = "PERCVAE_DATA_ROOT"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT = os.path.normpath(os.path.join(REPO, "..", "shared", "data"))
# The "291" images of VDSR and LapSRN, and the classic evaluation sets.
TRAIN_291 = "T91,BSD200"
EVAL_SETS = ("Set5", "Set14", "BSD100")


def root(explicit: str | None = None) -> str:
  """The data root: `explicit`, else $PERCVAE_DATA_ROOT, else ../shared/data."""
  return os.path.expanduser(explicit or os.environ.get(ENV) or DEFAULT)


def resolve(name: str | os.PathLike, explicit_root: str | None = None) -> str:
  """The folder of one set: `name` itself where it is an absolute path or an existing
  folder, else `name` under the data root."""
  name = os.path.expanduser(os.fspath(name).strip())
  if os.path.isabs(name) or os.path.isdir(name):
    return name
  return os.path.join(root(explicit_root), name)


def split(names: str) -> list[str]:
  """The entries of a comma-separated list of sets or folders."""
  return [name.strip() for name in names.split(",") if name.strip()]


def resolve_all(names: str, explicit_root: str | None = None) -> list[str]:
  """`resolve` over a comma-separated list ("T91,BSD200")."""
  return [resolve(name, explicit_root) for name in split(names)]


def use(explicit: str | None) -> None:
  """Makes `explicit` (a --data-root flag's value) this process's data root; None
  keeps $PERCVAE_DATA_ROOT or the default."""
  if explicit:
    os.environ[ENV] = os.path.abspath(os.path.expanduser(explicit))
