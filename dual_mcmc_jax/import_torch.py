"""Imports a checkpoint of the authors' PyTorch implementation.

  python scripts/import_torch.py --config=configs/cifar10.py \
      --torch_checkpoint=PATH.pth --workdir=runs/cifar10_imported
  python main.py --config=configs/cifar10.py --workdir=runs/cifar10_imported

The config (with the same `--config.<group>.<field>=value` overrides as
`main.py`) must describe the checkpoint's architecture (`config.model.arch =
'resnet'`, style, image size and widths). The tool reads the checkpoint, a
dict saved with `torch.save` holding {'epoch', 'netG', 'netE', 'netI', 'optG',
'optE', 'optI'}, maps every tensor onto the Flax train state built from the
config, and writes an ordinary orbax checkpoint into `WORKDIR/checkpoints`, so
that `main.py` resumes from it and `checkpointing.load_state` loads it. Everything is
validated before anything is written; a workdir that already holds a
checkpoint is refused.

Key names: for CIFAR-10 those of the authors' `_Cifar10_netG`,
`_Cifar10_netE` and `_Cifar10_netI`; the authors' code has no CelebA-64 nets,
and other layouts extend the same scheme (a checkpoint whose names differ is
refused with an error naming the tensor). With n generator up-blocks and m
EBM blocks (CIFAR-10: n = 3, m = 4), Flax module -> PyTorch key prefix:

* netG: `fc` -> `lin_1`; `block{i}` -> `block{i+2}`, inside it `bn1`, `bn2`,
  `shortcut` -> `bn_1`, `bn_2`, `sc`; `bn_out` -> `bn_{n+2}`; `conv_out` ->
  `conv{n+2}`.
* netE: `block0` -> `conv_1` (the start block); `block{i}` -> `block{i+1}`,
  inside them `shortcut` -> `sc`; `fc` -> `lin_{m+1}`.
* netI: `conv{i}` -> `main.{2i}` (an `nn.Sequential` with LeakyReLUs at the
  odd indices); `mu` -> `conv51`; `logvar` -> `conv52`.

`tests/torch_reference.py` builds PyTorch nets with exactly these keys. A
`module.` prefix left by `nn.DataParallel` is stripped.

Tensor mapping:

* conv weights [out, in, kh, kw] -> kernels [kh, kw, in, out]; linear
  weights [out, in] -> [in, out] (the generator's first linear layer too: its
  output is viewed channel-major on both sides); biases as they are.
* BatchNorm `weight`, `bias`, `running_mean`, `running_var` -> `scale`,
  `bias`, batch_stats `mean`, `var`. `num_batches_tracked` is ignored (only
  used by PyTorch for momentum=None).
* spectral norm `weight_orig` -> `kernel` (the raw weight), `weight_u` ->
  batch_stats `u`. `weight_v` is shape-checked and then ignored: in train
  mode PyTorch recomputes v from u before using it, and so does
  `networks.spectral_normalize`.

Optimiser states: where the checkpoint holds the Adam states, their moments
are imported (`exp_avg` -> `mu`, `exp_avg_sq` -> `nu`, laid out like the
parameter; PyTorch's `step` -> the Adam count, which drives the bias
correction). PyTorch keys the state by the index of the parameter in
`net.parameters()`, which is the order of the parameter (non-buffer) entries
of the state dict. Without optimiser states, fresh (zero) Adam states are
used.

Train step of the written checkpoint: `--step` if given; otherwise the Adam
step count of the checkpoint (the exact number of iterations the reference
ran, equal for the three nets), so that the learning-rate decay and the data
stream continue where they were; otherwise 0 (a warning says to pass
`--step=EPOCH*STEPS_PER_EPOCH`). The run's base PRNG key is the one a fresh
run with `config.training.seed` would use.

The mapping functions work on plain numpy arrays and never import PyTorch;
only `read_torch_checkpoint` does, so the tests run without it.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
from typing import Any, Mapping

from absl import logging
from flax import traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from dual_mcmc_jax import checkpointing
from dual_mcmc_jax import networks
from dual_mcmc_jax import train_state as ts

# (checkpoint entry of the net, name in the TrainState, optimiser entry).
NETS = (('netG', 'gen', 'optG'), ('netE', 'ebm', 'optE'),
        ('netI', 'inf', 'optI'))
# Inner module names of networks.TorchConv / TorchDense: no PyTorch level.
_WRAPPERS = ('conv', 'dense')
# Layers inside networks.GenUpBlock / EbmBlock -> the authors' names (conv1
# and conv2 keep theirs).
_BLOCK_LAYERS = {'bn1': 'bn_1', 'bn2': 'bn_2', 'shortcut': 'sc'}
_BUFFER_SUFFIXES = ('.running_mean', '.running_var', '.num_batches_tracked',
                    '.weight_u', '.weight_v')
_LEAF_NAMES = {
    ('params', 'scale'): 'weight',
    ('params', 'bias'): 'bias',
    ('batch_stats', 'mean'): 'running_mean',
    ('batch_stats', 'var'): 'running_var',
    ('batch_stats', 'u'): 'weight_u',
}

NumpyStateDict = Mapping[str, np.ndarray]


class CheckpointMismatchError(ValueError):
  """The checkpoint does not fit the model the config builds."""


class TorchNotInstalledError(ImportError):
  """Reading a .pth file needs PyTorch, which is optional."""


@dataclasses.dataclass(frozen=True)
class Slot:
  """Where one PyTorch tensor lives in the Flax variables of a net."""
  collection: str  # 'params' or 'batch_stats'
  path: tuple[str, ...]  # path inside the collection
  torch_shape: tuple[int, ...]


# --------------------------------------------------------------------------
# Names and layouts.
# --------------------------------------------------------------------------


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
    the EBM (see the module docstring).

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
  """Flax layout -> PyTorch layout (HWIO -> OIHW, [in, out] -> [out, in])."""
  a = np.asarray(a)
  if not is_kernel:
    return a
  if a.ndim == 4:
    return a.transpose(3, 2, 0, 1)
  if a.ndim == 2:
    return a.T
  raise ValueError(f'kernel of rank {a.ndim} has no PyTorch layout')


def to_flax_layout(a: np.ndarray, is_kernel: bool) -> np.ndarray:
  """PyTorch layout -> Flax layout (OIHW -> HWIO, [out, in] -> [in, out])."""
  a = np.asarray(a)
  if not is_kernel:
    return a
  if a.ndim == 4:
    return a.transpose(2, 3, 1, 0)
  if a.ndim == 2:
    return a.T
  raise ValueError(f'kernel of rank {a.ndim} has no Flax layout')


def _shape_of(leaf: Any) -> tuple[int, ...]:
  return tuple(int(d) for d in np.shape(leaf))


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
      shape = _shape_of(leaf)
      if is_kernel:
        shape = _shape_of(to_torch_layout(np.empty(shape, np.uint8), True))
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


# --------------------------------------------------------------------------
# Validation and mapping of one net.
# --------------------------------------------------------------------------


def _strip_data_parallel(state_dict: NumpyStateDict) -> dict[str, np.ndarray]:
  keys = list(state_dict)
  if keys and all(k.startswith('module.') for k in keys):
    return {k[len('module.'):]: v for k, v in state_dict.items()}
  return dict(state_dict)


def _width_hint(net: str, key: str, config: ml_collections.ConfigDict) -> str:
  """The config fields that set the shape of `net.key`, as 'f=v' text."""
  m = config.model
  fields = {'netG': ['ngf'], 'netE': ['nef'], 'netI': ['nif']}[net]
  if (net == 'netG' and key.startswith('lin_1.')) or (
      net == 'netI' and key.split('.')[0] in ('conv51', 'conv52')):
    fields.append('nz')
  return ', '.join(f'config.model.{f}={m[f]}' for f in fields)


def _layout_hint(net: str, config: ml_collections.ConfigDict) -> str:
  """The config fields that decide which tensors `net` has."""
  hint = (f'config.model.resnet_style={config.model.resnet_style!r} at '
          f'config.data.image_size={config.data.image_size}')
  if net == 'netE' and not config.model.ebm_spectral_norm:
    hint += ' with config.model.ebm_spectral_norm=False'
  return hint


def _ignored_key_shape(key: str, slots: Mapping[str, Slot]
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


def map_state_dict(net: str, state_dict: NumpyStateDict,
                   abstract_variables: Mapping[str, Any],
                   config: ml_collections.ConfigDict,
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
  state_dict = _strip_data_parallel(state_dict)
  slots = tensor_slots(abstract_variables, collections)
  for key, value in state_dict.items():
    shape = _shape_of(value)
    slot = slots.get(key)
    if slot is None:
      expected = _ignored_key_shape(key, slots)
      if expected is None:
        raise CheckpointMismatchError(
            f'{net}.{key}: in the checkpoint (shape {shape}) but not in the '
            f'model that {_layout_hint(net, config)} builds')
      if shape != expected:
        raise CheckpointMismatchError(
            f'{net}.{key}: checkpoint shape {shape} but '
            f'{_width_hint(net, key, config)} expects {expected}')
      continue
    if shape != slot.torch_shape:
      raise CheckpointMismatchError(
          f'{net}.{key}: checkpoint shape {shape} but '
          f'{_width_hint(net, key, config)} expects {slot.torch_shape}')
  for key, slot in slots.items():
    if key not in state_dict:
      raise CheckpointMismatchError(
          f'{net}.{key}: missing from the checkpoint; the model that '
          f'{_layout_hint(net, config)} builds expects shape '
          f'{slot.torch_shape}')
  flat = {}
  for key, slot in slots.items():
    a = to_flax_layout(np.asarray(state_dict[key], np.float32),
                       slot.path[-1] == 'kernel')
    flat[(slot.collection,) + slot.path] = a
  return traverse_util.unflatten_dict(flat)


def parameter_order(state_dict: NumpyStateDict) -> list[str]:
  """Keys of the parameters (not buffers) in `net.parameters()` order.

  A state dict lists each module's parameters, then its buffers, then its
  children, which is also the order of `net.parameters()`; spectral norm
  re-registers `weight_orig` after `bias`, in both.
  """
  return [k for k in _strip_data_parallel(state_dict)
          if not k.endswith(_BUFFER_SUFFIXES)]


@dataclasses.dataclass(frozen=True)
class AdamMoments:
  """One net's Adam state from PyTorch, in Flax layout."""
  mu: Any  # pytree like params
  nu: Any
  count: int


def _check_moment_shapes(where: str, param: str, entry: Mapping[str, Any],
                         slot: Slot) -> None:
  for name in ('exp_avg', 'exp_avg_sq'):
    shape = _shape_of(entry[name])
    if shape != slot.torch_shape:
      raise CheckpointMismatchError(
          f'{where}.{name} ({param}): shape {shape} but the parameter has '
          f'{slot.torch_shape}')


def map_adam_state(net: str, opt: str, optimizer_state: Mapping[str, Any],
                   state_dict: NumpyStateDict, variables: Mapping[str, Any],
                   config_optim: ml_collections.ConfigDict | None = None
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
  slots = tensor_slots(variables, ('params',))
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
    mu[slot.path] = to_flax_layout(np.asarray(entry['exp_avg'], np.float32),
                                   is_kernel)
    nu[slot.path] = to_flax_layout(
        np.asarray(entry['exp_avg_sq'], np.float32), is_kernel)
    steps.add(int(round(float(np.asarray(entry['step'])))))
  if len(steps) > 1:
    logging.warning('%s: parameters have different Adam step counts %s; '
                    'using the largest', opt, sorted(steps))
  return AdamMoments(mu=traverse_util.unflatten_dict(mu),
                     nu=traverse_util.unflatten_dict(nu),
                     count=max(steps) if steps else 0)


def _warn_on_hyper_parameters(opt: str, groups: list[Mapping[str, Any]],
                              o: ml_collections.ConfigDict) -> None:
  which = {'optG': 'g', 'optE': 'e', 'optI': 'i'}[opt]
  expected = {'betas': (float(o.beta1), float(o.beta2)), 'eps': float(o.eps),
              'weight_decay': float(o[f'wd_{which}'])}
  for g in groups:
    for name, want in expected.items():
      if name not in g:
        continue
      got = tuple(g[name]) if name == 'betas' else g[name]
      if not np.allclose(got, want):
        logging.warning('%s: checkpoint %s=%s but the config has %s', opt,
                        name, got, want)


# --------------------------------------------------------------------------
# The whole checkpoint.
# --------------------------------------------------------------------------


def abstract_variables(models: networks.Models) -> dict[str, Any]:
  """Shapes of the three nets' variables, without allocating them."""
  return jax.eval_shape(lambda k: networks.init_models(models, k),
                        jax.random.key(0))


def _check_config(config: ml_collections.ConfigDict) -> None:
  if config.model.arch != 'resnet':
    raise CheckpointMismatchError(
        f'config.model.arch={config.model.arch!r}: only the reference '
        "implementation's residual nets ('resnet') can be imported")


def _net_entry(checkpoint: Mapping[str, Any], name: str) -> Mapping[str, Any]:
  entry = checkpoint.get(name)
  if not isinstance(entry, Mapping):
    raise CheckpointMismatchError(
        f'the checkpoint has no {name!r} state dict (entries: '
        f'{", ".join(sorted(map(str, checkpoint)))})')
  return entry


def map_networks(config: ml_collections.ConfigDict,
                 checkpoint: Mapping[str, Any]
                 ) -> tuple[networks.Models, dict[str, dict[str, Any]]]:
  """Validates and maps netG / netE / netI of a checkpoint.

  Args:
    config: the experiment config describing the checkpoint's nets.
    checkpoint: {'netG': state dict, 'netE': ..., 'netI': ..., ...} with
      numpy arrays (see `read_torch_checkpoint`).

  Returns:
    (models, {'gen' | 'ebm' | 'inf': Flax variables as numpy arrays}).

  Raises:
    CheckpointMismatchError: naming the first tensor that does not fit.
  """
  _check_config(config)
  models = ts.create_models(config)
  shapes = abstract_variables(models)
  variables = {}
  for net, name, _ in NETS:
    variables[name] = map_state_dict(net, _net_entry(checkpoint, net),
                                     shapes[name], config)
  return models, variables


def map_optimizers(config: ml_collections.ConfigDict,
                   checkpoint: Mapping[str, Any],
                   variables: Mapping[str, Mapping[str, Any]]
                   ) -> dict[str, AdamMoments | None]:
  """Adam moments per net ('gen' / 'ebm' / 'inf'), None where absent."""
  out = {}
  for net, name, opt in NETS:
    entry = checkpoint.get(opt)
    out[name] = None if not isinstance(entry, Mapping) else map_adam_state(
        net, opt, entry, checkpoint[net], variables[name], config.optim)
  return out


def _set_adam(opt_state: Any, moments: AdamMoments | None,
              step: int) -> Any:
  """Fills optax's chain state: Adam moments, and the schedule's count."""

  def fill(s):
    if isinstance(s, optax.ScaleByAdamState) and moments is not None:
      return s._replace(
          count=jnp.asarray(moments.count, jnp.int32),
          mu=jax.tree.map(jnp.asarray, moments.mu),
          nu=jax.tree.map(jnp.asarray, moments.nu))
    if isinstance(s, optax.ScaleByScheduleState):
      # The learning-rate schedule is a function of this count.
      return s._replace(count=jnp.asarray(step, jnp.int32))
    return s

  return jax.tree.map(fill, opt_state, is_leaf=lambda s: isinstance(
      s, (optax.ScaleByAdamState, optax.ScaleByScheduleState)))


def choose_step(moments: Mapping[str, AdamMoments | None],
                step: int | None) -> int:
  """The train step of the imported state (see the module docstring)."""
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


def _base_rng(models: networks.Models, optimizers: ts.Optimizers,
              seed: int) -> jax.Array:
  # Under jit only the key derivation survives dead-code elimination, so the
  # fresh run's key comes without initialising the (possibly huge) nets and
  # without duplicating how create_train_state derives it.
  return jax.jit(
      lambda: ts.create_train_state(models, optimizers, seed).rng)()


def build_train_state(config: ml_collections.ConfigDict,
                      models: networks.Models,
                      variables: Mapping[str, Mapping[str, Any]],
                      moments: Mapping[str, AdamMoments | None],
                      step: int) -> ts.TrainState:
  """A TrainState holding the imported variables and optimiser states.

  Args:
    config: the experiment config.
    models: the modules it builds.
    variables: mapped Flax variables per net ('gen' / 'ebm' / 'inf').
    moments: imported Adam moments per net, None for a fresh Adam state.
    step: the train step to record.

  Returns:
    The state, with the structure `checkpointing.restore_or_create_state` expects.
  """
  # The optimiser state's structure does not depend on the schedule length.
  optimizers = ts.create_optimizers(config.optim, steps_per_epoch=1)
  nets = {}
  for _, name, _ in NETS:
    v = jax.tree.map(jnp.asarray, dict(variables[name]))
    params = v['params']
    tx = getattr(optimizers, name)
    nets[name] = ts.NetState(
        params=params,
        state={k: val for k, val in v.items() if k != 'params'},
        opt_state=_set_adam(tx.init(params), moments[name], step))
  return ts.TrainState(
      step=jnp.asarray(step, jnp.int32), ebm=nets['ebm'], gen=nets['gen'],
      inf=nets['inf'],
      rng=_base_rng(models, optimizers, int(config.training.seed)))


def check_workdir_free(workdir: str) -> None:
  """Raises FileExistsError if `workdir/checkpoints` holds anything."""
  directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
  if os.path.isdir(directory) and os.listdir(directory):
    raise FileExistsError(
        f'{directory} already holds checkpoints '
        f'({", ".join(sorted(os.listdir(directory)))}); refusing to '
        'overwrite them: choose a new --workdir')


def import_checkpoint(config: ml_collections.ConfigDict,
                      checkpoint: Mapping[str, Any], workdir: str,
                      step: int | None = None) -> ts.TrainState:
  """Validates, maps and writes a reference checkpoint as an orbax one.

  Args:
    config: the experiment config describing the checkpoint's nets.
    checkpoint: the reference checkpoint with numpy arrays
      (`read_torch_checkpoint`).
    workdir: the new run's workdir; the checkpoint goes to
      `workdir/checkpoints/<step>`.
    step: the train step to record, or None to choose it as the module
      docstring says.

  Returns:
    The train state that was written.

  Raises:
    CheckpointMismatchError: the checkpoint does not fit the config (nothing
      is written).
    FileExistsError: the workdir already holds checkpoints.
  """
  check_workdir_free(workdir)
  models, variables = map_networks(config, checkpoint)
  moments = map_optimizers(config, checkpoint, variables)
  step = choose_step(moments, step)
  state = build_train_state(config, models, variables, moments, step)
  # Everything is validated: only now does the checkpoint directory appear.
  manager = checkpointing.create_checkpoint_manager(
      workdir, int(config.training.max_checkpoints_to_keep))
  manager.save(step, args=ocp.args.StandardSave(state))
  manager.wait_until_finished()
  manager.close()
  return state


# --------------------------------------------------------------------------
# Reading .pth files (the only part that needs PyTorch).
# --------------------------------------------------------------------------


def _to_numpy(obj: Any, torch: Any) -> Any:
  if isinstance(obj, torch.Tensor):
    t = obj.detach().cpu()
    if t.is_floating_point() and t.dtype != torch.float64:
      t = t.float()  # bfloat16 / float16 have no (exact) numpy twin here.
    return t.numpy()
  if isinstance(obj, Mapping):
    return {k: _to_numpy(v, torch) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return type(obj)(_to_numpy(v, torch) for v in obj)
  return obj


def read_torch_checkpoint(path: str, allow_pickle: bool = False
                          ) -> dict[str, Any]:
  """Loads a `torch.save`d checkpoint with every tensor as a numpy array.

  Args:
    path: the .pth file.
    allow_pickle: load with `weights_only=False` (runs arbitrary pickled
      code: only for files you trust).

  Returns:
    The checkpoint dict, tensors replaced by numpy arrays.

  Raises:
    TorchNotInstalledError: PyTorch is not installed.
    FileNotFoundError: no such file.
    ValueError: the file is not a loadable checkpoint.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f'--torch_checkpoint={path}: no such file')
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise TorchNotInstalledError(
        'reading a PyTorch checkpoint needs PyTorch, which is not installed '
        '(it is optional): pip install torch') from e
  try:
    obj = torch.load(path, map_location='cpu', weights_only=not allow_pickle)
  except pickle.UnpicklingError as e:
    raise ValueError(
        f'{path}: torch.load(weights_only=True) refused it ({e}); if you '
        'trust the file, rerun with --allow_pickle') from e
  except (RuntimeError, EOFError) as e:
    raise ValueError(f'{path}: not a readable PyTorch checkpoint ({e})') from e
  if not isinstance(obj, Mapping):
    raise ValueError(f'{path}: expected a dict with netG / netE / netI, got '
                     f'{type(obj).__name__}')
  return _to_numpy(obj, torch)


def import_file(config: ml_collections.ConfigDict, path: str, workdir: str,
                step: int | None = None, allow_pickle: bool = False) -> str:
  """Reads a `.pth` file, imports it into `workdir`; returns a summary line.

  Args:
    config: the experiment config describing the checkpoint's nets.
    path: the authors' checkpoint (`torch.save` of a dict with netG, netE,
      netI and optionally optG, optE, optI, epoch).
    workdir: the new run's workdir.
    step: the train step to record, or None (see the module docstring).
    allow_pickle: see `read_torch_checkpoint`.

  Returns:
    One line saying what was imported and where.

  Raises:
    CheckpointMismatchError, FileExistsError, FileNotFoundError,
    TorchNotInstalledError, ValueError: nothing was written.
  """
  checkpoint = read_torch_checkpoint(path, allow_pickle)
  state = import_checkpoint(config, checkpoint, workdir, step)
  counts = {n: networks.count_params(getattr(state, n).params)
            for _, n, _ in NETS}
  imported_adam = any(
      isinstance(checkpoint.get(opt), Mapping) and checkpoint[opt].get('state')
      for _, _, opt in NETS)
  epoch = checkpoint.get('epoch')
  where = os.path.join(os.path.abspath(workdir), 'checkpoints')
  return (f'Imported netG ({counts["gen"]:,} parameters), netE '
          f'({counts["ebm"]:,}), netI ({counts["inf"]:,}) '
          f'{"with" if imported_adam else "without"} their Adam states'
          f'{f", epoch {epoch}" if epoch is not None else ""}, as step '
          f'{int(state.step)} in {where}')
