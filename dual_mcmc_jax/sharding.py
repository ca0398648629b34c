"""Data parallelism with `jax.sharding`: one mesh axis over the batch.

Parameters, optimiser states and mutable statistics are replicated on every
device; each batch is split along its first axis. The train step is the same
jitted function as on one device: XLA partitions it and inserts the
all-reduces (gradients, BatchNorm batch statistics, the batch-summed Langevin
energies), so a sharded step computes what a single-device step computes on
the same global batch. Multi-host runs call `jax.distributed.initialize()`
first; each host then feeds its own slice of the global batch
(`data.create_train_iterator` gives per-host batches) and `shard_batch`
assembles the global array.
"""

from __future__ import annotations

import os
from typing import Any

import jax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

DATA_AXIS = 'data'


def data_mesh(devices: list[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh over all (global) devices, axis name 'data'."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places every leaf of `tree` on all devices of `mesh`."""
  return jax.device_put(tree, replicated(mesh))


def shard_batch(local_batch: np.ndarray, mesh: Mesh) -> jax.Array:
  """Builds the global batch array from this host's slice.

  Args:
    local_batch: [B / num_hosts, ...] this process's part of the batch.
    mesh: the data mesh.

  Returns:
    A global [B, ...] array sharded along the batch axis.
  """
  return jax.make_array_from_process_local_data(batch_sharding(mesh),
                                                local_batch)


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> None:
  """Joins a multi-process JAX run (call before any other JAX use).

  With no arguments JAX detects the cluster (SLURM, Cloud TPU, Open MPI, GKE
  and others); otherwise all three name the coordinator and this process. On
  the CPU backend, cross-process collectives use gloo.

  Args:
    coordinator_address: 'host:port' of process 0.
    num_processes: total number of processes.
    process_id: this process's index.
  """
  if jax.config.jax_platforms in ('cpu',) or os.environ.get(
      'JAX_PLATFORMS', '') == 'cpu':
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes,
                             process_id=process_id)
