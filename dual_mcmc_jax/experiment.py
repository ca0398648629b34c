"""One builder for everything that runs the training iteration.

`build(config, steps_per_epoch=...)` reads the config into its settings
(`settings.from_config`, which checks it) and returns an `Experiment`: the
three modules,
their optimisers, the data mesh and the jitted training iteration, compiled
the way training runs it (data parallel over every device, the state
replicated and donated). The training loop, the cost evaluator, the train
step benchmark and the 2-D benchmark all build through it, so they time and
train the same program, and a bad config stops every one of them with the
same one-line error before anything is compiled.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from dual_mcmc_jax import checkpointing
from dual_mcmc_jax import networks
from dual_mcmc_jax import sampling
from dual_mcmc_jax import settings as settings_lib
from dual_mcmc_jax import sharding
from dual_mcmc_jax import train_state as ts
from dual_mcmc_jax import train_step as train_step_lib


@dataclasses.dataclass(frozen=True)
class Experiment:
  """A built experiment.

  Attributes:
    settings: the checked settings.
    models: the EBM, generator and inference modules.
    optimizers: their optax transformations.
    mesh: the data mesh the state is replicated over.
    train_step: jitted `(state, batch) -> (state, metrics)`; donates the
      state, returns it replicated over `mesh`.
    sample_fn: jitted `(state, key, x) -> {name: samples}`, the grids the
      training loop writes.
  """

  settings: settings_lib.Settings
  models: networks.Models
  optimizers: ts.Optimizers
  mesh: jax.sharding.Mesh
  train_step: Callable[..., Any]
  sample_fn: Callable[..., Any]

  def init_state(self) -> ts.TrainState:
    """A fresh state from `config.training.seed`, replicated over the mesh."""
    t = self.settings.training
    return sharding.replicate(
        ts.create_train_state(self.models, self.optimizers, t.seed,
                              ts.replay_spec(t)), self.mesh)

  def abstract_state(self) -> Any:
    """The state's structure (shapes, dtypes, sharding), nothing computed."""
    t = self.settings.training
    return checkpointing.abstract_state(self.models, self.optimizers, t.seed,
                                        self.mesh, ts.replay_spec(t))

  def synthetic_host_batch(self, seed: int = 0) -> np.ndarray:
    """This process's part of a uniform [-1, 1) batch (benchmarks)."""
    local = self.settings.training.batch_size // jax.process_count()
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, (local, *self.models.data_shape))
    return x.astype(np.float32)

  def synthetic_batch(self, seed: int = 0) -> jax.Array:
    """`synthetic_host_batch`, sharded over the mesh as a global batch."""
    return sharding.shard_batch(self.synthetic_host_batch(seed), self.mesh)


def build(config: ml_collections.ConfigDict | settings_lib.Settings, *,
          steps_per_epoch: int = 1,
          mesh: jax.sharding.Mesh | None = None) -> Experiment:
  """Reads `config` and builds its models, optimisers and jitted step.

  Args:
    config: an experiment config, or its `Settings` (checked once more).
    steps_per_epoch: sets the per-epoch learning-rate decay and, with
      `num_train_steps`, the run's length that a cosine schedule spans; it
      changes no shape, so evaluation and benchmarks may leave it at 1.
    mesh: the data mesh; default every device (`sharding.data_mesh()`).

  Returns:
    The experiment.

  Raises:
    ValueError: a bad config field (one line naming it).
  """
  settings = settings_lib.from_config(config)
  mesh = sharding.data_mesh() if mesh is None else mesh
  models = ts.create_models(settings)
  optimizers = ts.create_optimizers(
      settings.optim, steps_per_epoch,
      settings_lib.num_train_steps(settings, steps_per_epoch))
  replicated = sharding.replicated(mesh)
  train_step = jax.jit(
      train_step_lib.make_train_step(settings, models, optimizers),
      donate_argnums=0, out_shardings=replicated)
  sample_fn = jax.jit(sampling.make_sample_fn(settings, models),
                      out_shardings=replicated)
  return Experiment(settings=settings, models=models, optimizers=optimizers,
                    mesh=mesh, train_step=train_step, sample_fn=sample_fn)
