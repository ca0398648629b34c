"""Ctrl-C is a request to stop, not a crash.

In training, a first Ctrl-C (SIGINT) finishes the step in progress, saves
it, and ends with one line and exit status 130; a second one during that
save stops at once, and the unfinished save is never loaded. Everywhere
else (`--mode=eval`, `--mode=sample`, the benchmarks, the import script)
Ctrl-C ends the command with one line and status 130. No traceback in any
case. (Two processes: tests/distributed_test.py.)
"""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from configs import test as test_config
from dual_mcmc_jax import checkpointing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, JAX_PLATFORMS='cpu')


def _start(args: list[str]) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, *args], cwd=REPO, env=ENV,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


def _wait_for(predicate, proc: subprocess.Popen, what: str,
              timeout: float = 300) -> None:
  deadline = time.time() + timeout
  while not predicate():
    assert proc.poll() is None, f'the process ended before {what}'
    assert time.time() < deadline, f'no {what} in {timeout} s'
    time.sleep(0.1)


def _finished_steps(workdir: str) -> list[int]:
  directory = os.path.join(workdir, 'checkpoints')
  return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


def _train_args(workdir: str, steps: int) -> list[str]:
  return ['main.py', '--config=configs/test.py', f'--workdir={workdir}',
          '--config.model.arch=simple',
          f'--config.training.num_train_steps={steps}',
          '--config.training.checkpoint_every_steps=2',
          '--config.training.image_every_steps=100000']


def _config(steps: int):
  config = test_config.get_config()
  config.model.arch = 'simple'
  config.training.num_train_steps = steps
  config.training.checkpoint_every_steps = 2
  config.training.image_every_steps = 100000
  return config


def test_ctrl_c_saves_the_step_it_is_on_and_exits_130(tmp_path):
  workdir = str(tmp_path / 'run')
  proc = _start(_train_args(workdir, 100_000))
  _wait_for(lambda: os.path.isdir(os.path.join(workdir, 'checkpoints', '2')),
            proc, 'first checkpoint')
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 130, err[-3000:]
  assert 'Traceback' not in err
  last = err.strip().splitlines()[-1]
  assert last.startswith('Interrupted (Ctrl-C): saved a checkpoint at step ')
  step = int(last.split('at step ')[1].split()[0])
  assert _finished_steps(workdir)[-1] == step >= 2
  # The same command resumes there.
  _, state = checkpointing.load_state(_config(step + 1), workdir)
  assert int(state.step) == step
  out = subprocess.run([sys.executable, *_train_args(workdir, step + 1)],
                       cwd=REPO, env=ENV, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert f'Resuming from checkpoint at step {step}' in out.stderr


# Trains with every save after the first one slowed down in its commit (the
# rename of the finished temporary directory), so that a second Ctrl-C
# lands during a save.
_SLOW_SAVES = textwrap.dedent('''
    import asyncio, sys
    import main
    from orbax.checkpoint.path import atomicity
    from tests import interrupt_test
    real, calls = atomicity.AtomicRenameTemporaryPath.finalize, []
    async def slow(self, *args, **kwargs):
      calls.append(1)
      if len(calls) > 1:
        print('slow save', flush=True)
        await asyncio.sleep(60)
      return await real(self, *args, **kwargs)
    atomicity.AtomicRenameTemporaryPath.finalize = slow
    main.run('train', interrupt_test._config(100_000), sys.argv[1])
''')


def test_a_second_ctrl_c_during_the_save_keeps_the_previous_checkpoint(
    tmp_path):
  workdir = str(tmp_path / 'run')
  proc = _start(['-c', _SLOW_SAVES, workdir])
  _wait_for(lambda: os.path.isdir(os.path.join(workdir, 'checkpoints', '2')),
            proc, 'first checkpoint')
  proc.send_signal(signal.SIGINT)  # Finish the step, save it (slowly).
  time.sleep(3)
  assert proc.poll() is None
  proc.send_signal(signal.SIGINT)  # And again, during that save.
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 130, err[-3000:]
  assert 'Traceback' not in err
  last = err.strip().splitlines()[-1]
  assert last.startswith('error: interrupted again'), last
  # Only step 2 finished; the unfinished save is a temporary directory that
  # no restore lists, and the run resumes from step 2.
  assert _finished_steps(workdir) == [2]
  _, state = checkpointing.load_state(_config(4), workdir)
  assert int(state.step) == 2


@pytest.mark.parametrize('args', [
    ['main.py', '--mode=eval', '--config=configs/test.py'],
    ['main.py', '--mode=sample', '--config=configs/test.py',
     '--config.eval.num_samples_to_write=100000'],
    ['benchmarks/train_step.py', '--config=configs/test.py', '--iters=1000'],
    ['scripts/import_torch.py', '--config=configs/test.py',
     '--torch_checkpoint=no_such.pth'],
], ids=['eval', 'sample', 'benchmark', 'import_script'])
def test_ctrl_c_outside_training_is_one_line(args, tmp_path):
  """Ctrl-C once the command has started its work (or is still importing)."""
  workdir = str(tmp_path / 'run')
  if args[0] == 'main.py':
    subprocess.run([sys.executable, *_train_args(workdir, 2)], cwd=REPO,
                   env=ENV, check=True, capture_output=True, timeout=300)
  if not args[0].startswith('benchmarks/'):
    args = [*args, f'--workdir={workdir}']
  proc = _start(args)
  if args[0] == 'scripts/import_torch.py':
    time.sleep(1.0)  # Still importing: the command's first second.
  else:
    # Once it has logged its devices: past the imports, into its work.
    lines = []
    _wait_for(lambda: lines.append(proc.stderr.readline()) or
              'device(s)' in lines[-1], proc, 'device line')
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 130, err[-3000:]
  assert 'Traceback' not in err
  assert err.strip().splitlines()[-1] == 'Interrupted (Ctrl-C).'
