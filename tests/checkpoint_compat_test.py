"""A workdir written before the package was restructured still works.

`tests/fixtures/workdir_v1` was trained for 2 steps by commit 3f43d9d (the
last one with `networks.py` and `input_pipeline.py` as single modules) on
configs/test.py at widths 8 / 8 / 4; `state_sums.json` holds the sum of every
array of its train state as that code restored it. The restructured package
must restore the same numbers, and resume training from it.
"""

import json
import os
import shutil

import jax
import ml_collections
import numpy as np

from dual_mcmc_jax import checkpointing
from dual_mcmc_jax import train

FIXTURE = os.path.join(os.path.dirname(__file__), 'fixtures', 'workdir_v1')


def _config() -> ml_collections.ConfigDict:
  with open(os.path.join(FIXTURE, 'config.json')) as f:
    return ml_collections.ConfigDict(json.load(f))


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
  # Fields added since: their defaults.
  config.training.health_every_steps = 20
  config.training.num_train_steps = 3
  state = train.train_and_evaluate(config, workdir)
  assert int(state.step) == 3
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', '3'))
