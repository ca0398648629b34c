"""Tests for the synthetic 2-D densities in dual_mcmc_jax/toy2d.py."""

import functools
import math

import numpy as np
import pytest

from dual_mcmc_jax import toy2d
from dual_mcmc_jax.evaluators import density2d

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
  full = density2d.mode_coverage('8gaussians', truth)
  assert full['modes_covered'] == 8 and full['num_modes'] == 8
  assert full['fraction_in_modes'] > 0.98  # 3 std holds 98.9% of a 2-D normal
  assert full['min_mode_share'] > 0.8
  one_mode = np.tile(toy2d.modes('8gaussians')[:1], (100, 1))
  collapsed = density2d.mode_coverage('8gaussians', one_mode)
  assert collapsed['modes_covered'] == 1 and collapsed['min_mode_share'] == 0
  far = density2d.mode_coverage('8gaussians', np.zeros((10, 2)))
  assert far['fraction_in_modes'] == 0 and far['modes_covered'] == 0
  with pytest.raises(ValueError, match='toy2d_name'):
    density2d.mode_coverage('rings', truth)


# --- Grid normaliser, grid divergences, energy distance ---------------------


def test_log_normalizer_of_a_gaussian_energy_is_its_analytic_log_z():
  # E(x) = |x - m|^2 / (2 s^2) + c has Z = 2 pi s^2 exp(-c) in 2-D.
  points, area = density2d.grid(300)
  s, m, c = 0.5, np.array([0.3, -0.2]), 7.0
  neg_energy = -np.sum((points - m)**2, axis=1) / (2 * s * s) - c
  expected = math.log(2 * math.pi * s * s) - c
  assert density2d.log_normalizer(neg_energy, area) == pytest.approx(
      expected, abs=1e-6)
  log_p = density2d.normalized_log_density(neg_energy, area)
  assert np.sum(np.exp(log_p)) * area == pytest.approx(1.0, abs=1e-12)
  # A wrong cell area or a missing offset would move log Z by O(1).
  assert density2d.log_normalizer(neg_energy, 2 * area) != pytest.approx(
      expected, abs=0.5)


@pytest.mark.parametrize('name', _WITH_DENSITY)
def test_true_log_densities_have_unit_mass_on_the_benchmark_grid(name):
  # The benchmark's grid: cells of 0.05, half the narrowest std.
  points, area = density2d.grid(180)
  log_p = toy2d.log_density(name, points)
  result = density2d.grid_divergences(log_p, log_p - np.log(
      np.sum(np.exp(log_p)) * area), area)
  assert result['true_mass'] == pytest.approx(1.0, abs=1e-2)
  assert result['kl'] == pytest.approx(0.0, abs=1e-9)
  assert result['tv'] == pytest.approx(0.0, abs=1e-9)


def test_grid_divergences_of_shifted_gaussians_match_the_formulas():
  points, area = density2d.grid(400)
  s, shift = 0.4, np.array([0.6, 0.0])

  def log_gauss(mean):
    return (-np.sum((points - mean)**2, axis=1) / (2 * s * s)
            - math.log(2 * math.pi * s * s))

  result = density2d.grid_divergences(log_gauss(0.0), log_gauss(shift), area)
  d = float(np.linalg.norm(shift))
  assert result['kl'] == pytest.approx(d * d / (2 * s * s), rel=1e-3)
  tv = math.erf(d / (2 * s) / math.sqrt(2))  # 2 Phi(d / 2s) - 1
  assert result['tv'] == pytest.approx(tv, rel=1e-3)
  # KL is not symmetric in general, but it is for equal-variance Gaussians;
  # swapping a broader model in makes it smaller than the reverse.
  broad = (-np.sum(points**2, axis=1) / (2 * 4 * s * s)
           - math.log(2 * math.pi * 4 * s * s))
  forward = density2d.grid_divergences(log_gauss(0.0), broad, area)['kl']
  backward = density2d.grid_divergences(broad, log_gauss(0.0), area)['kl']
  assert forward < backward


def test_checkerboard_true_density_has_zero_cells_and_finite_kl():
  # 90 cells of 0.1 put cell edges on the board's square edges.
  points, area = density2d.grid(90)
  log_p = toy2d.log_density('checkerboard', points)
  uniform = np.full(len(points), -math.log(len(points) * area))
  result = density2d.grid_divergences(log_p, uniform, area)
  # Half the board is empty: the uniform model on 81 units of area against
  # 32 units of support costs log(81 / 32) nats.
  assert result['kl'] == pytest.approx(math.log(81 / 32), abs=1e-9)
  assert result['tv'] == pytest.approx(1 - 32 / 81, abs=1e-9)
  assert np.isfinite(result['tv'])


def test_pinwheel_estimated_density_is_normalised_and_reproducible():
  points, area = density2d.grid(150)
  a = density2d.estimated_log_density_on_grid('pinwheel', 150,
                                          num_samples=200_000, seed=0)
  b = density2d.estimated_log_density_on_grid('pinwheel', 150,
                                          num_samples=200_000, seed=1)
  assert np.sum(np.exp(a)) * area == pytest.approx(1.0, abs=1e-9)
  floor = density2d.grid_divergences(a, b, area)
  assert floor['tv'] < 0.05
  # Against a broad Gaussian the estimate is far away.
  broad = -np.sum(points**2, axis=1) / 8 - math.log(8 * math.pi)
  far = density2d.grid_divergences(a, broad, area)
  assert far['tv'] > 10 * floor['tv']


def test_energy_distance_is_zero_for_one_distribution_and_grows_with_shift():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((1500, 2))
  same = density2d.energy_distance(x, rng.standard_normal((1500, 2)))
  distances = [density2d.energy_distance(
      x, rng.standard_normal((1500, 2)) + [shift, 0.0])
               for shift in (0.25, 0.5, 1.0, 2.0)]
  assert abs(same) < 0.01
  assert distances[0] > 5 * abs(same)
  assert all(a < b for a, b in zip(distances, distances[1:]))
  # Far apart, the distance approaches 2 * shift - 2 E|X - X'|, with
  # E|X - X'| = sqrt(pi) for 2-D standard normals.
  far = density2d.energy_distance(x, rng.standard_normal((1500, 2)) + [20.0, 0.0])
  assert far == pytest.approx(2 * 20.0 - 2 * math.sqrt(math.pi), rel=0.01)


def test_sample_mode_shares_and_off_support_mass_by_hand():
  centres = np.array([[-2.0, 0.0], [2.0, 0.0]])
  x = np.array([[-1.9, 0.1], [-2.5, 0.0], [1.0, 3.0], [-0.1, 0.0]])
  shares = density2d.sample_mode_shares(x, centres, np.array([0.5, 0.5]))
  assert shares['shares'] == [0.75, 0.25]
  assert shares['mode_tv'] == pytest.approx(0.25)
  # Truth on 4 cells of area 1: 0.6, 0.3, 0.0999, 0.0001. At coverage 0.99
  # the support is the first three cells.
  true_log_p = np.log([0.6, 0.3, 0.0999, 0.0001])
  model = np.log([0.25, 0.25, 0.25, 0.25])
  assert density2d.off_support_mass(true_log_p, model, 1.0,
                                    coverage=0.99) == pytest.approx(0.25)
  assert density2d.off_support_mass(true_log_p, true_log_p, 1.0,
                                    coverage=0.99) == pytest.approx(1e-4)
