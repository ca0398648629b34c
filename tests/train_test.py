"""End-to-end tests of the training loop on tiny configs.

Covers: the whole loop on the test config (checkpoints, TensorBoard events,
sample grids), resume equality (2 + 1 steps equals 3 steps), the CIFAR-10
config at reduced widths on tfds mock data, the 2-D toy config, and SIGTERM
saving a final checkpoint. Crashes, divergence and bad input are in
reliability_test.py.
"""

import glob
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import tensorflow_datasets as tfds

from configs import cifar10 as cifar10_config
from configs import test as test_config
from configs import toy2d as toy2d_config
from dual_mcmc_jax import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _leaves_equal(a, b) -> bool:
  return all(
      np.array_equal(np.asarray(x), np.asarray(y))
      for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _saved_steps(workdir) -> list[int]:
  """Finished checkpoint steps in a workdir (orbax temp dirs excluded)."""
  return sorted(int(os.path.basename(p))
                for p in glob.glob(os.path.join(str(workdir), 'checkpoints',
                                                '*'))
                if os.path.basename(p).isdigit())


def _main_command(workdir: str, num_steps: int, **training) -> list[str]:
  """`python main.py` on the test config with the cheap plain nets."""
  return ([sys.executable, 'main.py', '--config=configs/test.py',
           f'--workdir={workdir}',
           f'--config.training.num_train_steps={num_steps}',
           '--config.model.arch=simple'] +
          [f'--config.training.{k}={v}' for k, v in training.items()])


def test_loop_end_to_end_writes_checkpoints_events_and_grids(tmp_path):
  config = test_config.get_config()
  state = train.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == config.training.num_train_steps
  steps = _saved_steps(tmp_path)
  assert steps[-1] == 4 and 2 in steps
  assert glob.glob(str(tmp_path / 'events.out.tfevents.*'))
  grids = os.listdir(tmp_path / 'samples')
  for name in ('generator_samples', 'ebm_revised_samples',
               'reconstruction_before_z_revision',
               'reconstruction_after_z_revision'):
    assert any(g.startswith(name) for g in grids), (name, grids)
  assert (tmp_path / 'config.json').exists()


def _cheap_config():
  """The test config on the plain nets: the loop logic, compiled faster."""
  config = test_config.get_config()
  config.model.arch = 'simple'
  return config


def test_resume_gives_the_same_parameters_as_an_uninterrupted_run(tmp_path):
  config = _cheap_config()
  config.training.num_train_steps = 3
  straight = train.train_and_evaluate(config, str(tmp_path / 'a'))
  config.training.num_train_steps = 2
  train.train_and_evaluate(config, str(tmp_path / 'b'))
  config.training.num_train_steps = 3
  resumed = train.train_and_evaluate(config, str(tmp_path / 'b'))
  assert int(resumed.step) == 3
  assert _leaves_equal(straight, resumed)


def test_cifar10_config_two_steps_at_reduced_widths_on_mock_data(tmp_path):
  config = cifar10_config.get_config()
  config.model.ngf = 32
  config.model.nef = 32
  config.model.nif = 16
  config.training.batch_size = 8
  config.training.num_train_steps = 2
  config.training.num_image_samples = 8
  with tfds.testing.mock_data(num_examples=64):
    state = train.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 2
  assert os.path.isdir(tmp_path / 'checkpoints' / '2')


def test_toy2d_config_runs(tmp_path):
  config = toy2d_config.get_config()
  config.training.num_train_steps = 3
  config.training.batch_size = 32
  config.training.num_image_samples = 64
  config.data.toy2d_num_points = 256
  train.train_and_evaluate(config, str(tmp_path))
  assert glob.glob(str(tmp_path / 'samples' / 'samples_*.png'))


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
  workdir = str(tmp_path / 'run')
  cmd = _main_command(workdir, 100000, checkpoint_every_steps=100000,
                      image_every_steps=100000)
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 240
  while time.time() < deadline and not os.path.exists(
      os.path.join(workdir, 'config.json')):
    time.sleep(0.2)
  time.sleep(2)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-2000:]
  assert 'SIGTERM received' in err
  saved = _saved_steps(workdir)
  assert len(saved) == 1 and 1 <= saved[0] < 100000
