"""What the evaluators share: the skip signal, data access, sharded sampling.

Every evaluator is a class built as `Evaluator(config, workdir, models,
mesh)` whose `run(state)` yields `(name, value)` pairs; `value` is a number
(a scalar), a string (a table or a note), a uint8 [H, W, C] array (a
picture) or a `Skipped` (one part could not run here, with the reason).
An evaluator that cannot run at all raises `EvaluatorUnavailable`.
`dual_mcmc_jax/evaluate.py` writes all of it to TensorBoard and JSON.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from dual_mcmc_jax import data
from dual_mcmc_jax import networks
from dual_mcmc_jax import sampling
from dual_mcmc_jax import settings as settings_lib
from dual_mcmc_jax import sharding
from dual_mcmc_jax import train_state as ts

Settings = settings_lib.Settings


def settings_of(config: Any) -> Settings:
  """An evaluator's config as settings (a ConfigDict is read once here)."""
  return settings_lib.from_config(config)

Array = jax.Array


class EvaluatorUnavailable(RuntimeError):
  """An evaluator (or a dataset it needs) cannot run on this machine."""


@dataclasses.dataclass(frozen=True)
class Skipped:
  """Yielded in place of a value that could not be computed here."""
  reason: str


def parse_list(value: str | tuple[str, ...] | list[str] | None) -> list[str]:
  """'a, b' or ('a', 'b') -> ['a', 'b'] (empty entries dropped)."""
  if value is None:
    return []
  items = value.split(',') if isinstance(value, str) else list(value)
  return [str(v).strip() for v in items if str(v).strip()]


def num_or_all(n: int) -> int | None:
  """Config convention: a count <= 0 means 'all'."""
  return int(n) if int(n) > 0 else None


def eval_batch_size(config: Settings) -> int:
  """config.eval.batch_size, checked against the device count."""
  b = config.eval.batch_size
  settings_lib.check_divisible(b, 'eval.batch_size', jax.device_count(),
                               'devices')
  return b


def eval_x_settings(config: Settings) -> settings_lib.ChainSettings:
  """The evaluation x-sampler (reference task_fid.py: 70 steps, 0.4, 0.001)."""
  ev = config.eval
  return settings_lib.ChainSettings(
      steps=ev.langevin_steps, step_size=ev.langevin_step_size,
      noise=ev.langevin_noise, rule=config.langevin_x.rule)


def require_images(models: networks.Models, what: str) -> None:
  if len(models.data_shape) != 3:
    raise EvaluatorUnavailable(f'{what} needs image data; this model draws '
                               f'points of shape {models.data_shape}')


def to_unit(x: Array) -> Array:
  """[-1, 1] -> [0, 1], clamped (the reference's mapping before Inception)."""
  return jnp.clip((x + 1.0) * 0.5, 0.0, 1.0)


def to_uint8(x: np.ndarray) -> np.ndarray:
  """[-1, 1] floats -> uint8 pixels (round to nearest)."""
  return np.clip(np.round((np.asarray(x) + 1.0) * 127.5), 0, 255).astype(
      np.uint8)


def to_host(x: Array) -> np.ndarray:
  """The whole of a (possibly sharded) global array, on every host."""
  if jax.process_count() > 1:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def pad_to(batch: np.ndarray, size: int) -> np.ndarray:
  """Pads the batch axis to `size` by repeating the last example."""
  n = len(batch)
  if n == size:
    return batch
  reps = np.repeat(batch[-1:], size - n, axis=0)
  return np.concatenate([batch, reps], axis=0)


def shard_global(batch: np.ndarray, mesh: jax.sharding.Mesh) -> Array:
  """Places a global batch (the same on every host) sharded over the mesh."""
  per_host = len(batch) // jax.process_count()
  start = jax.process_index() * per_host
  return sharding.shard_batch(batch[start:start + per_host], mesh)


def dataset_config(config: Settings, dataset: str,
                   **data_fields: Any) -> Settings:
  """`config` with a `data` group that reads another dataset."""
  return config.replace(data=dataclasses.replace(
      config.data, dataset=dataset, **data_fields))


# Errors of the input pipeline that mean "not available here" (a dataset not
# prepared, a file missing, TensorFlow not installed, a name the pipeline
# does not know yet) rather than a bug.
_UNAVAILABLE_ERRORS = (FileNotFoundError, ImportError, ValueError)


def eval_batches(config: Settings, split: str,
                 batch_size: int, limit: int | None = None,
                 what: str | None = None) -> Iterator[np.ndarray]:
  """Ordered batches of a split, at most `limit` examples in all.

  Args:
    config: config whose `data` group names the dataset.
    split: split name.
    batch_size: examples per batch (the last may be smaller).
    limit: stop after this many examples (None: the whole split).
    what: description for the error message (default: the dataset name).

  Returns:
    An iterator of float32 batches in [-1, 1].

  Raises:
    EvaluatorUnavailable: the split cannot be opened here.
  """
  what = what or f'dataset {config.data.dataset!r}'
  try:
    it = data.create_eval_iterator(config, split, batch_size=batch_size)
  except _UNAVAILABLE_ERRORS as e:
    raise EvaluatorUnavailable(f'{what} (split {split!r}) is not available: '
                               f'{e}') from e

  def gen() -> Iterator[np.ndarray]:
    seen = 0
    for batch in it:
      if limit is not None:
        batch = batch[:limit - seen]
      if not len(batch):
        break
      seen += len(batch)
      yield batch
      if limit is not None and seen >= limit:
        break

  return gen()


def check_image_shape(batch: np.ndarray, shape: tuple[int, ...],
                      what: str) -> None:
  if tuple(batch.shape[1:]) != tuple(shape):
    raise EvaluatorUnavailable(f'{what} has images of shape '
                               f'{tuple(batch.shape[1:])}; the model takes '
                               f'{tuple(shape)}')


def make_sampler(config: Settings, models: networks.Models,
                 mesh: jax.sharding.Mesh, batch_size: int
                 ) -> Callable[[ts.TrainState, Array], tuple[Array, Array]]:
  """Jitted `sample(state, key) -> (generator samples, EBM-revised samples)`.

  z ~ N(0, I) is drawn inside the function and split over the devices of
  `mesh`; both outputs are [batch_size, ...] in [-1, 1] (the generator's
  tanh range; the revised samples may leave it slightly), sharded along the
  batch. The x-revision uses the evaluation sampler (`eval_x_settings`).
  The generator's BatchNorm uses the statistics of the whole global batch,
  as in training.

  Args:
    config: experiment config.
    models: the three modules.
    mesh: the data mesh; `state` must be replicated on it.
    batch_size: global samples per call.

  Returns:
    The jitted sampler.
  """
  settings = eval_x_settings(config)
  batch_sharding = sharding.batch_sharding(mesh)

  def sample(state: ts.TrainState, key: Array) -> tuple[Array, Array]:
    k_z, k_x = jax.random.split(key)
    z = jax.random.normal(k_z, (batch_size, models.nz), jnp.float32)
    z = jax.lax.with_sharding_constraint(z, batch_sharding)
    x0, _ = sampling.generate(models, state.gen, z)
    x1, _, _ = sampling.revise_x(models, state.ebm, x0, k_x, settings)
    return x0, x1

  return jax.jit(sample, out_shardings=(batch_sharding, batch_sharding))
