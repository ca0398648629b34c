"""Flax variable paths <-> the authors' PyTorch key names, and layouts.

The lowest layer of the import: it knows how a residual net's Flax modules
are called in the authors' `nets.py` (`torch_module_names`, `torch_name`),
where each PyTorch tensor lives in the Flax variables (`tensor_slots`), and
how kernels are laid out on either side (`to_torch_layout`,
`to_flax_layout`). Everything here works on numpy arrays or shape structs;
nothing reads a file or a config.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

from flax import traverse_util
import numpy as np

# (checkpoint entry of the net, name in the TrainState, optimiser entry).
NETS = (('netG', 'gen', 'optG'), ('netE', 'ebm', 'optE'),
        ('netI', 'inf', 'optI'))
# Inner module names of networks.TorchConv / TorchDense: no PyTorch level.
_WRAPPERS = ('conv', 'dense')
# Layers inside networks.GenUpBlock / EbmBlock -> the authors' names (conv1
# and conv2 keep theirs).
_BLOCK_LAYERS = {'bn1': 'bn_1', 'bn2': 'bn_2', 'shortcut': 'sc'}
_LEAF_NAMES = {
    ('params', 'scale'): 'weight',
    ('params', 'bias'): 'bias',
    ('batch_stats', 'mean'): 'running_mean',
    ('batch_stats', 'var'): 'running_var',
    ('batch_stats', 'u'): 'weight_u',
}

NumpyStateDict = Mapping[str, np.ndarray]


class CheckpointMismatchError(ValueError):
  """The checkpoint does not fit the model the config builds.

  Raised by every layer of the import (names, checks, Adam mapping), hence
  defined in the lowest one.
  """


@dataclasses.dataclass(frozen=True)
class Slot:
  """Where one PyTorch tensor lives in the Flax variables of a net."""
  collection: str  # 'params' or 'batch_stats'
  path: tuple[str, ...]  # path inside the collection
  torch_shape: tuple[int, ...]


def shape_of(leaf: Any) -> tuple[int, ...]:
  """The shape of an array or shape struct as a tuple of Python ints."""
  return tuple(int(d) for d in np.shape(leaf))


def strip_data_parallel(state_dict: NumpyStateDict) -> dict[str, np.ndarray]:
  """Drops the `module.` prefix that `nn.DataParallel` puts on every key.

  Args:
    state_dict: {torch key: array}.

  Returns:
    A plain dict in the same order, prefixes removed when all keys have one.
  """
  keys = list(state_dict)
  if keys and all(k.startswith('module.') for k in keys):
    return {k[len('module.'):]: v for k, v in state_dict.items()}
  return dict(state_dict)


def _numbered(names: set[str], prefix: str) -> list[str]:
  """The names `prefix0`, `prefix1`, ... in `names`, in numerical order."""
  found = [n for n in names if re.fullmatch(rf'{prefix}\d+', n)]
  return sorted(found, key=lambda n: int(n[len(prefix):]))


def torch_module_names(params: Mapping[str, Any]) -> dict[str, str]:
  """PyTorch key prefix of each top-level module of one residual net.

  Which net it is shows in its modules: only the inference net has `mu`,
  only the generator `conv_out`.

  Args:
    params: the net's parameters (only the top-level names are read).

  Returns:
    {Flax module name: PyTorch prefix}, e.g. {'block0': 'conv_1', ...} for
    the EBM (see the package docstring).

  Raises:
    CheckpointMismatchError: `params` is not one of the residual nets.
  """
  top = set(params)
  blocks = _numbered(top, 'block')
  if 'mu' in top:  # ResInference
    names = {n: f'main.{2 * i}' for i, n in enumerate(_numbered(top, 'conv'))}
    names.update(mu='conv51', logvar='conv52')
  elif 'conv_out' in top:  # ResGenerator
    n = len(blocks)
    names = {'fc': 'lin_1', 'bn_out': f'bn_{n + 2}',
             'conv_out': f'conv{n + 2}'}
    names.update({b: f'block{i + 2}' for i, b in enumerate(blocks)})
  else:  # ResEBM
    names = {b: ('conv_1' if i == 0 else f'block{i + 1}')
             for i, b in enumerate(blocks)}
    names['fc'] = f'lin_{len(blocks) + 1}'
  if set(names) != top:
    raise CheckpointMismatchError(
        f'modules {sorted(top)} are not those of one of the residual nets '
        "('resnet') whose PyTorch names are known")
  return names


def torch_name(collection: str, path: tuple[str, ...], spectral: bool,
               module_names: Mapping[str, str]) -> str:
  """The PyTorch state-dict key of a Flax variable.

  Args:
    collection: 'params' or 'batch_stats'.
    path: the variable's path in the collection, e.g.
      ('block0', 'conv1', 'conv', 'kernel').
    spectral: whether the layer is spectrally normalised (its raw weight is
      then `weight_orig`).
    module_names: the net's `torch_module_names`.

  Returns:
    E.g. 'block2.conv1.weight' for the generator's first up-block.
  """
  parts = [module_names[path[0]]]
  for p in path[1:-1]:
    if p not in _WRAPPERS:
      parts.append(_BLOCK_LAYERS.get(p, p))
  leaf = path[-1]
  if (collection, leaf) == ('params', 'kernel'):
    parts.append('weight_orig' if spectral else 'weight')
  else:
    parts.append(_LEAF_NAMES[(collection, leaf)])
  return '.'.join(parts)


def to_torch_layout(a: np.ndarray, is_kernel: bool) -> np.ndarray:
  """Flax layout -> PyTorch layout (HWIO -> OIHW, [in, out] -> [out, in]).

  Args:
    a: the array.
    is_kernel: whether it is a conv or dense kernel (others are unchanged).

  Returns:
    The array in PyTorch's layout (a transposed view for kernels).
  """
  a = np.asarray(a)
  if not is_kernel:
    return a
  if a.ndim == 4:
    return a.transpose(3, 2, 0, 1)
  if a.ndim == 2:
    return a.T
  raise ValueError(f'kernel of rank {a.ndim} has no PyTorch layout')


def to_flax_layout(a: np.ndarray, is_kernel: bool) -> np.ndarray:
  """PyTorch layout -> Flax layout (OIHW -> HWIO, [out, in] -> [in, out]).

  Args:
    a: the array.
    is_kernel: whether it is a conv or linear weight (others are unchanged).

  Returns:
    The array in Flax's layout (a transposed view for kernels).
  """
  a = np.asarray(a)
  if not is_kernel:
    return a
  if a.ndim == 4:
    return a.transpose(2, 3, 1, 0)
  if a.ndim == 2:
    return a.T
  raise ValueError(f'kernel of rank {a.ndim} has no Flax layout')


def tensor_slots(variables: Mapping[str, Any],
                 collections: tuple[str, ...] = ('params', 'batch_stats')
                 ) -> dict[str, Slot]:
  """PyTorch key -> Slot for the variables of one net, in Flax order.

  Args:
    variables: {'params': ..., 'batch_stats'?: ...} of one residual net,
      arrays or shape structs (e.g. from `jax.eval_shape`). The spectral-norm
      vectors in `batch_stats` mark which kernels are `weight_orig`, so pass
      them even when only the parameters are wanted.
    collections: the collections to list.

  Returns:
    The slots, keyed by PyTorch state-dict name.
  """
  stats = traverse_util.flatten_dict(dict(variables.get('batch_stats', {})))
  spectral_modules = {path[:-1] for path in stats if path[-1] == 'u'}
  module_names = torch_module_names(variables['params'])
  slots = {}
  for collection in collections:
    flat = traverse_util.flatten_dict(dict(variables.get(collection, {})))
    for path, leaf in flat.items():
      spectral = path[:-1] in spectral_modules
      name = torch_name(collection, path, spectral, module_names)
      is_kernel = path[-1] == 'kernel'
      shape = shape_of(leaf)
      if is_kernel:
        shape = shape_of(to_torch_layout(np.empty(shape, np.uint8), True))
      slots[name] = Slot(collection, path, shape)
  return slots


def to_torch_state_dict(tree: Any, variables: Mapping[str, Any],
                        collection: str = 'params'
                        ) -> dict[str, np.ndarray]:
  """One collection of a net (or gradients shaped like it) -> PyTorch.

  Args:
    tree: a pytree shaped like `variables[collection]` (the parameters,
      their gradients, Adam moments, the batch statistics).
    variables: the net's variables (names the spectrally normalised layers).
    collection: 'params' or 'batch_stats'.

  Returns:
    {torch key: array in PyTorch layout}. `weight_v` and
    `num_batches_tracked` have no Flax counterpart and are not produced.
  """
  flat = traverse_util.flatten_dict(dict(tree))
  out = {}
  for name, slot in tensor_slots(variables, (collection,)).items():
    out[name] = to_torch_layout(np.asarray(flat[slot.path]),
                                slot.path[-1] == 'kernel')
  return out
