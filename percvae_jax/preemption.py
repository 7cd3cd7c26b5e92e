"""Stopping a run cleanly: a preemption notice (SIGTERM), Ctrl-C (SIGINT) or the run's
time budget makes the training save a checkpoint and exit 0; a second Ctrl-C exits at
once.

One process: the signal sets a flag, read after each step. Several processes (a
multi-host run): each process must save the same step, or the collective save never
completes. JAX's preemption service (started by `jax.distributed.initialize`) catches
SIGTERM in any process, tells the others, and `reached_preemption_sync_point(step)`
then turns True at the same step in every process. Ctrl-C in one process is passed
to that service as a SIGTERM to itself.
"""

from __future__ import annotations

import os
import signal
import time

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils


class StopRequest:
  """`with StopRequest() as stop:` ... `if stop.now(step):` save and leave the loop."""

  def __init__(self):
    self._signalled = False
    self._stop = False
    self._multi_process = jax.process_count() > 1
    self._previous = {}

  def __enter__(self):
    if not self._multi_process:  # the preemption service owns SIGTERM otherwise.
      self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._on_signal)
    self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._on_signal)
    return self

  def __exit__(self, *exc):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    return False

  def _on_signal(self, signum, frame):
    del frame
    if signum == signal.SIGINT and self._signalled:
      raise KeyboardInterrupt  # the second Ctrl-C: exit now, without saving.
    self._signalled = True
    logging.warning(
      "Received %s: saving a checkpoint, then exiting (press Ctrl-C again to "
      "exit at once, without saving).",
      signal.Signals(signum).name,
    )
    if self._multi_process and signum == signal.SIGINT:
      os.kill(os.getpid(), signal.SIGTERM)  # to JAX's preemption service.

  def now(self, step: int) -> bool:
    """Whether to save and stop after `step`; every process calls it at every step,
    and in a multi-process run all of them get True at the same step."""
    if self._multi_process:
      self._stop = self._stop or multihost_utils.reached_preemption_sync_point(step)
    else:
      self._stop = self._signalled
    return self._stop


class TimeBudget:
  """`train.max_seconds`: stop, checkpointed, once this run has trained that long (0:
  never), so a job fits a scheduler's time limit or a benchmark's share; rerunning
  continues. In a multi-process run process 0's clock decides, read every `every`
  steps (one broadcast), so that every process stops at the same step."""

  def __init__(self, seconds: float, every: int):
    self._deadline = time.monotonic() + seconds if seconds > 0 else None
    self._every = max(1, every)
    self._multi_process = jax.process_count() > 1

  def spent(self, step: int) -> bool:
    if self._deadline is None:
      return False
    if not self._multi_process:
      return time.monotonic() >= self._deadline
    if step % self._every:
      return False
    over = np.array(time.monotonic() >= self._deadline)
    return bool(multihost_utils.broadcast_one_to_all(over))
