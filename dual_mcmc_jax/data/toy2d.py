"""The 2-D toy densities as a dataset: a fixed set of points per split.

A thin source over the density sampler `dual_mcmc_jax/toy2d.py`. Training
draws `config.data.toy2d_num_points` points of the density
`config.data.toy2d_name` once per run, from a random stream keyed by
(config.training.seed, a word of its own, the split), so the set is the same
on every host and after every restart, and the pipeline then shuffles and
batches it like any image set; an "epoch" is one pass over those points.
Split 'test' is as many fresh points from an independent stream.
"""

import numpy as np

from dual_mcmc_jax import toy2d as toy2d_lib
from dual_mcmc_jax.data import common

# The SeedSequence word of the point streams: it keeps them independent of
# the pipeline's shuffling (word 0) drawn from the same seed.
_TOY2D_STREAM = 1
_SPLITS = ('train', 'test')


def _num_points(config: common.Config) -> int:
  toy2d_lib.check_name(config.data.toy2d_name)
  num_points = int(config.data.toy2d_num_points)
  if num_points <= 0:
    raise ValueError(
        f'config.data.toy2d_num_points must be positive; got {num_points}.'
    )
  return num_points


def _info(config: common.Config) -> common.DatasetInfo:
  return common.DatasetInfo(num_train_examples=_num_points(config), shape=(2,))


def _load(config: common.Config, split: str) -> np.ndarray:
  """A fixed set of toy2d points: float32 [toy2d_num_points, 2]."""
  common.check_split('toy2d', split, _SPLITS)
  num_points = _num_points(config)
  rng = np.random.default_rng(
      np.random.SeedSequence(
          [common.check_seed(config), _TOY2D_STREAM, _SPLITS.index(split)]
      )
  )
  return toy2d_lib.sample(config.data.toy2d_name, num_points, rng)


SOURCE = common.Source(load=_load, info=_info)
