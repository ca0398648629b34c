"""Divergence recovery: roll back to the last good checkpoint with a remedy.

EBM training can diverge (a NaN loss or an exploding energy difference; the
train step's `healthy` metric). Instead of stopping, the loop rolls back to
the newest checkpoint (every checkpoint is of a healthy step: the loop saves
a state only after its own step passed the check) or to the initial state if
none exists yet, and continues with the remedies of `config.recovery`:

* a fresh random stream (`train_state.rng_stream(seed, k)` for the k-th
  rollback), so that the replayed steps draw new Langevin noise;
* optionally learning rates scaled by `lr_factor ** k` and an x-Langevin
  step size scaled by `langevin_x_step_factor ** k`.

After `max_retries` rollbacks the next divergence stops the run.

Rollbacks are recorded in `<workdir>/recovery.json` (written atomically),
because the remedies must outlive the process: restarting the same command
after a rollback (say, after a pre-emption) reads the record and continues
with the same remedies and the same random stream, so that it neither
replays the divergence nor drifts from the run it continues. The record is
the single source of truth: on every (re)start the state's stream is set
from the number of rollbacks, whichever checkpoint was restored.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from absl import logging

from dual_mcmc_jax import checkpointing
from dual_mcmc_jax import settings as settings_lib
from dual_mcmc_jax import train_state as ts

RECORD_FILE = 'recovery.json'


class Diverged(Exception):
  """Raised inside the loop at an unhealthy step; the loop rolls back."""

  def __init__(self, step: int, metrics: dict[str, float]):
    super().__init__(f'diverged at step {step}')
    self.step = step
    self.metrics = metrics


@dataclasses.dataclass(frozen=True)
class Rollback:
  """One recovery: where the run diverged and where it went back to."""
  diverged_at_step: int
  rolled_back_to_step: int
  loss_e: float
  energy_diff: float


def load_rollbacks(workdir: str) -> list[Rollback]:
  """The rollbacks recorded in `workdir` (none for a new run).

  Raises:
    CheckpointError: the record exists but cannot be read.
  """
  path = os.path.join(workdir, RECORD_FILE)
  if not os.path.exists(path):
    return []
  try:
    with open(path) as f:
      return [Rollback(**r) for r in json.load(f)['rollbacks']]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise checkpointing.CheckpointError(
        f'{path} cannot be read ({e}); it records the divergence remedies '
        'in force: restore it, or remove it to resume without them') from e


def save_rollbacks(workdir: str, rollbacks: list[Rollback]) -> None:
  checkpointing.write_json_atomically(
      os.path.join(workdir, RECORD_FILE),
      {'rollbacks': [dataclasses.asdict(r) for r in rollbacks]})


def scales(settings: settings_lib.Settings,
           num_rollbacks: int) -> dict[str, float]:
  """The learning-rate and x-step-size multipliers after `num_rollbacks`."""
  r = settings.recovery
  return {'lr_scale': r.lr_factor ** num_rollbacks,
          'langevin_x_step_scale': r.langevin_x_step_factor ** num_rollbacks}


def remedied_settings(settings: settings_lib.Settings,
                      num_rollbacks: int) -> settings_lib.Settings:
  """`settings` with the remedies of `num_rollbacks` applied.

  Args:
    settings: the run's settings (unchanged).
    num_rollbacks: rollbacks so far.

  Returns:
    The settings the optimisers and the train step are built from.
  """
  s = scales(settings, num_rollbacks)
  o, lx = settings.optim, settings.langevin_x
  return settings.replace(
      optim=dataclasses.replace(o, lr_e=o.lr_e * s['lr_scale'],
                                lr_g=o.lr_g * s['lr_scale'],
                                lr_i=o.lr_i * s['lr_scale']),
      langevin_x=dataclasses.replace(
          lx, step_size=lx.step_size * s['langevin_x_step_scale']))


def with_stream(settings: settings_lib.Settings, state: ts.TrainState,
                num_rollbacks: int) -> ts.TrainState:
  """`state` on the random stream in force after `num_rollbacks`."""
  if not settings.recovery.fresh_rng:
    return state
  return state.replace(
      rng=ts.rng_stream(settings.training.seed, num_rollbacks))


def give_up(settings: settings_lib.Settings,
            rollbacks: list[Rollback]) -> bool:
  return len(rollbacks) >= settings.recovery.max_retries


def log_rollback(writer: Any, settings: settings_lib.Settings,
                 rollback: Rollback, num_rollbacks: int) -> None:
  """Says what the rollback did in the log and in TensorBoard."""
  s = scales(settings, num_rollbacks)
  logging.warning(
      'Training diverged at step %d (loss_e=%.4g, energy_diff=%.4g): rollback '
      '%d of %d to step %d with %s, learning rates x%g, langevin_x.step_size '
      'x%g.', rollback.diverged_at_step, rollback.loss_e,
      rollback.energy_diff, num_rollbacks, settings.recovery.max_retries,
      rollback.rolled_back_to_step,
      (f'random stream {num_rollbacks}' if settings.recovery.fresh_rng
       else 'the same random stream'), s['lr_scale'],
      s['langevin_x_step_scale'])
  writer.write_scalars(rollback.diverged_at_step, {
      'recovery/rollbacks': num_rollbacks,
      'recovery/rolled_back_to_step': rollback.rolled_back_to_step,
      **{f'recovery/{k}': v for k, v in s.items()}})
