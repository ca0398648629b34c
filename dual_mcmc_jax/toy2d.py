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
NotImplementedError for it; `evaluators/density2d.py` estimates it from many
samples instead, labelled as estimated wherever it is used.

Scoring a learned model against these densities (grids, normalisers,
divergences, mode coverage) is `evaluators/density2d.py`.
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
