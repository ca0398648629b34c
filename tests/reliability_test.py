"""Long runs: crashes, divergence and bad input lose no work.

Covers: a run killed with SIGKILL several times (once while a checkpoint is
being written, the others at random moments) and then finished equals an
uninterrupted run bit for bit; a damaged latest checkpoint is skipped for the
previous one; an injected NaN is rolled back and recovered from, and a
restart keeps the remedy; the give-up path once the rollbacks are used up;
and a table of bad inputs, each exiting with one `error:` line while every
checkpoint already on disk stays byte for byte as it was.

All runs use the test config on the plain nets (`_cheap_config`), 12 steps
with a checkpoint every 2, sharing conftest's persistent compilation cache
with the subprocesses.
"""

import builtins
import errno
import glob
import hashlib
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.path import atomicity
import pytest

from configs import test as test_config
from dual_mcmc_jax import checkpointing
from dual_mcmc_jax import data
from dual_mcmc_jax import recovery
from dual_mcmc_jax import train
from dual_mcmc_jax import train_state as ts
import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 12
# The fields the in-process runs and the `main.py` subprocesses share, so
# that both train the same run.
TRAINING = dict(checkpoint_every_steps=2, image_every_steps=1000,
                log_every_steps=2)


def _cheap_config(num_steps: int = NUM_STEPS):
  config = test_config.get_config()
  config.model.arch = 'simple'
  config.training.num_train_steps = num_steps
  for k, v in TRAINING.items():
    config.training[k] = v
  return config


def _main_command(workdir: str, num_steps: int = NUM_STEPS) -> list[str]:
  return ([sys.executable, 'main.py', '--config=configs/test.py',
           f'--workdir={workdir}', '--config.model.arch=simple',
           f'--config.training.num_train_steps={num_steps}'] +
          [f'--config.training.{k}={v}' for k, v in TRAINING.items()])


def _saved_steps(workdir) -> list[int]:
  return sorted(int(os.path.basename(p)) for p in
                glob.glob(os.path.join(str(workdir), 'checkpoints', '*'))
                if os.path.basename(p).isdigit())


def _tmp_checkpoint_dirs(workdir) -> list[str]:
  return [os.path.basename(p) for p in
          glob.glob(os.path.join(str(workdir), 'checkpoints', '*'))
          if not os.path.basename(p).isdigit()]


def _snapshot(workdir) -> dict[str, str]:
  """sha256 of every file of the finished checkpoints and of the JSONs.

  Unfinished (orbax temp) checkpoint directories are left out: a failed save
  may leave one, and no run ever loads it.
  """
  out = {}
  paths = [p for step in _saved_steps(workdir) for p in glob.glob(
      os.path.join(str(workdir), 'checkpoints', str(step), '**'),
      recursive=True)]
  paths += glob.glob(os.path.join(str(workdir), '*.json'))
  for p in paths:
    if os.path.isfile(p):
      with open(p, 'rb') as f:
        out[os.path.relpath(p, workdir)] = hashlib.sha256(f.read()).hexdigest()
  return out


def _assert_same_state(a, b):
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _truncate_largest_array_file(workdir, step: int) -> str:
  files = glob.glob(os.path.join(str(workdir), 'checkpoints', str(step),
                                 'default', 'ocdbt.process_0', 'd', '*'))
  big = max(files, key=os.path.getsize)
  with open(big, 'r+b') as f:
    f.truncate(os.path.getsize(big) // 2)
  return big


@pytest.fixture(scope='module')
def clean_run(tmp_path_factory):
  """An uninterrupted run: (workdir with checkpoints 8, 10, 12; state)."""
  workdir = str(tmp_path_factory.mktemp('clean') / 'run')
  state = train.train_and_evaluate(_cheap_config(), workdir)
  assert _saved_steps(workdir) == [8, 10, 12]
  return workdir, jax.device_get(state)


def _copy(src: str, tmp_path) -> str:
  dst = str(tmp_path / 'run')
  shutil.copytree(src, dst)
  return dst


# --- Kill -9 at any moment -----------------------------------------------

# Runs main.py with orbax's final rename (the commit of a checkpoint) of one
# step blocked after its files were written, so that the test can kill the
# process while that checkpoint is half done.
_BLOCK_COMMIT = '''
import asyncio, os, runpy, sys
from orbax.checkpoint.path import atomicity
real = atomicity.AtomicRenameTemporaryPath.finalize
step, marker = sys.argv.pop(1), sys.argv.pop(1)
async def finalize(self, *args, **kwargs):
  if os.path.basename(str(self.get_final())) == step:
    open(marker, 'w').close()
    await asyncio.sleep(3600)
  return await real(self, *args, **kwargs)
atomicity.AtomicRenameTemporaryPath.finalize = finalize
sys.argv[0] = 'main.py'
runpy.run_path('main.py', run_name='__main__')
'''


def _wait_for(predicate, proc, timeout: float = 300) -> bool:
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None:
    if predicate():
      return True
    time.sleep(0.05)
  return predicate()


def _kill(proc):
  proc.send_signal(signal.SIGKILL)
  proc.wait()


def test_killed_repeatedly_then_finished_equals_an_uninterrupted_run(
    tmp_path, clean_run):
  _, clean_state = clean_run
  workdir = str(tmp_path / 'run')
  # Random kill moments; a failure's captured output names the seed.
  seed = int(time.time())
  print(f'kill moments drawn with random.Random({seed})')
  rng = random.Random(seed)
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  quiet = dict(cwd=REPO, env=env, stdout=subprocess.DEVNULL,
               stderr=subprocess.DEVNULL)

  # 1. Killed while the checkpoint of a random step is being written.
  blocked = rng.choice([2, 4])
  marker = str(tmp_path / 'committing')
  proc = subprocess.Popen(
      [sys.executable, '-c', _BLOCK_COMMIT, str(blocked), marker] +
      _main_command(workdir)[2:], **quiet)
  assert _wait_for(lambda: os.path.exists(marker), proc), (
      f'no save of step {blocked}')
  _kill(proc)
  assert _saved_steps(workdir) == list(range(2, blocked, 2))
  assert _tmp_checkpoint_dirs(workdir), 'the killed save left no temp dir'

  # 2, 3. Killed at a random moment after some progress. Each kill comes
  # within a few steps of a new checkpoint, so that two of them end before
  # step 10, whose run still has the final sample grid and save ahead.
  for _ in range(2):
    before = max(_saved_steps(workdir), default=0)
    proc = subprocess.Popen(_main_command(workdir), **quiet)
    _wait_for(lambda: max(_saved_steps(workdir), default=0) > before, proc)
    time.sleep(rng.uniform(0, 0.1))
    assert proc.poll() is None, 'the run ended before it could be killed'
    _kill(proc)
    assert max(_saved_steps(workdir)) < NUM_STEPS

  # 4. Finished by the same command.
  out = subprocess.run(_main_command(workdir), cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=400)
  assert out.returncode == 0, out.stderr[-2000:]
  assert 'Resuming from checkpoint at step' in out.stderr
  assert _saved_steps(workdir)[-1] == NUM_STEPS
  _, resumed = checkpointing.load_state(_cheap_config(), workdir)
  assert int(resumed.step) == NUM_STEPS
  _assert_same_state(clean_state, resumed)


def test_damaged_latest_checkpoint_is_skipped_for_the_previous_one(
    tmp_path, clean_run, caplog):
  clean_workdir, clean_state = clean_run
  workdir = _copy(clean_workdir, tmp_path)
  damaged = _truncate_largest_array_file(workdir, NUM_STEPS)
  with open(damaged, 'rb') as f:
    damaged_bytes = f.read()
  with caplog.at_level(logging.WARNING):
    state = train.train_and_evaluate(_cheap_config(), workdir)
  assert f'Checkpoint at step {NUM_STEPS}' in caplog.text
  assert 'cannot be restored' in caplog.text
  # Resumed from step 10 and replayed 11 and 12 to the same parameters.
  _assert_same_state(clean_state, jax.device_get(state))
  # The damaged checkpoint is left for inspection, not deleted or rewritten.
  with open(damaged, 'rb') as f:
    assert f.read() == damaged_bytes


# --- Divergence ----------------------------------------------------------


def _poison_batches(monkeypatch, step: int, num_iterators: int | None):
  """Puts a NaN into the batch of `step`.

  Args:
    monkeypatch: pytest's fixture.
    step: the step whose batch gets the NaN.
    num_iterators: poison only the first this many train iterators (a
      transient fault), or every one when None (bad data).
  """
  real = data.create_train_iterator
  made = []

  def poisoned(cfg, *, start_step=0, **kwargs):
    made.append(start_step)
    poison = num_iterators is None or len(made) <= num_iterators
    for i, batch in enumerate(real(cfg, start_step=start_step, **kwargs)):
      if poison and start_step + i + 1 == step:
        batch = batch.copy()
        batch[0, 0, 0, 0] = np.nan
      yield batch

  monkeypatch.setattr(data, 'create_train_iterator', poisoned)


def _tensorboard_tags(workdir) -> set[str]:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return {v.tag
          for path in glob.glob(os.path.join(str(workdir), 'events.out.*'))
          for event in tf.compat.v1.train.summary_iterator(path)
          for v in event.summary.value}


def test_injected_nan_is_rolled_back_and_a_restart_keeps_the_remedy(
    tmp_path, monkeypatch, caplog):
  config = _cheap_config(6)
  config.recovery.lr_factor = 0.5
  seed = int(config.training.seed)

  # A transient NaN at step 3 in a run of 6: rolled back to step 2.
  _poison_batches(monkeypatch, 3, num_iterators=1)
  with caplog.at_level(logging.WARNING):
    straight = jax.device_get(
        train.train_and_evaluate(config, str(tmp_path / 'a')))
  assert 'diverged at step 3' in caplog.text
  assert 'rollback 1 of 3 to step 2' in caplog.text
  assert 'learning rates x0.5' in caplog.text
  assert {'recovery/rollbacks', 'recovery/lr_scale'} <= _tensorboard_tags(
      tmp_path / 'a')
  with open(tmp_path / 'a' / recovery.RECORD_FILE) as f:
    record = json.load(f)['rollbacks']
  assert [(r['diverged_at_step'], r['rolled_back_to_step'])
          for r in record] == [(3, 2)]
  assert int(straight.step) == 6
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(straight))
  np.testing.assert_array_equal(straight.rng, ts.rng_stream(seed, 1))

  # The same fault in a run of 4, then the same command for 6 steps without
  # the fault: the restart reads the record and keeps the halved learning
  # rates and the fresh stream, ending where the straight run ended.
  _poison_batches(monkeypatch, 3, num_iterators=1)
  config.training.num_train_steps = 4
  train.train_and_evaluate(config, str(tmp_path / 'b'))
  monkeypatch.undo()
  config.training.num_train_steps = 6
  resumed = jax.device_get(train.train_and_evaluate(config,
                                                    str(tmp_path / 'b')))
  _assert_same_state(straight, resumed)


def test_divergence_stops_with_a_clear_message_when_no_rollback_is_left(
    tmp_path, monkeypatch):
  config = _cheap_config(6)
  config.recovery.max_retries = 1
  _poison_batches(monkeypatch, 3, num_iterators=None)  # NaN every time
  with pytest.raises(train.TrainingDivergedError,
                     match=r'diverged at step 3.*last good checkpoint: step 2'
                     r'.*Gave up after 1 rollback'):
    train.train_and_evaluate(config, str(tmp_path))
  # The unhealthy states were never saved.
  assert _saved_steps(tmp_path) == [2]


def test_divergence_before_any_checkpoint_restarts_from_the_initial_state(
    tmp_path, monkeypatch):
  config = _cheap_config(2)
  _poison_batches(monkeypatch, 1, num_iterators=1)
  state = jax.device_get(train.train_and_evaluate(config, str(tmp_path)))
  with open(tmp_path / recovery.RECORD_FILE) as f:
    record = json.load(f)['rollbacks']
  assert [(r['diverged_at_step'], r['rolled_back_to_step'])
          for r in record] == [(1, 0)]
  assert int(state.step) == 2
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state))
  np.testing.assert_array_equal(state.rng, ts.rng_stream(1, 1))


def test_config_differences_name_only_run_defining_fields():
  old = json.loads(_cheap_config().to_json_best_effort())
  config = _cheap_config()
  # Free to change on resume: step counts, tuning, recovery, eval.
  config.training.num_train_steps = 10**6
  config.optim.lr_e = 1e-5
  config.langevin_x.step_size = 0.1
  config.recovery.max_retries = 9
  config.eval.batch_size = 2
  config.training.cpu_plugin = 'off'  # Same numbers, computed otherwise.
  new = json.loads(config.to_json_best_effort())
  new['training']['a_field_added_later'] = True  # Unknown before: not a diff.
  assert checkpointing.config_differences(old, new) == []
  config.model.ngf = 32
  config.data.image_size = 32
  config.training.batch_size = 16
  config.training.z_revision = False  # An ablation is another experiment.
  new = json.loads(config.to_json_best_effort())
  assert checkpointing.config_differences(old, new) == [
      'data.image_size: 16 -> 32', 'model.ngf: 16 -> 32',
      'training.batch_size: 8 -> 16', 'training.z_revision: True -> False']


# --- Bad input -----------------------------------------------------------


def _set(**fields):
  """A case's config change: {'group.field': value}."""
  def change(config, workdir, monkeypatch):
    del monkeypatch
    for path, value in fields.items():
      group, name = path.split('.')
      config[group][name] = value
    return workdir
  return change


def _more_devices(config, workdir, monkeypatch):
  del config
  monkeypatch.setattr(jax, 'device_count', lambda: 3)
  return workdir


def _damage_every_checkpoint(config, workdir, monkeypatch):
  """Truncates an array file of the newer two, deletes the oldest's metadata.
  """
  del config, monkeypatch
  oldest, *newer = _saved_steps(workdir)
  for step in newer:
    _truncate_largest_array_file(workdir, step)
  os.remove(os.path.join(workdir, 'checkpoints', str(oldest), 'default',
                         '_METADATA'))
  return workdir


def _tfds_set_not_prepared(config, workdir, monkeypatch):
  del monkeypatch
  config.data.dataset = 'svhn'
  config.data.num_channels = 3
  config.data.data_dir = os.path.join(workdir, '..', 'empty_tfds_dir')
  config.data.download = False
  return workdir


def _damage_the_rollback_record(config, workdir, monkeypatch):
  del config, monkeypatch
  with open(os.path.join(workdir, recovery.RECORD_FILE), 'w') as f:
    f.write('{"rollbacks": [')
  return workdir


def _workdir_under_a_file(config, workdir, monkeypatch):
  del config, monkeypatch
  blocker = os.path.join(workdir, '..', 'a_file')
  with open(blocker, 'w') as f:
    f.write('not a directory')
  return os.path.join(blocker, 'run')


def _disk_fills_up(config, workdir, monkeypatch):
  config.training.num_train_steps = NUM_STEPS + 2

  def full(self, step, *args, **kwargs):
    raise OSError(errno.ENOSPC, 'No space left on device')

  monkeypatch.setattr(ocp.CheckpointManager, 'save', full)
  return workdir


def _disk_fills_up_in_the_background_write(config, workdir, monkeypatch):
  """A full disk as orbax reports it: its background commit fails.

  The save of step 14 fails after the oldest checkpoint (8) was scheduled
  for max_to_keep's clean-up, which must then not run.
  """
  config.training.num_train_steps = NUM_STEPS + 2

  async def full(self, *args, **kwargs):
    del self, args, kwargs
    raise ValueError('RESOURCE_EXHAUSTED: Error writing "ebm.params" in '
                     'OCDBT database: No space left on device')

  # The commit (temp dir renamed to its step), as in _BLOCK_COMMIT.
  monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, 'finalize', full)
  return workdir


def _read_only_workdir(config, workdir, monkeypatch):
  """The workdir sits on a read-only mount (root can write a chmod 555 dir,
  so the file system's answer is simulated where the probe is written)."""
  del config
  real_open = builtins.open

  def read_only_open(file, mode='r', *args, **kwargs):
    if '.write_probe_' in str(file) and any(m in mode for m in 'wax+'):
      raise OSError(errno.EROFS, 'Read-only file system', str(file))
    return real_open(file, mode, *args, **kwargs)

  monkeypatch.setattr(builtins, 'open', read_only_open)
  return workdir


def _npz_with_a_nan(config, workdir, monkeypatch):
  del monkeypatch
  images = np.random.default_rng(0).uniform(-1, 1, (40, 16, 16, 1))
  images[3, 2, 1, 0] = np.nan
  path = os.path.join(workdir, '..', 'images.npz')
  np.savez(path, images=images.astype(np.float32))
  config.data.dataset = 'npz'
  config.data.npz_path = path
  return workdir


def _image_folder_of_one_image(config, workdir, monkeypatch):
  del monkeypatch
  from PIL import Image  # pylint: disable=g-import-not-at-top
  folder = os.path.join(workdir, '..', 'one_image')
  os.makedirs(folder)
  Image.fromarray(np.zeros((20, 20), np.uint8)).save(
      os.path.join(folder, 'a.png'))
  config.data.dataset = 'image_folder'
  config.data.image_folder = folder
  return workdir


BAD_INPUTS = [
    # (case, change, words the one error line must contain)
    ('unknown_dataset', _set(**{'data.dataset': 'no_such_set'}),
     ['config.data.dataset', 'no_such_set']),
    ('resnet_image_size_20', _set(**{'model.arch': 'resnet',
                                     'data.image_size': 20}),
     ['config.data.image_size=20', "config.model.arch='resnet'",
      'power of two >= 8']),
    ('simple_image_size_4', _set(**{'data.image_size': 4}),
     ['config.data.image_size=4', 'power of two >= 8']),
    ('zero_x_steps', _set(**{'langevin_x.steps': 0}),
     ['config.langevin_x.steps=0', 'an integer >= 1']),
    ('negative_z_steps', _set(**{'langevin_z.steps': -1}),
     ['config.langevin_z.steps=-1']),
    ('zero_x_step_size', _set(**{'langevin_x.step_size': 0.0}),
     ['config.langevin_x.step_size']),
    ('negative_z_step_size', _set(**{'langevin_z.step_size': -0.1}),
     ['config.langevin_z.step_size']),
    ('zero_checkpoint_interval', _set(**{'training.checkpoint_every_steps': 0}),
     ['config.training.checkpoint_every_steps']),
    ('zero_lr_factor', _set(**{'recovery.lr_factor': 0.0}),
     ['config.recovery.lr_factor']),
    ('zero_latent_size', _set(**{'model.nz': 0}),
     ['config.model.nz=0', 'an integer >= 1']),
    ('zero_width', _set(**{'model.nef': 0}), ['config.model.nef=0']),
    ('nan_learning_rate', _set(**{'optim.lr_e': float('nan')}),
     ['config.optim.lr_e=nan', 'a finite number > 0']),
    ('infinite_sigma', _set(**{'loss.sigma': float('inf')}),
     ['config.loss.sigma=inf', 'finite']),
    ('negative_factor', _set(**{'loss.s_factor': -1.0}),
     ['config.loss.s_factor=-1.0', '>= 0']),
    ('negative_num_train_steps', _set(**{'training.num_train_steps': -5}),
     ['config.training.num_train_steps=-5', 'an integer >= 0']),
    ('unknown_langevin_rule', _set(**{'langevin_x.rule': 'euler'}),
     ["config.langevin_x.rule='euler'", 'reference', 'paper']),
    ('noise_box_upside_down', _set(**{'training.x_noise_low': 1.0,
                                      'training.x_noise_high': -1.0}),
     ['config.training.x_noise_low=1.0', 'must be <']),
    ('batch_not_divisible_by_devices', _more_devices,
     ['config.training.batch_size=8', 'multiple of the number of devices', '(3)']),
    ('checkpoints_of_another_config', _set(**{'model.nz': 16}),
     ['different config', 'model.nz: 8 -> 16',
      '--config.recovery.allow_config_change=True']),
    ('every_checkpoint_damaged', _damage_every_checkpoint,
     ['no checkpoint', 'can be restored', 'step 12', 'step 8']),
    ('rollback_record_damaged', _damage_the_rollback_record,
     ['recovery.json cannot be read', 'remove it to resume without them']),
    ('dataset_missing_offline', _tfds_set_not_prepared,
     ['svhn', 'not prepared', '--config.data.download=True']),
    ('npz_with_a_nan', _npz_with_a_nan,
     ['images.npz', "array 'images'", 'NaN at index (3, 2, 1, 0)']),
    ('image_folder_of_one_image', _image_folder_of_one_image,
     ['config.training.batch_size=8', 'larger than the 1 training examples']),
    ('unwritable_workdir', _workdir_under_a_file, ['not writable']),
    ('read_only_workdir', _read_only_workdir,
     ['not writable', 'Read-only file system']),
    ('energy_diff_explodes_no_rollback_left',
     _set(**{'loss.energy_diff_limit': 1e-12, 'recovery.max_retries': 0,
             'training.num_train_steps': NUM_STEPS + 2}),
     ['diverged at step 13', 'last good checkpoint: step 12',
      'Gave up after 0 rollback']),
    ('disk_full', _disk_fills_up,
     ['step 14', 'disk is full', 'earlier checkpoints are intact']),
    ('disk_full_in_background_write', _disk_fills_up_in_the_background_write,
     ['step 14', 'disk is full', 'earlier checkpoints are intact']),
]


@pytest.mark.parametrize('case,change,words', BAD_INPUTS,
                         ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_one_error_line_and_keeps_the_checkpoints(
    case, change, words, tmp_path, clean_run, monkeypatch):
  del case  # In the test id.
  workdir = _copy(clean_run[0], tmp_path)
  config = _cheap_config()
  run_dir = change(config, workdir, monkeypatch)
  before = _snapshot(workdir)
  with pytest.raises(SystemExit) as exit_info:
    main.run('train', config, run_dir)
  line = exit_info.value.code
  print(line)  # The measured outcome, for the README table (pytest -s).
  # A string code: Python prints it to stderr and exits with status 1.
  assert isinstance(line, str) and line.startswith('error: '), line
  assert '\n' not in line
  for word in words:
    assert word in line, (word, line)
  after = _snapshot(workdir)
  if config.training.num_train_steps != NUM_STEPS:
    # A longer run may resume a shorter one: it stored its own step count
    # before failing. config.json is not a checkpoint.
    before.pop('config.json'), after.pop('config.json')
  assert after == before


def test_unknown_config_field_on_the_command_line_is_one_line(tmp_path):
  workdir = str(tmp_path / 'run')
  cmd = _main_command(workdir) + ['--config.training.bogus_field=3']
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert out.returncode == 1
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith('error: --config.training.bogus_field:'), last
  assert 'not a config field' in last
  assert 'Traceback' not in out.stderr
  assert not os.path.exists(workdir)


def test_allow_config_change_resumes_and_keeps_the_old_config(tmp_path,
                                                              clean_run):
  workdir = _copy(clean_run[0], tmp_path)
  with open(os.path.join(workdir, 'config.json')) as f:
    old = f.read()
  config = _cheap_config()
  config.training.seed = 7
  with pytest.raises(checkpointing.CheckpointError,
                     match=r'training\.seed: 1 -> 7'):
    train.train_and_evaluate(config, workdir)
  config.recovery.allow_config_change = True
  state = train.train_and_evaluate(config, workdir)  # Nothing left to train.
  assert int(state.step) == NUM_STEPS
  with open(os.path.join(workdir, 'config.before_change.json')) as f:
    assert f.read() == old
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['training']['seed'] == 7


@pytest.mark.parametrize('mode', ['eval', 'sample'])
def test_eval_and_sample_check_the_config_like_training(mode, tmp_path,
                                                        clean_run):
  workdir = _copy(clean_run[0], tmp_path)
  before = _snapshot(workdir)
  config = _cheap_config()
  config.model.nz = 0
  with pytest.raises(SystemExit) as exit_info:
    main.run(mode, config, workdir)
  assert exit_info.value.code == 'error: config.model.nz=0 must be an integer >= 1'
  assert _snapshot(workdir) == before


def _run_script(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
  # As a user starts it: without the suite's JAX and TensorFlow settings.
  env = {k: v for k, v in os.environ.items()
         if k not in ('JAX_PLATFORMS', 'TF_CPP_MIN_LOG_LEVEL')}
  return subprocess.run([sys.executable, *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize('config_file,words', [
    ('configs/no_such_config.py', ['no such file']),
    ('{tmp}/broken.py', ['cannot be loaded', 'SyntaxError']),
    ('{tmp}/no_get_config.py', ['cannot be loaded', 'get_config']),
])
def test_a_missing_or_broken_config_file_is_one_line(config_file, words,
                                                     tmp_path):
  (tmp_path / 'broken.py').write_text('def get_config(:\n')
  (tmp_path / 'no_get_config.py').write_text('x = 1\n')
  path = config_file.format(tmp=tmp_path)
  proc = _run_script(['main.py', f'--config={path}',
                      f'--workdir={tmp_path / "run"}'])
  assert proc.returncode == 1
  assert 'Traceback' not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith(f'error: --config={path}'), last
  for word in words:
    assert word in last, (word, last)
  assert not (tmp_path / 'run').exists()


def test_the_benchmarks_check_the_config_like_training():
  proc = _run_script(['benchmarks/train_step.py', '--config=configs/test.py',
                      '--config.optim.lr_e=nan'])
  assert proc.returncode == 1
  assert 'Traceback' not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1] == (
      'error: config.optim.lr_e=nan must be a finite number > 0')


def test_the_readme_command_starts_clean(tmp_path):
  """No traceback, no ERROR line, one line naming the devices.

  Run as a user would, without the test suite's JAX_PLATFORMS=cpu, so that
  on a machine without a GPU the CUDA build's fallback is exercised.
  """
  proc = _run_script(
      ['main.py', '--config=configs/digits.py', f'--workdir={tmp_path}',
       '--config.training.num_train_steps=2', '--config.model.ngf=8',
       '--config.model.nef=8', '--config.model.nif=8',
       '--config.langevin_x.steps=2', '--config.langevin_z.steps=2'])
  output = proc.stdout + proc.stderr
  assert proc.returncode == 0, output[-3000:]
  assert 'Traceback' not in output
  assert 'ERROR' not in output and not any(
      line.startswith('E') and line[1:5].isdigit()
      for line in output.splitlines()), output
  assert 'oneDNN' not in output
  devices = [line for line in output.splitlines() if 'device(s)' in line]
  assert len(devices) == 1, output
