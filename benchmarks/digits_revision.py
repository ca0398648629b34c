"""Does the EBM's revision improve digit samples? A sweep of evaluation chains.

  python main.py --config=configs/digits.py --workdir=runs/digits
  python benchmarks/digits_revision.py --config=configs/digits.py \
      --workdir=runs/digits [--settings=reference:70:0.4:0.001,paper:30:1e-4]

For each x-chain setting (rule : steps : step size [: noise]), the
`classifier` evaluator (dual_mcmc_jax/evaluators/classifier.py) scores 2,000
generator samples G(z) and their revision under the trained EBM: classifier
confidence and FD_inf (the Fréchet distance in the classifier's hidden
layer, extrapolated to infinitely many samples). The generator's samples are
the same in every row (same evaluation seed), so the change from G(z) to its
revision is the EBM's doing. `reference` is the rule the EBM was trained
with (x -= s^2/2 dE/dx + n eps); `paper` is x -= s dE/dx + sqrt(2 s) eps,
which samples exp(-E) at temperature 1. Prints a Markdown table and writes
it, with every number, to <workdir>/digits_revision.{md,json}.
"""

from __future__ import annotations

import copy
import json
import os
import sys
from typing import Any

from absl import flags
import ml_collections
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from dual_mcmc_jax import runtime
runtime.quiet_ctrl_c()  # Ctrl-C is one line from here.
from dual_mcmc_jax import checkpointing
from dual_mcmc_jax import langevin
from dual_mcmc_jax import sharding
from dual_mcmc_jax.evaluators import classifier

FLAGS = flags.FLAGS
# The evaluation sampler of the reference (task_fid.py) first, then longer
# and shorter chains and larger steps under both rules.
DEFAULT_SETTINGS = (
    'reference:70:0.4:0.001', 'reference:30:0.5:0.001',
    'reference:200:0.4:0.001', 'reference:70:1.0:0.001',
    'reference:70:0.4:0.01', 'paper:30:0.0001', 'paper:70:0.0001',
    'paper:70:0.001', 'paper:200:0.00001')


def parse_setting(text: str) -> dict[str, Any]:
  """'rule:steps:step_size[:noise]' -> its fields, checked."""
  parts = text.split(':')
  if len(parts) not in (3, 4) or parts[0] not in langevin.RULES:
    raise ValueError(f'--settings entry {text!r} must be rule:steps:step_size'
                     f'[:noise] with rule one of {", ".join(langevin.RULES)}')
  try:
    steps, step_size = int(parts[1]), float(parts[2])
    noise = float(parts[3]) if len(parts) == 4 else 0.0
  except ValueError as e:
    raise ValueError(f'--settings entry {text!r}: {e}') from e
  if steps <= 0 or step_size <= 0 or noise < 0:
    raise ValueError(f'--settings entry {text!r}: steps and step size must '
                     'be > 0, noise >= 0')
  return {'rule': parts[0], 'steps': steps, 'step_size': step_size,
          'noise': noise}


def setting_config(config: ml_collections.ConfigDict,
                   setting: dict[str, Any]) -> ml_collections.ConfigDict:
  """`config` with its evaluation x-chain set to `setting`."""
  config = copy.deepcopy(config)
  config.langevin_x.rule = setting['rule']  # The evaluation chain's rule.
  config.eval.langevin_steps = setting['steps']
  config.eval.langevin_step_size = setting['step_size']
  config.eval.langevin_noise = setting['noise']
  return config


def score_setting(config: ml_collections.ConfigDict, workdir: str,
                  setting: dict[str, Any], loaded: Any) -> dict[str, Any]:
  """Classifier scores of G(z) and of its revision under one setting."""
  models, state = loaded
  cfg = setting_config(config, setting)
  evaluator = classifier.Evaluator(cfg, workdir, models, sharding.data_mesh())
  out = dict((k, v) for k, v in evaluator.run(state)
             if not k.endswith('by_class') and k != 'table')
  row = dict(setting)
  for kind in ('generator', 'ebm_revised'):
    row[f'{kind}_confidence'] = out[f'{kind}/confidence']
    row[f'{kind}_fd_inf'] = out[f'{kind}/frechet_distance_inf']
  row['fd_inf_change'] = (row['ebm_revised_fd_inf'] /
                          row['generator_fd_inf'] - 1.0)
  row['train_digits_fd_inf'] = out['train_digits/frechet_distance_inf']
  return row


def markdown_table(rows: list[dict[str, Any]]) -> str:
  lines = ['| rule | steps | step size | noise | confidence G(z) -> revised | '
           'FD_inf G(z) -> revised | FD_inf change |',
           '| --- | --- | --- | --- | --- | --- | --- |']
  for r in rows:
    noise = f'{r["noise"]:g}' if r['rule'] == 'reference' else (
        f'sqrt(2s) = {(2 * r["step_size"])**0.5:.3g}')
    lines.append(
        f'| {r["rule"]} | {r["steps"]} | {r["step_size"]:g} | {noise} | '
        f'{r["generator_confidence"]:.3f} -> '
        f'{r["ebm_revised_confidence"]:.3f} | '
        f'{r["generator_fd_inf"]:.2f} -> {r["ebm_revised_fd_inf"]:.2f} | '
        f'{100 * r["fd_inf_change"]:+.1f}% |')
  return '\n'.join(lines) + '\n'


def main(argv):
  del argv
  config = FLAGS.config
  settings = [parse_setting(s) for s in FLAGS.settings]
  loaded = checkpointing.load_state(config, FLAGS.workdir)
  rows = []
  for setting in settings:
    rows.append(score_setting(config, FLAGS.workdir, setting, loaded))
    print(json.dumps(rows[-1]), flush=True)
  table = markdown_table(rows)
  with open(os.path.join(FLAGS.workdir, 'digits_revision.md'), 'w') as f:
    f.write(table)
  with open(os.path.join(FLAGS.workdir, 'digits_revision.json'), 'w') as f:
    json.dump({'step': int(loaded[1].step), 'rows': rows}, f, indent=1)
  print(table)


if __name__ == '__main__':
  config_flags.DEFINE_config_file('config', None, 'The workdir\'s config.',
                                  lock_config=False)
  flags.DEFINE_string('workdir', None, 'A trained digits workdir.')
  flags.DEFINE_list('settings', list(DEFAULT_SETTINGS),
                    'Evaluation x-chains, rule:steps:step_size[:noise].')
  flags.mark_flags_as_required(['config', 'workdir'])
  runtime.run_main(main)
