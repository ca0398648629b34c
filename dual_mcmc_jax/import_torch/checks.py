"""Checks one net's PyTorch state dict against the model, then maps it.

`map_state_dict` is the one place where a checkpoint meets the model the
config builds: every tensor must have a slot of the same shape (or be one of
the two buffers that carry no information, `num_batches_tracked` and
`weight_v`, with the shape PyTorch would give them), and every slot must be
filled. The first offender is reported in one line that names the tensor and
the config fields that decide its shape.
"""

from __future__ import annotations

from typing import Any, Mapping

from flax import traverse_util
import numpy as np

from dual_mcmc_jax import settings as settings_lib
from dual_mcmc_jax.import_torch import names
from dual_mcmc_jax.import_torch.names import CheckpointMismatchError


def _width_hint(net: str, key: str, config: settings_lib.Settings) -> str:
  """The config fields that set the shape of `net.key`, as 'f=v' text."""
  m = config.model
  fields = {'netG': ['ngf'], 'netE': ['nef'], 'netI': ['nif']}[net]
  if (net == 'netG' and key.startswith('lin_1.')) or (
      net == 'netI' and key.split('.')[0] in ('conv51', 'conv52')):
    fields.append('nz')
  return ', '.join(f'config.model.{f}={getattr(m, f)}' for f in fields)


def _layout_hint(net: str, config: settings_lib.Settings) -> str:
  """The config fields that decide which tensors `net` has."""
  hint = (f'config.model.resnet_style={config.model.resnet_style!r} at '
          f'config.data.image_size={config.data.image_size}')
  if net == 'netE' and not config.model.ebm_spectral_norm:
    hint += ' with config.model.ebm_spectral_norm=False'
  return hint


def _ignored_key_shape(key: str, slots: Mapping[str, names.Slot]
                       ) -> tuple[int, ...] | None:
  """Expected shape of a key with no Flax slot, or None if it is unknown."""
  if key.endswith('.num_batches_tracked'):
    base = key[:-len('num_batches_tracked')]
    return () if base + 'running_mean' in slots else None
  if key.endswith('.weight_v'):
    base = key[:-len('weight_v')]
    w = slots.get(base + 'weight_orig')
    if w is None or base + 'weight_u' not in slots:
      return None
    # v has one entry per column of the [out, in * kh * kw] weight matrix.
    return (int(np.prod(w.torch_shape[1:])),)
  return None


def _check_present_keys(net: str, state_dict: names.NumpyStateDict,
                        slots: Mapping[str, names.Slot],
                        config: settings_lib.Settings) -> None:
  """Every tensor of the checkpoint has a slot (or is ignorable) and fits."""
  for key, value in state_dict.items():
    shape = names.shape_of(value)
    slot = slots.get(key)
    if slot is None:
      expected = _ignored_key_shape(key, slots)
      if expected is None:
        raise CheckpointMismatchError(
            f'{net}.{key}: in the checkpoint (shape {shape}) but not in the '
            f'model that {_layout_hint(net, config)} builds')
    else:
      expected = slot.torch_shape
    if shape != expected:
      raise CheckpointMismatchError(
          f'{net}.{key}: checkpoint shape {shape} but '
          f'{_width_hint(net, key, config)} expects {expected}')


def _check_no_missing_keys(net: str, state_dict: names.NumpyStateDict,
                           slots: Mapping[str, names.Slot],
                           config: settings_lib.Settings) -> None:
  """Every slot of the model is filled by the checkpoint."""
  for key, slot in slots.items():
    if key not in state_dict:
      raise CheckpointMismatchError(
          f'{net}.{key}: missing from the checkpoint; the model that '
          f'{_layout_hint(net, config)} builds expects shape '
          f'{slot.torch_shape}')


def map_state_dict(net: str, state_dict: names.NumpyStateDict,
                   abstract_variables: Mapping[str, Any],
                   config: settings_lib.Settings,
                   collections: tuple[str, ...] = ('params', 'batch_stats')
                   ) -> dict[str, Any]:
  """Validates one net's PyTorch state dict and maps it to Flax variables.

  Args:
    net: 'netG', 'netE' or 'netI' (used in messages).
    state_dict: {torch key: numpy array}, in the checkpoint's order.
    abstract_variables: the net's variables as built from `config` (shapes
      suffice, e.g. from `jax.eval_shape`).
    config: the experiment config (used in messages).
    collections: the collections `state_dict` holds; ('params',) maps
      parameter-shaped dicts such as gradients.

  Returns:
    {'params': ..., 'batch_stats'?: ...} (the requested collections) as
    nested dicts of float32 numpy arrays, structured like
    `abstract_variables`.

  Raises:
    CheckpointMismatchError: naming the first offending tensor: a tensor the
      model lacks, a shape that differs, or a tensor the checkpoint lacks.
  """
  state_dict = names.strip_data_parallel(state_dict)
  slots = names.tensor_slots(abstract_variables, collections)
  _check_present_keys(net, state_dict, slots, config)
  _check_no_missing_keys(net, state_dict, slots, config)
  flat = {}
  for key, slot in slots.items():
    a = names.to_flax_layout(np.asarray(state_dict[key], np.float32),
                             slot.path[-1] == 'kernel')
    flat[(slot.collection,) + slot.path] = a
  return traverse_util.unflatten_dict(flat)
