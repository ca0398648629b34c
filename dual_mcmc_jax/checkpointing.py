"""Checkpoints of a training workdir that survive crashes and bad input.

What this module guarantees, and how:

* A partially written checkpoint is never loaded: orbax writes each step into
  a `<step>.orbax-checkpoint-tmp-*` directory and renames it when complete,
  and `all_steps()` lists finished steps only. A run killed during a save
  resumes from the previous finished one.
* A finished checkpoint that cannot be read back (files deleted or
  truncated) is skipped with a warning naming it, and the previous one is
  restored; nothing is deleted here. Training moves the skipped ones to
  `<workdir>/damaged_checkpoints/` (orbax saves no step at or below its
  newest one, so left in place they would stop the resumed run from saving
  their steps anew); evaluation and sampling leave the workdir as it is.
  Only when none can be restored does the run stop, leaving all of them in
  place.
* A workdir's checkpoints belong to the config in its `config.json`: a run
  whose config differs in a field that changes the state's structure or the
  meaning of the run (`RUN_DEFINING_FIELDS`) refuses to resume unless
  `config.recovery.allow_config_change` is set.
* `load_state(config, workdir)` is how everything but the training loop
  (evaluation, sampling, the notebook, an imported PyTorch checkpoint) reads
  a workdir; the loop itself resumes through `restore_or_create_state`.
* A save that fails (disk full, permissions) stops the run with one line;
  earlier checkpoints stay, and orbax's `max_to_keep` clean-up, which runs
  only after a save has finished, cannot remove them on its behalf.
"""

from __future__ import annotations

import errno
import json
import os
from typing import Any

from absl import logging
from flax import traverse_util
import jax
from jax.experimental import multihost_utils
import ml_collections
import orbax.checkpoint as ocp

from dual_mcmc_jax import checkpoint_reading
from dual_mcmc_jax import migration
from dual_mcmc_jax import networks
from dual_mcmc_jax import settings as settings_lib
from dual_mcmc_jax import sharding
from dual_mcmc_jax import train_state as ts

CONFIG_FILE = 'config.json'

# Fields whose change makes a checkpoint belong to a different run: those
# declared `run_defining` in settings.py (the networks, the data and its
# order, the seed, the batch size, the ablation switches, the replay
# buffer's size). Tuning fields (learning rates, Langevin settings, loss
# weights) and the loop's bookkeeping (step counts, intervals) may change on
# resume, so that a longer run can continue a shorter one and a diverged run
# can be restarted with a lower learning rate.
RUN_DEFINING_FIELDS = settings_lib.run_defining_fields()

_FORCE_FLAG = '--config.recovery.allow_config_change=True'
# Orbax and TensorStore errors run to pages; an error line keeps their start.
_MAX_REASON_CHARS = 120


class CheckpointError(RuntimeError):
  """A workdir problem that stops the run with one line; nothing is lost."""


def create_checkpoint_manager(workdir: str, max_to_keep: int
                              ) -> ocp.CheckpointManager:
  """The orbax manager of `<workdir>/checkpoints`."""
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), 'checkpoints'),
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                           create=True))


def prepare_workdir(workdir: str) -> str:
  """Creates `workdir` and checks that files can be written in it.

  Args:
    workdir: the run's directory.

  Returns:
    Its absolute path.

  Raises:
    CheckpointError: it cannot be created or written.
  """
  workdir = os.path.abspath(workdir)
  probe = os.path.join(workdir, f'.write_probe_{os.getpid()}')
  try:
    os.makedirs(workdir, exist_ok=True)
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise CheckpointError(
        f'workdir {workdir} is not writable ({e.strerror or e}); pass a '
        '--workdir you can write to, or fix its permissions') from e
  return workdir


def write_json_atomically(path: str, content: Any) -> None:
  """Writes JSON so that a crash leaves the old file or the new, never half."""
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'w') as f:
    json.dump(content, f, indent=2, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _config_as_json(config: Any) -> dict[str, Any]:
  """A config (ConfigDict or Settings) as the plain dict config.json holds."""
  if isinstance(config, settings_lib.Settings):
    return json.loads(json.dumps(config.to_dict()))
  # Round trip through JSON so that tuples, placeholders etc. compare as the
  # stored file does.
  return json.loads(config.to_json_best_effort())


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir was trained with, migrated to this version.

  Args:
    workdir: a training workdir.

  Returns:
    Its `config.json` as a ConfigDict, with fields added since it was
    written set as that version ran (`migration.migrate_config`).

  Raises:
    CheckpointError: there is no readable config.json.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  try:
    with open(path) as f:
      raw = json.load(f)
  except (OSError, ValueError) as e:
    raise CheckpointError(f'{path} cannot be read ({e})') from e
  return ml_collections.ConfigDict(migration.migrate_config(raw))


def config_differences(old: dict[str, Any], new: dict[str, Any]
                       ) -> list[str]:
  """Run-defining fields that differ, as 'field: old -> new'.

  Both configs are first brought to this version's form
  (`migration.migrate_config`), so a field added since the old one was
  written has the value it ran with.
  """
  a = traverse_util.flatten_dict(migration.migrate_config(old), sep='.')
  b = traverse_util.flatten_dict(migration.migrate_config(new), sep='.')
  return [f'{k}: {a.get(k)!r} -> {b.get(k)!r}' for k in RUN_DEFINING_FIELDS
          if a.get(k) != b.get(k)]


def check_config(settings: settings_lib.Settings, workdir: str,
                 has_checkpoint: bool) -> list[str]:
  """Refuses another config's checkpoints; changes nothing on disk.

  Every mode that reads a workdir runs it before restoring: training,
  `--mode=eval` / `sample`, the benchmarks' scoring and the notebook (all
  through `load_state`).

  Args:
    settings: the settings of this run.
    workdir: the run's directory; its `config.json` is the stored config.
    has_checkpoint: whether the workdir holds a finished checkpoint.

  Returns:
    The run-defining differences ('field: old -> new'), when
    `config.recovery.allow_config_change` lets them through.

  Raises:
    CheckpointError: the stored config differs in a run-defining field (or
      cannot be read) while checkpoints exist, and
      `config.recovery.allow_config_change` is not set.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not has_checkpoint:
    return []
  if not os.path.exists(path):
    logging.warning('%s holds checkpoints but no %s: they are used with this '
                    'config (their arrays are checked against its nets).',
                    workdir, CONFIG_FILE)
    return []
  try:
    with open(path) as f:
      diffs = config_differences(json.load(f), _config_as_json(settings))
  except (OSError, ValueError) as e:
    if not settings.recovery.allow_config_change:
      raise CheckpointError(
          f'{path} cannot be read ({e}), so the config of the checkpoints '
          f'beside it is unknown; restore it, delete it to use them with '
          'this config (their arrays are checked against its nets), or use '
          'a new --workdir') from e
    diffs = [f'{path} cannot be read ({e})']
  if diffs and not settings.recovery.allow_config_change:
    raise CheckpointError(
        f'{workdir} holds checkpoints of a different config '
        f'({"; ".join(diffs)}); use a new --workdir, or pass '
        f'{_FORCE_FLAG} to resume them anyway')
  if diffs:
    logging.warning('Using %s with a changed config (%s) because '
                    'config.recovery.allow_config_change is set.', workdir,
                    '; '.join(diffs))
  return diffs


def store_config(settings: settings_lib.Settings, workdir: str,
                 changed: bool) -> None:
  """Stores this run's config as the workdir's `config.json`.

  Training calls it once the state was restored (or created), so that a run
  that fails before (another config's nets, unreadable checkpoints) leaves
  the stored config as it was. A config changed under
  `config.recovery.allow_config_change` (`changed`, from `check_config`)
  keeps the old one as `config.before_change.json`.
  """
  if jax.process_index() != 0:
    return
  path = os.path.join(workdir, CONFIG_FILE)
  if changed and os.path.exists(path):
    # Keep the config the existing checkpoints were trained with.
    os.replace(path, os.path.join(workdir, 'config.before_change.json'))
  write_json_atomically(path, _config_as_json(settings))


DATA_FILE = 'data.json'


def check_data(settings: settings_lib.Settings, workdir: str,
               fingerprint: dict[str, Any] | None,
               has_checkpoint: bool) -> None:
  """Refuses to resume on data files that changed since the checkpoints.

  An image folder or npz file is read anew by every run; if it changed,
  the resumed run would see another data stream than the one its
  checkpoints were trained on. `fingerprint` is the files as they are now
  (`data.source_fingerprint`; None for data the config fixes, which are not
  checked); `store_data` records it in `<workdir>/data.json`.

  Raises:
    CheckpointError: the files changed while checkpoints exist, and
      `config.recovery.allow_config_change` is not set.
  """
  path = os.path.join(workdir, DATA_FILE)
  if fingerprint is None or not has_checkpoint or not os.path.exists(path):
    return
  try:
    with open(path) as f:
      old = json.load(f)
  except (OSError, ValueError):
    return  # Unreadable: the run stores the current one.
  if old == fingerprint:
    return
  where = settings.data.image_folder or settings.data.npz_path
  change = (f'{old.get("files")} files then, {fingerprint["files"]} now'
            if old.get('files') != fingerprint['files'] else
            'as many files, of other sizes or contents')
  if not settings.recovery.allow_config_change:
    raise CheckpointError(
        f'the data {where} changed since the checkpoints in {workdir} were '
        f'trained on it ({change}), so a resumed run would read another '
        'data stream; restore the files, use a new --workdir, or pass '
        f'{_FORCE_FLAG} to resume on the new data')
  logging.warning('Resuming on changed data %s (%s) because '
                  'config.recovery.allow_config_change is set.', where, change)


def store_data(workdir: str, fingerprint: dict[str, Any] | None) -> None:
  """Records the data files a workdir is trained on (see `check_data`)."""
  if fingerprint is not None and jax.process_index() == 0:
    write_json_atomically(os.path.join(workdir, DATA_FILE), fingerprint)


DAMAGED_DIR = 'damaged_checkpoints'


def restore_latest(manager: ocp.CheckpointManager, abstract: Any,
                   set_aside_damaged: bool = False
                   ) -> tuple[int, Any] | None:
  """The newest checkpoint that can be restored, falling back past bad ones.

  Args:
    manager: the workdir's checkpoint manager.
    abstract: the state's structure (`jax.eval_shape` of a fresh one).
    set_aside_damaged: move the checkpoints skipped on the way to
      `<workdir>/damaged_checkpoints/<step>` (training, which saves those
      steps anew); otherwise they stay where they are.

  Returns:
    (step, state), or None when the workdir has no finished checkpoint.

  Raises:
    CheckpointError: there are checkpoints but none can be restored; they
      are all left on disk; or the checkpoints hold other nets than
      `abstract`.
  """
  skipped = []
  checkpoint_reading.quiet_abandoned_reads()
  for step in sorted(manager.all_steps(), reverse=True):
    mismatch = checkpoint_reading.shape_mismatch(manager.directory, step,
                                                 abstract)
    if mismatch:
      raise CheckpointError(
          f'the checkpoints in {manager.directory} hold other nets than this '
          f'config makes ({mismatch}); use the config they were trained '
          'with, or a new --workdir')
    try:
      state = manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # pylint: disable=broad-exception-caught
      # Orbax and tensorstore raise many types for missing or damaged files.
      first_line = str(e).splitlines()[0] if str(e) else ''
      reason = f'{type(e).__name__}: {first_line}'[:_MAX_REASON_CHARS]
      skipped.append((step, f'step {step} ({reason})'))
      logging.warning('Checkpoint at step %d in %s cannot be restored (%s); '
                      'falling back to the previous one.', step,
                      manager.directory, reason)
      continue
    if skipped:
      where = (_set_aside(manager, [s for s, _ in skipped])
               if set_aside_damaged else 'left where they are')
      logging.warning('Using step %d; the unreadable %s: %s.', step,
                      ', '.join(r for _, r in skipped), where)
    return step, state
  if skipped:
    raise CheckpointError(
        f'no checkpoint in {manager.directory} can be restored '
        f'({"; ".join(r for _, r in skipped)}); they were left untouched: '
        'move them away to start afresh, or use a new --workdir')
  return None


def _set_aside(manager: ocp.CheckpointManager, steps: list[int]) -> str:
  """Moves damaged checkpoints out of the manager's directory; says where."""
  target = os.path.join(os.path.dirname(str(manager.directory)), DAMAGED_DIR)
  if jax.process_index() == 0:
    os.makedirs(target, exist_ok=True)
    for step in steps:
      name, n = str(step), 1
      while os.path.exists(os.path.join(target, name)):
        name, n = f'{step}.{n}', n + 1  # Damaged at that step before.
      os.replace(os.path.join(str(manager.directory), str(step)),
                 os.path.join(target, name))
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('checkpointing._set_aside')
  manager.reload()
  return f'moved to {target} for inspection'


def abstract_state(models: networks.Models, optimizers: ts.Optimizers,
                   seed: int, mesh: jax.sharding.Mesh | None = None,
                   replay: ts.ReplaySpec | None = None) -> Any:
  """The structure of a train state, replicated over this run's devices.

  Shapes and dtypes only, nothing computed. The sharding is that of the
  devices at hand, not those that saved the checkpoint, so that a
  checkpoint written by several hosts restores on one machine and the
  other way round.
  """
  shapes = jax.eval_shape(
      lambda: ts.create_train_state(models, optimizers, seed, replay))
  replicated = sharding.replicated(
      sharding.data_mesh() if mesh is None else mesh)
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
      shapes)


def restore_or_create_state(manager: ocp.CheckpointManager,
                            models: networks.Models,
                            optimizers: ts.Optimizers,
                            seed: int, replay: ts.ReplaySpec | None = None
                            ) -> ts.TrainState:
  """The newest restorable checkpoint of `manager`, else a fresh state."""
  restored = restore_latest(
      manager, abstract_state(models, optimizers, seed, replay=replay),
      set_aside_damaged=True)
  if restored is None:
    return ts.create_train_state(models, optimizers, seed, replay)
  step, state = restored
  logging.info('Resuming from checkpoint at step %d in %s', step,
               manager.directory)
  return state


def load_state(config: ml_collections.ConfigDict | settings_lib.Settings,
               workdir: str, step: int | None = None
               ) -> tuple[networks.Models, ts.TrainState]:
  """Restores the train state of a workdir (latest step by default).

  Args:
    config: the configuration the workdir was trained with (a ConfigDict or
      its `Settings`).
    workdir: a training workdir.
    step: checkpoint step to load, or None for the newest restorable one.

  Returns:
    (models, state).

  Raises:
    FileNotFoundError: the workdir has no checkpoint.
    CheckpointError: its checkpoints belong to another config, or none can
      be restored.
  """
  settings = settings_lib.from_config(config)
  models = ts.create_models(settings)
  # The optimiser state's structure does not depend on the schedule length.
  optimizers = ts.create_optimizers(settings.optim, steps_per_epoch=1,
                                    total_steps=1)
  abstract = abstract_state(models, optimizers, settings.training.seed,
                            replay=ts.replay_spec(settings.training))
  directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
  if not os.path.isdir(directory):
    # Nothing to read: say so rather than create an empty workdir.
    raise FileNotFoundError(f'no checkpoint in {directory}; train first or '
                            'check --workdir')
  with create_checkpoint_manager(workdir, 1_000_000) as manager:
    check_config(settings, os.path.abspath(workdir),
                 manager.latest_step() is not None)
    if step is not None:
      return models, manager.restore(step,
                                     args=ocp.args.StandardRestore(abstract))
    restored = restore_latest(manager, abstract)
    if restored is None:
      raise FileNotFoundError(f'no checkpoint in {manager.directory}; train '
                              'first or check --workdir')
    return models, restored[1]


# How a full disk shows up: an OSError from Python's file calls, or a
# ValueError carrying TensorStore's status from orbax's background writes.
_DISK_FULL_MARKERS = ('RESOURCE_EXHAUSTED', 'No space left on device')


def _save_failure(step: int | None, directory: Any,
                  e: Exception) -> CheckpointError:
  what = 'a checkpoint' if step is None else f'the checkpoint of step {step}'
  text = str(e)
  if (getattr(e, 'errno', None) == errno.ENOSPC or
      any(m in text for m in _DISK_FULL_MARKERS)):
    problem = 'the disk is full'
  else:
    reason = text.splitlines()[0] if text else type(e).__name__
    problem = reason[:_MAX_REASON_CHARS]
  return CheckpointError(
      f'saving {what} in {directory} failed: '
      f'{problem}; earlier checkpoints are intact: fix that (unfinished '
      '*.orbax-checkpoint-tmp* directories there may be removed) and rerun '
      'the same command to resume')


def save(manager: ocp.CheckpointManager, step: int, state: Any,
         pending_step: int | None) -> None:
  """Saves `state` at `step` in the background.

  Args:
    manager: the workdir's checkpoint manager.
    step: the step of `state`.
    state: the train state.
    pending_step: the step of the previous save, which may still be being
      written; its failure is reported under its own step.

  Raises:
    CheckpointError: this save or the pending one failed (disk full,
      permissions); the checkpoints finished before are untouched.
  """
  wait_until_finished(manager, pending_step)
  try:
    manager.save(step, args=ocp.args.StandardSave(state))
  except (OSError, ValueError) as e:
    raise _save_failure(step, manager.directory, e) from e


def wait_until_finished(manager: ocp.CheckpointManager,
                        pending_step: int | None) -> None:
  """Waits for a background save; its failure becomes a CheckpointError."""
  try:
    manager.wait_until_finished()
  except (OSError, ValueError) as e:
    raise _save_failure(pending_step, manager.directory, e) from e
