"""Long runs: crashes, divergence and bad input lose no work.

Covers: a run killed with SIGKILL several times (once while a checkpoint is
being written, the others at random moments) and then finished equals an
uninterrupted run bit for bit; a damaged latest checkpoint is skipped for the
previous one; an injected NaN is rolled back and recovered from, and a
restart keeps the remedy; the give-up path once the rollbacks are used up;
and bad command lines and config files, each one `error:` line. The table of
bad inputs and faults, run in every mode it applies to, is
`error_paths_test.py` (its cases are in `error_table.py`).

All runs use the test config on the plain nets (`error_table.cheap_config`), 12 steps
with a checkpoint every 2, sharing conftest's persistent compilation cache
with the subprocesses.
"""

import glob
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
import pytest

from dual_mcmc_jax import checkpointing
from dual_mcmc_jax import data
from dual_mcmc_jax import recovery
from dual_mcmc_jax import train
from dual_mcmc_jax import train_state as ts
from tests import error_table


@pytest.fixture(scope='module')
def clean_run(tmp_path_factory):
  return error_table.train_clean_run(tmp_path_factory)


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
  quiet = dict(cwd=error_table.REPO, env=env, stdout=subprocess.DEVNULL,
               stderr=subprocess.DEVNULL)

  # 1. Killed while the checkpoint of a random step is being written.
  blocked = rng.choice([2, 4])
  marker = str(tmp_path / 'committing')
  proc = subprocess.Popen(
      [sys.executable, '-c', _BLOCK_COMMIT, str(blocked), marker] +
      error_table.main_command(workdir)[2:], **quiet)
  assert _wait_for(lambda: os.path.exists(marker), proc), (
      f'no save of step {blocked}')
  _kill(proc)
  assert error_table.saved_steps(workdir) == list(range(2, blocked, 2))
  assert error_table.tmp_checkpoint_dirs(workdir), 'the killed save left no temp dir'

  # 2, 3. Killed at a random moment after some progress. Each kill comes
  # within a few steps of a new checkpoint, so that two of them end before
  # step 10, whose run still has the final sample grid and save ahead.
  for _ in range(2):
    before = max(error_table.saved_steps(workdir), default=0)
    proc = subprocess.Popen(error_table.main_command(workdir), **quiet)
    _wait_for(lambda: max(error_table.saved_steps(workdir), default=0) > before, proc)
    time.sleep(rng.uniform(0, 0.1))
    assert proc.poll() is None, 'the run ended before it could be killed'
    _kill(proc)
    assert max(error_table.saved_steps(workdir)) < error_table.NUM_STEPS

  # 4. Finished by the same command.
  out = subprocess.run(error_table.main_command(workdir), cwd=error_table.REPO, env=env,
                       capture_output=True, text=True, timeout=400)
  assert out.returncode == 0, out.stderr[-2000:]
  assert 'Resuming from checkpoint at step' in out.stderr
  assert error_table.saved_steps(workdir)[-1] == error_table.NUM_STEPS
  _, resumed = checkpointing.load_state(error_table.cheap_config(), workdir)
  assert int(resumed.step) == error_table.NUM_STEPS
  error_table.assert_same_state(clean_state, resumed)


def test_damaged_latest_checkpoint_is_skipped_for_the_previous_one(
    tmp_path, clean_run, caplog):
  clean_workdir, clean_state = clean_run
  workdir = _copy(clean_workdir, tmp_path)
  damaged = error_table.truncate_largest_array_file(workdir, error_table.NUM_STEPS)
  with open(damaged, 'rb') as f:
    damaged_bytes = f.read()
  with caplog.at_level(logging.WARNING):
    state = train.train_and_evaluate(error_table.cheap_config(), workdir)
  assert f'Checkpoint at step {error_table.NUM_STEPS}' in caplog.text
  assert 'cannot be restored' in caplog.text
  # Resumed from step 10 and replayed 11 and 12 to the same parameters.
  error_table.assert_same_state(clean_state, jax.device_get(state))
  # The damaged checkpoint was moved aside for inspection, byte for byte,
  # and the replayed step saved anew in its place.
  moved = damaged.replace(os.path.join('checkpoints', '12'),
                          os.path.join(checkpointing.DAMAGED_DIR, '12'))
  with open(moved, 'rb') as f:
    assert f.read() == damaged_bytes
  assert error_table.saved_steps(workdir) == [8, 10, 12]
  _, again = checkpointing.load_state(error_table.cheap_config(), workdir)
  error_table.assert_same_state(clean_state, jax.device_get(again))


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
  config = error_table.cheap_config(6)
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
  error_table.assert_same_state(straight, resumed)


def test_divergence_stops_with_a_clear_message_when_no_rollback_is_left(
    tmp_path, monkeypatch):
  config = error_table.cheap_config(6)
  config.recovery.max_retries = 1
  _poison_batches(monkeypatch, 3, num_iterators=None)  # NaN every time
  with pytest.raises(train.TrainingDivergedError,
                     match=r'diverged at step 3.*last good checkpoint: step 2'
                     r'.*Gave up after 1 rollback'):
    train.train_and_evaluate(config, str(tmp_path))
  # The unhealthy states were never saved.
  assert error_table.saved_steps(tmp_path) == [2]


def test_divergence_before_any_checkpoint_restarts_from_the_initial_state(
    tmp_path, monkeypatch):
  config = error_table.cheap_config(2)
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
  old = json.loads(error_table.cheap_config().to_json_best_effort())
  config = error_table.cheap_config()
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


def test_unknown_config_field_on_the_command_line_is_one_line(tmp_path):
  workdir = str(tmp_path / 'run')
  cmd = error_table.main_command(workdir) + ['--config.training.bogus_field=3']
  out = subprocess.run(cmd, cwd=error_table.REPO, capture_output=True, text=True,
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
  config = error_table.cheap_config()
  config.training.seed = 7
  with pytest.raises(checkpointing.CheckpointError,
                     match=r'training\.seed: 1 -> 7'):
    train.train_and_evaluate(config, workdir)
  config.recovery.allow_config_change = True
  state = train.train_and_evaluate(config, workdir)  # Nothing left to train.
  assert int(state.step) == error_table.NUM_STEPS
  with open(os.path.join(workdir, 'config.before_change.json')) as f:
    assert f.read() == old
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['training']['seed'] == 7


def _run_script(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
  # As a user starts it: without the suite's JAX and TensorFlow settings.
  env = {k: v for k, v in os.environ.items()
         if k not in ('JAX_PLATFORMS', 'TF_CPP_MIN_LOG_LEVEL')}
  return subprocess.run([sys.executable, *args], cwd=error_table.REPO, env=env,
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
