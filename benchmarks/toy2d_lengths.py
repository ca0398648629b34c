"""2-D scores against x-chain length, at equal budgets of gradient evaluations.

  python benchmarks/toy2d_lengths.py --densities=unequal3 \
      --variants=full,noise_init_ebm,replay --lengths=5,10,30,100 \
      --seeds=0,1,2 --budget=105000 --out_dir=runs/toy2d_lengths
  python benchmarks/toy2d_lengths.py --merge_from=runs/a,runs/b \
      --out_dir=runs/toy2d_lengths

For every (density, variant, length, seed) this trains `benchmarks/toy2d.py`'s
variant of `--config` (default configs/toy2d.py) with both x-chains set to
that many Langevin steps, for as many iterations as the budget buys:
`budget // (EBM + generator chain gradients per iteration)`
(`toy2d_variants.langevin_gradients`), so that a short chain runs more
iterations and a long one fewer. It then scores the run as the benchmark
does (`toy2d_score.score`: the EBM's TV at the chain's temperature, the
generator's energy distance).

Outputs in `--out_dir`: toy2d_lengths.json (every run's numbers) and
toy2d_lengths.png (EBM TV and generator ED against the length, one line per
variant: the mean over seeds, with each seed as a dot).
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from typing import Any

from absl import flags
from absl import logging
import numpy as np
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from dual_mcmc_jax import runtime  # First: Ctrl-C is one line from here.
runtime.quiet_ctrl_c()
from benchmarks import toy2d as bench
from benchmarks import toy2d_report as report
from benchmarks import toy2d_score as score_lib
from benchmarks import toy2d_variants as variants_lib

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_list('densities', ['unequal3'], 'Densities (toy2d.DENSITIES).')
  flags.DEFINE_list('variants', ['full', 'noise_init_ebm', 'replay'],
                    'Variants (toy2d_variants.VARIANTS).')
  flags.DEFINE_list('lengths', ['5', '10', '30', '100'],
                    'Langevin steps of the x-chains.')
  flags.DEFINE_list('seeds', ['0', '1', '2'], 'Training seeds.')
  flags.DEFINE_integer('budget', 105_000, 'Gradient evaluations per example '
                       'in the chains, over the whole run.')
  flags.DEFINE_integer('grid', 180, 'Grid cells per axis.')
  flags.DEFINE_integer('num_samples', 2000, 'Samples per energy distance.')
  flags.DEFINE_string('out_dir', 'runs/toy2d_lengths', 'Output directory.')
  config_flags.DEFINE_config_file('config', None, 'Training config '
                                  '(default: configs/toy2d.py).')
  flags.DEFINE_list('merge_from', None, 'Instead of training, combine the '
                    'JSON of earlier runs (their --out_dir) into --out_dir.')


def length_config(base, variant: str, length: int, budget: int):
  """The variant with `length`-step x-chains and the iterations of `budget`."""
  config = variants_lib.variant_config(base, variant)
  config.langevin_x.steps = length
  grads = variants_lib.langevin_gradients(config)
  config.training.num_train_steps = max(
      budget // (grads['ebm'] + grads['generator']), 1)
  return config


def run(densities: list[str], variants: list[str], lengths: list[int],
        seeds: list[int], budget: int, num: int, num_samples: int,
        out_dir: str, config=None) -> list[dict[str, Any]]:
  """Trains and scores every combination; writes the JSON and figure."""
  base = bench.base_config(config, 0, 0)
  os.makedirs(out_dir, exist_ok=True)
  rows, start = [], time.perf_counter()
  for name in densities:
    true = score_lib.truth(name, num)
    for variant in variants:
      for length in lengths:
        for seed in seeds:
          conf = length_config(base, variant, length, budget)
          conf.training.seed = seed
          conf = bench.density_config(conf, name, out_dir)
          models, state, info = bench.train(
              conf, int(conf.training.num_train_steps))
          numbers, _ = score_lib.score(conf, models, state, num,
                                       num_samples, seed, true)
          row = {**bench.row_of_run(name, variant, conf, numbers, info),
                 'x_steps': length, 'budget': budget}
          logging.info('%s / %s / %d steps / seed %d: TV %.3f, ED %s', name,
                       variant, length, seed, numbers['tv'],
                       numbers.get('ed_generator'))
          rows.append(row)
          write(out_dir, rows, time.perf_counter() - start)
  return rows


def write(out_dir: str, rows: list[dict[str, Any]], seconds: float) -> None:
  with open(os.path.join(out_dir, 'toy2d_lengths.json'), 'w') as f:
    json.dump({'wall_seconds': seconds, 'rows': rows}, f, indent=1)
  figure(os.path.join(out_dir, 'toy2d_lengths.png'), rows)


def figure(path: str, rows: list[dict[str, Any]]) -> None:
  """EBM TV and generator ED against chain length; one row per density."""
  plt = report._plt()  # pylint: disable=protected-access
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top
  densities = list(dict.fromkeys(r['density'] for r in rows))
  fig, axes = plt.subplots(len(densities), 2, figsize=(7.5, 2.8 *
                                                       len(densities)),
                           squeeze=False)
  colours = plt.rcParams['axes.prop_cycle'].by_key()['color']
  for ax_row, name in zip(axes, densities):
    mine = [r for r in rows if r['density'] == name]
    variants = list(dict.fromkeys(r['variant'] for r in mine))
    for ax, key, title in ((ax_row[0], 'tv', 'EBM: TV at T'),
                           (ax_row[1], 'ed_generator',
                            'generator: energy distance')):
      for i, variant in enumerate(variants):
        runs = [r for r in mine if r['variant'] == variant
                and r.get(key) is not None]
        if not runs:
          continue
        lengths = sorted({r['x_steps'] for r in runs})
        means = [np.mean([r[key] for r in runs if r['x_steps'] == n])
                 for n in lengths]
        colour = colours[i % len(colours)]
        ax.plot(lengths, means, '-o', color=colour, label=variant, ms=3)
        ax.scatter([r['x_steps'] for r in runs], [r[key] for r in runs],
                   s=6, color=colour, alpha=0.5)
      ax.set_xscale('log')
      ax.minorticks_off()
      if key == 'ed_generator':
        # Labels at 1, 2 and 5 of each decade: the distances often span
        # less than one decade, which would leave the axis unlabelled.
        ax.set_yscale('log')
        ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(ticker.FormatStrFormatter('%g'))
      ax.set_xticks(sorted({r['x_steps'] for r in mine}))
      ax.set_xticklabels([str(n) for n in sorted({r['x_steps']
                                                   for r in mine})])
      ax.set_xlabel('x-chain steps (equal gradient budget)', fontsize=8)
      ax.set_title(f'{name}: {title}', fontsize=9)
      ax.tick_params(labelsize=7)
    ax_row[0].legend(fontsize=7)
  fig.tight_layout(pad=0.4)
  fig.savefig(path, dpi=90)
  plt.close(fig)


def main(argv):
  del argv
  if FLAGS.merge_from:
    rows = []
    for source in FLAGS.merge_from:
      with open(os.path.join(source, 'toy2d_lengths.json')) as f:
        rows += json.load(f)['rows']
    os.makedirs(FLAGS.out_dir, exist_ok=True)
    write(FLAGS.out_dir, rows, 0.0)
    return
  bench.check_command(FLAGS.densities, FLAGS.variants, FLAGS['config'],
                      bench.DENSITIES)
  run(FLAGS.densities, FLAGS.variants, [int(n) for n in FLAGS.lengths],
      [int(s) for s in FLAGS.seeds], FLAGS.budget, FLAGS.grid,
      FLAGS.num_samples, FLAGS.out_dir, copy.deepcopy(FLAGS.config))
  print(f'Figure and JSON in {FLAGS.out_dir}')


if __name__ == '__main__':
  define_flags()
  runtime.run_main(main)
