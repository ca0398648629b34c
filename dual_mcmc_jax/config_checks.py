"""Checks a config before anything is compiled, loaded or written.

`validate(config)` is what every entry point runs first: training,
`--mode=eval` and `--mode=sample`, the cost evaluator and the benchmarks
(through `experiment.build`). A bad value raises ValueError with one line
naming the field, the value and what is allowed, e.g.

  config.optim.lr_e=nan must be a finite number > 0

The numeric rules are one table (`RULES`); choices between names are
checked by `CHOICES`; rules that tie fields together (batch sizes against
the device count, the noise box) follow it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import ml_collections

from dual_mcmc_jax import conv
from dual_mcmc_jax import data
from dual_mcmc_jax import langevin
from dual_mcmc_jax import train_state as ts
from dual_mcmc_jax import train_step


@dataclasses.dataclass(frozen=True)
class Rule:
  """What a numeric field may hold.

  Attributes:
    integer: the value must be a whole number.
    low: the smallest allowed value (None: unbounded).
    low_open: `low` itself is not allowed.
    high: the largest allowed value (None: unbounded).
    high_open: `high` itself is not allowed.
    finite: NaN and +-inf are not allowed (NaN never is).
  """

  integer: bool = False
  low: float | None = None
  low_open: bool = False
  high: float | None = None
  high_open: bool = False
  finite: bool = True

  def describe(self) -> str:
    kind = 'an integer' if self.integer else (
        'a finite number' if self.finite else 'a number')
    bounds = []
    if self.low is not None:
      bounds.append(f'{">" if self.low_open else ">="} {self.low:g}')
    if self.high is not None:
      bounds.append(f'{"<" if self.high_open else "<="} {self.high:g}')
    return kind + (' ' + ' and '.join(bounds) if bounds else '')

  def allows(self, value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      return False
    if math.isnan(value) or (self.finite and math.isinf(value)):
      return False
    if self.integer and float(value) != int(value):
      return False
    if self.low is not None and (value <= self.low if self.low_open
                                 else value < self.low):
      return False
    if self.high is not None and (value >= self.high if self.high_open
                                  else value > self.high):
      return False
    return True


POSITIVE_INT = Rule(integer=True, low=1)
NON_NEGATIVE_INT = Rule(integer=True, low=0)
POSITIVE = Rule(low=0, low_open=True)
NON_NEGATIVE = Rule(low=0)
FRACTION = Rule(low=0, low_open=True, high=1)  # (0, 1]
BETA = Rule(low=0, high=1, high_open=True)  # [0, 1)

# Field -> rule. A field missing from a config (an older config.json, a
# hand-built test config) is not checked.
RULES = {
    'data.image_size': POSITIVE_INT,
    'data.toy2d_num_points': POSITIVE_INT,
    'data.num_load_workers': NON_NEGATIVE_INT,
    'data.prefetch_to_device': NON_NEGATIVE_INT,
    'model.nz': POSITIVE_INT,
    'model.ngf': POSITIVE_INT,
    'model.nef': POSITIVE_INT,
    'model.nif': POSITIVE_INT,
    'model.mlp_hidden': POSITIVE_INT,
    'model.mlp_layers': POSITIVE_INT,
    'model.sn_power_iterations': POSITIVE_INT,
    # A chain is switched off by its own switch, never by zero steps: a zero
    # here is a typo that would silently train a different model.
    'langevin_x.steps': POSITIVE_INT,
    'langevin_x.step_size': POSITIVE,
    'langevin_x.noise': NON_NEGATIVE,
    'langevin_x.jump_std': NON_NEGATIVE,
    'langevin_z.steps': POSITIVE_INT,
    'langevin_z.step_size': POSITIVE,
    'langevin_z.noise': NON_NEGATIVE,
    'loss.sigma': POSITIVE,
    'loss.prior_sigma': POSITIVE,
    'loss.g_factor': NON_NEGATIVE,
    'loss.s_factor': NON_NEGATIVE,
    'loss.i_factor': NON_NEGATIVE,
    'loss.energy_l2': NON_NEGATIVE,
    'loss.energy_diff_limit': Rule(low=0, low_open=True, finite=False),
    'optim.lr_e': POSITIVE,
    'optim.lr_g': POSITIVE,
    'optim.lr_i': POSITIVE,
    'optim.beta1': BETA,
    'optim.beta2': BETA,
    'optim.eps': POSITIVE,
    'optim.wd_e': NON_NEGATIVE,
    'optim.wd_g': NON_NEGATIVE,
    'optim.wd_i': NON_NEGATIVE,
    'optim.lr_decay': FRACTION,
    'training.batch_size': POSITIVE_INT,
    'training.num_epochs': NON_NEGATIVE_INT,
    # 0: train for num_epochs.
    'training.num_train_steps': NON_NEGATIVE_INT,
    'training.seed': NON_NEGATIVE_INT,
    'training.long_chains': NON_NEGATIVE_INT,
    'training.long_chain_steps': NON_NEGATIVE_INT,
    'training.replay_buffer_size': NON_NEGATIVE_INT,
    'training.replay_fraction': FRACTION,
    'training.x_noise_low': Rule(),
    'training.x_noise_high': Rule(),
    'training.log_every_steps': POSITIVE_INT,
    'training.image_every_steps': POSITIVE_INT,
    'training.checkpoint_every_steps': POSITIVE_INT,
    'training.health_every_steps': POSITIVE_INT,
    'training.max_checkpoints_to_keep': POSITIVE_INT,
    'training.num_image_samples': POSITIVE_INT,
    'recovery.max_retries': NON_NEGATIVE_INT,
    'recovery.lr_factor': FRACTION,
    'recovery.langevin_x_step_factor': FRACTION,
    'eval.seed': NON_NEGATIVE_INT,
    'eval.batch_size': POSITIVE_INT,
    'eval.langevin_steps': POSITIVE_INT,
    'eval.langevin_step_size': POSITIVE,
    'eval.langevin_noise': NON_NEGATIVE,
    'eval.num_samples_to_write': POSITIVE_INT,
    'eval.num_samples': POSITIVE_INT,
    'eval.inpainting_mask_reference_size': POSITIVE_INT,
    'eval.inpainting_block_size': POSITIVE_INT,
    'eval.inpainting_fill_value': Rule(),
    'eval.inpainting_grid_images': NON_NEGATIVE_INT,
    'eval.classifier_hidden': POSITIVE_INT,
    'eval.classifier_max_iter': POSITIVE_INT,
    'eval.classifier_num_samples': POSITIVE_INT,
    'eval.cost_warmup_steps': POSITIVE_INT,
    'eval.cost_steps': POSITIVE_INT,
}

# Field -> the names it may hold.
CHOICES = {
    'data.dataset': data.DATASETS,
    'data.num_channels': (1, 3),
    'model.arch': ts.ARCHS,
    'model.resnet_style': ts.RESNET_STYLES,
    'model.conv_input_grad': conv.INPUT_GRADS,
    'langevin_x.rule': langevin.RULES,
    'langevin_z.rule': langevin.RULES,
    'training.compute_dtype': tuple(ts.COMPUTE_DTYPES),
    'training.x_chain_init': train_step.X_CHAIN_INITS,
    'training.negative_chain_init': train_step.NEGATIVE_CHAIN_INITS,
}


def _get(config: ml_collections.ConfigDict, field: str) -> tuple[bool, Any]:
  """(present, value) of a dotted field."""
  node = config
  for part in field.split('.'):
    if not isinstance(node, (ml_collections.ConfigDict, dict)) or (
        part not in node):
      return False, None
    node = node[part]
  return True, node


def check_divisible(value: int, field: str, divisor: int, what: str) -> None:
  """Raises ValueError unless `value` is a positive multiple of `divisor`."""
  if value <= 0 or value % divisor:
    raise ValueError(f'config.{field}={value} must be a positive multiple of '
                     f'the number of {what} ({divisor})')


def _check_table(config: ml_collections.ConfigDict) -> None:
  for field, rule in RULES.items():
    present, value = _get(config, field)
    if present and value is not None and not rule.allows(value):
      raise ValueError(f'config.{field}={value!r} must be {rule.describe()}')
  for field, allowed in CHOICES.items():
    present, value = _get(config, field)
    if present and value not in allowed:
      names = ', '.join(repr(a) if isinstance(a, str) else str(a)
                        for a in allowed)
      raise ValueError(f'config.{field}={value!r} is unknown; allowed: '
                       f'{names}')


def _check_relations(config: ml_collections.ConfigDict) -> None:
  t = config.training
  check_divisible(int(t.batch_size), 'training.batch_size',
                  jax.device_count(), 'devices')
  check_divisible(int(t.batch_size), 'training.batch_size',
                  jax.process_count(), 'processes')
  if 'eval' in config:
    check_divisible(int(config.eval.batch_size), 'eval.batch_size',
                    jax.device_count(), 'devices')
  if int(t.num_train_steps) == 0 and int(t.num_epochs) == 0:
    raise ValueError('config.training.num_train_steps and num_epochs are '
                     'both 0; set one of them > 0')
  if 'x_noise_low' in t and not t.x_noise_low < t.x_noise_high:
    raise ValueError(
        f'config.training.x_noise_low={t.x_noise_low} must be < '
        f'config.training.x_noise_high={t.x_noise_high}')
  if 'x_chain_init' in t:
    # The step's own check: no generator signal without a noise start.
    train_step.teaching_switches(t)
  own_chain = (bool(t.get('second_x_chain', True)) or
               t.get('negative_chain_init', 'generator') == 'data' or
               t.get('x_chain_init', 'generator') == 'noise')
  if not own_chain and (int(t.get('replay_buffer_size', 0)) > 0 or
                        float(config.langevin_x.get('jump_std', 0.0)) > 0):
    raise ValueError('config.training.replay_buffer_size and '
                     'config.langevin_x.jump_std act on the EBM\'s own '
                     'negative chain, which config.training.second_x_chain='
                     'False removes; set second_x_chain=True or '
                     "negative_chain_init='data'")
  if int(t.get('long_chains', 0)) > int(t.batch_size):
    raise ValueError(f'config.training.long_chains={t.long_chains} must be '
                     f'<= config.training.batch_size={t.batch_size}')


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError with one line naming the first bad field.

  Args:
    config: an experiment config (configs/default.py and its overrides).
  """
  _check_table(config)
  _check_relations(config)
  if config.model.arch != 'mlp':
    ts.check_image_size(int(config.data.image_size), config.model.arch)


def num_train_steps(config: ml_collections.ConfigDict,
                    steps_per_epoch: int) -> int:
  """The run's length: num_train_steps if > 0, else num_epochs epochs."""
  if int(config.training.num_train_steps) > 0:
    return int(config.training.num_train_steps)
  return int(config.training.num_epochs) * steps_per_epoch
