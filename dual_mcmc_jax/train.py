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
from clu import metrics as clu_metrics
from clu import parameter_overview
from flax import traverse_util
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from dual_mcmc_jax import checkpointing
from dual_mcmc_jax import data
from dual_mcmc_jax import experiment
from dual_mcmc_jax import recovery
from dual_mcmc_jax import runtime
from dual_mcmc_jax import settings as settings_lib
from dual_mcmc_jax import sharding
from dual_mcmc_jax import train_state as ts
from dual_mcmc_jax import visualize

if TYPE_CHECKING:
  from clu import metric_writers  # pylint: disable=g-bad-import-order


class TrainingDivergedError(RuntimeError):
  """Raised when the run diverged and no rollback is left."""


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
  """What stays fixed across rollbacks: the run's settings, data, outputs."""
  settings: settings_lib.Settings
  workdir: str
  info: data.DatasetInfo
  store: data.Store  # The decoded training split, loaded once per run.
  steps_per_epoch: int
  total_steps: int
  manager: ocp.CheckpointManager
  writer: Any
  report: Any
  preemption: '_Preemption'
  mesh: Any
  # Stored once the state is restored (a failed restore leaves the
  # workdir's records as they were): whether the config changed under
  # allow_config_change, and the data files (`data.source_fingerprint`).
  config_changed: bool
  fingerprint: dict[str, Any] | None


def train_and_evaluate(config: ml_collections.ConfigDict |
                       settings_lib.Settings, workdir: str) -> ts.TrainState:
  """Trains the three models; resumes from `workdir` if it has checkpoints.

  A divergence rolls back to the last checkpoint with the remedies of
  `config.recovery` (see recovery.py) until `config.recovery.max_retries`
  rollbacks are used up.

  Args:
    config: experiment configuration (a ConfigDict or its `Settings`).
    workdir: where checkpoints, TensorBoard events and sample PNGs go.

  Returns:
    The final train state.

  Raises:
    ValueError: a bad config field.
    checkpointing.CheckpointError: the workdir cannot be used (unwritable,
      another config's checkpoints, unreadable checkpoints, disk full).
    TrainingDivergedError: diverged with no rollbacks left.
    Interrupted: Ctrl-C stopped the run, after saving the step it was on.
  """
  from clu import metric_writers  # pylint: disable=g-import-not-at-top,redefined-outer-name

  loop = _open_loop(settings_lib.from_config(config), workdir)
  rollbacks = recovery.load_rollbacks(loop.workdir)
  try:
    state = _restore(loop)
    checkpointing.store_config(loop.settings, loop.workdir,
                               loop.config_changed)
    checkpointing.store_data(loop.workdir, loop.fingerprint)
    with metric_writers.ensure_flushes(loop.writer):
      if int(jax.device_get(state.step)) == 0 and not rollbacks:
        loop.writer.write_hparams({
            k: v for k, v in traverse_util.flatten_dict(
                loop.settings.to_dict(), sep='.').items()
            if isinstance(v, (int, float, str, bool))})
      while True:
        try:
          state = _train_segment(loop, rollbacks, state)
          break
        except recovery.Diverged as d:
          state, rollbacks = _roll_back(loop, rollbacks, d)
  finally:
    loop.preemption.restore()
    _close(loop.manager)
  step = int(jax.device_get(state.step))
  if loop.preemption.interrupted:
    raise Interrupted(state, step, loop.manager.directory)
  logging.info('Finished training at step %d.', step)
  return state


def _close(manager: ocp.CheckpointManager) -> None:
  """Closes orbax's threads and event loops before the process goes on.

  The loop has waited for its saves (or is leaving on an error, which is
  the one reported), so nothing is lost if closing fails.
  """
  try:
    manager.close()
  except Exception:  # pylint: disable=broad-exception-caught
    logging.info('Closing the checkpoint manager failed after the run.')


def _open_loop(settings: settings_lib.Settings, workdir: str) -> _Loop:
  """Checks everything that can fail on bad input, then opens the workdir."""
  # clu pulls in TensorFlow; keep it out of the import of this module.
  from clu import metric_writers  # pylint: disable=g-import-not-at-top,redefined-outer-name
  from clu import periodic_actions  # pylint: disable=g-import-not-at-top

  store = data.Store()
  info = data.get_dataset_info(settings, store=store)
  data.check_batch_fits(settings, info.num_train_examples)
  # Everything that can fail on bad input has run before the workdir is
  # touched.
  workdir = checkpointing.prepare_workdir(workdir)
  steps_per_epoch = max(
      info.num_train_examples // settings.training.batch_size, 1)
  total_steps = settings_lib.num_train_steps(settings, steps_per_epoch)
  manager = checkpointing.create_checkpoint_manager(
      workdir, settings.training.max_checkpoints_to_keep)
  has_checkpoint = manager.latest_step() is not None
  try:
    config_changed = bool(checkpointing.check_config(settings, workdir,
                                                     has_checkpoint))
    fingerprint = data.source_fingerprint(settings)
    checkpointing.check_data(settings, workdir, fingerprint, has_checkpoint)
  except checkpointing.CheckpointError:
    _close(manager)  # Its threads end before the error is reported.
    raise
  writer = metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0)
  return _Loop(settings=settings, workdir=workdir, info=info, store=store,
               steps_per_epoch=steps_per_epoch, total_steps=total_steps,
               manager=manager, writer=writer,
               report=periodic_actions.ReportProgress(
                   num_train_steps=total_steps, writer=writer),
               preemption=_Preemption(manager), mesh=sharding.data_mesh(),
               config_changed=config_changed, fingerprint=fingerprint)


def _restore(loop: _Loop) -> ts.TrainState:
  """The newest restorable checkpoint, or the initial state."""
  # Remedies change learning rates, not the optimiser state's structure.
  s = loop.settings
  optimizers = ts.create_optimizers(s.optim, loop.steps_per_epoch,
                                    loop.total_steps)
  return checkpointing.restore_or_create_state(
      loop.manager, ts.create_models(s), optimizers, s.training.seed,
      ts.replay_spec(s.training))


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
  s = loop.settings
  if recovery.give_up(s, rollbacks):
    raise TrainingDivergedError(
        _divergence_message(d.step, d.metrics, s.loss.energy_diff_limit,
                            manager) +
        f' Gave up after {len(rollbacks)} rollback(s) '
        f'(config.recovery.max_retries={s.recovery.max_retries}).')
  state = _restore(loop)
  rollback = recovery.Rollback(
      diverged_at_step=d.step,
      rolled_back_to_step=int(jax.device_get(state.step)),
      loss_e=d.metrics['loss_e'], energy_diff=d.metrics['energy_diff'])
  rollbacks = rollbacks + [rollback]
  if jax.process_index() == 0:
    recovery.save_rollbacks(loop.workdir, rollbacks)
  recovery.log_rollback(loop.writer, s, rollback, len(rollbacks))
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
  settings = recovery.remedied_settings(loop.settings, len(rollbacks))
  exp = experiment.build(settings, steps_per_epoch=loop.steps_per_epoch,
                         mesh=loop.mesh)
  state = recovery.with_stream(settings, state, len(rollbacks))
  start_step = int(jax.device_get(state.step))
  params = {k: int(parameter_overview.count_parameters(
                getattr(state, k).params))
            for k in ('ebm', 'gen', 'inf')}
  logging.info('Parameters: E %d, G %d, I %d; %d steps per epoch; '
               'training steps %d -> %d', params['ebm'], params['gen'],
               params['inf'], loop.steps_per_epoch, start_step,
               loop.total_steps)
  # Data parallel over every device: state replicated, batch split.
  state = sharding.replicate(state, loop.mesh)
  # Host-to-device copies of the next batches overlap the running step.
  train_iter = data.prefetch_to_device(
      data.create_train_iterator(settings, start_step=start_step,
                                 store=loop.store),
      size=settings.data.prefetch_to_device,
      sharding_fn=lambda b: (b, sharding.shard_batch(b, loop.mesh)))
  segment = _Segment(loop, exp)
  with contextlib.closing(train_iter):
    for step in range(start_step + 1, loop.total_steps + 1):
      local_batch, batch = next(train_iter)
      segment.set_grid_batch(local_batch)
      state, metrics = exp.train_step(state, batch)
      if segment.after_step(step, state, metrics):
        break
  segment.finish()
  return state


class _Segment:
  """The periodic work around the steps of one segment of training.

  The device runs ahead of the host: metrics stay on the device until a
  health check (every `config.training.health_every_steps`, at every log
  step and before every checkpoint) or a log step fetches them, so the
  host's Python never paces the step.
  """

  def __init__(self, loop: _Loop, exp: experiment.Experiment):
    self.loop = loop
    self.exp = exp
    t = exp.settings.training
    self.every = {name: getattr(t, f'{name}_every_steps')
                  for name in ('log', 'image', 'checkpoint', 'health')}
    self.grid_batch = None
    self.sample_key = jax.random.key(int(t.seed) + 1)
    # Running means of the metrics since the last log (clu.metrics).
    self.means = _MetricMeans()
    self.unchecked: list[tuple[int, dict[str, jax.Array]]] = []
    self.last_save: int | None = None  # A save that may still be running.
    self.t_log = time.time()

  def set_grid_batch(self, local_batch: np.ndarray) -> None:
    """Fixes the images of the sample grids: process 0's first batch."""
    if self.grid_batch is None:
      n = self.exp.settings.training.num_image_samples
      self.grid_batch = sharding.replicate(
          multihost_utils.broadcast_one_to_all(np.asarray(local_batch[:n])),
          self.loop.mesh)

  def after_step(self, step: int, state: ts.TrainState,
                 metrics: dict[str, jax.Array]) -> bool:
    """Logs, checks, writes and saves as due; True: stop (SIGTERM)."""
    loop, every = self.loop, self.every
    self.means.add(metrics)
    self.unchecked.append((step, metrics))
    loop.report(step)
    is_last = step == loop.total_steps
    stop = loop.preemption.reached(step)
    save = step % every['checkpoint'] == 0 or is_last or stop
    if step % every['health'] == 0 or save or step % every['log'] == 0:
      self.check_health()
    if step % every['log'] == 0 or is_last:
      self.write_metrics(step)
    if step % every['image'] == 0 or is_last:
      with loop.report.timed('samples'):
        write_samples(
            loop.writer, step,
            self.exp.sample_fn(state,
                               jax.random.fold_in(self.sample_key, step),
                               self.grid_batch),
            loop.info.shape, loop.workdir)
    if save:
      with loop.report.timed('checkpoint'):
        checkpointing.save(loop.manager, step, state, self.last_save)
      self.last_save = step
    if stop and not loop.preemption.interrupted:
      logging.warning('SIGTERM received: saved a checkpoint at step %d; '
                      'rerun the same command to resume.', step)
    return stop

  def check_health(self) -> None:
    """Raises recovery.Diverged at the first unhealthy unchecked step."""
    if not self.unchecked:
      return
    healthy = jax.device_get(
        jnp.stack([m['healthy'] for _, m in self.unchecked]))
    unchecked, self.unchecked = self.unchecked, []
    if healthy.all():
      return
    step, metrics = unchecked[int(np.argmin(healthy))]
    raise recovery.Diverged(
        step, {k: float(v) for k, v in jax.device_get(metrics).items()})

  def write_metrics(self, step: int) -> None:
    """Writes the means of the metrics since the last log step."""
    summary = self.means.compute()
    dt = time.time() - self.t_log
    summary['steps_per_sec'] = self.means.steps / max(dt, 1e-9)
    self.loop.writer.write_scalars(step, summary)
    self.means, self.t_log = _MetricMeans(), time.time()

  def finish(self) -> None:
    checkpointing.wait_until_finished(self.loop.manager, self.last_save)


class Interrupted(Exception):
  """Ctrl-C stopped training after a checkpoint of the current step.

  Attributes:
    state: the train state that was saved.
  """

  def __init__(self, state: ts.TrainState, step: int, directory: Any):
    super().__init__(
        f'Interrupted (Ctrl-C): saved a checkpoint at step {step} in '
        f'{directory}; rerun the same command to resume.')
    self.state = state


# The exit status of a run stopped by Ctrl-C, saved or not.
INTERRUPTED_STATUS = runtime.INTERRUPTED_STATUS


class _Preemption:
  """Turns SIGTERM (pre-emption) and Ctrl-C into a stop at a saved step.

  One process: a handler sets a flag the loop reads every step; the step
  in progress finishes and is saved. SIGTERM then ends the run normally
  (exit status 0, a scheduler restarts it); Ctrl-C (SIGINT) ends it with
  `Interrupted` (exit status 130). A second Ctrl-C before the save is done
  stops the process at once, with one line: the unfinished save is a
  temporary directory that is never loaded, and the checkpoint before it
  stays.

  Several processes (`jax.distributed.initialize`): JAX's preemption service
  catches the SIGTERM of any process and tells the others, and orbax's
  `CheckpointManager.reached_preemption` becomes True at the same step on
  all of them, so that they save the same checkpoint together and none is
  left waiting in a collective. A Python SIGTERM handler there would take
  the signal away from JAX's service, so none is installed; Ctrl-C is
  passed on to the service as a SIGTERM to the process itself.
  """

  def __init__(self, manager: ocp.CheckpointManager):
    self.requested = False
    self.interrupted = False
    self._manager = manager
    self._previous = {}
    self._service = jax.process_count() > 1
    if threading.current_thread() is threading.main_thread():
      signals = [signal.SIGINT] + ([] if self._service else [signal.SIGTERM])
      for sig in signals:
        self._previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT:
      if self.interrupted:
        os.write(2, (
            f'error: interrupted again: stopped without waiting for the '
            f'save; the finished checkpoints in {self._manager.directory} '
            'are intact (an unfinished one is never loaded); rerun the same '
            'command to resume\n').encode())
        os._exit(INTERRUPTED_STATUS)  # pylint: disable=protected-access
      self.interrupted = True
      os.write(2, b'Ctrl-C: finishing this step and saving it (Ctrl-C again '
               b'stops at once, keeping the last checkpoint)\n')
      if self._service:
        os.kill(os.getpid(), signal.SIGTERM)  # To JAX's preemption service.
        return
    self.requested = True

  def reached(self, step: int) -> bool:
    """True at the step where all processes stop; call at every step."""
    if self._service:
      self.requested = self._manager.reached_preemption(step)
    return self.requested

  def restore(self):
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)
    self._previous = {}


class _MetricMeans:
  """Means of a step's metrics over steps, kept on the device (clu.metrics)."""

  def __init__(self):
    self.steps = 0
    self._collection = None
    self._totals = None

  def add(self, metrics: dict[str, jax.Array]) -> None:
    names = sorted(k for k in metrics if k != 'healthy')
    if self._collection is None:
      self._collection = clu_metrics.Collection.create(
          **{k: clu_metrics.Average.from_output(k) for k in names})
    update = self._collection.single_from_model_output(
        **{k: metrics[k] for k in names})
    self._totals = update if self._totals is None else self._totals.merge(
        update)
    self.steps += 1

  def compute(self) -> dict[str, float]:
    if self._totals is None:
      return {}
    return {k: float(v) for k, v in
            jax.device_get(self._totals.compute()).items()}
