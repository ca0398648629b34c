"""Exact-density benchmark of dual-MCMC teaching and its ablations on 2-D data.

  python benchmarks/toy2d.py --out_dir=runs/toy2d_benchmark \
      [--densities=8gaussians,rings] [--variants=full,noise_init_ebm] \
      [--steps=800] [--batch_size=128]
  python benchmarks/toy2d.py --config=configs/toy2d.py --workdir=runs/toy2d
  python benchmarks/toy2d.py --merge_from=runs/a,runs/b --out_dir=runs/ab

The first form trains, in-process, one model per (density, variant) on
`configs/toy2d.py` with `--steps` iterations at `--batch_size`, then scores
it; the second scores the latest checkpoint of a workdir trained with
`main.py` (the density is the config's `data.toy2d_name`) and writes its
figure into the workdir.

Scores (all against the true density or fresh true samples):

* `kl`, `tv`: the learned density exp(-E(x) / T) normalised on a
  `--grid` x `--grid` midpoint grid over [-4.5, 4.5]^2
  (`density2d.normalized_log_density`) against the true density on the same
  cells (`density2d.grid_divergences`): KL(true || model) in nats and total
  variation. `true_mass` is the true density's mass on the grid. pinwheel
  has no tractable density, so its reference is a kernel density estimate
  from 2M samples (`reference: estimated`); `reference_floor_kl/tv` is the
  distance between two such estimates from different seeds, the noise of the
  reference itself. T is the temperature of the x-chain: the reference rule
  `x -= s^2/2 dE/dx + n eps` is Langevin dynamics for exp(-E / T) with
  T = n^2 / s^2 (0.01 in configs/toy2d.py), the same (n / s)^2 the EBM loss
  is divided by, so exp(-E / T) is the density the EBM is fit to and its
  chains sample (T = 1 for the paper's rule). Normalising exp(-E) instead
  would score a 100x flatter density than the model's own samples.
  `kl_best_t` / `tv_best_t` are a diagnostic, not a score: the smallest KL
  (TV) of exp(-E / t) over a log grid of temperatures t (`best_t`), which
  tells a wrongly shaped energy from a right shape at the wrong temperature
  (short-run chains need not sample exp(-E / T) at all).
* `ed_generator`, `ed_revised`: energy distance (`density2d.energy_distance`)
  of `--num_samples` generator samples G(z) and of their x-revision under
  the EBM (the training x-chain) against as many fresh true samples;
  `ed_floor` is that of a second true sample set (~0).
* `modes_generator`, `modes_revised`: true modes holding a sample (within
  3 std of the centre), for the Gaussian mixtures; `in_modes_*` is the
  fraction of samples inside a mode and `balance_*` the smallest mode's
  share times the number of modes (`density2d.mode_coverage`).

Variants (config.training switches, configs/default.py):

* `full`: dual-MCMC teaching, the reference method.
* `no_z_revision`: z1 = z0, the inference model's draw used directly.
* `no_x_teaching`: the generator loses its Sfactor term ||G(z) - x1||^2.
* `cooperative`: the generator learns only from x1 (no reconstruction, no
  inference model, no z-chain): cooperative learning.
* `noise_init_ebm`: no generator; the EBM's negatives are one short-run
  chain from uniform noise on [-4, 4]^2.

Budget: every variant runs the same iterations at the same batch size and
the same chain settings. Per iteration the full method spends 2 x
`langevin_x.steps` EBM gradients (two x-chains) and `langevin_z.steps`
generator gradients (z-chain). `noise_init_ebm` gets the EBM gradients of
both chains as one chain of 2 x `langevin_x.steps` steps (the revised
samples it is scored on come from that chain too); the variants without a
z-chain do not get its gradients back. The table lists each variant's
Langevin gradients per iteration.

Outputs in `--out_dir`: toy2d_benchmark.json (every number),
toy2d_benchmark.md (the table and, per density, which variant wins),
toy2d_<density>.png (per variant: true density, learned density, generator
samples, revised samples) and toy2d_benchmark.png (all densities in one
figure), arrays_<density>_<variant>.npz (grid densities and samples,
to re-plot without retraining). `--merge_from` combines the outputs of runs
made in parallel (say, half the densities each) into one table and figure.
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
from typing import Any

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
from configs import toy2d as toy2d_config
from dual_mcmc_jax import experiment
from dual_mcmc_jax import runtime
from dual_mcmc_jax import langevin
from dual_mcmc_jax import networks
from dual_mcmc_jax import sampling
from dual_mcmc_jax import toy2d
from dual_mcmc_jax.evaluators import density2d
from dual_mcmc_jax import train_state as ts

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines the command-line flags.

  Called only when this file runs as a script, so that tests can import the
  module in a process that also imported main.py (same flag names).
  """
  flags.DEFINE_list('densities', [n for n in toy2d.NAMES if n != '25gaussians'],
                    'Densities to train on (default: all but 25gaussians, to '
                    'keep the default run within ~30 min on 2 CPU cores).')
  flags.DEFINE_list('variants', None, 'Variants (default: all).')
  flags.DEFINE_integer('steps', 800, 'Training iterations per run.')
  flags.DEFINE_integer('batch_size', 128, 'Training batch size.')
  flags.DEFINE_integer('grid', 180, 'Grid cells per axis (180: cells of 0.05, '
                       'half the narrowest std of the densities).')
  flags.DEFINE_integer('num_samples', 2000, 'Samples per energy distance.')
  flags.DEFINE_integer('seed', 0, 'Seeds training (config.training.seed) and '
                       'the evaluation samples.')
  flags.DEFINE_string('out_dir', 'runs/toy2d_benchmark', 'Output directory.')
  flags.DEFINE_string('workdir', None, 'Score this trained workdir instead of '
                      'training (needs --config).')
  config_flags.DEFINE_config_file('config', None, 'Config of --workdir.')
  flags.DEFINE_list('merge_from', None, 'Instead of training, combine the '
                    'outputs of earlier runs (their --out_dir) into --out_dir.')


# name -> (config overrides, description). Overrides are (group, field,
# value); a callable value is applied to the config's current value.
VARIANTS: dict[str, tuple[tuple[tuple[str, str, Any], ...], str]] = {
    'full': ((), 'dual-MCMC teaching (reference)'),
    'no_z_revision': ((('training', 'z_revision', False),),
                      'no z-revision: z1 = z0 ~ q(z|x)'),
    'no_x_teaching': ((('training', 'generator_x_teaching', False),),
                      'generator not taught by x1'),
    'cooperative': ((('training', 'generator_data_teaching', False),),
                    'cooperative: G learns from x1 only, no q(z|x)'),
    'noise_init_ebm': ((('training', 'x_chain_init', 'noise'),
                        ('langevin_x', 'steps', lambda n: 2 * n)),
                       'EBM alone, short-run chain from noise'),
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
  """Langevin gradient evaluations per training iteration, by network."""
  t = config.training
  x_steps, z_steps = int(config.langevin_x.steps), int(config.langevin_z.steps)
  if t.x_chain_init == 'noise':
    return {'ebm': x_steps, 'generator': 0}
  chains = 2 if t.second_x_chain else 1
  z_chain = t.generator_data_teaching and t.z_revision
  return {'ebm': chains * x_steps, 'generator': z_steps if z_chain else 0}


def chain_temperature(config: ml_collections.ConfigDict) -> float:
  """T such that the x-chain is Langevin dynamics for exp(-E / T).

  A step x -= c dE/dx + sigma eps is the Euler step of Langevin dynamics
  for exp(-U) with c dE/dx = (sigma^2 / 2) dU/dx, i.e. U = E / T with
  T = sigma^2 / (2 c).

  Args:
    config: the run's configuration (config.langevin_x).

  Returns:
    T (n^2 / s^2 for the reference rule, 1 for the paper's).
  """
  coef, noise_std = langevin.step_coefficients(
      langevin.LangevinSettings.from_config(config.langevin_x))
  return noise_std * noise_std / (2.0 * coef)


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
  """Trains on `config.data.toy2d_name` for `num_steps` iterations.

  Batches are drawn uniformly (with replacement) from a fixed set of
  `config.data.toy2d_num_points` true samples, like the input pipeline's
  fixed training split.

  Args:
    config: the run's configuration.
    num_steps: iterations.

  Returns:
    (models, final state, {'seconds', 'compile_seconds', 'diverged_at'}),
    `diverged_at` the first checked step whose metrics were unhealthy (NaN
    loss or exploding energy difference; training stops there) or None.
  """
  seed = int(config.training.seed)
  batch = int(config.training.batch_size)
  num_points = int(config.data.toy2d_num_points)
  data = toy2d.sample(config.data.toy2d_name, num_points,
                      np.random.default_rng(seed))
  exp = experiment.build(config,
                         steps_per_epoch=max(num_points // batch, 1))
  models, step_fn, state = exp.models, exp.train_step, exp.init_state()
  rng = np.random.default_rng(seed + 1)
  start = time.perf_counter()
  compile_seconds = 0.0
  diverged_at = None
  for i in range(num_steps):
    state, metrics = step_fn(state, data[rng.integers(num_points, size=batch)])
    if i == 0:
      jax.block_until_ready(metrics)
      compile_seconds = time.perf_counter() - start
    # A NaN stays NaN, so checking every 100 steps catches it without a
    # host round-trip per step.
    if (i + 1) % 100 == 0 or i + 1 == num_steps:
      if not bool(metrics['healthy']):
        diverged_at = i + 1
        logging.warning('%s: unhealthy at step %d (loss_e=%s, energy_diff=%s)',
                        config.data.toy2d_name, i + 1, metrics['loss_e'],
                        metrics['energy_diff'])
        break
  jax.block_until_ready(state)
  return models, state, {'seconds': time.perf_counter() - start,
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
          reference: tuple[np.ndarray, str, dict[str, float]] | None = None
          ) -> tuple[dict[str, Any], dict[str, np.ndarray | None]]:
  """All benchmark numbers of one trained model.

  Args:
    config: the run's configuration.
    models, state: the trained models.
    num: grid cells per axis.
    num_samples: samples per energy distance.
    seed: evaluation seed (true samples use seed + 1 and seed + 2).
    reference: `reference_log_density(...)` if already computed.

  Returns:
    (numbers, arrays): the numbers for the table and, for the figure,
    {'model_log_p', 'true_log_p', 'generator', 'revised'}.
  """
  name = config.data.toy2d_name
  points, area = density2d.grid(num)
  true_log_p, kind, floor = reference or reference_log_density(
      name, points, num)

  @jax.jit
  def neg_energy(ebm: ts.NetState, x: jax.Array) -> jax.Array:
    return -models.ebm.apply({'params': ebm.params, **ebm.state}, x,
                             update_stats=False)

  temperature = chain_temperature(config)
  model_log_p = density2d.normalized_log_density(
      np.asarray(neg_energy(state.ebm, jnp.asarray(points, jnp.float32)),
                 np.float64) / temperature, area)
  result = {'reference': kind, 'temperature': temperature, **floor,
            **density2d.grid_divergences(true_log_p, model_log_p, area)}
  result.update(best_temperature_divergences(true_log_p, model_log_p *
                                             temperature, area))
  samples = draw_samples(config, models, state, num_samples, seed)
  truth = toy2d.sample(name, num_samples, np.random.default_rng(seed + 1))
  other_truth = toy2d.sample(name, num_samples,
                             np.random.default_rng(seed + 2))
  result['ed_floor'] = density2d.energy_distance(other_truth, truth)
  centres = toy2d.modes(name)
  if centres is not None:
    result['num_modes'] = len(centres)
  for kind_of_sample in ('generator', 'revised'):
    x = samples[kind_of_sample]
    if x is None or not np.all(np.isfinite(x)):
      result[f'ed_{kind_of_sample}'] = None
      continue
    result[f'ed_{kind_of_sample}'] = density2d.energy_distance(x, truth)
    if centres is not None:
      coverage = density2d.mode_coverage(name, x, _MODE_STD)
      result[f'modes_{kind_of_sample}'] = int(coverage['modes_covered'])
      result[f'in_modes_{kind_of_sample}'] = coverage['fraction_in_modes']
      result[f'balance_{kind_of_sample}'] = coverage['min_mode_share']
  arrays = {'model_log_p': model_log_p, 'true_log_p': true_log_p,
            'truth': truth, **samples}
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
      _density_panel(row[1], a['model_log_p'], num, f'full KL {r["kl"]:.0f}')
      _scatter_panel(row[2], a['generator'], 'full: G(z)')
      _scatter_panel(row[3], a['revised'], 'full: revised')
      col = 4
    for variant in others:
      r = runs[variant]['numbers']
      _density_panel(row[col], runs[variant]['arrays']['model_log_p'], num,
                     f'{variant} KL {r["kl"]:.0f}', fontsize=5.5)
      col += 1
  fig.tight_layout(pad=0.3)
  fig.savefig(path, dpi=72)
  plt.close(fig)


# --- Table -------------------------------------------------------------------


def _fmt(value: Any, digits: int = 3) -> str:
  if value is None:
    return '-'
  if isinstance(value, float):
    return f'{value:.{digits}f}'
  return str(value)


def markdown_table(rows: list[dict[str, Any]]) -> str:
  """The results as a Markdown table, then the winner per density and score.

  Args:
    rows: one dict per (density, variant), as written to the JSON.

  Returns:
    Markdown text.
  """
  lines = ['| density | variant | KL | TV | KL, TV at best t (t) | ED G(z) | '
           'ED revised | modes G / revised | Langevin grads / iter (E + G) | '
           'train s |',
           '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |']
  for r in rows:
    modes = '-'
    if 'num_modes' in r:
      modes = (f'{_fmt(r.get("modes_generator"))} / '
               f'{_fmt(r.get("modes_revised"))} of {r["num_modes"]}')
    note = ' (diverged)' if r['diverged_at'] else ''
    est = ' (est.)' if r['reference'] == 'estimated' else ''
    lines.append(
        f'| {r["density"]}{est} | {r["variant"]}{note} | {_fmt(r["kl"])} | '
        f'{_fmt(r["tv"])} | {_fmt(r["kl_best_t"], 2)}, '
        f'{_fmt(r["tv_best_t"], 2)} ({r["best_t"]:.2g}) | '
        f'{_fmt(r["ed_generator"], 4)} | '
        f'{_fmt(r["ed_revised"], 4)} | {modes} | '
        f'{r["grads_ebm"]} + {r["grads_generator"]} | '
        f'{r["train_seconds"]:.0f} |')
  lines += ['', 'Lowest per density (KL, TV, energy distance of the revised '
            'samples, of the generator samples):', '',
            '| density | KL | TV | ED revised | ED G(z) |',
            '| --- | --- | --- | --- | --- |']
  for density in dict.fromkeys(r['density'] for r in rows):
    mine = [r for r in rows if r['density'] == density]
    cells = []
    for key in ('kl', 'tv', 'ed_revised', 'ed_generator'):
      scored = [r for r in mine if r[key] is not None and math.isfinite(r[key])]
      best = min(scored, key=lambda r, k=key: r[k]) if scored else None
      cells.append(f'{best["variant"]} ({_fmt(best[key], 3)})' if best
                   else '-')
    lines.append(f'| {density} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def _row(density: str, variant: str, config: ml_collections.ConfigDict,
         numbers: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
  grads = langevin_gradients(config)
  return {'density': density, 'variant': variant,
          'description': VARIANTS[variant][1],
          'steps': int(config.training.num_train_steps),
          'batch_size': int(config.training.batch_size),
          'grads_ebm': grads['ebm'], 'grads_generator': grads['generator'],
          'train_seconds': info['seconds'],
          'compile_seconds': info['compile_seconds'],
          'diverged_at': info['diverged_at'], **numbers}


def run_benchmark(densities: list[str], variants: list[str], steps: int,
                  batch_size: int, num: int, num_samples: int, seed: int,
                  out_dir: str) -> list[dict[str, Any]]:
  """Trains and scores every (density, variant); writes tables and figures.

  Args:
    densities: names from `toy2d.NAMES`.
    variants: keys of `VARIANTS`.
    steps: iterations per run.
    batch_size: training batch size.
    num: grid cells per axis.
    num_samples: samples per energy distance.
    seed: training and evaluation seed.
    out_dir: output directory.

  Returns:
    The rows of the table.
  """
  for name in densities:
    toy2d.check_name(name)
  os.makedirs(out_dir, exist_ok=True)
  base = toy2d_config.get_config()
  base.training.num_train_steps = steps
  base.training.batch_size = batch_size
  base.training.seed = seed
  rows, results = [], {}
  start = time.perf_counter()
  for name in densities:
    points, _ = density2d.grid(num)
    reference = reference_log_density(name, points, num)
    results[name] = {}
    for variant in variants:
      config = variant_config(base, variant)
      config.data.toy2d_name = name
      models, state, info = train(config, steps)
      numbers, arrays = score(config, models, state, num, num_samples, seed,
                              reference)
      rows.append(_row(name, variant, config, numbers, info))
      np.savez_compressed(
          os.path.join(out_dir, f'arrays_{name}_{variant}.npz'),
          **{k: v for k, v in arrays.items() if v is not None})
      results[name][variant] = {'numbers': numbers, 'arrays': arrays}
      logging.info('%s / %s: %s', name, variant, json.dumps(rows[-1]))
      _write_tables(out_dir, rows, time.perf_counter() - start)
    density_figure(os.path.join(out_dir, f'toy2d_{name}.png'), name,
                   results[name], num)
  summary_figure(os.path.join(out_dir, 'toy2d_benchmark.png'), results, num)
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
      data = json.load(f)
    seconds = max(seconds, data['wall_seconds'])  # Sources ran in parallel.
    for r in data['rows']:
      rows.append(r)
      with np.load(os.path.join(
          source, f'arrays_{r["density"]}_{r["variant"]}.npz')) as npz:
        arrays = {k: npz[k] for k in npz.files}
      arrays.setdefault('generator', None)
      results.setdefault(r['density'], {})[r['variant']] = {
          'numbers': r, 'arrays': arrays}
  num = int(round(math.sqrt(len(next(iter(
      next(iter(results.values())).values()))['arrays']['model_log_p']))))
  _write_tables(out_dir, rows, seconds)
  for name, runs in results.items():
    density_figure(os.path.join(out_dir, f'toy2d_{name}.png'), name, runs,
                   num)
  summary_figure(os.path.join(out_dir, 'toy2d_benchmark.png'), results, num)
  return rows


def score_workdir(config: ml_collections.ConfigDict, workdir: str,
                  num: int, num_samples: int, seed: int) -> dict[str, Any]:
  """Scores the latest checkpoint of a workdir trained with main.py.

  Args:
    config: the workdir's configuration.
    workdir: the training workdir.
    num, num_samples, seed: as for `run_benchmark`.

  Returns:
    The numbers; the figure goes to <workdir>/toy2d_benchmark.png.
  """
  # pylint: disable=g-import-not-at-top
  from dual_mcmc_jax import checkpointing
  # pylint: enable=g-import-not-at-top
  models, state = checkpointing.load_state(config, workdir)
  numbers, arrays = score(config, models, state, num, num_samples, seed)
  numbers = {'density': config.data.toy2d_name, 'step': int(state.step),
             **numbers}
  density_figure(os.path.join(workdir, 'toy2d_benchmark.png'),
                 config.data.toy2d_name,
                 {'checkpoint': {'numbers': numbers, 'arrays': arrays}}, num)
  return numbers


def main(argv):
  del argv
  if FLAGS.workdir:
    if FLAGS.config is None:
      raise app.UsageError('--workdir needs --config')
    print(json.dumps(score_workdir(FLAGS.config, FLAGS.workdir, FLAGS.grid,
                                   FLAGS.num_samples, FLAGS.seed)))
    return
  if FLAGS.merge_from:
    print(markdown_table(merge_runs(FLAGS.merge_from, FLAGS.out_dir)))
    return
  variants = FLAGS.variants or list(VARIANTS)
  for v in variants:
    if v not in VARIANTS:
      raise app.UsageError(f'--variants names {v!r}; allowed: '
                           f'{", ".join(VARIANTS)}')
  start = time.perf_counter()
  rows = run_benchmark(FLAGS.densities, variants, FLAGS.steps,
                       FLAGS.batch_size, FLAGS.grid, FLAGS.num_samples,
                       FLAGS.seed, FLAGS.out_dir)
  print(markdown_table(rows))
  print(f'Wall time {time.perf_counter() - start:.0f} s; tables and figures '
        f'in {FLAGS.out_dir}')


if __name__ == '__main__':
  define_flags()
  runtime.run_main(main)
