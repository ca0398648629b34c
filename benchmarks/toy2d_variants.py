"""The variants of benchmarks/toy2d.py: config overrides and their budgets.

`VARIANTS` maps a name to its overrides on the benchmark's `--config` and a
description; `variant_config` applies them and `langevin_gradients` counts
the network evaluations of the chains per iteration, the budget every
comparison of the benchmark equalises.
"""

from __future__ import annotations

import copy
from typing import Any

import ml_collections


_NO_JUMPS = ('langevin_x', 'jump_std', 0.0)


_NO_REPLAY = ('training', 'replay_buffer_size', 0)


_NO_ENERGY_L2 = ('loss', 'energy_l2', 0.0)


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
                        ('langevin_x', 'steps', lambda n: 2 * n),
                        ('langevin_x', 'generator_jumps', False)),
                       'EBM alone, short-run chain from noise'),
    'no_jumps': ((_NO_JUMPS,), 'no Metropolis jumps in the negative chain'),
    'no_replay': ((_NO_REPLAY,), 'no replay buffer: every negative chain '
                  'starts at generator samples'),
    'no_energy_l2': ((('loss', 'energy_l2', 0.0),), 'no energy penalty'),
    'no_generator_jumps': ((('langevin_x', 'generator_jumps', False),),
                           'no generator jumps in the negative chain'),
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
    'replay': ((('training', 'replay_buffer_size', 2560),
                ('training', 'replay_fraction', 0.95)),
               'the config with a replay buffer: 95% of the negative chains '
               'continue from it'),
    # The paper's iteration (no remedy), then each remedy alone on it: run
    # from configs/toy2d_buffer.py, whose three remedies these switch off
    # (from configs/toy2d.py, use no_generator_jumps).
    'paper': ((_NO_JUMPS, _NO_REPLAY, _NO_ENERGY_L2),
              "the paper's iteration: no jumps, no buffer, no penalty"),
    'paper_jumps': ((('langevin_x', 'jump_std', 1.5), _NO_REPLAY,
                     _NO_ENERGY_L2),
                    "the paper's iteration with Metropolis jumps (std 1.5)"),
    'paper_replay': ((_NO_JUMPS, ('training', 'replay_buffer_size', 2560),
                      ('training', 'replay_fraction', 0.95), _NO_ENERGY_L2),
                     "the paper's iteration with a replay buffer (95%)"),
    'paper_energy_l2': ((_NO_JUMPS, _NO_REPLAY,
                         ('loss', 'energy_l2', 0.1)),
                        "the paper's iteration with an energy penalty (0.1)"),
    'reference_chain': ((_NO_JUMPS, _NO_REPLAY, ('loss', 'energy_l2', 0.0),
                         ('langevin_x', 'rule', 'reference'),
                         ('langevin_x', 'step_size', 0.1),
                         ('langevin_x', 'noise', 0.01),
                         ('loss', 'ebm_temperature_scaling', True)),
                        "the image configs' chain rule and EBM loss"),
}


def check_name(variant: str) -> None:
  """Raises ValueError (one line, the names allowed) unless it is a variant."""
  if variant not in VARIANTS:
    raise ValueError(f'--variants names {variant!r}; allowed: '
                     f'{", ".join(VARIANTS)}')


def variant_config(base: ml_collections.ConfigDict, variant: str
                   ) -> ml_collections.ConfigDict:
  """`base` with a variant's overrides applied.

  Args:
    base: the training configuration.
    variant: a key of `VARIANTS`.

  Returns:
    A modified copy.
  """
  check_name(variant)
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
                 t.negative_chain_init == 'data') else 1
  extra = int(t.long_chains) * int(t.long_chain_steps)
  z_chain = t.generator_data_teaching and t.z_revision
  return {'ebm': chains * x_steps + round(extra / int(t.batch_size)),
          'generator': z_steps if z_chain else 0}


def check_variants(variants: list[str], overrides: dict[str, Any]) -> None:
  """Refuses a variant that would undo a `--config.` flag of the command.

  A variant's overrides are applied to the config the command line made,
  so `--variants=paper --config.langevin_x.jump_std=1.5` would silently run
  without jumps. A relative override (a function of the config's value)
  builds on the flag and is allowed.

  Args:
    variants: names, each a key of `VARIANTS`.
    overrides: the command line's config overrides, by dotted field name
      (`config_flags.get_override_values`).

  Raises:
    ValueError: one line naming the variant, the field and both values.
  """
  for variant in variants:
    check_name(variant)
    for group, field, value in VARIANTS[variant][0]:
      name = f'{group}.{field}'
      if name in overrides and not callable(value) and (
          overrides[name] != value):
        raise ValueError(
            f'--variants={variant} sets {name}={value!r}, which undoes '
            f'--config.{name}={overrides[name]!r}; drop the flag or choose '
            'a variant that leaves the field alone')
