"""The error table: bad inputs and faults, each of which must end in one line.

Each case of `BAD_INPUTS` changes the config or the workdir of a trained
run (12 steps of the test config on the plain nets, checkpoints 8, 10 and
12) and names the words its one `error:` line must hold and the modes
(`train`, `eval`, `sample`) it applies to. `WARNING_CASES` damage the
workdir in ways a run gets past with a warning (one file of the newest
checkpoint: it falls back to the previous one; a deleted `config.json`) and
finishes.

Run as a script, it runs cases in one mode, in one process, as `main.py`
does, each on a fresh copy of a trained workdir (a process per case would
cost the suite minutes), and prints to stderr

  === <case>
  <whatever the run printed>
  exit: <the SystemExit code as a Python literal, or 0>
  disk: <'unchanged', or the files that changed>

so that `error_paths_test.py` can check every case and, over the whole
output, that nothing printed a traceback (threads, event loops and the
interpreter's exit included):

  python tests/error_table.py MODE CLEAN_WORKDIR SCRATCH_DIR CASE...
"""

import builtins
import errno
import gc
import glob
import hashlib
import os
import shutil
import sys

if __name__ == '__main__':
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
      __file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.path import atomicity
import pytest

from configs import test as test_config
from dual_mcmc_jax import recovery
from dual_mcmc_jax import runtime
from dual_mcmc_jax import train
import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 12
# The fields the in-process runs and the `main.py` subprocesses share, so
# that both train the same run.
TRAINING = dict(checkpoint_every_steps=2, image_every_steps=1000,
                log_every_steps=2)


def cheap_config(num_steps: int = NUM_STEPS):
  config = test_config.get_config()
  config.model.arch = 'simple'
  config.training.num_train_steps = num_steps
  for k, v in TRAINING.items():
    config.training[k] = v
  return config


def main_command(workdir: str, num_steps: int = NUM_STEPS) -> list[str]:
  return ([sys.executable, 'main.py', '--config=configs/test.py',
           f'--workdir={workdir}', '--config.model.arch=simple',
           f'--config.training.num_train_steps={num_steps}'] +
          [f'--config.training.{k}={v}' for k, v in TRAINING.items()])


def saved_steps(workdir) -> list[int]:
  return sorted(int(os.path.basename(p)) for p in
                glob.glob(os.path.join(str(workdir), 'checkpoints', '*'))
                if os.path.basename(p).isdigit())


def train_clean_run(tmp_path_factory) -> tuple[str, object]:
  """An uninterrupted run: (workdir with checkpoints 8, 10, 12; its state).

  The module-scoped `clean_run` fixture of the tests that damage copies.
  """
  workdir = str(tmp_path_factory.mktemp('clean') / 'run')
  state = train.train_and_evaluate(cheap_config(), workdir)
  assert saved_steps(workdir) == [8, 10, 12]
  return workdir, jax.device_get(state)


def tmp_checkpoint_dirs(workdir) -> list[str]:
  return [os.path.basename(p) for p in
          glob.glob(os.path.join(str(workdir), 'checkpoints', '*'))
          if not os.path.basename(p).isdigit()]


def snapshot(workdir) -> dict[str, str]:
  """sha256 of every file of the finished checkpoints and of the JSONs.

  Unfinished (orbax temp) checkpoint directories are left out: a failed save
  may leave one, and no run ever loads it.
  """
  out = {}
  paths = [p for step in saved_steps(workdir) for p in glob.glob(
      os.path.join(str(workdir), 'checkpoints', str(step), '**'),
      recursive=True)]
  paths += glob.glob(os.path.join(str(workdir), '*.json'))
  for p in paths:
    if os.path.isfile(p):
      with open(p, 'rb') as f:
        out[os.path.relpath(p, workdir)] = hashlib.sha256(f.read()).hexdigest()
  return out


def assert_same_state(a, b):
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def truncate_largest_array_file(workdir, step: int,
                                size: int | None = None) -> str:
  """Cuts the largest array-data file of `step` to `size` (default half)."""
  files = glob.glob(os.path.join(str(workdir), 'checkpoints', str(step),
                                 'default', 'ocdbt.process_0', 'd', '*'))
  big = max(files, key=os.path.getsize)
  with open(big, 'r+b') as f:
    f.truncate(os.path.getsize(big) // 2 if size is None else size)
  return big



# --- The error table ------------------------------------------------------


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
  oldest, *newer = saved_steps(workdir)
  for step in newer:
    truncate_largest_array_file(workdir, step)
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


def _write_error_during_save(config, workdir, monkeypatch):
  """An I/O error in the middle of the save of step 14.

  The arrays are written into orbax's temporary directory; then the device
  fails (EIO) before the metadata and the commit.
  """
  config.training.num_train_steps = NUM_STEPS + 2
  real = ocp.type_handlers.ArrayHandler.serialize

  async def failing(self, values, infos, args=None):
    for written in await real(self, values, infos, args):
      written.result()
    raise OSError(errno.EIO, 'Input/output error')

  monkeypatch.setattr(ocp.type_handlers.ArrayHandler, 'serialize', failing)
  return workdir


def _other_nets_allowed(config, workdir, monkeypatch):
  """A changed width let through the config guard: the arrays disagree."""
  del monkeypatch
  config.model.nef = 32
  config.recovery.allow_config_change = True
  return workdir


def _no_checkpoints(config, workdir, monkeypatch):
  """A workdir that was never trained (eval and sample only)."""
  del config, monkeypatch
  return os.path.join(workdir, '..', 'never_trained')


def _truncate_config_json(config, workdir, monkeypatch):
  del config, monkeypatch
  with open(os.path.join(workdir, 'config.json'), 'r+') as f:
    f.truncate(40)
  return workdir


ALL_MODES = ('train', 'eval', 'sample')
TRAIN = ('train',)

BAD_INPUTS = [
    # (case, change, words the one error line must contain, modes)
    ('unknown_dataset', _set(**{'data.dataset': 'no_such_set'}),
     ['config.data.dataset', 'no_such_set'],
     ALL_MODES),
    ('resnet_image_size_20', _set(**{'model.arch': 'resnet',
                                     'data.image_size': 20}),
     ['config.data.image_size=20', "config.model.arch='resnet'",
      'power of two >= 8'],
     ALL_MODES),
    ('simple_image_size_4', _set(**{'data.image_size': 4}),
     ['config.data.image_size=4', 'power of two >= 8'],
     ALL_MODES),
    ('zero_x_steps', _set(**{'langevin_x.steps': 0}),
     ['config.langevin_x.steps=0', 'an integer >= 1'],
     ALL_MODES),
    ('negative_z_steps', _set(**{'langevin_z.steps': -1}),
     ['config.langevin_z.steps=-1'],
     ALL_MODES),
    ('zero_x_step_size', _set(**{'langevin_x.step_size': 0.0}),
     ['config.langevin_x.step_size'],
     ALL_MODES),
    ('negative_z_step_size', _set(**{'langevin_z.step_size': -0.1}),
     ['config.langevin_z.step_size'],
     ALL_MODES),
    ('zero_checkpoint_interval', _set(**{'training.checkpoint_every_steps': 0}),
     ['config.training.checkpoint_every_steps'],
     ALL_MODES),
    ('zero_lr_factor', _set(**{'recovery.lr_factor': 0.0}),
     ['config.recovery.lr_factor'],
     ALL_MODES),
    ('zero_latent_size', _set(**{'model.nz': 0}),
     ['config.model.nz=0', 'an integer >= 1'],
     ALL_MODES),
    ('zero_width', _set(**{'model.nef': 0}), ['config.model.nef=0'],
     ALL_MODES),
    ('nan_learning_rate', _set(**{'optim.lr_e': float('nan')}),
     ['config.optim.lr_e=nan', 'a finite number > 0'],
     ALL_MODES),
    ('unknown_lr_schedule', _set(**{'optim.lr_schedule': 'linear'}),
     ["config.optim.lr_schedule='linear'", 'cosine'],
     ALL_MODES),
    ('infinite_sigma', _set(**{'loss.sigma': float('inf')}),
     ['config.loss.sigma=inf', 'finite'],
     ALL_MODES),
    ('negative_factor', _set(**{'loss.s_factor': -1.0}),
     ['config.loss.s_factor=-1.0', '>= 0'],
     ALL_MODES),
    ('negative_num_train_steps', _set(**{'training.num_train_steps': -5}),
     ['config.training.num_train_steps=-5', 'an integer >= 0'],
     ALL_MODES),
    ('unknown_langevin_rule', _set(**{'langevin_x.rule': 'euler'}),
     ["config.langevin_x.rule='euler'", 'reference', 'paper'],
     ALL_MODES),
    ('noise_box_upside_down', _set(**{'training.x_noise_low': 1.0,
                                      'training.x_noise_high': -1.0}),
     ['config.training.x_noise_low=1.0', 'must be <'],
     ALL_MODES),
    ('batch_not_divisible_by_devices', _more_devices,
     ['config.training.batch_size=8', 'multiple of the number of devices',
      '(3)'],
     ALL_MODES),
    ('checkpoints_of_another_config', _set(**{'model.nz': 16}),
     ['different config', 'model.nz: 8 -> 16',
      '--config.recovery.allow_config_change=True'],
     ALL_MODES),
    ('every_checkpoint_damaged', _damage_every_checkpoint,
     ['no checkpoint', 'can be restored', 'step 12', 'step 8'],
     ALL_MODES),
    ('rollback_record_damaged', _damage_the_rollback_record,
     ['recovery.json cannot be read', 'remove it to resume without them'],
     TRAIN),
    ('dataset_missing_offline', _tfds_set_not_prepared,
     ['svhn', 'not prepared', '--config.data.download=True'],
     TRAIN),
    ('npz_with_a_nan', _npz_with_a_nan,
     ['images.npz', "array 'images'", 'NaN at index (3, 2, 1, 0)'],
     TRAIN),
    ('image_folder_of_one_image', _image_folder_of_one_image,
     ['config.training.batch_size=8', 'larger than the 1 training examples'],
     TRAIN),
    ('unwritable_workdir', _workdir_under_a_file, ['not writable'],
     TRAIN),
    ('read_only_workdir', _read_only_workdir,
     ['not writable', 'Read-only file system'],
     TRAIN),
    ('energy_diff_explodes_no_rollback_left',
     _set(**{'loss.energy_diff_limit': 1e-12, 'recovery.max_retries': 0,
             'training.num_train_steps': NUM_STEPS + 2}),
     ['diverged at step 13', 'last good checkpoint: step 12',
      'Gave up after 0 rollback'],
     TRAIN),
    ('disk_full', _disk_fills_up,
     ['step 14', 'disk is full', 'earlier checkpoints are intact'],
     TRAIN),
    ('disk_full_in_background_write', _disk_fills_up_in_the_background_write,
     ['step 14', 'disk is full', 'earlier checkpoints are intact'],
     TRAIN),
    ('write_error_during_save', _write_error_during_save,
     ['step 14', 'Input/output error', 'earlier checkpoints are intact'],
     TRAIN),
    ('checkpoints_of_other_nets_change_allowed', _other_nets_allowed,
     ['hold other nets than this config makes', 'step 12',
      'use the config they were trained with'],
     ALL_MODES),
    ('config_json_truncated', _truncate_config_json,
     ['config.json cannot be read', 'restore it, delete it',
      'their arrays are checked'],
     ALL_MODES),
    ('workdir_never_trained', _no_checkpoints,
     ['no checkpoint in', 'never_trained', 'train first'],
     ('eval', 'sample')),
]

def _damage_newest(name: str):
  """Damages the file of the newest checkpoint (step 12) that `name` names."""
  def damage(workdir: str) -> None:
    step = saved_steps(workdir)[-1]
    root = os.path.join(workdir, 'checkpoints', str(step), 'default')
    if name == 'array data':
      # Cut short enough that many reads fail at once.
      truncate_largest_array_file(workdir, step, size=1000)
    elif name == 'metadata':
      os.remove(os.path.join(root, '_METADATA'))
    else:
      data = glob.glob(os.path.join(root, 'ocdbt.process_0', 'd', '*'))
      os.remove(max(data, key=os.path.getsize))
  return damage


def _delete_config_json(workdir: str) -> None:
  os.remove(os.path.join(workdir, 'config.json'))


_FALLBACK = ['Checkpoint at step 12', 'cannot be restored',
             'Using step 10; the unreadable step 12']
# Damage that every mode gets past with a warning, and finishes:
# (case, damage(workdir), words the warnings must hold, modes).
WARNING_CASES = [
    ('newest_array_data_truncated', _damage_newest('array data'), _FALLBACK,
     ALL_MODES),
    ('newest_metadata_deleted', _damage_newest('metadata'), _FALLBACK,
     ('train', 'sample')),
    ('newest_array_file_missing', _damage_newest('array file'), _FALLBACK,
     ('train', 'sample')),
    ('config_json_deleted', _delete_config_json,
     ['holds checkpoints but no config.json',
      'their arrays are checked against its nets'], ('train', 'sample')),
]


# --- The driver ------------------------------------------------------------


def run_case(mode: str, case: str, clean: str, scratch: str) -> None:
  """Runs one case on a copy of `clean` and prints its outcome."""
  workdir = os.path.join(scratch, case, 'run')
  shutil.copytree(clean, workdir)
  config = cheap_config()
  changes = {c[0]: c[1] for c in BAD_INPUTS}
  damages = {c[0]: c[1] for c in WARNING_CASES}
  code = 0
  with pytest.MonkeyPatch.context() as patch:
    if case in changes:
      run_dir = changes[case](config, workdir, patch)
    else:
      damages[case](workdir)
      run_dir = workdir
    before = snapshot(workdir)
    try:
      main.run(mode, config, run_dir)
    except SystemExit as e:
      code = e.code
  gc.collect()  # What abandoned work reports comes out here.
  after = snapshot(workdir)
  if config.training.num_train_steps != NUM_STEPS:
    # A longer run may resume a shorter one: it stored its own step count
    # before failing. config.json is not a checkpoint.
    before.pop('config.json'), after.pop('config.json')
  changed = sorted(k for k in before.keys() | after.keys()
                   if before.get(k) != after.get(k))
  sys.stderr.flush()
  print(f'exit: {code!r}', file=sys.stderr)
  print(f'disk: {changed or "unchanged"}', file=sys.stderr, flush=True)


def _drive(mode: str, clean: str, scratch: str, cases: list[str]) -> None:
  # As main.main sets up a run.
  logging.use_absl_handler()
  logging.get_absl_handler().addFilter(main._QuietCheckpointLogs())  # pylint: disable=protected-access
  runtime.configure()
  for case in cases:
    print(f'=== {case}', file=sys.stderr, flush=True)
    run_case(mode, case, clean, scratch)


if __name__ == '__main__':
  _drive(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:])
