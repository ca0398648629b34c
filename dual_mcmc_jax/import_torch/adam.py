"""`torch.optim.Adam` state dicts -> optax `scale_by_adam` moments.

PyTorch keys an optimiser's state by the index of the parameter in
`net.parameters()`; `parameter_order` recovers that order from the state
dict. `map_adam_state` maps `exp_avg` / `exp_avg_sq` to `mu` / `nu` in Flax
layout and `step` to the Adam count (which drives the bias correction);
`choose_step` decides the train step the imported state records.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from absl import logging
from flax import traverse_util
import numpy as np

from dual_mcmc_jax import settings as settings_lib
from dual_mcmc_jax.import_torch import names
from dual_mcmc_jax.import_torch.names import CheckpointMismatchError

_BUFFER_SUFFIXES = ('.running_mean', '.running_var', '.num_batches_tracked',
                    '.weight_u', '.weight_v')


@dataclasses.dataclass(frozen=True)
class AdamMoments:
  """One net's Adam state from PyTorch, in Flax layout."""
  mu: Any  # pytree like params
  nu: Any
  count: int


def parameter_order(state_dict: names.NumpyStateDict) -> list[str]:
  """Keys of the parameters (not buffers) in `net.parameters()` order.

  A state dict lists each module's parameters, then its buffers, then its
  children, which is also the order of `net.parameters()`; spectral norm
  re-registers `weight_orig` after `bias`, in both.

  Args:
    state_dict: the net's state dict, in the checkpoint's order.

  Returns:
    The parameter keys (`module.` prefixes removed), in PyTorch's order.
  """
  return [k for k in names.strip_data_parallel(state_dict)
          if not k.endswith(_BUFFER_SUFFIXES)]


def _check_moment_shapes(where: str, param: str, entry: Mapping[str, Any],
                         slot: names.Slot) -> None:
  for name in ('exp_avg', 'exp_avg_sq'):
    shape = names.shape_of(entry[name])
    if shape != slot.torch_shape:
      raise CheckpointMismatchError(
          f'{where}.{name} ({param}): shape {shape} but the parameter has '
          f'{slot.torch_shape}')


def _warn_on_hyper_parameters(opt: str, groups: list[Mapping[str, Any]],
                              o: settings_lib.OptimSettings) -> None:
  """Logs each Adam hyper-parameter of the checkpoint the config differs in."""
  which = {'optG': 'g', 'optE': 'e', 'optI': 'i'}[opt]
  expected = {'betas': (float(o.beta1), float(o.beta2)), 'eps': float(o.eps),
              'weight_decay': float(getattr(o, f'wd_{which}'))}
  for g in groups:
    for name, want in expected.items():
      if name not in g:
        continue
      got = tuple(g[name]) if name == 'betas' else g[name]
      if not np.allclose(got, want):
        logging.warning('%s: checkpoint %s=%s but the config has %s', opt,
                        name, got, want)


def map_adam_state(net: str, opt: str, optimizer_state: Mapping[str, Any],
                   state_dict: names.NumpyStateDict,
                   variables: Mapping[str, Any],
                   config_optim: settings_lib.OptimSettings | None = None
                   ) -> AdamMoments | None:
  """Maps a `torch.optim.Adam` state dict onto optax's `scale_by_adam` state.

  Args:
    net: 'netG' / 'netE' / 'netI' (messages).
    opt: 'optG' / 'optE' / 'optI' (messages).
    optimizer_state: {'state': {index: {'step', 'exp_avg', 'exp_avg_sq'}},
      'param_groups': [...]}, arrays as numpy.
    state_dict: the net's state dict (gives the parameter order).
    variables: the net's mapped Flax variables (give the structure).
    config_optim: `config.optim`; hyper-parameters that differ from the
      checkpoint's are reported as warnings.

  Returns:
    The moments, or None when the optimiser has no state (never stepped).

  Raises:
    CheckpointMismatchError: if the optimiser does not fit the net.
  """
  groups = list(optimizer_state.get('param_groups', []))
  state = dict(optimizer_state.get('state', {}))
  if not state:
    return None
  order = parameter_order(state_dict)
  indices = [int(i) for g in groups for i in g['params']]
  if len(indices) != len(order):
    raise CheckpointMismatchError(
        f'{opt}: the optimiser has {len(indices)} parameters but {net} has '
        f'{len(order)}')
  if config_optim is not None:
    _warn_on_hyper_parameters(opt, groups, config_optim)
  slots = names.tensor_slots(variables, ('params',))
  flat_params = traverse_util.flatten_dict(dict(variables['params']))
  mu, nu, steps = {}, {}, set()
  for index, key in zip(indices, order):
    slot = slots[key]
    entry = state.get(index, state.get(str(index)))
    if entry is None:  # Never received a gradient.
      zeros = np.zeros_like(flat_params[slot.path])
      mu[slot.path], nu[slot.path] = zeros, zeros
      continue
    _check_moment_shapes(f'{opt}.state[{index}]', f'{net}.{key}', entry,
                         slot)
    is_kernel = slot.path[-1] == 'kernel'
    mu[slot.path] = names.to_flax_layout(
        np.asarray(entry['exp_avg'], np.float32), is_kernel)
    nu[slot.path] = names.to_flax_layout(
        np.asarray(entry['exp_avg_sq'], np.float32), is_kernel)
    steps.add(int(round(float(np.asarray(entry['step'])))))
  if len(steps) > 1:
    logging.warning('%s: parameters have different Adam step counts %s; '
                    'using the largest', opt, sorted(steps))
  return AdamMoments(mu=traverse_util.unflatten_dict(mu),
                     nu=traverse_util.unflatten_dict(nu),
                     count=max(steps) if steps else 0)


def choose_step(moments: Mapping[str, AdamMoments | None],
                step: int | None) -> int:
  """The train step of the imported state.

  Args:
    moments: the imported Adam moments per net ('gen' / 'ebm' / 'inf'), None
      where the checkpoint has no optimiser state.
    step: `--step`, or None.

  Returns:
    `step` if given; else the Adam step count (the EBM's, or the largest if
    the nets differ); else 0, with a warning to pass `--step`.

  Raises:
    ValueError: `step` is negative.
  """
  if step is not None:
    if step < 0:
      raise ValueError(f'--step={step} must be >= 0')
    return int(step)
  counts = {name: m.count for name, m in moments.items() if m is not None}
  if not counts:
    logging.warning('The checkpoint holds no optimiser state: importing at '
                    'step 0 (base learning rates); pass '
                    '--step=EPOCH*STEPS_PER_EPOCH to continue the decay.')
    return 0
  if len(set(counts.values())) > 1:
    logging.warning('Adam step counts differ between nets (%s); using the '
                    "EBM's (or the largest)", counts)
  return int(counts.get('ebm', max(counts.values())))
