"""Tables and figures of benchmarks/toy2d.py from its rows and arrays.

`markdown_table` (mean ± standard deviation over seeds, then the lowest
variant per density), `trace_table` (how the traced scores moved during
training) and `write_tables` write the tables and JSON; `figures` draws one
figure per density (every variant: truth, learned density, generator and
revised samples), the overview of all densities, the README's figure of
both models (truth, learned density, generator samples:
`densities_figure`), and each traced density's scores against the
iteration (`trace_figure`).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np

from dual_mcmc_jax.evaluators import density2d


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
  # Every variant any density has: a partial sweep leaves blank panels.
  variants = list(dict.fromkeys(v for runs in results.values() for v in runs))
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
    if 'full' in runs:
      a, r = runs['full']['arrays'], runs['full']['numbers']
      _density_panel(row[1], a['model_log_p'], num, f'full: TV {r["tv"]:.2f}')
      _scatter_panel(row[2], a['generator'], 'full: G(z)')
      _scatter_panel(row[3], a['revised'], 'full: revised')
    elif has_full:
      for ax in row[1:4]:
        ax.axis('off')
    for ax, variant in zip(row[4 if has_full else 1:], others):
      if variant not in runs:
        ax.axis('off')
        continue
      r = runs[variant]['numbers']
      _density_panel(ax, runs[variant]['arrays']['model_log_p'], num,
                     f'{variant} TV {r["tv"]:.2f}', fontsize=5.5)
  fig.tight_layout(pad=0.3)
  fig.savefig(path, dpi=72)
  plt.close(fig)


def densities_figure(path: str, results: dict[str, dict[str, dict[str, Any]]],
                     num: int, variant: str = 'full') -> None:
  """Both models of one variant, one column per density.

  Rows: the true density, the EBM's learned exp(-E / T) / Z with its TV,
  and the generator's samples G(z) with their energy distance (the row is
  left out when the variant has no generator).

  Args:
    path: PNG to write.
    results: density -> variant -> {'numbers', 'arrays'}.
    num: grid cells per axis.
    variant: the variant shown (the first one where it is missing).
  """
  plt = _plt()
  runs = [r.get(variant) or next(iter(r.values())) for r in results.values()]
  with_g = any(run['arrays'].get('generator') is not None for run in runs)
  fig, axes = plt.subplots(3 if with_g else 2, len(results),
                           figsize=(1.45 * len(results),
                                    5.2 if with_g else 3.5), squeeze=False)
  for col, (name, run) in enumerate(zip(results, runs)):
    a, r = run['arrays'], run['numbers']
    _density_panel(axes[0, col], a['true_log_p'], num, name)
    _density_panel(axes[1, col], a['model_log_p'], num,
                   f'EBM: TV {r["tv"]:.2f}')
    if with_g:
      ed = r.get('ed_generator')
      _scatter_panel(axes[2, col], a.get('generator'),
                     'G(z): ED ' + ('-' if ed is None else f'{ed:.3f}'))
  fig.tight_layout(pad=0.3)
  fig.savefig(path, dpi=90)
  plt.close(fig)


# Panels of the trace figure: (title, keys drawn in it).
_TRACE_PANELS = (
    ('EBM: TV at T', ('tv',)),
    ('EBM: mass off the data', ('off_support_mass',)),
    ('EBM: mode-mass TV', ('mode_mass_tv',)),
    ('G: energy distance', ('ed_generator',)),
    ('G: mode-share TV', ('mode_tv_generator',)),
    ('E(data) - E(negatives)', ('energy_diff',)),
    ('moves: x-chain (-), negatives (--)',
     ('x_chain_move', 'negative_chain_move')),
    ('G loss: x-teaching (-), recon. (--)',
     ('g_dist_to_x_revised', 'g_rec_after_z_chain')),
)


def trace_figure(path: str, name: str, runs: dict[str, dict[str, Any]]
                 ) -> None:
  """The scores and metrics of each variant's trace against the iteration.

  Args:
    path: PNG to write.
    name: the density.
    runs: variant -> the numbers of its first seed, holding a 'trace'.
  """
  plt = _plt()
  fig, axes = plt.subplots(2, 4, figsize=(12, 5.2))
  colours = plt.rcParams['axes.prop_cycle'].by_key()['color']
  for ax, (title, keys) in zip(axes.flat, _TRACE_PANELS):
    for i, (variant, numbers) in enumerate(runs.items()):
      steps = [r['step'] for r in numbers['trace']]
      for key, style in zip(keys, ('-', '--')):
        values = [r.get(key) for r in numbers['trace']]
        if any(v is None for v in values):
          continue
        ax.plot(steps, values, style, color=colours[i % len(colours)],
                label=variant if style == '-' else None)
    ax.set_title(title, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_xlabel('iteration', fontsize=7)
    if title.startswith(('G loss', 'moves', 'G: energy')):
      ax.set_yscale('log')
  axes.flat[0].legend(fontsize=6)
  fig.suptitle(f'{name}: during training', fontsize=9)
  fig.tight_layout(pad=0.4)
  fig.savefig(path, dpi=80)
  plt.close(fig)


def figures(out_dir: str, results: dict[str, dict[str, dict[str, Any]]],
             num: int) -> None:
  for name, runs in results.items():
    density_figure(os.path.join(out_dir, f'toy2d_{name}.png'), name, runs,
                   num)
  summary_figure(os.path.join(out_dir, 'toy2d_benchmark.png'), results, num)
  densities_figure(os.path.join(out_dir, 'toy2d_densities.png'), results, num)
  for name, runs in results.items():
    traced = {v: run['numbers'] for v, run in runs.items()
              if run['numbers'].get('trace')}
    if traced:
      trace_figure(os.path.join(out_dir, f'toy2d_trace_{name}.png'), name,
                   traced)


# --- Table -------------------------------------------------------------------


_SCORES = ('kl', 'tv', 'mode_mass_tv', 'ed_generator', 'ed_revised',
           'mode_tv_generator', 'off_support_mass', 'hist_tv_generator')

# "Both models right": the EBM's TV at the chain's temperature, the
# generator's energy distance and, on mixtures, its mode-share TV, each at
# most this on every seed.
TARGETS = {'tv': 0.25, 'ed_generator': 0.05, 'mode_tv_generator': 0.05}


def _mean_spread(values: list[Any]) -> tuple[float, float | None] | None:
  """(mean, standard deviation over seeds; None for one seed) or None."""
  finite = [v for v in values if v is not None and math.isfinite(v)]
  if not finite or len(finite) < len(values):
    return None  # A missing or diverged score makes the mean meaningless.
  spread = float(np.std(finite)) if len(finite) > 1 else None
  return float(np.mean(finite)), spread


def _by_run(rows: list[dict[str, Any]]
            ) -> dict[tuple[str, str], list[dict[str, Any]]]:
  """The rows grouped by (density, variant), seeds in their order."""
  groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
  for r in rows:
    groups.setdefault((r['density'], r['variant']), []).append(r)
  return groups


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """One summary per (density, variant): mean and spread over its seeds.

  Args:
    rows: one dict per (density, variant, seed), as in the JSON.

  Returns:
    Dicts with 'density', 'variant', 'seeds', 'diverged' (runs that
    diverged), 'reference', the gradient budget, 'train_seconds' (mean) and,
    per score of `_SCORES`, (mean, std) or None.
  """
  out = []
  for (density, variant), runs in _by_run(rows).items():
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


def targets_table(rows: list[dict[str, Any]]) -> str:
  """Both models against `TARGETS`: mean [worst seed], and whether met.

  A (density, variant) meets the targets when every seed's EBM TV, generator
  energy distance and (mixtures) generator mode-share TV are within them.
  """
  lines = ['| density | variant | seeds | EBM TV | G energy distance | '
           'G mode-share TV | both right |', '|' + ' --- |' * 7]
  for (density, variant), runs in _by_run(rows).items():
    cells, met = [], True
    for key, bound in TARGETS.items():
      values = [r.get(key) for r in runs]
      if all(v is None for v in values):
        cells.append('-')
        continue
      finite = [v for v in values if v is not None and math.isfinite(v)]
      met = met and len(finite) == len(values) and max(finite) <= bound
      cells.append(f'{np.mean(finite):.3f} [{max(finite):.3f}]' if finite
                   else 'diverged')
    lines.append(f'| {density} | {variant} | {len(runs)} | ' +
                 ' | '.join(cells) + f' | {"yes" if met else "no"} |')
  return ('\nBoth models against the targets (EBM TV <= {tv}, G energy '
          'distance <= {ed_generator}, G mode-share TV <= {mode_tv_generator}'
          ' on every seed): mean [worst seed]\n\n'.format(**TARGETS) +
          '\n'.join(lines) + '\n')


def _late(trace: list[dict[str, Any]], key: str) -> list[float] | None:
  """`key`'s values over the second half of a trace (None if missing)."""
  values = [r.get(key) for r in trace[len(trace) // 2:]]
  if not values or any(v is None for v in values):
    return None
  return [float(v) for v in values]


def _range(values: list[float] | None, digits: int) -> str:
  if values is None:
    return '-'
  return (f'{np.mean(values):.{digits}f} '
          f'[{min(values):.{digits}f}, {max(values):.{digits}f}]')


def trace_table(rows: list[dict[str, Any]]) -> str:
  """The second half of each traced run: mean [min, max] of its records.

  Shows whether a score settled or swings, beside the chains' moves and the
  energy gap between data and negatives. Empty when no row has a trace.
  """
  traced = [r for r in rows if r.get('trace')]
  if not traced:
    return ''
  lines = ['| density | variant | seed | TV | mass off data | mode-mass TV | '
           'ED G(z) | G mode TV | E(data) - E(neg) | x-chain move | '
           'negative move |', '|' + ' --- |' * 11]
  for r in traced:
    t = r['trace']
    cells = [_range(_late(t, 'tv'), 2), _range(_late(t, 'off_support_mass'), 3),
             _range(_late(t, 'mode_mass_tv'), 2),
             _range(_late(t, 'ed_generator'), 3),
             _range(_late(t, 'mode_tv_generator'), 3),
             _range(_late(t, 'energy_diff'), 2),
             _fmt(_mean(_late(t, 'x_chain_move')), 2),
             _fmt(_mean(_late(t, 'negative_chain_move')), 2)]
    lines.append(f'| {r["density"]} | {r["variant"]} | {r["seed"]} | ' +
                 ' | '.join(cells) + ' |')
  return ('\nDuring training: mean [min, max] over the second half of the '
          'trace\n\n' + '\n'.join(lines) + '\n')


def _mean(values: list[float] | None) -> float | None:
  return None if values is None else float(np.mean(values))


def write_tables(out_dir: str, rows: list[dict[str, Any]],
                  seconds: float) -> None:
  with open(os.path.join(out_dir, 'toy2d_benchmark.json'), 'w') as f:
    json.dump({'wall_seconds': seconds, 'rows': rows}, f, indent=1)
  with open(os.path.join(out_dir, 'toy2d_benchmark.md'), 'w') as f:
    f.write(markdown_table(rows) + targets_table(rows) + trace_table(rows))
