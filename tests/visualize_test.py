"""Tests for dual_mcmc_jax/visualize.py."""

import matplotlib
import numpy as np

from dual_mcmc_jax import visualize


def test_image_grid_tiles_and_scales():
  images = np.zeros((5, 4, 4, 1), np.float32)
  images[1] = 1.0
  grid = visualize.image_grid(images, ncols=3, pad=1, min_size=8)
  # Two rows of three 8x8 tiles (enlarged x2) with 1-pixel white padding.
  assert grid.shape == (2 * 9 + 1, 3 * 9 + 1, 1) and grid.dtype == np.uint8
  assert grid[1:9, 1:9].max() == 128  # 0 in [-1, 1] is mid-grey
  assert grid[1:9, 10:18].min() == 255


def test_scatter_image_leaves_the_backend_alone():
  # The training loop draws 2-D scatter plots; in a notebook that must not
  # switch off the inline backend for the user's own plots.
  before = matplotlib.get_backend()
  matplotlib.use('svg')
  try:
    points = np.random.default_rng(0).normal(size=(100, 2))
    image = visualize.scatter_image({'a': points, 'b': points})
    assert matplotlib.get_backend() == 'svg'
  finally:
    matplotlib.use(before)
  assert image.dtype == np.uint8 and image.shape[2] == 3
  assert image.shape[1] > image.shape[0]  # two panels side by side
