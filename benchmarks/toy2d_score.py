"""Scores of benchmarks/toy2d.py: a trained 2-D model against the truth.

`truth` gives what a density is scored against (the exact log-density on the
grid, or a kernel density estimate for pinwheel, with its own noise floor),
and `score` computes every number of a run: KL and TV of the normalised
exp(-E / T) at the chain's temperature, the best-temperature diagnostic,
per-mode masses for mixtures, and energy distances of generator samples and
their EBM revision. benchmarks/toy2d.py documents each number.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from benchmarks import heldout2d
from dual_mcmc_jax import langevin
from dual_mcmc_jax import networks
from dual_mcmc_jax import remedies
from dual_mcmc_jax import sampling
from dual_mcmc_jax import settings as settings_lib
from dual_mcmc_jax import toy2d
from dual_mcmc_jax.evaluators import density2d
from dual_mcmc_jax.evaluators import ood
from dual_mcmc_jax import train_state as ts


_MODE_STD = 3.0  # A sample is in a mode within this many stds (mode_coverage).


def chain_temperature(config: ml_collections.ConfigDict) -> float:
  """T such that the x-chain is Langevin dynamics for exp(-E / T).

  `langevin.temperature`: n^2 / s^2 for the reference rule, 1 for the
  paper's.

  Args:
    config: the run's configuration (config.langevin_x).

  Returns:
    T.
  """
  return langevin.temperature(settings_lib.from_config(config).langevin_x)


@dataclasses.dataclass(frozen=True)
class Truth:
  """What a density is scored against.

  Attributes:
    name: the density.
    log_p: the true log-density on the grid's cells.
    kind: 'exact' or 'estimated'.
    floor: {'reference_floor_kl', 'reference_floor_tv'} (0 when exact).
    sample: `(n, rng) -> [n, 2]` true samples.
    modes: (centres [K, 2], weights [K]) of a mixture, or None.
    heldout: trained through an npz file rather than the toy2d source.
  """
  name: str
  log_p: np.ndarray
  kind: str
  floor: dict[str, float]
  sample: Callable[[int, np.random.Generator], np.ndarray]
  modes: tuple[np.ndarray, np.ndarray] | None
  heldout: bool


def truth(name: str, num: int) -> Truth:
  """The true density `name` on a `num` x `num` grid, and its samplers."""
  points, _ = density2d.grid(num)
  if name in heldout2d.NAMES:
    return Truth(name, heldout2d.log_density(name, points), 'exact',
                 {'reference_floor_kl': 0.0, 'reference_floor_tv': 0.0},
                 lambda n, rng: heldout2d.sample(name, n, rng),
                 heldout2d.modes(name), heldout=True)
  toy2d.check_name(name)
  log_p, kind, floor = reference_log_density(name, points, num)
  centres = toy2d.modes(name)
  modes = None if centres is None else (
      centres, np.full(len(centres), 1.0 / len(centres)))
  return Truth(name, log_p, kind, floor,
               lambda n, rng: toy2d.sample(name, n, rng), modes,
               heldout=False)


def reference_log_density(name: str, points: np.ndarray, num: int
                          ) -> tuple[np.ndarray, str, dict[str, float]]:
  """The true log-density on the grid, its kind, and its own noise floor.

  Args:
    name: density name.
    points: the grid's cell centres (`density2d.grid(num)`).
    num: cells per axis.

  Returns:
    (log p [num * num], 'exact' or 'estimated', {'reference_floor_kl',
    'reference_floor_tv'}: zero when exact; for an estimate, the distance
    between two estimates from different seeds).
  """
  try:
    return toy2d.log_density(name, points), 'exact', {
        'reference_floor_kl': 0.0, 'reference_floor_tv': 0.0}
  except NotImplementedError:
    pass
  _, area = density2d.grid(num)
  log_p = density2d.estimated_log_density_on_grid(name, num, seed=0)
  other = density2d.estimated_log_density_on_grid(name, num, seed=1)
  floor = density2d.grid_divergences(log_p, other, area)
  return log_p, 'estimated', {'reference_floor_kl': floor['kl'],
                              'reference_floor_tv': floor['tv']}


# Temperatures of the best-temperature diagnostic: 1e-3 .. 10, 4 per decade.
_DIAGNOSTIC_TEMPERATURES = tuple(10.0**(k / 4) for k in range(-12, 5))


def best_temperature_divergences(true_log_p: np.ndarray,
                                 log_unnormalized: np.ndarray,
                                 cell_area: float) -> dict[str, float]:
  """Lowest KL and TV of exp(log_unnormalized / t) over temperatures t.

  Args:
    true_log_p: true log-density on the grid.
    log_unnormalized: -E on the grid.
    cell_area: the area of one cell.

  Returns:
    {'kl_best_t', 'best_t' (its temperature), 'tv_best_t'} (the TV minimum
    is taken separately).
  """
  kls, tvs = [], []
  for t in _DIAGNOSTIC_TEMPERATURES:
    d = density2d.grid_divergences(
        true_log_p, density2d.normalized_log_density(log_unnormalized / t,
                                                 cell_area), cell_area)
    kls.append(d['kl'])
    tvs.append(d['tv'])
  best = int(np.nanargmin(kls)) if np.any(np.isfinite(kls)) else 0
  return {'kl_best_t': float(kls[best]),
          'best_t': _DIAGNOSTIC_TEMPERATURES[best],
          'tv_best_t': float(np.nanmin(tvs))}


def draw_samples(config: ml_collections.ConfigDict, models: networks.Models,
                 state: ts.TrainState, n: int, seed: int
                 ) -> dict[str, np.ndarray | None]:
  """Generator samples and their x-revision, as the run's training made them.

  With `x_chain_init='noise'` there is no generator: 'generator' is None and
  'revised' is the training chain run from uniform noise.

  Args:
    config: the run's configuration (chain settings, noise box).
    models, state: the trained models.
    n: samples.
    seed: evaluation seed.

  Returns:
    {'generator': [n, 2] or None, 'revised': [n, 2]}.
  """
  lx = settings_lib.from_config(config).langevin_x
  noise = config.training.x_chain_init == 'noise'
  low = float(config.training.x_noise_low)
  high = float(config.training.x_noise_high)

  @jax.jit
  def sample(state: ts.TrainState, key: jax.Array
             ) -> tuple[jax.Array, jax.Array]:
    k_init, k_chain = jax.random.split(key)
    if noise:
      x0 = jax.random.uniform(k_init, (n, 2), jnp.float32, low, high)
    else:
      z = jax.random.normal(k_init, (n, models.nz), jnp.float32)
      x0, _ = sampling.generate(models, state.gen, z)
    # The chain of the run's negatives, with its Metropolis jumps if any.
    then = remedies.negative_chain_jumps(models, state.ebm.params, state.gen,
                                         lx, k_chain, n)
    x1, _, _ = sampling.revise_x(models, state.ebm, x0, k_chain, lx,
                                 then=then)
    return x0, x1

  x0, x1 = jax.device_get(sample(state, jax.random.key(seed)))
  return {'generator': None if noise else np.asarray(x0),
          'revised': np.asarray(x1)}


def score(config: ml_collections.ConfigDict, models: networks.Models,
          state: ts.TrainState, num: int, num_samples: int, seed: int,
          true: Truth | None = None
          ) -> tuple[dict[str, Any], dict[str, np.ndarray | None]]:
  """All benchmark numbers of one trained model.

  Args:
    config: the run's configuration.
    models, state: the trained models.
    num, num_samples: grid cells per axis; samples per sample score.
    seed: evaluation seed (true samples use seed + 1 and seed + 2).
    true: `truth(...)` of the density (default: the config's toy2d_name).

  Returns:
    (numbers, arrays): the numbers for the table and, for the figure,
    {'model_log_p', 'true_log_p', 'truth', 'generator', 'revised'}.
  """
  true = true or truth(config.data.toy2d_name, num)
  points, area = density2d.grid(num)
  temperature = chain_temperature(config)
  # The EBM's plain forward pass, as the OOD evaluator and notebook use it.
  energy_fn = ood.make_energy_fn(models, mesh=None)
  neg_energy = -np.asarray(energy_fn(state.ebm, jnp.asarray(points,
                                                            jnp.float32)),
                           np.float64)
  model_log_p = density2d.normalized_log_density(neg_energy / temperature,
                                                 area)
  result = {'reference': true.kind, 'temperature': temperature, **true.floor,
            **density2d.grid_divergences(true.log_p, model_log_p, area)}
  result.update(best_temperature_divergences(true.log_p, neg_energy, area))
  result['off_support_mass'] = density2d.off_support_mass(
      true.log_p, model_log_p, area)
  if true.modes is not None:
    result['num_modes'] = len(true.modes[0])
    result.update(density2d.mode_masses(model_log_p, points, area,
                                        *true.modes))
  samples = draw_samples(config, models, state, num_samples, seed)
  reference = true.sample(num_samples, np.random.default_rng(seed + 1))
  second = true.sample(num_samples, np.random.default_rng(seed + 2))
  result['ed_floor'] = density2d.energy_distance(second, reference)
  result['hist_tv_floor'] = density2d.histogram_tv(second, reference)
  for kind in ('generator', 'revised'):
    x = samples[kind]
    if x is None or not np.all(np.isfinite(x)):
      result[f'ed_{kind}'] = result[f'hist_tv_{kind}'] = None
      continue
    result[f'ed_{kind}'] = density2d.energy_distance(x, reference)
    result[f'hist_tv_{kind}'] = density2d.histogram_tv(x, reference)
    if true.modes is not None:  # The samples' share of each mode.
      shares = density2d.sample_mode_shares(x, *true.modes)
      result[f'mode_shares_{kind}'] = shares['shares']
      result[f'mode_tv_{kind}'] = shares['mode_tv']
    if not true.heldout and true.modes is not None:  # 8gaussians
      coverage = density2d.mode_coverage(true.name, x, _MODE_STD)
      result[f'modes_{kind}'] = int(coverage['modes_covered'])
      result[f'in_modes_{kind}'] = coverage['fraction_in_modes']
      result[f'balance_{kind}'] = coverage['min_mode_share']
  arrays = {'model_log_p': model_log_p, 'true_log_p': true.log_p,
            'truth': reference, **samples}
  return result, arrays
