"""Exact-density benchmark of dual-MCMC teaching and its variants on 2-D data.

  python benchmarks/toy2d.py --out_dir=runs/toy2d_benchmark \
      [--densities=8gaussians,banana] [--variants=full,no_jumps] \
      [--seeds=0,1,2] [--steps=4500] [--config=configs/toy2d.py ...]
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
  variation. T is the temperature of the x-chain
  (`toy2d_score.chain_temperature`: 1 for
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
* `hist_tv_generator`, `hist_tv_revised`: the TV between the same samples'
  histograms on a 24 x 24 grid (`density2d.histogram_tv`), which sees thin
  structure the energy distance averages away; `hist_tv_floor` is that of
  the second true sample set (not 0: 2,000 samples per set).
* `modes_generator`, `modes_revised`: 8gaussians modes holding a sample
  (within 3 std of the centre; `density2d.mode_coverage`).
* `mode_shares_generator`, `mode_tv_generator` (and `_revised`): for
  mixtures, the samples' share of each mode (nearest centre) and half the
  summed difference from the true weights (`density2d.sample_mode_shares`).
* `off_support_mass`: the learned density's mass outside the cells that
  hold 99.9% of the true mass (`density2d.off_support_mass`; the truth's
  own is 0.001): energy that fell where no data are.
* `trace` (with `--trace_every=N`): the scores every N iterations, beside
  that iteration's metrics (energies of data and negatives, how far each
  x-chain moved its samples, the generator's two loss terms); the table's
  second part and `toy2d_trace_<density>.png` show them.
* `diverged_at`: the first checked step with a NaN loss or an exploding
  energy difference (training stops there; the benchmark never rolls back).

Variants (`toy2d_variants.VARIANTS`: config overrides on `--config`, which
refuse to undo a `--config.` flag of the command): `full` is the config
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
toy2d_densities.png (truth, learned density and generator samples of
`full`, the README's), toy2d_trace_<density>.png (with --trace_every),
arrays_<density>_<variant>_<seed>.npz (grid densities and samples).
`--merge_from` combines the outputs of runs made in parallel.

This file trains and runs; `benchmarks/toy2d_score.py` computes the scores
and `benchmarks/toy2d_report.py` writes the tables and figures.
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
from typing import Any, Callable

from absl import app
from absl import flags
from absl import logging
from flax import traverse_util
import jax
import ml_collections
from ml_collections import config_flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from dual_mcmc_jax import runtime  # First: Ctrl-C is one line from here.
runtime.quiet_ctrl_c()
from benchmarks import heldout2d
from benchmarks import toy2d_report as report
from benchmarks import toy2d_score as score_lib
from benchmarks import toy2d_variants as variants_lib
from configs import toy2d as toy2d_config
from dual_mcmc_jax import data
from dual_mcmc_jax import experiment
from dual_mcmc_jax import networks
from dual_mcmc_jax import toy2d
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
  flags.DEFINE_list('variants', ['full'], 'Variants (toy2d_variants.VARIANTS).')
  flags.DEFINE_list('seeds', ['0', '1', '2'], 'Training seeds '
                    '(config.training.seed); each also seeds its scoring.')
  flags.DEFINE_integer('steps', 0, 'Training iterations per run; 0: the '
                       "config's training.num_train_steps.")
  flags.DEFINE_integer('batch_size', 0, "Training batch size; 0: the config's.")
  flags.DEFINE_integer('trace_every', 0, 'Also score every this many '
                       'iterations: the trace in the JSON and figure '
                       'toy2d_trace_<density>.png (0: only at the end).')
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


# trace(step, models, state, metrics) -> one record of the run's trace.
Trace = Callable[[int, networks.Models, ts.TrainState, dict[str, Any]],
                 dict[str, Any]]


def train(config: ml_collections.ConfigDict, num_steps: int,
          trace_every: int = 0, trace: Trace | None = None
          ) -> tuple[networks.Models, ts.TrainState, dict[str, Any]]:
  """Trains on the config's dataset for `num_steps` iterations.

  Batches come from `data.create_train_iterator`, as in `main.py`: the
  toy2d source's fixed set of `config.data.toy2d_num_points` points, or the
  points of an npz file, shuffled per epoch.

  Args:
    config: the run's configuration.
    num_steps: iterations.
    trace_every: call `trace` every this many iterations (0: never).
    trace: records the state of training (`trace_record`).

  Returns:
    (models, final state, {'seconds', 'compile_seconds', 'diverged_at',
    'trace'}): `seconds` leaves out the time `trace` took, `diverged_at` is
    the first checked step whose metrics were unhealthy (NaN loss or
    exploding energy difference; training stops there) or None, `trace` the
    list of records.
  """
  store = data.Store()
  info = data.get_dataset_info(config, store=store)
  batches = data.create_train_iterator(config, store=store)
  exp = experiment.build(config, steps_per_epoch=max(
      info.num_train_examples // int(config.training.batch_size), 1))
  step_fn, state = exp.train_step, exp.init_state()
  start = time.perf_counter()
  compile_seconds = trace_seconds = 0.0
  diverged_at, records = None, []
  for i in range(num_steps):
    state, metrics = step_fn(state, next(batches))
    if i == 0:
      jax.block_until_ready(metrics)
      compile_seconds = time.perf_counter() - start
    if trace is not None and trace_every and (i + 1) % trace_every == 0:
      traced = time.perf_counter()
      records.append(trace(i + 1, exp.models, state, metrics))
      trace_seconds += time.perf_counter() - traced
    # A NaN stays NaN, so checking every 100 steps catches it without a
    # host round-trip per step.
    if (i + 1) % 100 == 0 or i + 1 == num_steps:
      if not bool(metrics['healthy']):
        diverged_at = i + 1
        logging.warning('unhealthy at step %d (loss_e=%s, energy_diff=%s)',
                        i + 1, metrics['loss_e'], metrics['energy_diff'])
        break
  jax.block_until_ready(state)
  seconds = time.perf_counter() - start - trace_seconds
  return exp.models, state, {'seconds': seconds,
                             'compile_seconds': compile_seconds,
                             'diverged_at': diverged_at, 'trace': records}


# What a trace record keeps: the step's own metrics, and the scores.
_TRACE_METRICS = ('loss_e', 'loss_g', 'energy_data', 'energy_diff',
                  'negative_chain_energy_end', 'x_chain_move',
                  'negative_chain_move', 'g_dist_to_x_revised',
                  'g_rec_after_z_chain')
_TRACE_SCORES = ('kl', 'tv', 'off_support_mass', 'mode_mass_tv',
                 'mode_masses', 'ed_generator', 'ed_revised',
                 'mode_tv_generator', 'mode_shares_generator')


def trace_record(config: ml_collections.ConfigDict, true: score_lib.Truth,
                 num: int, num_samples: int, seed: int) -> Trace:
  """A `Trace` of the scores during training, and the step's metrics.

  Records the density's and the generator's scores (`toy2d_score.score`)
  beside the metrics of the iteration that made the state: the energies of
  data and negatives, how far each x-chain moved its samples, and the
  generator's two loss terms (x-teaching distance, reconstruction).
  """

  def trace(step, models, state, metrics):
    numbers, _ = score_lib.score(config, models, state, num, num_samples,
                                 seed, true)
    values = jax.device_get({k: metrics[k] for k in _TRACE_METRICS
                             if k in metrics})
    return {'step': step, **{k: float(v) for k, v in values.items()},
            **{k: numbers[k] for k in _TRACE_SCORES if k in numbers}}

  return trace


def row_of_run(density: str, variant: str,
               config: ml_collections.ConfigDict,
               numbers: dict[str, Any], info: dict[str, Any]
               ) -> dict[str, Any]:
  """One run's row of the JSON: what ran, its cost, and its scores."""
  grads = variants_lib.langevin_gradients(config)
  return {'density': density, 'variant': variant,
          'seed': int(config.training.seed),
          'description': variants_lib.VARIANTS[variant][1],
          'steps': int(config.training.num_train_steps),
          'batch_size': int(config.training.batch_size),
          'grads_ebm': grads['ebm'], 'grads_generator': grads['generator'],
          'train_seconds': info['seconds'],
          'compile_seconds': info['compile_seconds'],
          'diverged_at': info['diverged_at'],
          'config_changes': config_changes(config), **numbers,
          **({'trace': info['trace']} if info['trace'] else {})}


def config_changes(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The run's fields that differ from configs/toy2d.py, by dotted name.

  Leaves out the data source and the seed, which every row names anyway.
  """
  flat = lambda c: traverse_util.flatten_dict(c.to_dict(), sep='.')
  default, run = flat(toy2d_config.get_config()), flat(config)
  return {k: v for k, v in sorted(run.items())
          if default.get(k) != v and not k.startswith('data.')
          and k != 'training.seed'}


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
            seed: int, true: score_lib.Truth, num: int, num_samples: int,
            out_dir: str, trace_every: int = 0) -> dict[str, Any]:
  """Trains and scores one (density, variant, seed); returns its row."""
  base = copy.deepcopy(base)
  base.training.seed = seed
  config = density_config(variants_lib.variant_config(base, variant), name,
                          out_dir)
  models, state, info = train(
      config, int(config.training.num_train_steps), trace_every,
      trace_record(config, true, num, num_samples, seed))
  numbers, arrays = score_lib.score(config, models, state, num, num_samples,
                                    seed, true)
  np.savez_compressed(
      os.path.join(out_dir, f'arrays_{name}_{variant}_{seed}.npz'),
      **{k: v for k, v in arrays.items() if v is not None})
  row = row_of_run(name, variant, config, numbers, info)
  logging.info('%s / %s / seed %d: %s', name, variant, seed, json.dumps(row))
  return {'row': row, 'arrays': arrays}


def run_benchmark(densities: list[str], variants: list[str],
                  seeds: list[int], num: int, num_samples: int, out_dir: str,
                  config: ml_collections.ConfigDict | None = None,
                  steps: int = 0, batch_size: int = 0, trace_every: int = 0
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
    trace_every: score every this many iterations too (`trace_record`).

  Returns:
    The rows of the JSON, one per run.
  """
  for name in densities:
    if name not in heldout2d.NAMES:
      toy2d.check_name(name)
  base = base_config(config, steps, batch_size)
  for variant in variants:
    variants_lib.variant_config(base, variant)  # Fails early.
  os.makedirs(out_dir, exist_ok=True)
  rows, results = [], {}
  start = time.perf_counter()
  for name in densities:
    true = score_lib.truth(name, num)
    results[name] = {}
    for variant in variants:
      for seed in seeds:
        run = run_one(base, name, variant, seed, true, num, num_samples,
                      out_dir, trace_every)
        rows.append(run['row'])
        results[name].setdefault(variant, {'numbers': run['row'],
                                           'arrays': run['arrays']})
        report.write_tables(out_dir, rows, time.perf_counter() - start)
  report.figures(out_dir, results, num)
  return rows


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
  report.write_tables(out_dir, rows, seconds)
  report.figures(out_dir, results, num)
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
  numbers, arrays = score_lib.score(config, models, state, num, num_samples,
                                    seed, score_lib.truth(name, num))
  numbers = {'density': name, 'step': int(state.step),
             'rollbacks': len(recovery.load_rollbacks(workdir)), **numbers}
  report.density_figure(os.path.join(workdir, 'toy2d_benchmark.png'), name,
                 {'checkpoint': {'numbers': numbers, 'arrays': arrays}}, num)
  return numbers


def check_command(densities: list[str], variants: list[str], config_flag,
                  allowed: tuple[str, ...]) -> None:
  """Refuses a bad benchmark command with one UsageError line.

  A density outside `allowed`, an unknown variant, or a variant that would
  undo a `--config.` flag of the command (`toy2d_variants.check_variants`).
  """
  for name in densities:
    if name not in allowed:
      raise app.UsageError(f'--densities names {name!r}; allowed: '
                           f'{", ".join(allowed)}')
  # Without --config there is no --config.<field> either (and nothing parsed).
  overrides = (config_flags.get_override_values(config_flag)
               if config_flag.present else {})
  try:
    variants_lib.check_variants(variants, overrides)
  except ValueError as e:
    raise app.UsageError(str(e)) from None


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
    print(report.markdown_table(merge_runs(FLAGS.merge_from, FLAGS.out_dir)))
    return
  check_command(FLAGS.densities, FLAGS.variants, FLAGS['config'],
                DENSITIES + ('25gaussians',))
  start = time.perf_counter()
  rows = run_benchmark(FLAGS.densities, FLAGS.variants, seeds, FLAGS.grid,
                       FLAGS.num_samples, FLAGS.out_dir, FLAGS.config,
                       FLAGS.steps, FLAGS.batch_size, FLAGS.trace_every)
  print(report.markdown_table(rows))
  print(f'Wall time {time.perf_counter() - start:.0f} s; tables and figures '
        f'in {FLAGS.out_dir}')


if __name__ == '__main__':
  define_flags()
  runtime.run_main(main)
