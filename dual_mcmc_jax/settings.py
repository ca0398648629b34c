"""The run's settings: the config read once, typed, frozen and checked.

Experiments are written as ml_collections ConfigDicts (`configs/*.py`,
`--config.<group>.<field>=value` overrides); `from_config(config)` reads
one into a `Settings`, a tree of frozen dataclasses with the same groups and
field names, and checks every field on the way. That is the only place a
config is interpreted: the step, the samplers, the networks' builder, the
optimisers, the training loop and the checkpoint guard receive the
`Settings`. Each field declares what it may hold (`Rule`, choices) and
whether it defines the run (`run_defining`: changing it makes a workdir's
checkpoints another run's, `checkpointing.check_config`).

A bad value raises ValueError with one line naming the field, the value and
what is allowed, e.g.

  config.optim.lr_e=nan must be a finite number > 0

Every field is required: a workdir's `config.json` written by an older
version is brought to this version when it is loaded
(`migration.migrate_config`), so that nothing downstream needs a
fallback for old fields.

This module imports no training module (`train.py`, `train_step.py`).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from typing import Any, Callable, Iterable, Mapping

import jax

from dual_mcmc_jax import data as data_lib
from dual_mcmc_jax import langevin


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
    if (math.isnan(value) or (self.finite and math.isinf(value)) or
        (self.integer and float(value) != int(value))):
      return False
    too_low = self.low is not None and (
        value <= self.low if self.low_open else value < self.low)
    too_high = self.high is not None and (
        value >= self.high if self.high_open else value > self.high)
    return not (too_low or too_high)


POSITIVE_INT = Rule(integer=True, low=1)
NON_NEGATIVE_INT = Rule(integer=True, low=0)
ANY_INT = Rule(integer=True)
POSITIVE = Rule(low=0, low_open=True)
NON_NEGATIVE = Rule(low=0)
FRACTION = Rule(low=0, low_open=True, high=1)  # (0, 1]
BETA = Rule(low=0, high=1, high_open=True)  # [0, 1)
FINITE = Rule()

Choices = Iterable[Any] | Callable[[], Iterable[Any]]


_REQUIRED = dataclasses.MISSING


def field(rule: Rule | None = None, choices: Choices | None = None,
          run_defining: bool = False, default: Any = _REQUIRED) -> Any:
  """Declares a settings field: its check and whether it defines the run.

  Args:
    rule: what a number may hold.
    choices: the values allowed, or a function returning them (a registry
      read when the config is checked, so that a registered name is valid).
    run_defining: a workdir's checkpoints belong to one value of it.
    default: for settings built in code (a test's chain); a config must
      still hold every field.
  """
  return dataclasses.field(default=default, metadata=dict(
      rule=rule, choices=choices, run_defining=run_defining))


# Names that fields choose between.
ARCHS = ('resnet', 'simple', 'mlp')
RESNET_STYLES = ('cifar', 'celeba')
COMPUTE_DTYPES = ('float32', 'bfloat16')
# The CPU plug-in (dual_mcmc_jax/cpu/): on for the CPU backend with 'auto'.
CPU_PLUGIN = ('auto', 'on', 'off')
X_CHAIN_INITS = ('generator', 'noise')
NEGATIVE_CHAIN_INITS = ('generator', 'data')
LR_SCHEDULES = ('exponential', 'cosine')  # train_state.create_learning_rate_fn
RUN = dict(run_defining=True)


@dataclasses.dataclass(frozen=True)
class DataSettings:
  """`config.data`: what is trained on (configs/default.py explains each)."""
  dataset: str = field(choices=data_lib.DATASETS, **RUN)
  image_size: int = field(POSITIVE_INT, **RUN)
  num_channels: int = field(choices=(1, 3), **RUN)
  # Dimension of the points an 'mlp' run learns (2-D densities).
  point_dim: int = field(POSITIVE_INT, **RUN)
  data_dir: str | None = field()
  download: bool = field()
  manual_dir: str | None = field()
  random_flip: bool = field()
  train_split: str = field(**RUN)
  toy2d_name: str = field(**RUN)
  toy2d_num_points: int = field(POSITIVE_INT)
  npz_path: str | None = field(**RUN)
  npz_key: str | None = field(**RUN)
  image_folder: str | None = field(**RUN)
  skip_unreadable: bool = field()
  num_load_workers: int = field(NON_NEGATIVE_INT)
  prefetch_to_device: int = field(NON_NEGATIVE_INT)


@dataclasses.dataclass(frozen=True)
class ModelSettings:
  """`config.model`: the three networks (every field defines the run)."""
  arch: str = field(choices=ARCHS, **RUN)
  resnet_style: str = field(choices=RESNET_STYLES, **RUN)
  nz: int = field(POSITIVE_INT, **RUN)
  ngf: int = field(POSITIVE_INT, **RUN)
  nef: int = field(POSITIVE_INT, **RUN)
  nif: int = field(POSITIVE_INT, **RUN)
  mlp_hidden: int = field(POSITIVE_INT, **RUN)
  mlp_layers: int = field(POSITIVE_INT, **RUN)
  ebm_spectral_norm: bool = field(**RUN)
  sn_power_iterations: int = field(POSITIVE_INT, **RUN)


@dataclasses.dataclass(frozen=True)
class ChainSettings:
  """`config.langevin_z`: one Langevin chain (what `langevin.py` reads).

  A chain is switched off by its own switch, never by zero steps: a zero is
  a typo that would silently train a different model.
  """
  steps: int = field(POSITIVE_INT)
  step_size: float = field(POSITIVE)
  noise: float = field(NON_NEGATIVE, default=0.0)
  # A name registered in `langevin.RULES`.
  rule: str = field(choices=lambda: tuple(langevin.RULES),
                    default='reference')


@dataclasses.dataclass(frozen=True)
class XChainSettings(ChainSettings):
  """`config.langevin_x`: the x-chain and its jumps (remedies.py)."""
  # Random-walk jumps of this std in the negative chain; 0: the reference.
  jump_std: float = field(NON_NEGATIVE, default=0.0)
  generator_jumps: bool = field(default=False)
  generator_jump_fraction: float = field(FRACTION, default=1.0)


@dataclasses.dataclass(frozen=True)
class LossSettings:
  """`config.loss`: the three objectives."""
  sigma: float = field(POSITIVE)
  prior_sigma: float = field(POSITIVE)
  g_factor: float = field(NON_NEGATIVE)
  s_factor: float = field(NON_NEGATIVE)
  i_factor: float = field(NON_NEGATIVE)
  ebm_temperature_scaling: bool = field()
  energy_l2: float = field(NON_NEGATIVE)
  energy_diff_limit: float = field(Rule(low=0, low_open=True, finite=False))


@dataclasses.dataclass(frozen=True)
class OptimSettings:
  """`config.optim`: Adam with coupled weight decay, per net."""
  lr_e: float = field(POSITIVE)
  lr_g: float = field(POSITIVE)
  lr_i: float = field(POSITIVE)
  beta1: float = field(BETA)
  beta2: float = field(BETA)
  eps: float = field(POSITIVE)
  wd_e: float = field(NON_NEGATIVE)
  wd_g: float = field(NON_NEGATIVE)
  wd_i: float = field(NON_NEGATIVE)
  lr_decay: float = field(FRACTION)
  lr_schedule: str = field(choices=LR_SCHEDULES)


@dataclasses.dataclass(frozen=True)
class TrainingSettings:
  """`config.training`: the loop, the ablations and the remedies."""
  batch_size: int = field(POSITIVE_INT, **RUN)
  num_epochs: int = field(NON_NEGATIVE_INT)
  num_train_steps: int = field(NON_NEGATIVE_INT)
  seed: int = field(NON_NEGATIVE_INT, **RUN)
  compute_dtype: str = field(choices=COMPUTE_DTYPES)
  cpu_plugin: str = field(choices=CPU_PLUGIN)
  second_x_chain: bool = field(**RUN)
  z_revision: bool = field(**RUN)
  generator_x_teaching: bool = field(**RUN)
  generator_data_teaching: bool = field(**RUN)
  x_chain_init: str = field(choices=X_CHAIN_INITS, **RUN)
  negative_chain_init: str = field(choices=NEGATIVE_CHAIN_INITS)
  long_chains: int = field(NON_NEGATIVE_INT)
  long_chain_steps: int = field(NON_NEGATIVE_INT)
  # The buffer is part of the state: its size shapes the checkpoint.
  replay_buffer_size: int = field(NON_NEGATIVE_INT, **RUN)
  replay_fraction: float = field(FRACTION)
  negative_noise_fraction: float = field(BETA)  # [0, 1)
  x_noise_low: float = field(FINITE)
  x_noise_high: float = field(FINITE)
  log_every_steps: int = field(POSITIVE_INT)
  image_every_steps: int = field(POSITIVE_INT)
  checkpoint_every_steps: int = field(POSITIVE_INT)
  health_every_steps: int = field(POSITIVE_INT)
  max_checkpoints_to_keep: int = field(POSITIVE_INT)
  num_image_samples: int = field(POSITIVE_INT)


@dataclasses.dataclass(frozen=True)
class RecoverySettings:
  """`config.recovery`: divergence rollbacks (dual_mcmc_jax/recovery.py)."""
  max_retries: int = field(NON_NEGATIVE_INT)
  fresh_rng: bool = field()
  lr_factor: float = field(FRACTION)
  langevin_x_step_factor: float = field(FRACTION)
  allow_config_change: bool = field()


@dataclasses.dataclass(frozen=True)
class EvalSettings:
  """`config.eval`: the evaluators of `--mode=eval` and `--mode=sample`."""
  evaluators: str = field()
  strict: bool = field()
  seed: int = field(NON_NEGATIVE_INT)
  batch_size: int = field(POSITIVE_INT)
  langevin_steps: int = field(POSITIVE_INT)
  langevin_step_size: float = field(POSITIVE)
  langevin_noise: float = field(NON_NEGATIVE)
  num_samples_to_write: int = field(POSITIVE_INT)
  num_samples: int = field(POSITIVE_INT)
  inception_weights: str | None = field()
  inception_url: str | None = field()
  inception_cache_dir: str | None = field()
  stats_dir: str | None = field()
  fid_reference_split: str = field()
  fid_num_reference_images: int = field(ANY_INT)
  fid_reference_stats: str | None = field()
  fid_matrix_sqrt: str = field(choices=('sqrtm', 'eigh'))
  ood_datasets: str = field()
  ood_split: str = field()
  ood_num_images: int = field(ANY_INT)
  inpainting_masks: str = field()
  inpainting_split: str = field()
  inpainting_num_images: int = field(ANY_INT)
  inpainting_mask_reference_size: int = field(POSITIVE_INT)
  inpainting_block_size: int = field(POSITIVE_INT)
  inpainting_fill_value: float = field(FINITE)
  inpainting_paste_observed: bool = field()
  inpainting_z_steps: int = field(ANY_INT)
  inpainting_x_steps: int = field(ANY_INT)
  inpainting_grid_images: int = field(NON_NEGATIVE_INT)
  classifier_hidden: int = field(POSITIVE_INT)
  classifier_max_iter: int = field(POSITIVE_INT)
  classifier_num_samples: int = field(POSITIVE_INT)
  cost_warmup_steps: int = field(POSITIVE_INT)
  cost_steps: int = field(POSITIVE_INT)


@dataclasses.dataclass(frozen=True)
class Settings:
  """A whole experiment's settings, one group per config group."""
  data: DataSettings
  model: ModelSettings
  langevin_x: XChainSettings
  langevin_z: ChainSettings
  loss: LossSettings
  optim: OptimSettings
  training: TrainingSettings
  recovery: RecoverySettings
  eval: EvalSettings

  def to_dict(self) -> dict[str, dict[str, Any]]:
    """{group: {field: value}}, the form `config.json` stores."""
    return dataclasses.asdict(self)

  def replace(self, **groups: Any) -> Settings:
    """A copy with some groups replaced (`dataclasses.replace`)."""
    return dataclasses.replace(self, **groups)


GROUPS: dict[str, type[Any]] = {
    f.name: typing.get_type_hints(Settings)[f.name]
    for f in dataclasses.fields(Settings)}


def _fields(group: type[Any]) -> list[dataclasses.Field]:
  return list(dataclasses.fields(group))


def run_defining_fields() -> tuple[str, ...]:
  """Dotted names of the fields declared `run_defining`."""
  return tuple(f'{g}.{f.name}' for g, cls in GROUPS.items()
               for f in _fields(cls) if f.metadata['run_defining'])


# --------------------------------------------------------------------------
# Reading a config.
# --------------------------------------------------------------------------


def _value(where: str, kind: Any, value: Any) -> Any:
  """`value` as the declared type, or ValueError naming the field."""
  optional = isinstance(kind, types.UnionType) and type(None) in kind.__args__
  if optional:
    if value is None:
      return None
    kind = next(k for k in kind.__args__ if k is not type(None))
  if kind is bool:
    if isinstance(value, bool):
      return value
  elif kind is float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      return float(value)
  elif kind is int:
    if isinstance(value, int) and not isinstance(value, bool):
      return value
    if isinstance(value, float) and value.is_integer():
      return int(value)
    if isinstance(value, float):
      return value  # The rule names what is wrong.
  elif kind is str:
    if isinstance(value, str):
      return value
  names = {bool: 'True or False', float: 'a number', int: 'an integer',
           str: 'a string'}
  raise ValueError(f'config.{where}={value!r} must be {names[kind]}'
                   f'{" or None" if optional else ""}')


def _check(where: str, f: dataclasses.Field, value: Any) -> None:
  rule, choices = f.metadata['rule'], f.metadata['choices']
  if rule is not None and value is not None and not rule.allows(value):
    raise ValueError(f'config.{where}={value!r} must be {rule.describe()}')
  if choices is not None:
    allowed = tuple(choices() if callable(choices) else choices)
    if value not in allowed:
      names = ', '.join(repr(a) if isinstance(a, str) else str(a)
                        for a in allowed)
      raise ValueError(f'config.{where}={value!r} is unknown; allowed: '
                       f'{names}')


def _group(name: str, cls: type[Any], raw: Mapping[str, Any]) -> Any:
  hints = typing.get_type_hints(cls)
  unknown = sorted(set(raw) - set(hints))
  if unknown:
    raise ValueError(f'config.{name}.{unknown[0]} is not a field of this '
                     f'version; the fields of config.{name} are those of '
                     'configs/default.py')
  values = {}
  for f in _fields(cls):
    where = f'{name}.{f.name}'
    if f.name not in raw:
      raise ValueError(f'config.{where} is missing; add it to the config '
                       '(configs/default.py has every field)')
    values[f.name] = _value(where, hints[f.name], raw[f.name])
    _check(where, f, values[f.name])
  return cls(**values)


def _as_dict(config: Any) -> dict[str, Any]:
  return (config.to_dict() if hasattr(config, 'to_dict')  # a ConfigDict
          else copy.deepcopy(dict(config)))


def from_config(config: Any, check_devices: bool = True) -> Settings:
  """Reads and checks a config; the one place a config is interpreted.

  Args:
    config: a ConfigDict (configs/*.py), a plain {group: {field: value}}
      dict of the same form, or a `Settings` (returned as it is: it was
      checked when it was read).
    check_devices: also check batch sizes against this process's devices
      (False: a config read for another machine, e.g. a stored one).

  Returns:
    The settings.

  Raises:
    ValueError: one line naming the first bad or missing field.
  """
  if isinstance(config, Settings):
    return config
  raw = _as_dict(config)
  groups = {}
  for name, cls in GROUPS.items():
    if name not in raw:
      raise ValueError(f'config.{name} is missing; add the group (configs/'
                       'default.py has every field)')
    groups[name] = _group(name, cls, raw[name])
  settings = Settings(**groups)
  _check_relations(settings, check_devices)
  return settings


def check_divisible(value: int, field_name: str, divisor: int,
                    what: str) -> None:
  """Raises ValueError unless `value` is a positive multiple of `divisor`."""
  if value <= 0 or value % divisor:
    raise ValueError(f'config.{field_name}={value} must be a positive '
                     f'multiple of the number of {what} ({divisor})')


def check_image_size(image_size: int, arch: str) -> None:
  """Raises ValueError if `arch` cannot be built for `image_size`."""
  if arch == 'mlp':
    return
  # The conv nets double (or halve) the resolution per block from 4x4.
  if image_size < 8 or image_size & (image_size - 1):
    raise ValueError(
        f'config.data.image_size={image_size} cannot be built by '
        f'config.model.arch={arch!r}; use a power of two >= 8 (8, 16, 32, '
        '64, ...)')


def _check_relations(s: Settings, check_devices: bool) -> None:
  """The rules that tie fields together."""
  t = s.training
  if check_devices:
    check_divisible(t.batch_size, 'training.batch_size', jax.device_count(),
                    'devices')
    check_divisible(t.batch_size, 'training.batch_size', jax.process_count(),
                    'processes')
    check_divisible(s.eval.batch_size, 'eval.batch_size', jax.device_count(),
                    'devices')
  if t.num_train_steps == 0 and t.num_epochs == 0:
    raise ValueError('config.training.num_train_steps and num_epochs are '
                     'both 0; set one of them > 0')
  if not t.x_noise_low < t.x_noise_high:
    raise ValueError(f'config.training.x_noise_low={t.x_noise_low} must be < '
                     f'config.training.x_noise_high={t.x_noise_high}')
  if t.x_chain_init == 'generator' and not (t.generator_x_teaching or
                                            t.generator_data_teaching):
    raise ValueError('config.training.generator_x_teaching and '
                     'generator_data_teaching are both False, so the '
                     'generator would learn nothing; for an EBM alone use '
                     "config.training.x_chain_init='noise'")
  lx, own_chain = s.langevin_x, (t.second_x_chain or t.x_chain_init == 'noise'
                                 or t.negative_chain_init == 'data')
  if not own_chain and (t.replay_buffer_size > 0 or lx.jump_std > 0 or
                        lx.generator_jumps or t.negative_noise_fraction > 0):
    raise ValueError('config.training.replay_buffer_size, '
                     'negative_noise_fraction and config.langevin_x.jump_std, '
                     "generator_jumps act on the EBM's own negative chain, "
                     'which config.training.second_x_chain=False removes; '
                     "set second_x_chain=True or negative_chain_init='data'")
  if t.x_chain_init == 'noise' and lx.generator_jumps:
    raise ValueError('config.langevin_x.generator_jumps needs a generator, '
                     "which config.training.x_chain_init='noise' never trains")
  if t.long_chains > t.batch_size:
    raise ValueError(f'config.training.long_chains={t.long_chains} must be '
                     f'<= config.training.batch_size={t.batch_size}')
  check_image_size(s.data.image_size, s.model.arch)


def num_train_steps(settings: Settings, steps_per_epoch: int) -> int:
  """The run's length: num_train_steps if > 0, else num_epochs epochs."""
  t = settings.training
  return t.num_train_steps or t.num_epochs * steps_per_epoch
