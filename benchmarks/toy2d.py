"""Exact-density benchmark of dual-MCMC teaching and its variants on 2-D data.

  python benchmarks/toy2d.py --out_dir=runs/toy2d_benchmark \
      [--densities=8gaussians,banana] [--variants=full,no_jumps] \
      [--seeds=0,1,2] [--steps=3000] [--config=configs/toy2d.py ...]
  python benchmarks/toy2d.py --config=configs/toy2d.py --workdir=runs/toy2d
  python benchmarks/toy2d.py --merge_from=runs/a,runs/b --out_dir=runs/ab

The first form trains, in-process, one model per (density, variant, seed) on
`--config` (default `configs/toy2d.py`, its iterations and batch unless
`--steps` / `--batch_size` say otherwise), batches drawn through the data
pipeline as `main.py` draws them, then scores it; the table gives the mean
and spread over seeds. The second scores the latest checkpoint of a workdir
trained with `main.py` (the density is the config's `data.toy2d_name`, or
`--density` for an npz run of a held-out density) and writes its figure into
the workdir.

Densities: those of `dual_mcmc_jax/toy2d.py` (the config's `toy2d` source)
and the held-out `banana` and `unequal3` of `benchmarks/heldout2d.py`, which
the benchmark writes to an .npz file and trains on through
`config.data.dataset='npz'`, as a user's own points would be.

Scores (all against the true density or fresh true samples):

* `kl`, `tv`: the learned density exp(-E(x) / T) normalised on a
  `--grid` x `--grid` midpoint grid over [-4.5, 4.5]^2
  (`density2d.normalized_log_density`) against the true density on the same
  cells (`density2d.grid_divergences`): KL(true || model) in nats and total
  variation. T is the temperature of the x-chain (`chain_temperature`: 1 for
  the paper's Langevin rule of configs/toy2d.py; (n / s)^2 for the
  reference rule), the density the chain samples and the EBM is fit to.
  pinwheel has no tractable density, so its reference is a kernel density
  estimate from 2M samples (`reference: estimated`), whose own noise is
  `reference_floor_kl/tv`. `kl_best_t` / `tv_best_t` are a diagnostic, not a
  score: the smallest KL (TV) of exp(-E / t) over a log grid of t (`best_t`),
  which tells a wrongly shaped energy from a right shape at the wrong
  temperature.
* `mode_mass_tv`, `mode_masses`: for mixtures (8gaussians, unequal3), the
  learned density's mass around each mode (cells nearest its centre) against
  the true weight (`density2d.mode_masses`); `mode_mass_tv` is the part of
  the TV that the mode weights alone cause.
* `ed_generator`, `ed_revised`: energy distance (`density2d.energy_distance`)
  of `--num_samples` generator samples G(z) and of their x-revision under
  the EBM (the EBM's negative chain, as configured) against as many fresh
  true samples; `ed_floor` is that of a second true sample set (~0).
* `modes_generator`, `modes_revised`: 8gaussians modes holding a sample
  (within 3 std of the centre; `density2d.mode_coverage`).
* `diverged_at`: the first checked step with a NaN loss or an exploding
  energy difference (training stops there; the benchmark never rolls back).

Variants (`VARIANTS`: config overrides on `--config`): `full` is the config
itself; the ablations remove one teaching signal (`no_z_revision`,
`no_x_teaching`, `cooperative`, `noise_init_ebm`); the remedy rows turn the
config's Metropolis jumps, replay buffer or energy penalty off (`no_jumps`,
`no_replay`, `no_energy_l2`), start no negative chain at the generator
(`all_from_buffer`), or replace jumps and buffer by another remedy for
separated modes (`long_chains`, `data_negatives`); `reference_chain` uses the
image configs' chain rule and loss (the toy config before these remedies).

Budget: every variant of a row runs the same iterations at the same batch
size. The table lists each variant's network evaluations in the chains per
iteration (`langevin_gradients`).

Outputs in `--out_dir`: toy2d_benchmark.json (every number of every seed),
toy2d_benchmark.md (the table: mean +- standard deviation over seeds, and
the lowest variant per density), toy2d_<density>.png (per variant, first
seed: true density, learned density, generator samples, revised samples),
toy2d_benchmark.png (all densities and variants in one figure),
toy2d_densities.png (truth and learned density of `full`, the README's),
arrays_<density>_<variant>_<seed>.npz (grid densities and samples).
`--merge_from` combines the outputs of runs made in parallel.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import sys
import time
from typing import Any, Callable

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import heldout2d
from configs import toy2d as toy2d_config
from dual_mcmc_jax import data
from dual_mcmc_jax import experiment
from dual_mcmc_jax import runtime
from dual_mcmc_jax import langevin
from dual_mcmc_jax import networks
from dual_mcmc_jax import sampling
from dual_mcmc_jax import toy2d
from dual_mcmc_jax.evaluators import density2d
from dual_mcmc_jax.evaluators import ood
from dual_mcmc_jax import train_state as ts

FLAGS = flags.FLAGS
DENSITIES = tuple(n for n in toy2d.NAMES if n != '25gaussians') + (
    heldout2d.NAMES)


def define_flags() -> None:
  """Defines the command-line flags.

  Called only when this file runs as a script, so that tests can import the
  module in a process that also imported main.py (same flag names).
  """
  flags.DEFINE_list('densities', list(DENSITIES),
                    'Densities to train on: toy2d names and the held-out '
                    f'{", ".join(heldout2d.NAMES)} (default: all but '
                    '25gaussians).')
  flags.DEFINE_list('variants', ['full'], 'Variants (VARIANTS).')
  flags.DEFINE_list('seeds', ['0', '1', '2'], 'Training seeds '
                    '(config.training.seed); each also seeds its scoring.')
  flags.DEFINE_integer('steps', 0, 'Training iterations per run; 0: the '
                       "config's training.num_train_steps.")
  flags.DEFINE_integer('batch_size', 0, "Training batch size; 0: the config's.")
  flags.DEFINE_integer('grid', 180, 'Grid cells per axis (180: cells of 0.05, '
                       'half the narrowest std of the densities).')
  flags.DEFINE_integer('num_samples', 2000, 'Samples per energy distance.')
  flags.DEFINE_string('out_dir', 'runs/toy2d_benchmark', 'Output directory.')
  flags.DEFINE_string('workdir', None, 'Score this trained workdir instead of '
                      'training.')
  flags.DEFINE_string('density', None, 'With --workdir: the held-out density '
                      'an npz run was trained on.')
  config_flags.DEFINE_config_file('config', None, 'Training config '
                                  '(default: configs/toy2d.py).')
  flags.DEFINE_list('merge_from', None, 'Instead of training, combine the '
                    'outputs of earlier runs (their --out_dir) into --out_dir.')


_NO_JUMPS = ('langevin_x', 'jump_std', 0.0)
_NO_REPLAY = ('training', 'replay_buffer_size', 0)
# name -> (config overrides, description). Overrides are (group, field,
# value); a callable value is applied to the config's current value.
VARIANTS: dict[str, tuple[tuple[tuple[str, str, Any], ...], str]] = {
    'full': ((), 'dual-MCMC teaching, the config as it is'),
    'no_z_revision': ((('training', 'z_revision', False),),
                      'no z-revision: z1 = z0 ~ q(z|x)'),
    'no_x_teaching': ((('training', 'generator_x_teaching', False),),
                      'generator not taught by x1'),
    'cooperative': ((('training', 'generator_data_teaching', False),),
                    'cooperative: G learns from x1 only, no q(z|x)'),
    'noise_init_ebm': ((('training', 'x_chain_init', 'noise'),
                        ('langevin_x', 'steps', lambda n: 2 * n)),
                       'EBM alone, short-run chain from noise'),
    'no_jumps': ((_NO_JUMPS,), 'no Metropolis jumps in the negative chain'),
    'no_replay': ((_NO_REPLAY,), 'no replay buffer: every negative chain '
                  'starts at generator samples'),
    'no_energy_l2': ((('loss', 'energy_l2', 0.0),), 'no energy penalty'),
    'all_from_buffer': ((('training', 'replay_fraction', 1.0),
                         ('langevin_x', 'jump_std', 3.0)),
                        'every negative chain continues from the buffer '
                        '(none starts at G(z)), jumps of std 3'),
    'long_chains': ((_NO_JUMPS, _NO_REPLAY, ('training', 'long_chains', 32),
                     ('training', 'long_chain_steps', 300)),
                    'no jumps, no buffer; 32 negatives run 300 more steps'),
    'data_negatives': ((_NO_JUMPS, _NO_REPLAY,
                        ('training', 'negative_chain_init', 'data')),
                       'no jumps, no buffer; negative chains start at the '
                       'data'),
    'reference_chain': ((_NO_JUMPS, _NO_REPLAY, ('loss', 'energy_l2', 0.0),
                         ('langevin_x', 'rule', 'reference'),
                         ('langevin_x', 'step_size', 0.1),
                         ('langevin_x', 'noise', 0.01),
                         ('loss', 'ebm_temperature_scaling', True)),
                        "the image configs' chain rule and EBM loss"),
}
_MODE_STD = 3.0  # A sample is in a mode within this many stds (mode_coverage).


def variant_config(base: ml_collections.ConfigDict, variant: str
                   ) -> ml_collections.ConfigDict:
  """`base` with a variant's overrides applied.

  Args:
    base: the training configuration.
    variant: a key of `VARIANTS`.

  Returns:
    A modified copy.
  """
  if variant not in VARIANTS:
    raise ValueError(f'--variants names {variant!r}; allowed: '
                     f'{", ".join(VARIANTS)}')
  config = copy.deepcopy(base)
  for group, field, value in VARIANTS[variant][0]:
    config[group][field] = value(config[group][field]) if callable(
        value) else value
  return config


def langevin_gradients(config: ml_collections.ConfigDict) -> dict[str, int]:
  """Langevin gradient evaluations per training iteration, by network.

  Long chains count in batch-equivalents (`long_chains / batch_size` of a
  chain per step); Metropolis jumps add two EBM forward passes per step of
  the negative chain, not counted here.
  """
  t = config.training
  x_steps, z_steps = int(config.langevin_x.steps), int(config.langevin_z.steps)
  if t.x_chain_init == 'noise':
    return {'ebm': x_steps, 'generator': 0}
  chains = 2 if (t.second_x_chain or
                 t.get('negative_chain_init', 'generator') == 'data') else 1
  extra = int(t.get('long_chains', 0)) * int(t.get('long_chain_steps', 0))
  z_chain = t.generator_data_teaching and t.z_revision
  return {'ebm': chains * x_steps + round(extra / int(t.batch_size)),
          'generator': z_steps if z_chain else 0}


def chain_temperature(config: ml_collections.ConfigDict) -> float:
  """T such that the x-chain is Langevin dynamics for exp(-E / T).

  `langevin.LangevinSettings.temperature`: n^2 / s^2 for the reference
  rule, 1 for the paper's.

  Args:
    config: the run's configuration (config.langevin_x).

  Returns:
    T.
  """
  return langevin.LangevinSettings.from_config(config.langevin_x).temperature


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


def density_config(base: ml_collections.ConfigDict, name: str,
                   npz_dir: str) -> ml_collections.ConfigDict:
  """`base` set to train on density `name`.

  A held-out density is written (once per seed and size) to
  `npz_dir/heldout_<name>_<seed>.npz` and read through the npz source.
  """
  config = copy.deepcopy(base)
  if name not in heldout2d.NAMES:
    config.data.dataset = 'toy2d'
    config.data.toy2d_name = name
    return config
  seed, n = int(config.training.seed), int(config.data.toy2d_num_points)
  path = os.path.join(npz_dir, f'heldout_{name}_{seed}_{n}.npz')
  if not os.path.exists(path):
    os.makedirs(npz_dir, exist_ok=True)
    heldout2d.write_npz(name, path, n, seed)
  config.data.dataset = 'npz'
  config.data.npz_path = path
  config.data.npz_key = 'points'
  return config


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


def train(config: ml_collections.ConfigDict, num_steps: int
          ) -> tuple[networks.Models, ts.TrainState, dict[str, Any]]:
  """Trains on the config's dataset for `num_steps` iterations.

  Batches come from `data.create_train_iterator`, as in `main.py`: the
  toy2d source's fixed set of `config.data.toy2d_num_points` points, or the
  points of an npz file, shuffled per epoch.

  Args:
    config: the run's configuration.
    num_steps: iterations.

  Returns:
    (models, final state, {'seconds', 'compile_seconds', 'diverged_at'}),
    `diverged_at` the first checked step whose metrics were unhealthy (NaN
    loss or exploding energy difference; training stops there) or None.
  """
  store = data.Store()
  info = data.get_dataset_info(config, store=store)
  batches = data.create_train_iterator(config, store=store)
  exp = experiment.build(config, steps_per_epoch=max(
      info.num_train_examples // int(config.training.batch_size), 1))
  step_fn, state = exp.train_step, exp.init_state()
  start = time.perf_counter()
  compile_seconds = 0.0
  diverged_at = None
  for i in range(num_steps):
    state, metrics = step_fn(state, next(batches))
    if i == 0:
      jax.block_until_ready(metrics)
      compile_seconds = time.perf_counter() - start
    # A NaN stays NaN, so checking every 100 steps catches it without a
    # host round-trip per step.
    if (i + 1) % 100 == 0 or i + 1 == num_steps:
      if not bool(metrics['healthy']):
        diverged_at = i + 1
        logging.warning('unhealthy at step %d (loss_e=%s, energy_diff=%s)',
                        i + 1, metrics['loss_e'], metrics['energy_diff'])
        break
  jax.block_until_ready(state)
  return exp.models, state, {'seconds': time.perf_counter() - start,
                             'compile_seconds': compile_seconds,
                             'diverged_at': diverged_at}


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
  lx = langevin.LangevinSettings.from_config(config.langevin_x)
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
    x1, _, _ = sampling.revise_x(models, state.ebm, x0, k_chain, lx)
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
    num: grid cells per axis.
    num_samples: samples per energy distance.
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
  if true.modes is not None:
    result['num_modes'] = len(true.modes[0])
    result.update(density2d.mode_masses(model_log_p, points, area,
                                        *true.modes))
  samples = draw_samples(config, models, state, num_samples, seed)
  reference = true.sample(num_samples, np.random.default_rng(seed + 1))
  result['ed_floor'] = density2d.energy_distance(
      true.sample(num_samples, np.random.default_rng(seed + 2)), reference)
  for kind in ('generator', 'revised'):
    x = samples[kind]
    if x is None or not np.all(np.isfinite(x)):
      result[f'ed_{kind}'] = None
      continue
    result[f'ed_{kind}'] = density2d.energy_distance(x, reference)
    if not true.heldout and true.modes is not None:  # 8gaussians
      coverage = density2d.mode_coverage(true.name, x, _MODE_STD)
      result[f'modes_{kind}'] = int(coverage['modes_covered'])
      result[f'in_modes_{kind}'] = coverage['fraction_in_modes']
      result[f'balance_{kind}'] = coverage['min_mode_share']
  arrays = {'model_log_p': model_log_p, 'true_log_p': true.log_p,
            'truth': reference, **samples}
  return result, arrays


# --- Pictures ----------------------------------------------------------------


def _density_panel(ax, log_p: np.ndarray, num: int, title: str,
                   fontsize: float = 7) -> None:
  p = np.exp(log_p).reshape(num, num).T  # [y, x] for imshow
  h = density2d.GRID_HALF_WIDTH
  # Clip the colour scale at a high quantile so one spike does not hide
  # the rest of a peaky learned density; antialiasing keeps mass on a few
  # cells visible when the panel has fewer pixels than the grid.
  vmax = max(float(np.quantile(p, 0.99)), 1e-12)
  ax.imshow(p, origin='lower', extent=(-h, h, -h, h), cmap='magma',
            vmin=0.0, vmax=vmax, interpolation='antialiased')
  _finish_panel(ax, title, fontsize)


def _scatter_panel(ax, x: np.ndarray | None, title: str) -> None:
  h = density2d.GRID_HALF_WIDTH
  if x is None:
    ax.text(0.5, 0.5, 'no generator', ha='center', va='center',
            transform=ax.transAxes, fontsize=7)
  else:
    ax.scatter(x[:, 0], x[:, 1], s=0.3, alpha=0.4, color='tab:blue')
  ax.set_xlim(-h, h)
  ax.set_ylim(-h, h)
  _finish_panel(ax, title)


def _finish_panel(ax, title: str, fontsize: float = 7) -> None:
  ax.set_aspect('equal')
  ax.set_xticks([])
  ax.set_yticks([])
  ax.set_title(title, fontsize=fontsize)


def _plt():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def density_figure(path: str, name: str, runs: dict[str, dict[str, Any]],
                   num: int) -> None:
  """One row per variant: true density, learned density, G and revised samples.

  Args:
    path: PNG to write.
    name: the density.
    runs: variant -> {'numbers', 'arrays'} of `score`.
    num: grid cells per axis.
  """
  plt = _plt()
  fig, axes = plt.subplots(len(runs), 4, figsize=(6.4, 1.6 * len(runs)),
                           squeeze=False)
  for row, (variant, run) in zip(axes, runs.items()):
    a, r = run['arrays'], run['numbers']
    label = ' (estimated)' if r['reference'] == 'estimated' else ''
    _density_panel(row[0], a['true_log_p'], num, f'{name}: true{label}')
    _density_panel(row[1], a['model_log_p'], num,
                   f'{variant}: KL {r["kl"]:.2f}, TV {r["tv"]:.2f}')
    _scatter_panel(row[2], a['generator'], 'generator samples')
    _scatter_panel(row[3], a['revised'], 'EBM-revised samples')
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)


def summary_figure(path: str, results: dict[str, dict[str, dict[str, Any]]],
                   num: int) -> None:
  """All densities: truth, full method (density, samples), ablation densities.

  Args:
    path: PNG to write.
    results: density -> variant -> {'numbers', 'arrays'}.
    num: grid cells per axis.
  """
  plt = _plt()
  variants = list(next(iter(results.values())))
  others = [v for v in variants if v != 'full']
  has_full = 'full' in variants
  cols = 1 + (3 if has_full else 0) + len(others)
  fig, axes = plt.subplots(len(results), cols,
                           figsize=(1.25 * cols, 1.45 * len(results)),
                           squeeze=False)
  for row, (name, runs) in zip(axes, results.items()):
    first = next(iter(runs.values()))
    est = ' (est.)' if first['numbers']['reference'] == 'estimated' else ''
    _density_panel(row[0], first['arrays']['true_log_p'], num,
                   f'{name}{est}')
    col = 1
    if has_full:
      a, r = runs['full']['arrays'], runs['full']['numbers']
      _density_panel(row[1], a['model_log_p'], num, f'full: TV {r["tv"]:.2f}')
      _scatter_panel(row[2], a['generator'], 'full: G(z)')
      _scatter_panel(row[3], a['revised'], 'full: revised')
      col = 4
    for variant in others:
      r = runs[variant]['numbers']
      _density_panel(row[col], runs[variant]['arrays']['model_log_p'], num,
                     f'{variant} TV {r["tv"]:.2f}', fontsize=5.5)
      col += 1
  fig.tight_layout(pad=0.3)
  fig.savefig(path, dpi=72)
  plt.close(fig)


def densities_figure(path: str, results: dict[str, dict[str, dict[str, Any]]],
                     num: int, variant: str = 'full') -> None:
  """Truth above, the learned exp(-E / T) / Z below, one column per density.

  Args:
    path: PNG to write.
    results: density -> variant -> {'numbers', 'arrays'}.
    num: grid cells per axis.
    variant: the variant shown (the first one where it is missing).
  """
  plt = _plt()
  fig, axes = plt.subplots(2, len(results),
                           figsize=(1.45 * len(results), 3.5), squeeze=False)
  for col, (name, runs) in enumerate(results.items()):
    run = runs.get(variant) or next(iter(runs.values()))
    _density_panel(axes[0, col], run['arrays']['true_log_p'], num, name)
    _density_panel(axes[1, col], run['arrays']['model_log_p'], num,
                   f'learned: TV {run["numbers"]["tv"]:.2f}')
  fig.tight_layout(pad=0.3)
  fig.savefig(path, dpi=90)
  plt.close(fig)


def _figures(out_dir: str, results: dict[str, dict[str, dict[str, Any]]],
             num: int) -> None:
  for name, runs in results.items():
    density_figure(os.path.join(out_dir, f'toy2d_{name}.png'), name, runs,
                   num)
  summary_figure(os.path.join(out_dir, 'toy2d_benchmark.png'), results, num)
  densities_figure(os.path.join(out_dir, 'toy2d_densities.png'), results, num)


# --- Table -------------------------------------------------------------------


_SCORES = ('kl', 'tv', 'mode_mass_tv', 'ed_generator', 'ed_revised')


def _mean_spread(values: list[Any]) -> tuple[float, float | None] | None:
  """(mean, standard deviation over seeds; None for one seed) or None."""
  finite = [v for v in values if v is not None and math.isfinite(v)]
  if not finite or len(finite) < len(values):
    return None  # A missing or diverged score makes the mean meaningless.
  spread = float(np.std(finite)) if len(finite) > 1 else None
  return float(np.mean(finite)), spread


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """One summary per (density, variant): mean and spread over its seeds.

  Args:
    rows: one dict per (density, variant, seed), as in the JSON.

  Returns:
    Dicts with 'density', 'variant', 'seeds', 'diverged' (runs that
    diverged), 'reference', the gradient budget, 'train_seconds' (mean) and,
    per score of `_SCORES`, (mean, std) or None.
  """
  groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
  for r in rows:
    groups.setdefault((r['density'], r['variant']), []).append(r)
  out = []
  for (density, variant), runs in groups.items():
    first = runs[0]
    summary = {'density': density, 'variant': variant,
               'seeds': [r['seed'] for r in runs],
               'diverged': sum(r['diverged_at'] is not None for r in runs),
               'reference': first['reference'],
               'grads_ebm': first['grads_ebm'],
               'grads_generator': first['grads_generator'],
               'train_seconds': float(np.mean([r['train_seconds']
                                               for r in runs]))}
    for key in _SCORES:
      summary[key] = (_mean_spread([r.get(key) for r in runs])
                      if key in first else None)
    out.append(summary)
  return out


def _fmt(value: Any, digits: int = 3) -> str:
  if value is None:
    return '-'
  if isinstance(value, tuple):
    if value[1] is None:
      return f'{value[0]:.{digits}f}'
    return f'{value[0]:.{digits}f} ± {value[1]:.{digits}f}'
  if isinstance(value, float):
    return f'{value:.{digits}f}'
  return str(value)


def markdown_table(rows: list[dict[str, Any]]) -> str:
  """The results as a Markdown table, then the lowest variant per density.

  Args:
    rows: one dict per (density, variant, seed), as written to the JSON.

  Returns:
    Markdown text: mean ± standard deviation over the seeds.
  """
  lines = ['| density | variant | seeds | KL | TV | mode-mass TV | '
           'ED G(z) | ED revised | diverged | Langevin grads / iter (E + G) '
           '| train s |',
           '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |']
  summaries = summarize(rows)
  for r in summaries:
    est = ' (est.)' if r['reference'] == 'estimated' else ''
    lines.append(
        f'| {r["density"]}{est} | {r["variant"]} | {len(r["seeds"])} | '
        f'{_fmt(r["kl"], 2)} | {_fmt(r["tv"], 2)} | '
        f'{_fmt(r["mode_mass_tv"], 2)} | {_fmt(r["ed_generator"])} | '
        f'{_fmt(r["ed_revised"])} | {r["diverged"]} | '
        f'{r["grads_ebm"]} + {r["grads_generator"]} | '
        f'{r["train_seconds"]:.0f} |')
  lines += ['', 'Lowest mean per density:', '',
            '| density | KL | TV | ED revised | ED G(z) |',
            '| --- | --- | --- | --- | --- |']
  for density in dict.fromkeys(r['density'] for r in summaries):
    mine = [r for r in summaries if r['density'] == density]
    cells = []
    for key in ('kl', 'tv', 'ed_revised', 'ed_generator'):
      scored = [r for r in mine if r[key] is not None]
      best = min(scored, key=lambda r, k=key: r[k][0]) if scored else None
      cells.append(f'{best["variant"]} ({best[key][0]:.3f})' if best
                   else '-')
    lines.append(f'| {density} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def _row(density: str, variant: str, config: ml_collections.ConfigDict,
         numbers: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
  grads = langevin_gradients(config)
  return {'density': density, 'variant': variant,
          'seed': int(config.training.seed),
          'description': VARIANTS[variant][1],
          'steps': int(config.training.num_train_steps),
          'batch_size': int(config.training.batch_size),
          'grads_ebm': grads['ebm'], 'grads_generator': grads['generator'],
          'train_seconds': info['seconds'],
          'compile_seconds': info['compile_seconds'],
          'diverged_at': info['diverged_at'], **numbers}


def base_config(config: ml_collections.ConfigDict | None, steps: int,
                batch_size: int) -> ml_collections.ConfigDict:
  """The benchmark's training config: `config` (or configs/toy2d.py)."""
  base = copy.deepcopy(config) if config is not None else (
      toy2d_config.get_config())
  if steps:
    base.training.num_train_steps = steps
  if batch_size:
    base.training.batch_size = batch_size
  return base


def run_one(base: ml_collections.ConfigDict, name: str, variant: str,
            seed: int, true: Truth, num: int, num_samples: int,
            out_dir: str) -> dict[str, Any]:
  """Trains and scores one (density, variant, seed); returns its row."""
  base = copy.deepcopy(base)
  base.training.seed = seed
  config = density_config(variant_config(base, variant), name, out_dir)
  models, state, info = train(config, int(config.training.num_train_steps))
  numbers, arrays = score(config, models, state, num, num_samples, seed, true)
  np.savez_compressed(
      os.path.join(out_dir, f'arrays_{name}_{variant}_{seed}.npz'),
      **{k: v for k, v in arrays.items() if v is not None})
  row = _row(name, variant, config, numbers, info)
  logging.info('%s / %s / seed %d: %s', name, variant, seed, json.dumps(row))
  return {'row': row, 'arrays': arrays}


def run_benchmark(densities: list[str], variants: list[str],
                  seeds: list[int], num: int, num_samples: int, out_dir: str,
                  config: ml_collections.ConfigDict | None = None,
                  steps: int = 0, batch_size: int = 0
                  ) -> list[dict[str, Any]]:
  """Trains and scores every (density, variant, seed); writes the outputs.

  Args:
    densities: toy2d names or held-out names (`DENSITIES`).
    variants: keys of `VARIANTS`.
    seeds: training seeds.
    num: grid cells per axis.
    num_samples: samples per energy distance.
    out_dir: output directory.
    config: the training config (default configs/toy2d.py).
    steps, batch_size: override the config's when > 0.

  Returns:
    The rows of the JSON, one per run.
  """
  for name in densities:
    if name not in heldout2d.NAMES:
      toy2d.check_name(name)
  base = base_config(config, steps, batch_size)
  for variant in variants:
    variant_config(base, variant)  # Fails early.
  os.makedirs(out_dir, exist_ok=True)
  rows, results = [], {}
  start = time.perf_counter()
  for name in densities:
    true = truth(name, num)
    results[name] = {}
    for variant in variants:
      for seed in seeds:
        run = run_one(base, name, variant, seed, true, num, num_samples,
                      out_dir)
        rows.append(run['row'])
        results[name].setdefault(variant, {'numbers': run['row'],
                                           'arrays': run['arrays']})
        _write_tables(out_dir, rows, time.perf_counter() - start)
  _figures(out_dir, results, num)
  return rows


def _write_tables(out_dir: str, rows: list[dict[str, Any]],
                  seconds: float) -> None:
  with open(os.path.join(out_dir, 'toy2d_benchmark.json'), 'w') as f:
    json.dump({'wall_seconds': seconds, 'rows': rows}, f, indent=1)
  with open(os.path.join(out_dir, 'toy2d_benchmark.md'), 'w') as f:
    f.write(markdown_table(rows))


def merge_runs(sources: list[str], out_dir: str) -> list[dict[str, Any]]:
  """Combines benchmark outputs (e.g. densities run in parallel) into one.

  Reads each source's toy2d_benchmark.json and arrays_*.npz, and writes the
  combined table, JSON and figures into `out_dir` without retraining.

  Args:
    sources: output directories of earlier runs.
    out_dir: where the combined outputs go.

  Returns:
    The combined rows.
  """
  os.makedirs(out_dir, exist_ok=True)
  rows, results, seconds = [], {}, 0.0
  for source in sources:
    with open(os.path.join(source, 'toy2d_benchmark.json')) as f:
      loaded = json.load(f)
    seconds = max(seconds, loaded['wall_seconds'])  # Sources ran in parallel.
    for r in loaded['rows']:
      rows.append(r)
      runs = results.setdefault(r['density'], {})
      if r['variant'] in runs:
        continue  # The figures show each variant's first seed.
      with np.load(os.path.join(source, f'arrays_{r["density"]}_'
                                f'{r["variant"]}_{r["seed"]}.npz')) as npz:
        arrays = {k: npz[k] for k in npz.files}
      arrays.setdefault('generator', None)
      runs[r['variant']] = {'numbers': r, 'arrays': arrays}
  num = int(round(math.sqrt(len(next(iter(
      next(iter(results.values())).values()))['arrays']['model_log_p']))))
  _write_tables(out_dir, rows, seconds)
  _figures(out_dir, results, num)
  return rows


def score_workdir(config: ml_collections.ConfigDict, workdir: str,
                  num: int, num_samples: int, seed: int,
                  density: str | None = None) -> dict[str, Any]:
  """Scores the latest checkpoint of a workdir trained with main.py.

  Args:
    config: the workdir's configuration.
    workdir: the training workdir.
    num, num_samples, seed: as for `run_benchmark`.
    density: the held-out density of an npz run (default: the config's
      `data.toy2d_name`).

  Returns:
    The numbers, with the workdir's recorded 'rollbacks'; the
    figure goes to <workdir>/toy2d_benchmark.png.
  """
  # pylint: disable=g-import-not-at-top
  from dual_mcmc_jax import checkpointing
  from dual_mcmc_jax import recovery
  # pylint: enable=g-import-not-at-top
  name = density or config.data.toy2d_name
  models, state = checkpointing.load_state(config, workdir)
  numbers, arrays = score(config, models, state, num, num_samples, seed,
                          truth(name, num))
  numbers = {'density': name, 'step': int(state.step),
             'rollbacks': len(recovery.load_rollbacks(workdir)), **numbers}
  density_figure(os.path.join(workdir, 'toy2d_benchmark.png'), name,
                 {'checkpoint': {'numbers': numbers, 'arrays': arrays}}, num)
  return numbers


def main(argv):
  del argv
  seeds = [int(s) for s in FLAGS.seeds]
  if FLAGS.workdir:
    config = FLAGS.config or toy2d_config.get_config()
    print(json.dumps(score_workdir(config, FLAGS.workdir, FLAGS.grid,
                                   FLAGS.num_samples, seeds[0],
                                   FLAGS.density)))
    return
  if FLAGS.merge_from:
    print(markdown_table(merge_runs(FLAGS.merge_from, FLAGS.out_dir)))
    return
  for name in FLAGS.densities:
    if name not in DENSITIES and name != '25gaussians':
      raise app.UsageError(f'--densities names {name!r}; allowed: '
                           f'{", ".join(DENSITIES + ("25gaussians",))}')
  for v in FLAGS.variants:
    if v not in VARIANTS:
      raise app.UsageError(f'--variants names {v!r}; allowed: '
                           f'{", ".join(VARIANTS)}')
  start = time.perf_counter()
  rows = run_benchmark(FLAGS.densities, FLAGS.variants, seeds, FLAGS.grid,
                       FLAGS.num_samples, FLAGS.out_dir, FLAGS.config,
                       FLAGS.steps, FLAGS.batch_size)
  print(markdown_table(rows))
  print(f'Wall time {time.perf_counter() - start:.0f} s; tables and figures '
        f'in {FLAGS.out_dir}')


if __name__ == '__main__':
  define_flags()
  runtime.run_main(main)
