"""One builder for everything that runs the training iteration.

`build(config, steps_per_epoch=...)` validates the config
(`config_checks.validate`) and returns an `Experiment`: the three modules,
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
from dual_mcmc_jax import config_checks
from dual_mcmc_jax import networks
from dual_mcmc_jax import sampling
from dual_mcmc_jax import sharding
from dual_mcmc_jax import train_state as ts
from dual_mcmc_jax import train_step as train_step_lib


@dataclasses.dataclass(frozen=True)
class Experiment:
  """A built experiment.

  Attributes:
    config: the validated config.
    models: the EBM, generator and inference modules.
    optimizers: their optax transformations.
    mesh: the data mesh the state is replicated over.
    train_step: jitted `(state, batch) -> (state, metrics)`; donates the
      state, returns it replicated over `mesh`.
    sample_fn: jitted `(state, key, x) -> {name: samples}`, the grids the
      training loop writes.
  """

  config: ml_collections.ConfigDict
  models: networks.Models
  optimizers: ts.Optimizers
  mesh: jax.sharding.Mesh
  train_step: Callable[..., Any]
  sample_fn: Callable[..., Any]

  def init_state(self) -> ts.TrainState:
    """A fresh state from `config.training.seed`, replicated over the mesh."""
    return sharding.replicate(
        ts.create_train_state(self.models, self.optimizers,
                              int(self.config.training.seed),
                              ts.replay_spec(self.config)), self.mesh)

  def abstract_state(self) -> Any:
    """The state's structure (shapes, dtypes, sharding), nothing computed."""
    return checkpointing.abstract_state(self.models, self.optimizers,
                                        int(self.config.training.seed),
                                        self.mesh,
                                        ts.replay_spec(self.config))

  def synthetic_host_batch(self, seed: int = 0) -> np.ndarray:
    """This process's part of a uniform [-1, 1) batch (benchmarks)."""
    local = int(self.config.training.batch_size) // jax.process_count()
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, (local, *self.models.data_shape))
    return x.astype(np.float32)

  def synthetic_batch(self, seed: int = 0) -> jax.Array:
    """`synthetic_host_batch`, sharded over the mesh as a global batch."""
    return sharding.shard_batch(self.synthetic_host_batch(seed), self.mesh)


def build(config: ml_collections.ConfigDict, *, steps_per_epoch: int = 1,
          mesh: jax.sharding.Mesh | None = None,
          validate: bool = True) -> Experiment:
  """Validates `config` and builds its models, optimisers and jitted step.

  Args:
    config: an experiment config.
    steps_per_epoch: sets the per-epoch learning-rate decay; it changes no
      shape, so evaluation and benchmarks may leave it at 1.
    mesh: the data mesh; default every device (`sharding.data_mesh()`).
    validate: False skips `config_checks.validate`, for internal variants of
      an already validated config (the benchmark's 0-step chains that count
      flops).

  Returns:
    The experiment.

  Raises:
    ValueError: a bad config field (one line naming it).
  """
  if validate:
    config_checks.validate(config)
  mesh = sharding.data_mesh() if mesh is None else mesh
  models = ts.create_models(config)
  optimizers = ts.create_optimizers(config.optim, steps_per_epoch)
  replicated = sharding.replicated(mesh)
  train_step = jax.jit(
      train_step_lib.make_train_step(config, models, optimizers),
      donate_argnums=0, out_shardings=replicated)
  sample_fn = jax.jit(sampling.make_sample_fn(config, models),
                      out_shardings=replicated)
  return Experiment(config=config, models=models, optimizers=optimizers,
                    mesh=mesh, train_step=train_step, sample_fn=sample_fn)
