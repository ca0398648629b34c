"""A workdir written before the package was restructured still works.

`tests/fixtures/workdir_v1` was trained for 2 steps by commit 3f43d9d (the
last one with `networks.py` and `input_pipeline.py` as single modules) on
configs/test.py at widths 8 / 8 / 4; `state_sums.json` holds the sum of every
array of its train state as that code restored it. Its `config.json` lacks
the fields added since and names the convolution rule the old way; loaded
through `checkpointing.load_config` it is migrated (`migration.migrate_config`).
The restructured package must restore the same numbers, bit for bit, and
resume training from it.
"""

import json
import os
import shutil

import jax
import ml_collections
import numpy as np
import pytest

from configs import test as test_config
from dual_mcmc_jax import checkpointing
from dual_mcmc_jax import migration
from dual_mcmc_jax import settings as settings_lib
from dual_mcmc_jax import train

FIXTURE = os.path.join(os.path.dirname(__file__), 'fixtures', 'workdir_v1')


def _config() -> ml_collections.ConfigDict:
  return checkpointing.load_config(FIXTURE)


def test_the_old_config_is_migrated_to_the_current_fields():
  with open(os.path.join(FIXTURE, 'config.json')) as f:
    raw = json.load(f)
  assert 'conv_input_grad' in raw['model']
  assert 'health_every_steps' not in raw['training']
  config = _config()
  settings = settings_lib.from_config(config)
  # Renamed, and the added fields as the old version ran.
  assert 'conv_input_grad' not in config.model
  assert settings.training.cpu_plugin == 'auto'
  assert settings.training.health_every_steps == 1
  assert settings.loss.energy_l2 == 0.0
  assert settings.training.replay_buffer_size == 0
  assert settings.data.point_dim == 2
  # Every field a current config has, nothing more.
  current = migration.migrate_config(test_config.get_config().to_dict())
  assert {g: set(v) for g, v in config.to_dict().items()} == {
      g: set(v) for g, v in current.items()}
  # A current config is left as it is.
  assert migration.migrate_config(current) == current


def _sums(state) -> dict[str, float]:
  flat = jax.tree_util.tree_flatten_with_path(jax.device_get(state))[0]
  return {jax.tree_util.keystr(path): float(np.asarray(leaf, np.float64).sum())
          for path, leaf in flat}


def test_a_checkpoint_written_before_the_restructure_restores_exactly():
  _, state = checkpointing.load_state(_config(), FIXTURE)
  with open(os.path.join(FIXTURE, 'state_sums.json')) as f:
    expected = json.load(f)
  assert int(state.step) == 2
  assert _sums(state) == expected


def test_training_resumes_from_it(tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(FIXTURE, workdir)
  config = _config()
  config.training.num_train_steps = 3
  state = train.train_and_evaluate(config, workdir)
  assert int(state.step) == 3
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', '3'))


def test_a_field_this_version_does_not_have_is_one_line():
  config = test_config.get_config()
  config.model.conv_input_grad = 'xla'  # An old name (now cpu_plugin).
  with pytest.raises(ValueError, match=r'^config\.model\.conv_input_grad is '
                     r'not a field of this version'):
    settings_lib.from_config(config)
