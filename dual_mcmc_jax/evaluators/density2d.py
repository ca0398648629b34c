"""Scores a learned 2-D density against the true one (toy2d.py's densities).

What `benchmarks/toy2d.py` and the notebook report for a model trained on a
2-D density:

* `grid` lays out the cell centres of a square grid that holds almost all of
  every density's mass; `normalized_log_density` normalises a model's
  exp(-E) over it with the midpoint rule (`log_normalizer`), so the model's
  density is compared with the truth on the same cells, at the temperature
  it was evaluated at;
* `grid_divergences`: KL(true || model), total variation, and the true
  density's mass on the grid;
* `estimated_log_density_on_grid`: a kernel density estimate for a density
  with no tractable log-density (`pinwheel`);
* `energy_distance`: the distance between two sample sets (generator or
  revised samples against data);
* `mode_coverage`: how evenly samples cover a Gaussian mixture's modes;
* `mode_masses`: the learned density's mass per mode against the true
  weights; `sample_mode_shares` the same for samples (a generator's);
* `off_support_mass`: the learned density's mass where the true density
  has almost none (energy that fell off the data).

Plain numpy and scipy: nothing here needs an accelerator.
"""

import math
from typing import Any

import numpy as np

from dual_mcmc_jax import toy2d


def mode_coverage(name: str, points: np.ndarray,
                  num_std: float = 3.0) -> dict[str, float]:
  """How well points cover the modes of a Gaussian-mixture density.

  A point belongs to a mode when it lies within `num_std` standard deviations
  of the mode's centre.

  Args:
    name: `8gaussians` or `25gaussians`.
    points: [N, 2] samples.
    num_std: radius of a mode, in mode standard deviations.

  Returns:
    {'modes_covered': number of modes holding at least one point,
     'num_modes': K, 'fraction_in_modes': fraction of points inside any mode,
     'min_mode_share': smallest per-mode share of the points inside modes
     divided by the ideal share 1/K (1.0 = perfectly balanced)}.
  """
  centres = toy2d.modes(name)
  if centres is None:
    raise ValueError(f'config.data.toy2d_name={name!r} has no modes; '
                     'mode coverage needs 8gaussians or 25gaussians')
  std = toy2d.EIGHT_GAUSSIANS_STD if name == '8gaussians' else (
      toy2d.TWENTY_FIVE_GAUSSIANS_STD)
  points = np.asarray(points, np.float64)
  d = np.linalg.norm(points[:, None, :] - centres[None], axis=-1)  # [N, K]
  nearest = np.argmin(d, axis=1)
  inside = d[np.arange(len(points)), nearest] <= num_std * std
  counts = np.bincount(nearest[inside], minlength=len(centres))
  k = len(centres)
  share = counts / max(int(inside.sum()), 1)
  return {'modes_covered': float(np.sum(counts > 0)), 'num_modes': float(k),
          'fraction_in_modes': float(inside.mean()),
          'min_mode_share': float(share.min() * k)}


def mode_masses(model_log_p: np.ndarray, points: np.ndarray,
                cell_area: float, centres: np.ndarray,
                weights: np.ndarray) -> dict[str, Any]:
  """The learned mass of each mode of a mixture against its true weight.

  Every grid cell counts towards the mode whose centre is nearest, so the
  masses add up to the model's mass on the grid (1 when normalised there).

  Args:
    model_log_p: the model's normalised log-density on the grid cells.
    points: the cells' centres [num * num, 2] (`grid`).
    cell_area: the area of one cell.
    centres: the mixture's mode centres [K, 2].
    weights: the true mode weights [K].

  Returns:
    {'mode_masses': learned masses [K] (a list), 'mode_weights': the true
    weights (a list), 'mode_mass_error': the largest |mass - weight|,
    'mode_mass_tv': 0.5 * sum |mass - weight|, the part of the total
    variation that redistributing mass between modes alone would cause}.
  """
  d = np.linalg.norm(np.asarray(points)[:, None, :] - centres[None], axis=-1)
  masses = np.bincount(np.argmin(d, axis=1),
                       np.exp(np.asarray(model_log_p, np.float64)) * cell_area,
                       minlength=len(centres))
  error = np.abs(masses - weights)
  return {'mode_masses': [float(m) for m in masses],
          'mode_weights': [float(w) for w in weights],
          'mode_mass_error': float(error.max()),
          'mode_mass_tv': float(0.5 * error.sum())}


# The benchmark grid covers the densities' [-4, 4]^2 with a margin, so that
# almost all of the true mass falls on it (`grid_divergences` reports how
# much).
GRID_HALF_WIDTH = 4.5
# Samples and smoothing of the pinwheel's estimated reference density. The
# kernel is smaller than the arms' tangential std (0.1 * PINWHEEL_SCALE).
PINWHEEL_REFERENCE_SAMPLES = 2_000_000
PINWHEEL_REFERENCE_BANDWIDTH = 0.04
# Share of the estimate's mass spread uniformly over the grid, so that no
# cell is exactly zero and KL against another estimate stays finite.
PINWHEEL_REFERENCE_UNIFORM = 1e-4


def sample_mode_shares(x: np.ndarray, centres: np.ndarray,
                       weights: np.ndarray) -> dict[str, Any]:
  """The share of samples nearest each mode of a mixture against its weight.

  Every sample counts towards the mode whose centre is nearest, as every
  grid cell does in `mode_masses`.

  Args:
    x: samples [n, 2].
    centres: the mixture's mode centres [K, 2].
    weights: the true mode weights [K].

  Returns:
    {'shares': the samples' shares [K] (a list), 'mode_tv': 0.5 * sum
    |share - weight|}.
  """
  d = np.linalg.norm(np.asarray(x, np.float64)[:, None, :] - centres[None],
                     axis=-1)
  shares = np.bincount(np.argmin(d, axis=1),
                       minlength=len(centres)) / len(x)
  return {'shares': [float(v) for v in shares],
          'mode_tv': float(0.5 * np.abs(shares - weights).sum())}


def off_support_mass(true_log_p: np.ndarray, model_log_p: np.ndarray,
                     cell_area: float, coverage: float = 0.999) -> float:
  """The model's mass outside the cells that hold the truth's mass.

  The support is the smallest set of grid cells holding `coverage` of the
  true mass on the grid; the truth itself puts 1 - coverage outside it.

  Args:
    true_log_p: the true log-density on the grid cells.
    model_log_p: the model's normalised log-density on the same cells.
    cell_area: the area of one cell.
    coverage: the share of the true mass the support holds.

  Returns:
    The model's probability mass on the cells outside the support.
  """
  p = np.exp(np.asarray(true_log_p, np.float64)) * cell_area
  order = np.argsort(p)[::-1]
  inside = np.zeros(p.shape, bool)
  inside[order[:np.searchsorted(np.cumsum(p[order]),
                                coverage * p.sum()) + 1]] = True
  q = np.exp(np.asarray(model_log_p, np.float64)) * cell_area
  return float(q[~inside].sum())


def grid(num: int, half_width: float = GRID_HALF_WIDTH
         ) -> tuple[np.ndarray, float]:
  """Cell centres of a num x num midpoint grid over [-half_width, half_width]^2.

  Args:
    num: cells per axis.
    half_width: half the side of the square.

  Returns:
    (float64 [num * num, 2] centres, x-major (`reshape(num, num)` gives
    [x, y]), and the area of one cell).
  """
  step = 2.0 * half_width / num
  axis = -half_width + step * (np.arange(num) + 0.5)
  xs, ys = np.meshgrid(axis, axis, indexing='ij')
  return np.stack([xs.ravel(), ys.ravel()], axis=1), step * step


def log_normalizer(neg_energy: np.ndarray, cell_area: float) -> float:
  """log Z of exp(-E) from its values at grid cell centres (midpoint rule).

  Args:
    neg_energy: -E(x) at every cell centre of a grid, any shape.
    cell_area: the area of one cell.

  Returns:
    log(sum exp(-E) * cell_area), computed stably in float64.
  """
  # pylint: disable=g-import-not-at-top
  from scipy import special
  # pylint: enable=g-import-not-at-top
  v = np.asarray(neg_energy, np.float64).ravel()
  return float(special.logsumexp(v) + math.log(cell_area))


def normalized_log_density(neg_energy: np.ndarray,
                           cell_area: float) -> np.ndarray:
  """log(exp(-E) / Z) on the grid, Z from `log_normalizer`.

  The result integrates to exactly 1 over the grid: this is the model's
  density restricted to the grid's square.

  Args:
    neg_energy: -E(x) at every cell centre.
    cell_area: the area of one cell.

  Returns:
    float64 array of the same shape.
  """
  return (np.asarray(neg_energy, np.float64) -
          log_normalizer(neg_energy, cell_area))


def estimated_log_density_on_grid(
    name: str, num: int, half_width: float = GRID_HALF_WIDTH,
    num_samples: int = PINWHEEL_REFERENCE_SAMPLES,
    bandwidth: float = PINWHEEL_REFERENCE_BANDWIDTH,
    uniform: float = PINWHEEL_REFERENCE_UNIFORM,
    seed: int = 0) -> np.ndarray:
  """A kernel density estimate of a toy density on the cells of `grid`.

  For densities without a tractable `log_density` (pinwheel): a histogram of
  `num_samples` samples on the grid's cells, smoothed with an isotropic
  Gaussian kernel of std `bandwidth`, mixed with a uniform density on the
  grid of weight `uniform` (the kernel's tails are truncated, and a zero cell
  would make any KL against the estimate infinite). The estimate's own error
  is measured by
  comparing two estimates from different seeds (benchmarks/toy2d.py reports
  it as the reference's floor).

  Args:
    name: a density name from `NAMES`.
    num, half_width: the grid, as in `grid`.
    num_samples: samples in the histogram.
    bandwidth: kernel std, in output units.
    uniform: weight of the uniform component.
    seed: seeds the samples.

  Returns:
    float64 [num * num] log-densities (x-major, like `grid`), normalised to
    integrate to 1 over the grid.
  """
  # pylint: disable=g-import-not-at-top
  from scipy import ndimage
  # pylint: enable=g-import-not-at-top
  points = toy2d.sample(name, num_samples, np.random.default_rng(seed))
  edges = np.linspace(-half_width, half_width, num + 1)
  counts, _, _ = np.histogram2d(points[:, 0], points[:, 1],
                                bins=[edges, edges])
  step = 2.0 * half_width / num
  smooth = ndimage.gaussian_filter(counts, bandwidth / step, mode='constant')
  area = step * step
  density = ((1.0 - uniform) * smooth.ravel() / (np.sum(smooth) * area) +
             uniform / (num * num * area))
  return np.log(density)


def grid_divergences(true_log_p: np.ndarray, model_log_p: np.ndarray,
                     cell_area: float) -> dict[str, float]:
  """KL(true || model) and total variation between densities on one grid.

  Both densities are taken as distributions over the grid's cells: the
  model's is normalised on the grid already (`normalized_log_density`); the
  true one is renormalised by its grid mass, reported as `true_mass` so a
  reader sees how much of it lies outside the square.

  Args:
    true_log_p: true log-density at the cell centres (-inf where zero).
    model_log_p: the model's grid-normalised log-density at the same cells.
    cell_area: the area of one cell.

  Returns:
    {'kl': sum p (log p - log q) * area over cells with p > 0, in nats;
     'tv': 0.5 * sum |p - q| * area, in [0, 1];
     'true_mass': the true density's mass on the grid before
     renormalising}.
  """
  true_log_p = np.asarray(true_log_p, np.float64).ravel()
  model_log_p = np.asarray(model_log_p, np.float64).ravel()
  true_mass = log_normalizer(true_log_p, cell_area)
  log_p = true_log_p - true_mass
  p = np.exp(log_p)
  q = np.exp(model_log_p)
  support = p > 0
  kl = np.sum(p[support] * (log_p[support] - model_log_p[support])) * cell_area
  tv = 0.5 * np.sum(np.abs(p - q)) * cell_area
  return {'kl': float(kl), 'tv': float(tv), 'true_mass': math.exp(true_mass)}


def energy_distance(x: np.ndarray, y: np.ndarray, block: int = 2048) -> float:
  """Energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'| between sample sets.

  The within-set means leave out the zero self-distances (U-statistics), so
  the estimate is unbiased: its mean is 0 when x and y come from the same
  distribution (a single estimate may then be slightly negative), and it is
  positive in expectation otherwise (Székely & Rizzo).

  Args:
    x: [n, d] samples.
    y: [m, d] samples.
    block: rows per block of the pairwise-distance matrices.

  Returns:
    The energy distance, in the data's units.
  """
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)

  def mean_dist(a: np.ndarray, b: np.ndarray, exclude_diagonal: bool
                ) -> float:
    total = 0.0
    for start in range(0, len(a), block):
      d = np.linalg.norm(a[start:start + block, None] - b[None], axis=-1)
      total += float(np.sum(d))
    pairs = len(a) * len(b) - (len(a) if exclude_diagonal else 0)
    return total / pairs

  return (2.0 * mean_dist(x, y, False) - mean_dist(x, x, True) -
          mean_dist(y, y, True))


def histogram_tv(x: np.ndarray, y: np.ndarray, bins: int = 24,
                 half_width: float = GRID_HALF_WIDTH) -> float:
  """TV between two sample sets' histograms on a bins x bins grid.

  Sees thin structure (rings, spiral arms) that the energy distance, a
  comparison of pairwise distances, averages away; its value for two sets
  of the same law is not 0 but a floor that falls with the sample size.
  Samples outside the square [-half_width, half_width]^2 fall in no cell
  and count as mass off the grid.
  """
  edges = np.linspace(-half_width, half_width, bins + 1)
  hx = np.histogram2d(x[:, 0], x[:, 1], [edges, edges])[0] / len(x)
  hy = np.histogram2d(y[:, 0], y[:, 1], [edges, edges])[0] / len(y)
  off = abs((1.0 - hx.sum()) - (1.0 - hy.sum()))
  return float(0.5 * (np.abs(hx - hy).sum() + off))
