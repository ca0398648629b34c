"""Training loop: data, the compiled step, checkpoints, TensorBoard.

`train_and_evaluate(config, workdir)` is what `main.py` calls. A run
restarted on the same workdir resumes from the latest checkpoint by itself,
with the data stream continued from the same position (the input pipeline is
deterministic in (seed, step)), so that a killed and restarted run ends with
the same parameters as an uninterrupted one. Checkpoint safety lives in
checkpointing.py, divergence rollbacks in recovery.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import threading
import time
from typing import Any, TYPE_CHECKING

from absl import logging
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from dual_mcmc_jax import checkpointing
from dual_mcmc_jax import data
from dual_mcmc_jax import networks
from dual_mcmc_jax import recovery
from dual_mcmc_jax import sharding
from dual_mcmc_jax import train_state as ts
from dual_mcmc_jax import train_step as train_step_lib
from dual_mcmc_jax import visualize

if TYPE_CHECKING:
  from clu import metric_writers  # pylint: disable=g-bad-import-order


class TrainingDivergedError(RuntimeError):
  """Raised when the run diverged and no rollback is left."""


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError with one line naming the first bad field."""
  t = config.training
  if int(t.batch_size) <= 0:
    raise ValueError(f'config.training.batch_size={t.batch_size} must be > 0')
  n_dev = jax.device_count()
  if int(t.batch_size) % n_dev:
    raise ValueError(
        f'config.training.batch_size={t.batch_size} must be divisible by the '
        f'number of devices ({n_dev})')
  for group in ('langevin_x', 'langevin_z'):
    g = config[group]
    # A chain is switched off by its own switch, never by zero steps: a
    # zero here is a typo that would silently train a different model.
    if int(g.steps) <= 0:
      raise ValueError(f'config.{group}.steps={g.steps} must be > 0')
    if float(g.step_size) <= 0:
      raise ValueError(f'config.{group}.step_size={g.step_size} must be > 0')
    if float(g.noise) < 0:
      raise ValueError(f'config.{group}.noise={g.noise} must be >= 0')
  if t.num_train_steps <= 0 and t.num_epochs <= 0:
    raise ValueError('set config.training.num_train_steps > 0 or '
                     'config.training.num_epochs > 0')
  for name in ('log_every_steps', 'image_every_steps', 'checkpoint_every_steps',
               'max_checkpoints_to_keep'):
    if int(t[name]) <= 0:
      raise ValueError(f'config.training.{name}={t[name]} must be > 0')
  _validate_recovery(config.recovery)


def _validate_recovery(r: ml_collections.ConfigDict) -> None:
  if int(r.max_retries) < 0:
    raise ValueError(
        f'config.recovery.max_retries={r.max_retries} must be >= 0')
  for name in ('lr_factor', 'langevin_x_step_factor'):
    if not 0 < float(r[name]) <= 1:
      raise ValueError(f'config.recovery.{name}={r[name]} must be in (0, 1]')


def num_train_steps(config: ml_collections.ConfigDict,
                    steps_per_epoch: int) -> int:
  if config.training.num_train_steps > 0:
    return int(config.training.num_train_steps)
  return int(config.training.num_epochs) * steps_per_epoch


create_checkpoint_manager = checkpointing.create_checkpoint_manager


def restore_or_create_state(config: ml_collections.ConfigDict,
                            models: networks.Models,
                            optimizers: ts.Optimizers,
                            manager: ocp.CheckpointManager) -> ts.TrainState:
  """Latest restorable checkpoint in the workdir if any, else a fresh state."""
  seed = int(config.training.seed)
  abstract = jax.eval_shape(
      lambda: ts.create_train_state(models, optimizers, seed))
  restored = checkpointing.restore_latest(manager, abstract)
  if restored is None:
    return ts.create_train_state(models, optimizers, seed)
  step, state = restored
  logging.info('Resuming from checkpoint at step %d in %s', step,
               manager.directory)
  return state


def load_state(config: ml_collections.ConfigDict, workdir: str,
               step: int | None = None
               ) -> tuple[networks.Models, ts.TrainState]:
  """Restores the train state of a workdir (latest step by default).

  Args:
    config: the configuration the workdir was trained with.
    workdir: a training workdir.
    step: checkpoint step to load, or None for the latest.

  Returns:
    (models, state).
  """
  models = ts.create_models(config)
  # The optimiser state's structure does not depend on the schedule length.
  optimizers = ts.create_optimizers(config.optim, steps_per_epoch=1)
  manager = create_checkpoint_manager(workdir, 1_000_000)
  seed = int(config.training.seed)
  abstract = jax.eval_shape(
      lambda: ts.create_train_state(models, optimizers, seed))
  if step is not None:
    return models, manager.restore(step,
                                   args=ocp.args.StandardRestore(abstract))
  restored = checkpointing.restore_latest(manager, abstract)
  if restored is None:
    raise FileNotFoundError(f'no checkpoint in {manager.directory}; train '
                            'first or check --workdir')
  return models, restored[1]


def _is_image(shape: tuple[int, ...]) -> bool:
  return len(shape) == 3


def write_samples(writer: metric_writers.MetricWriter, step: int,
                  samples: dict[str, jax.Array], shape: tuple[int, ...],
                  workdir: str | None = None) -> None:
  """Writes sample grids (images) or scatter plots (2-D points)."""
  samples = jax.device_get(samples)
  if _is_image(shape):
    grids = {k: visualize.image_grid(v)[None] for k, v in samples.items()}
  else:
    grids = {'samples': visualize.scatter_image({
        k: v for k, v in samples.items()
        if k in ('data', 'generator_samples', 'ebm_revised_samples')})[None]}
  writer.write_images(step, grids)
  if workdir is not None and jax.process_index() == 0:
    out = os.path.join(workdir, 'samples')
    os.makedirs(out, exist_ok=True)
    for k, g in grids.items():
      visualize.save_png(os.path.join(out, f'{k}_{step:07d}.png'), g[0])


def _divergence_message(step: int, metrics: dict[str, Any], limit: float,
                        manager: ocp.CheckpointManager) -> str:
  last = manager.latest_step()
  where = (f'last good checkpoint: step {last} in {manager.directory}'
           if last is not None else 'no checkpoint was saved yet')
  return (f'Training diverged at step {step}: loss_e={metrics["loss_e"]:.4g}, '
          f'loss_g={metrics["loss_g"]:.4g}, loss_i={metrics["loss_i"]:.4g}, '
          f'energy_diff={metrics["energy_diff"]:.4g} (limit {limit:g}); '
          f'{where}. Lower config.optim.lr_e or config.langevin_x.step_size '
          'and restart on the same workdir to resume from it.')


@dataclasses.dataclass
class _Loop:
  """What stays fixed across rollbacks: the run's config, data, outputs."""
  config: ml_collections.ConfigDict
  workdir: str
  models: networks.Models
  info: data.DatasetInfo
  steps_per_epoch: int
  total_steps: int
  manager: ocp.CheckpointManager
  writer: Any
  report: Any
  preemption: '_SigtermFlag'
  mesh: Any


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> ts.TrainState:
  """Trains the three models; resumes from `workdir` if it has checkpoints.

  A divergence rolls back to the last checkpoint with the remedies of
  `config.recovery` (see recovery.py) until `config.recovery.max_retries`
  rollbacks are used up.

  Args:
    config: experiment configuration.
    workdir: where checkpoints, TensorBoard events and sample PNGs go.

  Returns:
    The final train state.

  Raises:
    ValueError: a bad config field.
    checkpointing.CheckpointError: the workdir cannot be used (unwritable,
      another config's checkpoints, unreadable checkpoints, disk full).
    TrainingDivergedError: diverged with no rollbacks left.
  """
  # clu pulls in TensorFlow; keep it out of the import of this module so that
  # checkpoint helpers (load_state) stay light.
  from clu import metric_writers  # pylint: disable=g-import-not-at-top,redefined-outer-name
  from clu import periodic_actions  # pylint: disable=g-import-not-at-top

  validate_config(config)
  models = ts.create_models(config)
  info = data.get_dataset_info(config)
  # Everything that can fail on bad input has run before the workdir is
  # touched.
  workdir = checkpointing.prepare_workdir(workdir)
  steps_per_epoch = max(
      info.num_train_examples // int(config.training.batch_size), 1)
  total_steps = num_train_steps(config, steps_per_epoch)
  manager = create_checkpoint_manager(workdir,
                                      config.training.max_checkpoints_to_keep)
  checkpointing.check_and_store_config(config, workdir,
                                       manager.latest_step() is not None)
  rollbacks = recovery.load_rollbacks(workdir)

  writer = metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0)
  loop = _Loop(config=config, workdir=workdir, models=models, info=info,
               steps_per_epoch=steps_per_epoch, total_steps=total_steps,
               manager=manager, writer=writer,
               report=periodic_actions.ReportProgress(
                   num_train_steps=total_steps, writer=writer),
               preemption=_SigtermFlag(), mesh=sharding.data_mesh())
  try:
    state = _restore(loop)
    with metric_writers.ensure_flushes(writer):
      if int(jax.device_get(state.step)) == 0 and not rollbacks:
        writer.write_hparams({
            k: v for k, v in checkpointing.flatten_dict(config.to_dict()).items()
            if isinstance(v, (int, float, str, bool))})
      while True:
        try:
          state = _train_segment(loop, rollbacks, state)
          break
        except recovery.Diverged as d:
          state, rollbacks = _roll_back(loop, rollbacks, d)
  finally:
    loop.preemption.restore()
  logging.info('Finished training at step %d.', int(jax.device_get(state.step)))
  return state


def _restore(loop: _Loop) -> ts.TrainState:
  """The newest restorable checkpoint, or the initial state."""
  # Remedies change learning rates, not the optimiser state's structure.
  optimizers = ts.create_optimizers(loop.config.optim, loop.steps_per_epoch)
  return restore_or_create_state(loop.config, loop.models, optimizers,
                                 loop.manager)


def _roll_back(loop: _Loop, rollbacks: list[recovery.Rollback],
               d: recovery.Diverged
               ) -> tuple[ts.TrainState, list[recovery.Rollback]]:
  """Goes back to the last good state and records the rollback.

  Args:
    loop: the run.
    rollbacks: the rollbacks so far.
    d: the divergence.

  Returns:
    (the restored state, the rollbacks including this one).

  Raises:
    TrainingDivergedError: `config.recovery.max_retries` are used up.
  """
  manager = loop.manager
  # Pending saves are of healthy steps; let them finish before choosing.
  checkpointing.wait_until_finished(manager, None)
  if recovery.give_up(loop.config, rollbacks):
    raise TrainingDivergedError(
        _divergence_message(d.step, d.metrics,
                            float(loop.config.loss.energy_diff_limit),
                            manager) +
        f' Gave up after {len(rollbacks)} rollback(s) '
        f'(config.recovery.max_retries={loop.config.recovery.max_retries}).')
  state = _restore(loop)
  rollback = recovery.Rollback(
      diverged_at_step=d.step,
      rolled_back_to_step=int(jax.device_get(state.step)),
      loss_e=d.metrics['loss_e'], energy_diff=d.metrics['energy_diff'])
  rollbacks = rollbacks + [rollback]
  if jax.process_index() == 0:
    recovery.save_rollbacks(loop.workdir, rollbacks)
  recovery.log_rollback(loop.writer, loop.config, rollback, len(rollbacks))
  return state, rollbacks


def _train_segment(loop: _Loop, rollbacks: list[recovery.Rollback],
                   state: ts.TrainState) -> ts.TrainState:
  """Trains `state` to the end with the remedies of `rollbacks`.

  Args:
    loop: the run.
    rollbacks: the rollbacks so far; they set the remedies.
    state: a restored (or initial) state.

  Returns:
    The state at the last step, or at a SIGTERM.

  Raises:
    recovery.Diverged: at the first unhealthy step.
  """
  config = recovery.remedied_config(loop.config, len(rollbacks))
  optimizers = ts.create_optimizers(config.optim, loop.steps_per_epoch)
  state = recovery.with_stream(config, state, len(rollbacks))
  start_step = int(jax.device_get(state.step))
  params = {k: networks.count_params(getattr(state, k).params)
            for k in ('ebm', 'gen', 'inf')}
  logging.info('Parameters: E %d, G %d, I %d; %d steps per epoch; '
               'training steps %d -> %d', params['ebm'], params['gen'],
               params['inf'], loop.steps_per_epoch, start_step,
               loop.total_steps)

  # Data parallel over every device: state replicated, batch split.
  mesh = loop.mesh
  state = sharding.replicate(state, mesh)
  train_step = jax.jit(
      train_step_lib.make_train_step(config, loop.models, optimizers),
      donate_argnums=0, out_shardings=sharding.replicated(mesh))
  sample_fn = jax.jit(train_step_lib.make_sample_fn(config, loop.models),
                      out_shardings=sharding.replicated(mesh))
  # Host-to-device copies of the next batches overlap the running step.
  train_iter = data.prefetch_to_device(
      data.create_train_iterator(config, start_step=start_step),
      size=int(config.data.get('prefetch_to_device', 2)),
      sharding_fn=lambda b: (b, sharding.shard_batch(b, mesh)))
  writer, report, manager = loop.writer, loop.report, loop.manager
  total_steps = loop.total_steps
  n_img = int(config.training.num_image_samples)
  sample_key = jax.random.key(int(config.training.seed) + 1)
  fixed_batch = None

  pending: list[dict[str, jax.Array]] = []
  prev: tuple[int, dict[str, jax.Array]] | None = None
  last_save = None  # Step of the save that may still be being written.
  t_log = time.time()
  step = start_step
  with contextlib.closing(train_iter):
    for step in range(start_step + 1, total_steps + 1):
      local_batch, batch = next(train_iter)
      if fixed_batch is None:
        # The same grid batch on every host: process 0's first images.
        fixed_batch = sharding.replicate(
            multihost_utils.broadcast_one_to_all(
                np.asarray(local_batch[:n_img])), mesh)
      state, metrics = train_step(state, batch)
      # Check the previous step while this one runs: one step of lag keeps
      # the host from stalling the device queue every iteration.
      if prev is not None:
        _check_health(*prev)
      prev = (step, metrics)
      pending.append(metrics)
      report(step)

      is_last = step == total_steps
      if step % config.training.log_every_steps == 0 or is_last:
        _check_health(step, metrics)
        summary = {k: float(np.mean(v)) for k, v in
                   jax.device_get(_stack(pending)).items() if k != 'healthy'}
        dt = time.time() - t_log
        summary['steps_per_sec'] = len(pending) / max(dt, 1e-9)
        writer.write_scalars(step, summary)
        pending, t_log = [], time.time()
      if step % config.training.image_every_steps == 0 or is_last:
        with report.timed('samples'):
          write_samples(writer, step,
                        sample_fn(state, jax.random.fold_in(sample_key, step),
                                  fixed_batch), loop.info.shape, loop.workdir)
      stop = loop.preemption.requested
      if (step % config.training.checkpoint_every_steps == 0 or is_last or
          stop):
        # Never save a state produced by an unhealthy step.
        _check_health(step, metrics)
        with report.timed('checkpoint'):
          checkpointing.save(manager, step, state, last_save)
        last_save = step
      if stop:
        logging.warning('SIGTERM received: saved a checkpoint at step %d; '
                        'rerun the same command to resume.', step)
        break
  checkpointing.wait_until_finished(manager, last_save)
  return state


class _SigtermFlag:
  """Turns SIGTERM (pre-emption) into a flag the loop checks every step."""

  def __init__(self):
    self.requested = False
    self._previous = None
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def restore(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None


def _check_health(step: int, metrics: dict[str, jax.Array]) -> None:
  if bool(jax.device_get(metrics['healthy'])):
    return
  raise recovery.Diverged(
      step, {k: float(v) for k, v in jax.device_get(metrics).items()})


def _stack(items: list[dict[str, jax.Array]]) -> dict[str, jax.Array]:
  return jax.tree.map(lambda *xs: jnp.stack(xs), *items)
