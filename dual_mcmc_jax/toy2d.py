"""Synthetic 2-D densities for the toy experiments.

Each density has a name in `NAMES` and three functions: `sample` draws points,
`log_density` evaluates the true normalised log-density (where one exists) and
`modes` returns the mode centres of the Gaussian mixtures. Everything is plain
numpy so that the toy pipeline needs neither TensorFlow nor an accelerator.

Scale: every density lives in roughly [-4, 4]^2, the range of the usual
FFJORD-style toy sets, so that one set of sampler settings works for all of
them. The exact definitions (all lengths in output units):

* `8gaussians`: equal mixture of 8 isotropic Gaussians, centres evenly spaced
  on a circle of radius 2*sqrt(2) starting at angle 0, std 0.1 each.
* `25gaussians`: equal mixture of 25 isotropic Gaussians on the grid
  {-3, -1.5, 0, 1.5, 3}^2, std 0.1 each.
* `rings`: uniform angle, radius drawn from an equal mixture of Gaussians with
  means 0.8, 1.6, 2.4, 3.2 and std 0.08, each truncated to r > 0. The planar
  density is p(x) = p_r(|x|) / (2 pi |x|), which is exactly normalised (the
  1 / (2 pi r) factor is the Jacobian of polar coordinates).
* `checkerboard`: uniform on the 8 dark squares of a 4x4 board of 2x2 squares
  covering [-4, 4]^2 (square (i, j) counted from the lower-left corner is dark
  when i + j is even), so the density is 1/32 on them and 0 elsewhere.
* `2spirals`: two point-reflected arms; the arm parameter t = 3 pi sqrt(u),
  u ~ U(0, 1), places the point at (-t cos t, t sin t) / 3 (or its negative),
  plus isotropic Gaussian noise of std 0.1.
* `2moons`: scikit-learn's two interleaved half circles (parameter uniform in
  [0, pi]), centred, scaled by 2, plus isotropic Gaussian noise of std 0.1.
* `pinwheel`: FFJORD's pinwheel: 5 arms made by twisting Gaussian blobs
  (radial std 0.3, tangential std 0.1, twist rate 0.25), scaled by 2.

Log-densities: the two Gaussian mixtures, `rings` and `checkerboard` are
analytic. For `2spirals` and `2moons` the density is an integral over the curve
parameter of a Gaussian around the curve; `log_density` evaluates it with a
fixed midpoint quadrature (`_CURVE_NODES` nodes per arm, placed at equal
quantiles of the parameter's distribution). That quadrature is itself an equal
mixture of Gaussians, so the returned density is exactly normalised, and the
nodes lie a small fraction of the noise std apart along the curve, so it is
within a negligible error of the continuous one. `pinwheel` has no tractable
density (its twist cannot be inverted in closed form), so `log_density` raises
NotImplementedError for it; `estimated_log_density_on_grid` gives a kernel
density estimate from many samples instead, labelled as estimated wherever
it is used.

Evaluating a learned model (benchmarks/toy2d.py): `grid` lays out cell
centres, `normalized_log_density` normalises exp(-E) over the grid with the
midpoint rule (`log_normalizer`), `grid_divergences` compares it with the
true density on the same cells (KL, total variation, and the true density's
mass on the grid), and `energy_distance` compares sample sets.
"""

import functools
import math

import numpy as np

NAMES = (
    '8gaussians',
    '25gaussians',
    'rings',
    'checkerboard',
    '2spirals',
    '2moons',
    'pinwheel',
)

# 8gaussians: the FFJORD radius, with sharper modes than FFJORD's 0.35.
EIGHT_GAUSSIANS_RADIUS = 2.0 * math.sqrt(2.0)
EIGHT_GAUSSIANS_STD = 0.1
# 25gaussians: grid spacing and per-mode std.
TWENTY_FIVE_GAUSSIANS_SPACING = 1.5
TWENTY_FIVE_GAUSSIANS_STD = 0.1
# rings: ring radii (equal weights) and the std of the radius around each.
RINGS_RADII = (0.8, 1.6, 2.4, 3.2)
RINGS_STD = 0.08
# checkerboard: side of one square; the board is 4x4 squares centred at 0.
CHECKERBOARD_SQUARE = 2.0
# 2spirals / 2moons: noise std around the curves.
SPIRALS_NOISE_STD = 0.1
SPIRALS_MAX_ANGLE = 3.0 * math.pi  # 540 degrees per arm.
SPIRALS_SCALE = 1.0 / 3.0
MOONS_NOISE_STD = 0.1
MOONS_SCALE = 2.0
# pinwheel: FFJORD's settings.
PINWHEEL_NUM_ARMS = 5
PINWHEEL_RADIAL_STD = 0.3
PINWHEEL_TANGENTIAL_STD = 0.1
PINWHEEL_RATE = 0.25
PINWHEEL_SCALE = 2.0

# Quadrature nodes per arm for the curve densities. For 2spirals the nodes are
# ~0.015 apart along the arm (the spacing is constant because the parameter's
# density grows like the arm's speed), for 2moons ~0.006; both are far below
# the noise std of 0.1, where the midpoint rule's error is negligible.
_CURVE_NODES = 1000
# Points per block when evaluating mixtures, to bound the [block, nodes] matrix.
_BLOCK = 1024


def check_name(name: str) -> None:
  """Raises a ValueError naming `config.data.toy2d_name` for unknown names.

  Args:
    name: the density name to check.
  """
  if name not in NAMES:
    raise ValueError(
        f'Unknown toy density config.data.toy2d_name={name!r}; allowed values:'
        f' {", ".join(NAMES)}.'
    )


def modes(name: str) -> np.ndarray | None:
  """Returns the mode centres of a Gaussian-mixture density.

  Args:
    name: a density name from `NAMES`.

  Returns:
    float64 [K, 2] centres for `8gaussians` (K = 8) and `25gaussians`
    (K = 25); None for the other densities.
  """
  check_name(name)
  if name == '8gaussians':
    angles = 2.0 * np.pi * np.arange(8) / 8
    return EIGHT_GAUSSIANS_RADIUS * np.stack(
        [np.cos(angles), np.sin(angles)], axis=1
    )
  if name == '25gaussians':
    axis = TWENTY_FIVE_GAUSSIANS_SPACING * np.arange(-2, 3, dtype=np.float64)
    xs, ys = np.meshgrid(axis, axis, indexing='ij')
    return np.stack([xs.ravel(), ys.ravel()], axis=1)
  return None


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
  centres = modes(name)
  if centres is None:
    raise ValueError(f'config.data.toy2d_name={name!r} has no modes; '
                     'mode coverage needs 8gaussians or 25gaussians')
  std = EIGHT_GAUSSIANS_STD if name == '8gaussians' else (
      TWENTY_FIVE_GAUSSIANS_STD)
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


def sample(name: str, n: int, rng: np.random.Generator) -> np.ndarray:
  """Draws points from a toy density.

  Args:
    name: a density name from `NAMES`.
    n: number of points.
    rng: the numpy generator that all randomness is drawn from, so the same
      generator state gives the same points.

  Returns:
    float32 [n, 2] points.
  """
  check_name(name)
  if name in ('8gaussians', '25gaussians'):
    centres = modes(name)  # [K, 2]
    std = (
        EIGHT_GAUSSIANS_STD if name == '8gaussians'
        else TWENTY_FIVE_GAUSSIANS_STD
    )
    which = rng.integers(len(centres), size=n)
    points = centres[which] + std * rng.standard_normal((n, 2))
  elif name == 'rings':
    points = _sample_rings(n, rng)
  elif name == 'checkerboard':
    points = _sample_checkerboard(n, rng)
  elif name == '2spirals':
    arm = rng.integers(2, size=n)
    t = _spiral_parameter(rng.random(n))
    points = _curve('2spirals', arm, t)
    points += SPIRALS_NOISE_STD * rng.standard_normal((n, 2))
  elif name == '2moons':
    arm = rng.integers(2, size=n)
    t = np.pi * rng.random(n)
    points = _curve('2moons', arm, t)
    points += MOONS_NOISE_STD * rng.standard_normal((n, 2))
  else:  # pinwheel
    points = _sample_pinwheel(n, rng)
  return points.astype(np.float32)


def log_density(name: str, points: np.ndarray) -> np.ndarray:
  """Evaluates the true normalised log-density of a toy density.

  Args:
    name: a density name from `NAMES`.
    points: [n, 2] points.

  Returns:
    float64 [n] log-densities (-inf outside the support of `checkerboard`).

  Raises:
    NotImplementedError: for `pinwheel`, which has no tractable density.
  """
  check_name(name)
  points = np.asarray(points, dtype=np.float64)
  if points.ndim != 2 or points.shape[1] != 2:
    raise ValueError(f'points must have shape [n, 2]; got {points.shape}.')
  if name == 'pinwheel':
    raise NotImplementedError(
        'pinwheel has no tractable density: its twist has no closed-form'
        ' inverse. estimated_log_density_on_grid gives a kernel density'
        ' estimate from `sample`.'
    )
  if name == 'rings':
    return _rings_log_density(points)
  if name == 'checkerboard':
    return _checkerboard_log_density(points)
  if name == '8gaussians':
    return _mixture_log_density(points, modes(name), EIGHT_GAUSSIANS_STD)
  if name == '25gaussians':
    return _mixture_log_density(points, modes(name), TWENTY_FIVE_GAUSSIANS_STD)
  std = SPIRALS_NOISE_STD if name == '2spirals' else MOONS_NOISE_STD
  return _mixture_log_density(points, _curve_nodes(name), std)


def _mixture_log_density(
    points: np.ndarray, centres: np.ndarray, std: float
) -> np.ndarray:
  """Log-density of an equal mixture of isotropic Gaussians.

  Args:
    points: float64 [n, 2].
    centres: float64 [K, 2] component means.
    std: the common component std.

  Returns:
    float64 [n].
  """
  log_norm = -math.log(len(centres)) - math.log(2.0 * math.pi * std**2)
  centre_sq = np.sum(centres**2, axis=1)  # [K]
  out = np.empty(len(points), dtype=np.float64)
  for start in range(0, len(points), _BLOCK):
    block = points[start:start + _BLOCK]  # [b, 2]
    # Expanded squared distances keep the intermediate at [b, K] rather than
    # [b, K, 2]; the cancellation error is ~1e-13, far below std**2.
    sq = (
        np.sum(block**2, axis=1, keepdims=True)
        - 2.0 * block @ centres.T
        + centre_sq
    )  # [b, K]
    logits = -np.maximum(sq, 0.0) / (2.0 * std**2)
    peak = np.max(logits, axis=1, keepdims=True)
    out[start:start + _BLOCK] = (
        peak[:, 0] + np.log(np.sum(np.exp(logits - peak), axis=1))
    )
  return out + log_norm


def _sample_rings(n: int, rng: np.random.Generator) -> np.ndarray:
  means = np.asarray(RINGS_RADII)[rng.integers(len(RINGS_RADII), size=n)]
  radius = means + RINGS_STD * rng.standard_normal(n)
  # Redraw the (astronomically rare) non-positive radii so that the sampler
  # matches the truncated radial density that `log_density` normalises.
  bad = radius <= 0.0
  while np.any(bad):
    radius[bad] = means[bad] + RINGS_STD * rng.standard_normal(bad.sum())
    bad = radius <= 0.0
  angle = 2.0 * np.pi * rng.random(n)
  return radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)


def _rings_log_density(points: np.ndarray) -> np.ndarray:
  radius = np.linalg.norm(points, axis=1)  # [n]
  means = np.asarray(RINGS_RADII)  # [K]
  # Mass of each radial Gaussian on r > 0: Phi(mean / std).
  log_mass = np.log(0.5 * np.array(
      [math.erfc(-m / (RINGS_STD * math.sqrt(2.0))) for m in means]
  ))
  logits = (
      -0.5 * ((radius[:, None] - means) / RINGS_STD) ** 2
      - log_mass
  )  # [n, K]
  peak = np.max(logits, axis=1, keepdims=True)
  log_p_radius = (
      peak[:, 0] + np.log(np.sum(np.exp(logits - peak), axis=1))
      - math.log(len(means)) - 0.5 * math.log(2.0 * math.pi * RINGS_STD**2)
  )
  # The polar Jacobian diverges at the origin, where the radial density is
  # ~exp(-50); clamping r keeps the value finite without changing any
  # integral.
  return log_p_radius - np.log(2.0 * np.pi * np.maximum(radius, 1e-30))


def _checkerboard_cells(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Board cell (i, j) of each point; on-board cells are in [0, 4)^2."""
  half = 2.0 * CHECKERBOARD_SQUARE
  cells = np.floor((points + half) / CHECKERBOARD_SQUARE).astype(np.int64)
  return cells[:, 0], cells[:, 1]


def _sample_checkerboard(n: int, rng: np.random.Generator) -> np.ndarray:
  # The 8 dark squares: (i, j) in [0, 4)^2 with i + j even.
  dark = np.array(
      [(i, j) for i in range(4) for j in range(4) if (i + j) % 2 == 0]
  )  # [8, 2]
  corner = dark[rng.integers(len(dark), size=n)] * CHECKERBOARD_SQUARE
  offset = CHECKERBOARD_SQUARE * rng.random((n, 2))
  return corner + offset - 2.0 * CHECKERBOARD_SQUARE


def _checkerboard_log_density(points: np.ndarray) -> np.ndarray:
  i, j = _checkerboard_cells(points)
  inside = (i >= 0) & (i < 4) & (j >= 0) & (j < 4) & ((i + j) % 2 == 0)
  area = 8 * CHECKERBOARD_SQUARE**2
  return np.where(inside, -math.log(area), -np.inf)


def _spiral_parameter(u: np.ndarray) -> np.ndarray:
  """Maps uniform u in [0, 1) to the spiral angle t = 3 pi sqrt(u)."""
  return SPIRALS_MAX_ANGLE * np.sqrt(u)


def _curve(name: str, arm: np.ndarray, t: np.ndarray) -> np.ndarray:
  """Noise-free curve points of `2spirals` / `2moons`.

  Args:
    name: '2spirals' or '2moons'.
    arm: int [n], 0 or 1.
    t: float [n], the curve parameter.

  Returns:
    float64 [n, 2].
  """
  if name == '2spirals':
    xy = SPIRALS_SCALE * np.stack([-t * np.cos(t), t * np.sin(t)], axis=1)
    return np.where(arm[:, None] == 0, xy, -xy)
  upper = np.stack([np.cos(t), np.sin(t)], axis=1)
  lower = np.stack([1.0 - np.cos(t), 0.5 - np.sin(t)], axis=1)
  xy = np.where(arm[:, None] == 0, upper, lower)
  # Centre the pair (raw extent [-1, 2] x [-0.5, 1]) before scaling.
  return MOONS_SCALE * (xy - np.array([0.5, 0.25]))


@functools.lru_cache(maxsize=None)
def _curve_nodes(name: str) -> np.ndarray:
  """Quadrature nodes of a curve density: float64 [2 * _CURVE_NODES, 2]."""
  # Midpoints of equal-probability bins of the parameter's distribution, so
  # that the equal-weight mixture is the midpoint rule for the integral.
  u = (np.arange(_CURVE_NODES) + 0.5) / _CURVE_NODES
  t = _spiral_parameter(u) if name == '2spirals' else np.pi * u
  arm = np.repeat(np.arange(2), _CURVE_NODES)
  nodes = _curve(name, arm, np.tile(t, 2))
  nodes.setflags(write=False)
  return nodes


def _sample_pinwheel(n: int, rng: np.random.Generator) -> np.ndarray:
  arm = rng.integers(PINWHEEL_NUM_ARMS, size=n)
  features = rng.standard_normal((n, 2)) * np.array(
      [PINWHEEL_RADIAL_STD, PINWHEEL_TANGENTIAL_STD]
  )
  features[:, 0] += 1.0
  # The twist grows with the radial coordinate, which bends each blob.
  angle = 2.0 * np.pi * arm / PINWHEEL_NUM_ARMS + PINWHEEL_RATE * np.exp(
      features[:, 0]
  )
  cos, sin = np.cos(angle), np.sin(angle)
  rotated = np.stack(
      [cos * features[:, 0] - sin * features[:, 1],
       sin * features[:, 0] + cos * features[:, 1]],
      axis=1,
  )
  return PINWHEEL_SCALE * rotated


# --- Densities on a grid, and sample distances (benchmarks/toy2d.py) ---------

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
  points = sample(name, num_samples, np.random.default_rng(seed))
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
