"""Tests for the synthetic 2-D densities in dual_mcmc_jax/toy2d.py."""

import functools

import numpy as np
import pytest

from dual_mcmc_jax import toy2d

# Names whose log_density is defined (pinwheel raises).
_WITH_DENSITY = tuple(n for n in toy2d.NAMES if n != 'pinwheel')


def _midpoint_grid(num: int, half_width: float = 5.0):
  """Cell centres of a num x num grid over [-half_width, half_width]^2.

  Returns:
    [num * num, 2] points and the cell area.
  """
  step = 2.0 * half_width / num
  axis = -half_width + step * (np.arange(num) + 0.5)
  xs, ys = np.meshgrid(axis, axis, indexing='ij')
  return np.stack([xs.ravel(), ys.ravel()], axis=1), step**2


@functools.cache
def _grid_density(name: str, num: int) -> tuple[np.ndarray, float]:
  """Density on a num x num midpoint grid over [-5, 5]^2, and the cell area."""
  points, area = _midpoint_grid(num)
  return np.exp(toy2d.log_density(name, points)), area


@pytest.mark.parametrize('name', toy2d.NAMES)
def test_sample_shape_dtype_and_range(name):
  points = toy2d.sample(name, 1000, np.random.default_rng(0))
  assert points.shape == (1000, 2)
  assert points.dtype == np.float32
  assert np.all(np.isfinite(points))
  # The documented scale: roughly [-4, 4]^2.
  assert np.all(np.abs(points) < 5.0)


@pytest.mark.parametrize('name', toy2d.NAMES)
def test_sample_is_deterministic_in_the_generator(name):
  first = toy2d.sample(name, 100, np.random.default_rng(3))
  again = toy2d.sample(name, 100, np.random.default_rng(3))
  other = toy2d.sample(name, 100, np.random.default_rng(4))
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other)


@pytest.mark.parametrize(
    'name', ['8gaussians', '25gaussians', 'rings', 'checkerboard']
)
def test_analytic_log_density_integrates_to_one(name):
  density, area = _grid_density(name, 1000)
  total = np.sum(density) * area
  assert abs(total - 1.0) < 1e-2


@pytest.mark.parametrize('name', ['2spirals', '2moons'])
def test_curve_log_density_integrates_to_one(name):
  # A coarser grid keeps this fast; its step (0.05) is half the noise std,
  # which a midpoint rule integrates essentially exactly.
  density, area = _grid_density(name, 200)
  total = np.sum(density) * area
  assert abs(total - 1.0) < 1e-2


@pytest.mark.parametrize('name', _WITH_DENSITY)
def test_samples_follow_the_log_density(name):
  # Histogram of samples against the density's mass per bin, each bin's mass
  # integrated on a 10x10 sub-grid: a wrong scale or a sampler/density
  # mismatch shows up as a large total-variation distance.
  bins, sub = 20, 10
  density, area = _grid_density(name, bins * sub)
  density = density.reshape(bins, sub, bins, sub)
  mass = density.sum(axis=(1, 3)) * area  # [bins, bins]
  samples = toy2d.sample(name, 100_000, np.random.default_rng(1))
  counts, _, _ = np.histogram2d(
      samples[:, 0], samples[:, 1], bins=bins, range=[[-5, 5], [-5, 5]]
  )
  total_variation = 0.5 * np.abs(counts / len(samples) - mass).sum()
  assert total_variation < 0.03


def test_8gaussians_moments_match_the_mixture():
  centres = toy2d.modes('8gaussians')  # [8, 2]
  std = toy2d.EIGHT_GAUSSIANS_STD
  mean = centres.mean(axis=0)
  # Mixture covariance: within-mode plus between-mode parts.
  cov = std**2 * np.eye(2) + (centres - mean).T @ (centres - mean) / 8
  samples = toy2d.sample('8gaussians', 200_000, np.random.default_rng(2))
  np.testing.assert_allclose(samples.mean(axis=0), mean, atol=0.02)
  np.testing.assert_allclose(np.cov(samples.T), cov, atol=0.05)


def test_8gaussians_samples_lie_near_a_mode():
  centres = toy2d.modes('8gaussians')
  samples = toy2d.sample('8gaussians', 10_000, np.random.default_rng(5))
  distances = np.linalg.norm(samples[:, None, :] - centres, axis=-1)
  assert np.all(distances.min(axis=1) < 6.0 * toy2d.EIGHT_GAUSSIANS_STD)
  # Every mode is used, in roughly equal shares.
  counts = np.bincount(distances.argmin(axis=1), minlength=8)
  assert np.all(np.abs(counts / len(samples) - 1 / 8) < 0.02)


def test_modes():
  eight = toy2d.modes('8gaussians')
  assert eight.shape == (8, 2)
  np.testing.assert_allclose(
      np.linalg.norm(eight, axis=1), toy2d.EIGHT_GAUSSIANS_RADIUS
  )
  assert toy2d.modes('25gaussians').shape == (25, 2)
  for name in toy2d.NAMES:
    if name not in ('8gaussians', '25gaussians'):
      assert toy2d.modes(name) is None


def test_log_density_peaks_at_the_modes():
  centres = toy2d.modes('25gaussians')
  at_modes = toy2d.log_density('25gaussians', centres)
  between = toy2d.log_density('25gaussians', centres[:-1] + 0.75)
  assert np.all(at_modes > between.max())


def test_checkerboard_support():
  inside = np.array([[-3.0, -3.0], [-1.0, -1.0], [1.0, -3.0], [3.0, 3.0]])
  outside = np.array([[-1.0, -3.0], [1.0, 1.0 - 2.0], [4.5, 0.0]])
  np.testing.assert_allclose(
      toy2d.log_density('checkerboard', inside), np.log(1 / 32)
  )
  assert np.all(np.isneginf(toy2d.log_density('checkerboard', outside)))


def test_rings_density_is_finite_at_the_origin():
  assert np.isfinite(toy2d.log_density('rings', np.zeros((1, 2))))[0]


def test_pinwheel_has_no_log_density():
  with pytest.raises(NotImplementedError, match='pinwheel'):
    toy2d.log_density('pinwheel', np.zeros((3, 2)))


def test_log_density_checks_the_point_shape():
  with pytest.raises(ValueError, match=r'\[n, 2\]'):
    toy2d.log_density('8gaussians', np.zeros((3, 3)))


@pytest.mark.parametrize(
    'call',
    [
        lambda: toy2d.sample('9gaussians', 10, np.random.default_rng(0)),
        lambda: toy2d.log_density('9gaussians', np.zeros((1, 2))),
        lambda: toy2d.modes('9gaussians'),
    ],
)
def test_unknown_name_names_the_field(call):
  with pytest.raises(ValueError, match=r'config\.data\.toy2d_name') as info:
    call()
  message = str(info.value)
  assert '\n' not in message
  for name in toy2d.NAMES:
    assert name in message


def test_mode_coverage_of_true_samples_and_of_a_collapsed_set():
  rng = np.random.default_rng(0)
  truth = toy2d.sample('8gaussians', 4000, rng)
  full = toy2d.mode_coverage('8gaussians', truth)
  assert full['modes_covered'] == 8 and full['num_modes'] == 8
  assert full['fraction_in_modes'] > 0.98  # 3 std holds 98.9% of a 2-D normal
  assert full['min_mode_share'] > 0.8
  one_mode = np.tile(toy2d.modes('8gaussians')[:1], (100, 1))
  collapsed = toy2d.mode_coverage('8gaussians', one_mode)
  assert collapsed['modes_covered'] == 1 and collapsed['min_mode_share'] == 0
  far = toy2d.mode_coverage('8gaussians', np.zeros((10, 2)))
  assert far['fraction_in_modes'] == 0 and far['modes_covered'] == 0
  with pytest.raises(ValueError, match='toy2d_name'):
    toy2d.mode_coverage('rings', truth)
