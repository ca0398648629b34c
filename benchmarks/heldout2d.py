"""Two 2-D densities the toy config never names, for benchmarks/toy2d.py.

They reach training only as arrays of points in an .npz file
(`config.data.dataset='npz'`), the route a user's own 2-D data takes. They
were held out when `configs/toy2d_buffer.py` was tuned; `configs/toy2d.py`
was searched on them (with 8gaussians), so for it they are two more test
densities, not held-out ones. Both have exact, normalised log-densities:

* `banana`: a curved one-piece density. x1 ~ N(0, 1.2^2) and
  x2 = 0.4 x1^2 - 1.6 + N(0, 0.2^2): a parabola-shaped ridge whose width
  across is 0.2 and whose arms thin out along x1.
* `unequal3`: a mixture of three well separated isotropic Gaussians (std
  0.2) with unequal weights 0.5, 0.3, 0.2, centred at (-2, -1.5),
  (2, -1.5) and (0, 2). Short local chains never carry mass between these
  modes, so it tests whether the learned mode weights are right
  (`mode_masses` in the benchmark).
"""

from __future__ import annotations

import math

import numpy as np

NAMES = ('banana', 'unequal3')

BANANA_X1_STD = 1.2
BANANA_CURVATURE = 0.4
BANANA_SHIFT = -1.6
BANANA_STD = 0.2

UNEQUAL3_CENTRES = np.array([[-2.0, -1.5], [2.0, -1.5], [0.0, 2.0]])
UNEQUAL3_WEIGHTS = np.array([0.5, 0.3, 0.2])
UNEQUAL3_STD = 0.2


def check_name(name: str) -> None:
  if name not in NAMES:
    raise ValueError(f'held-out density {name!r} is unknown; allowed: '
                     f'{", ".join(NAMES)}')


def sample(name: str, n: int, rng: np.random.Generator) -> np.ndarray:
  """n points [n, 2] (float32) of a held-out density."""
  check_name(name)
  if name == 'banana':
    x1 = BANANA_X1_STD * rng.standard_normal(n)
    x2 = (BANANA_CURVATURE * x1**2 + BANANA_SHIFT +
          BANANA_STD * rng.standard_normal(n))
    return np.stack([x1, x2], axis=1).astype(np.float32)
  which = rng.choice(len(UNEQUAL3_WEIGHTS), size=n, p=UNEQUAL3_WEIGHTS)
  points = UNEQUAL3_CENTRES[which] + UNEQUAL3_STD * rng.standard_normal(
      (n, 2))
  return points.astype(np.float32)


def _log_normal(x: np.ndarray, mean: np.ndarray | float, std: float
                ) -> np.ndarray:
  return -0.5 * ((x - mean) / std)**2 - math.log(std * math.sqrt(2 * math.pi))


def log_density(name: str, points: np.ndarray) -> np.ndarray:
  """The exact normalised log-density at `points` [n, 2] (float64 [n])."""
  check_name(name)
  x = np.asarray(points, np.float64)
  if name == 'banana':
    return (_log_normal(x[:, 0], 0.0, BANANA_X1_STD) +
            _log_normal(x[:, 1], BANANA_CURVATURE * x[:, 0]**2 + BANANA_SHIFT,
                        BANANA_STD))
  per_mode = np.stack([
      math.log(w) + _log_normal(x[:, 0], c[0], UNEQUAL3_STD) +
      _log_normal(x[:, 1], c[1], UNEQUAL3_STD)
      for c, w in zip(UNEQUAL3_CENTRES, UNEQUAL3_WEIGHTS)], axis=1)
  top = per_mode.max(axis=1, keepdims=True)
  return top[:, 0] + np.log(np.exp(per_mode - top).sum(axis=1))


def modes(name: str) -> tuple[np.ndarray, np.ndarray] | None:
  """(centres [K, 2], true weights [K]) of a mixture; None for `banana`."""
  check_name(name)
  if name == 'unequal3':
    return UNEQUAL3_CENTRES.copy(), UNEQUAL3_WEIGHTS.copy()
  return None


def write_npz(name: str, path: str, n: int, seed: int) -> str:
  """Writes n points of `name` to `path` under the key 'points'."""
  np.savez(path, points=sample(name, n, np.random.default_rng(seed)))
  return path
