"""Devices: the data-parallel mesh, where each batch lives, and multi-process start-up.

One 1-D `Mesh` named "data" over every device of every process: a global batch is
sharded along it and the train state is replicated, so `jax.jit` inserts the gradient
all-reduce. Each process builds only the rows of a global batch its own devices hold.
"""

from __future__ import annotations

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


class DataParallel:
  """The data-parallel mesh over every device of every process, and its shardings."""

  def __init__(self):
    self.mesh = Mesh(np.asarray(jax.devices()), (DATA_AXIS,))
    self.replicated = NamedSharding(self.mesh, P())
    self.batch = NamedSharding(self.mesh, P(DATA_AXIS))

  def process_rows(self, global_batch: int) -> slice:
    """The rows of each global batch this process feeds: those of its own devices."""
    index_map = self.batch.addressable_devices_indices_map((global_batch,))
    starts = sorted({index[0].start or 0 for index in index_map.values()})
    per_device = global_batch // self.mesh.size
    rows = slice(starts[0], starts[-1] + per_device)
    if rows.stop - rows.start != per_device * len(starts):
      raise RuntimeError(f"this process's devices hold non-contiguous rows {starts}.")
    return rows

  def global_batch(self, local_rows: np.ndarray, global_batch: int):
    """The global batch from this process's rows of it."""
    shape = (global_batch,) + local_rows.shape[1:]
    return jax.make_array_from_process_local_data(self.batch, local_rows, shape)

  def shard_host_batch(self, array: np.ndarray):
    """A batch every process holds whole, split over the devices."""
    return jax.make_array_from_callback(array.shape, self.batch, lambda i: array[i])


def local_replicated():
  """Replicated over this process's devices only: for inference on any machine."""
  return NamedSharding(Mesh(np.asarray(jax.local_devices()), (DATA_AXIS,)), P())


def initialize_distributed(
  coordinator_address: str | None, num_processes: int | None, process_id: int | None
) -> None:
  """Joins a multi-process run: explicit coordinator flags, or auto-detected on
  Cloud TPU, Slurm, Open MPI and Kubernetes (all arguments None)."""
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU-only runs.
  jax.distributed.initialize(coordinator_address, num_processes, process_id)
  if jax.process_index() != 0:
    logging.set_verbosity(logging.WARNING)  # only process 0 logs progress.
