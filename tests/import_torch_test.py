"""Tests for dual_mcmc_jax/import_torch/, the PyTorch checkpoint importer.

Without PyTorch (as in CI) the reference state dicts come from the golden
fixtures (tests/fixtures/, see scripts/make_golden_fixtures.py): the mapping
and the orbax writer run end to end, `checkpointing.load_state` and the resume path
of `main.py` read the result back, mismatching checkpoints are refused
without writing anything, and a file that is not a checkpoint gives one clear
line. A state dict with the authors' CIFAR-10 key names, written out by hand,
is accepted and every tensor of it used. The PyTorch-free `.pth` reader
(`import_torch.pth`) is checked on pickles written by hand: it refuses every
global outside its allow-list without running it, and tensors that reach
outside their storage. With PyTorch installed, real `.pth` files (both
formats, whole checkpoints with Adam states) are read like `torch.load` reads
them and imported through the command line with PyTorch hidden, one at the
paper's CIFAR-10 widths.
"""

from __future__ import annotations

import collections
import json
import os
import pickle
import struct
import subprocess
import sys
from typing import Any
import zipfile

import jax
import numpy as np
import optax
import pytest
from flax import traverse_util

from configs import celeba64 as celeba64_config
from configs import cifar10 as cifar10_config
from dual_mcmc_jax import checkpointing
from dual_mcmc_jax import import_torch
from dual_mcmc_jax import networks
from dual_mcmc_jax import train_state as ts
from dual_mcmc_jax.import_torch import pth

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, 'tests', 'fixtures')


def _section(arrays: Any, prefix: str) -> dict[str, np.ndarray]:
  n = len(prefix) + 1
  return {k[n:]: arrays[k] for k in arrays.files if k.startswith(prefix + '/')}


def _config(style='cifar', image_size=32, nz=8, ngf=16, nef=16, nif=4):
  config = (cifar10_config if style == 'cifar' else
            celeba64_config).get_config()
  config.data.image_size = image_size
  m = config.model
  m.nz, m.ngf, m.nef, m.nif = nz, ngf, nef, nif
  return config


def _fixture(name: str = 'cifar10'):
  """(config, checkpoint dict of numpy state dicts, arrays) of a fixture."""
  arrays = np.load(os.path.join(FIXTURES, f'golden_{name}.npz'))
  meta = json.loads(str(arrays['meta']))
  config = _config(meta['style'], meta['image_size'], meta['nz'], meta['ngf'],
                   meta['nef'], meta['nif'])
  checkpoint = {'epoch': 3}
  for net, _, _ in import_torch.NETS:
    checkpoint[net] = _section(arrays, f'init/{net}')
  return config, checkpoint, arrays


def _assert_state_holds(state: ts.TrainState,
                        checkpoint: dict[str, Any]) -> None:
  """Every mapped tensor of the checkpoint is in `state`, bit for bit."""
  for net, name, _ in import_torch.NETS:
    got = getattr(state, name)
    variables = {'params': got.params, **got.state}
    for collection in variables:
      mapped = import_torch.to_torch_state_dict(variables[collection],
                                                variables, collection)
      for key, value in mapped.items():
        np.testing.assert_array_equal(value, checkpoint[net][key],
                                      err_msg=f'{net}.{key}')


def _nothing_written(workdir) -> bool:
  return not os.path.exists(os.path.join(workdir, 'checkpoints'))


# --------------------------------------------------------------------------
# End to end, without PyTorch.
# --------------------------------------------------------------------------


def test_import_then_load_state_and_resume_read_every_tensor(tmp_path):
  config, checkpoint, _ = _fixture()
  written = import_torch.import_checkpoint(config, checkpoint, str(tmp_path))
  # No optimiser state in this checkpoint: step 0, fresh Adam.
  assert int(written.step) == 0
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['0']

  _, state = checkpointing.load_state(config, str(tmp_path))
  _assert_state_holds(state, checkpoint)
  assert int(state.step) == 0
  for leaf in jax.tree.leaves(state.gen.opt_state):
    assert not np.any(np.asarray(leaf))
  # The base key of a fresh run with the same seed, derived as
  # ts.create_train_state does (calling it would initialise the nets, which
  # costs seconds of compilation per parameter shape).
  _, run_key = jax.random.split(jax.random.key(int(config.training.seed)))
  np.testing.assert_array_equal(state.rng, jax.random.key_data(run_key))
  models = ts.create_models(config)
  optimizers = ts.create_optimizers(config.optim, steps_per_epoch=1)

  # main.py resumes through restore_or_create_state.
  manager = checkpointing.create_checkpoint_manager(str(tmp_path), 3)
  resumed = checkpointing.restore_or_create_state(
      manager, models, optimizers, int(config.training.seed))
  _assert_state_holds(resumed, checkpoint)


def test_imported_adam_state_continues_exactly_like_torch_optim_adam(
    tmp_path):
  """Import after one torch Adam step; the next optax step matches torch's."""
  config, checkpoint, golden = _fixture()
  adam = np.load(os.path.join(FIXTURES, 'golden_adam_cifar10.npz'))
  groups = json.loads(str(adam['meta']))['param_groups']
  g = groups['optG'][0]
  o = config.optim
  o.lr_g = o.lr_e = g['lr']
  o.beta1, o.beta2 = g['betas']
  o.eps = g['eps']
  o.wd_g = o.wd_e = g['weight_decay']
  for net, opt in (('netG', 'optG'), ('netE', 'optE')):
    checkpoint[net] = {**checkpoint[net], **_section(adam, f'step1/{net}')}
    state = {}
    for key in _section(adam, f'{opt}/state'):
      index, name = key.split('/')
      state.setdefault(int(index), {})[name] = adam[f'{opt}/state/{key}']
    checkpoint[opt] = {'state': state, 'param_groups': groups[opt]}
  # netI keeps no optimiser state here: it gets a fresh one.

  import_torch.import_checkpoint(config, checkpoint, str(tmp_path))
  _, state = checkpointing.load_state(config, str(tmp_path))
  _assert_state_holds(state, checkpoint)
  assert int(state.step) == 1  # PyTorch's Adam step count.

  # One more step with the fixture's second gradient, through the very
  # optimiser the train step uses.
  optimizers = ts.create_optimizers(config.optim, steps_per_epoch=1000)
  for net, name, loss in (('netG', 'gen', 'loss_g'), ('netE', 'ebm',
                                                      'loss_e')):
    grads = _section(golden, f'{loss}/grad')
    scale = max(float(np.max(np.abs(v))) for v in grads.values())
    # The two gradients of scripts/make_golden_fixtures.py.
    g2 = {}
    for k, v in grads.items():
      g1 = (v / np.float32(scale)).astype(np.float32)
      g2[k] = (-0.5 * g1 + 0.3 * np.roll(g1.reshape(-1), 1).reshape(
          g1.shape)).astype(np.float32)
    net_state = getattr(state, name)
    variables = {'params': net_state.params, **net_state.state}
    flax_g2 = import_torch.map_state_dict(net, g2, variables, config,
                                          ('params',))['params']
    tx = getattr(optimizers, name)

    @jax.jit
    def step(grads, opt_state, params, tx=tx):
      updates, _ = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates)

    after = import_torch.to_torch_state_dict(
        step(flax_g2, net_state.opt_state, net_state.params), variables)
    for key, value in _section(adam, f'step2/{net}').items():
      change = after[key] - checkpoint[net][key]
      expected = value - checkpoint[net][key]
      err = np.max(np.abs(change - expected)) / np.max(np.abs(expected))
      assert err < 1e-5, (net, key, err)
  # netI's Adam state is fresh; its schedule continues from the step.
  for s in state.inf.opt_state:
    if isinstance(s, optax.ScaleByAdamState):
      assert not any(np.any(np.asarray(x)) for x in jax.tree.leaves(s))
    if isinstance(s, optax.ScaleByScheduleState):
      assert int(s.count) == 1


def test_step_flag_overrides_and_data_parallel_prefix_is_stripped(tmp_path):
  config, checkpoint, _ = _fixture()
  checkpoint['netG'] = {f'module.{k}': v for k, v in checkpoint['netG'].items()}
  state = import_torch.import_checkpoint(config, checkpoint, str(tmp_path),
                                         step=1500)
  assert int(state.step) == 1500
  _, loaded = checkpointing.load_state(config, str(tmp_path))
  assert int(loaded.step) == 1500
  # The learning-rate schedule continues from the step.
  counts = [s.count for s in loaded.gen.opt_state
            if isinstance(s, optax.ScaleByScheduleState)]
  assert [int(c) for c in counts] == [1500]


# --------------------------------------------------------------------------
# The authors' key names.
# --------------------------------------------------------------------------


def _authors_cifar10_shapes(nz: int, ngf: int, nef: int,
                            nif: int) -> dict[str, dict[str, tuple[int, ...]]]:
  """Key -> shape of the authors' `_Cifar10_net{G,E,I}` state dicts.

  Written out from the authors' module names, independently of both
  `dual_mcmc_jax/import_torch/` and `torch_reference.py`.
  """

  def bn(name, c):
    return {**{f'{name}.{t}': (c,) for t in (
        'weight', 'bias', 'running_mean', 'running_var')},
            f'{name}.num_batches_tracked': ()}

  def sn(name, *shape):  # torch.nn.utils.spectral_norm, old API.
    return {f'{name}.weight_orig': shape, f'{name}.weight_u': (shape[0],),
            f'{name}.weight_v': (int(np.prod(shape[1:])),)}

  g = {'lin_1.weight': (16 * ngf, nz), 'lin_1.bias': (16 * ngf,)}
  for b in ('block2', 'block3', 'block4'):
    g.update(bn(f'{b}.bn_1', ngf))
    g.update({f'{b}.conv1.weight': (ngf, ngf, 3, 3), f'{b}.conv1.bias': (ngf,)})
    g.update(bn(f'{b}.bn_2', ngf))
    g.update({f'{b}.conv2.weight': (ngf, ngf, 3, 3), f'{b}.conv2.bias': (ngf,),
              f'{b}.sc.weight': (ngf, ngf, 1, 1), f'{b}.sc.bias': (ngf,)})
  g.update(bn('bn_5', ngf))
  g.update({'conv5.weight': (3, ngf, 3, 3), 'conv5.bias': (3,)})

  e = {**sn('conv_1.conv1', nef, 3, 3, 3), **sn('conv_1.conv2', nef, nef, 3, 3),
       **sn('conv_1.sc', nef, 3, 1, 1), **sn('block2.conv1', nef, nef, 3, 3),
       **sn('block2.conv2', nef, nef, 3, 3), **sn('block2.sc', nef, nef, 1, 1)}
  for b in ('block3', 'block4'):  # Identity shortcut: no `sc`.
    e.update({**sn(f'{b}.conv1', nef, nef, 3, 3),
              **sn(f'{b}.conv2', nef, nef, 3, 3)})
  e.update(sn('lin_5', 1, nef))

  i = {'main.0.weight': (nif, 3, 3, 3), 'main.2.weight': (2 * nif, nif, 4, 4),
       'main.4.weight': (4 * nif, 2 * nif, 4, 4),
       'main.6.weight': (8 * nif, 4 * nif, 4, 4)}
  for head in ('conv51', 'conv52'):  # mu, log-variance.
    i.update({f'{head}.weight': (nz, 8 * nif, 4, 4), f'{head}.bias': (nz,)})
  return {'netG': g, 'netE': e, 'netI': i}


def test_authors_cifar10_key_set_is_accepted_and_fully_consumed():
  shapes = _authors_cifar10_shapes(nz=8, ngf=16, nef=16, nif=4)
  buffers = ('.running_mean', '.running_var', '.num_batches_tracked',
             '.weight_u', '.weight_v')
  dropped = ('.num_batches_tracked', '.weight_v')
  # torch_reference.py (which made the fixture) uses exactly these keys.
  _, fixture, _ = _fixture()
  for net, net_shapes in shapes.items():
    assert set(fixture[net]) == set(net_shapes), net

  rng = np.random.default_rng(0)
  checkpoint: dict[str, Any] = {'epoch': 7}
  for (net, _, opt), net_shapes in zip(import_torch.NETS, shapes.values()):
    checkpoint[net] = {
        k: (np.array(5, np.int64) if k.endswith('.num_batches_tracked') else
            rng.standard_normal(shape).astype(np.float32))
        for k, shape in net_shapes.items()}
    params = [k for k in net_shapes if not k.endswith(buffers)]
    checkpoint[opt] = {
        'state': {index: {'step': np.float32(5),
                          'exp_avg': rng.standard_normal(
                              net_shapes[k]).astype(np.float32),
                          'exp_avg_sq': rng.random(
                              net_shapes[k]).astype(np.float32)}
                  for index, k in enumerate(params)},
        'param_groups': [{'params': list(range(len(params)))}]}

  config = _config(nz=8, ngf=16, nef=16, nif=4)
  _, variables = import_torch.map_networks(config, checkpoint)
  moments = import_torch.map_optimizers(config, checkpoint, variables)
  assert import_torch.choose_step(moments, None) == 5
  for net, name, opt in import_torch.NETS:
    v = variables[name]
    consumed = {}
    for collection in v:
      consumed.update(import_torch.to_torch_state_dict(v[collection], v,
                                                       collection))
    # Every tensor lands in the Flax state, except the two that carry no
    # information (docs/differences.md).
    assert set(consumed) == {k for k in shapes[net]
                             if not k.endswith(dropped)}, net
    for key, value in consumed.items():
      np.testing.assert_array_equal(value, checkpoint[net][key],
                                    err_msg=f'{net}.{key}')
    params = [k for k in shapes[net] if not k.endswith(buffers)]
    mu = import_torch.to_torch_state_dict(moments[name].mu, v)
    nu = import_torch.to_torch_state_dict(moments[name].nu, v)
    assert set(mu) == set(params), net
    for index, key in enumerate(params):
      state = checkpoint[opt]['state'][index]
      np.testing.assert_array_equal(mu[key], state['exp_avg'])
      np.testing.assert_array_equal(nu[key], state['exp_avg_sq'])


# --------------------------------------------------------------------------
# Refusals: one clear error, nothing written.
# --------------------------------------------------------------------------


def _mutate(checkpoint: dict[str, Any], how: str) -> dict[str, Any]:
  checkpoint = dict(checkpoint)
  if how == 'missing':
    checkpoint['netG'] = {k: v for k, v in checkpoint['netG'].items()
                          if k != 'block3.conv2.bias'}
  elif how == 'extra':
    checkpoint['netI'] = {**checkpoint['netI'],
                          'head.weight': np.zeros((8, 4), np.float32)}
  elif how == 'shape':
    checkpoint['netE'] = {**checkpoint['netE'],
                          'block2.conv1.weight_u': np.zeros(5, np.float32)}
  elif how == 'no_net':
    del checkpoint['netE']
  elif how == 'optimizer':
    checkpoint['optE'] = {
        'state': {0: {'step': np.float32(1),
                      'exp_avg': np.zeros((16, 3, 3, 3), np.float32),
                      'exp_avg_sq': np.zeros((16, 3, 3, 3), np.float32)}},
        'param_groups': [{'params': [0, 1]}]}
  return checkpoint


@pytest.mark.parametrize('how,message', [
    ('missing', 'netG.block3.conv2.bias: missing from the checkpoint; the '
                "model that config.model.resnet_style='cifar' at "
                'config.data.image_size=32 builds expects shape (16,)'),
    ('extra', 'netI.head.weight: in the checkpoint (shape (8, 4)) but not in '
              'the model'),
    ('shape', 'netE.block2.conv1.weight_u: checkpoint shape (5,) but '
              'config.model.nef=16 expects (16,)'),
    ('no_net', "the checkpoint has no 'netE' state dict"),
    ('optimizer', 'optE: the optimiser has 2 parameters but netE has 11'),
])
def test_mismatching_tensor_is_named_and_nothing_is_written(
    tmp_path, how, message):
  config, checkpoint, _ = _fixture()
  with pytest.raises(import_torch.CheckpointMismatchError) as e:
    import_torch.import_checkpoint(config, _mutate(checkpoint, how),
                                   str(tmp_path))
  assert message in str(e.value)
  assert '\n' not in str(e.value)
  assert _nothing_written(tmp_path)


def test_wrong_width_names_the_first_tensor_and_the_config_field(tmp_path):
  config, checkpoint, _ = _fixture()
  config.model.nef = 32
  with pytest.raises(import_torch.CheckpointMismatchError) as e:
    import_torch.import_checkpoint(config, checkpoint, str(tmp_path))
  assert str(e.value) == (
      'netE.conv_1.conv1.weight_orig: checkpoint shape (16, 3, 3, 3) but '
      'config.model.nef=32 expects (32, 3, 3, 3)')
  assert _nothing_written(tmp_path)


def test_wrong_architecture_is_refused(tmp_path):
  _, checkpoint, _ = _fixture('cifar10')
  config = _config('celeba', 64, nz=8, ngf=16, nef=16, nif=4)
  with pytest.raises(import_torch.CheckpointMismatchError) as e:
    import_torch.import_checkpoint(config, checkpoint, str(tmp_path))
  assert str(e.value).startswith('netG.')
  assert _nothing_written(tmp_path)


def test_refuses_to_overwrite_an_existing_checkpoint(tmp_path):
  config, checkpoint, _ = _fixture()
  import_torch.import_checkpoint(config, checkpoint, str(tmp_path))
  before = sorted(os.listdir(tmp_path / 'checkpoints'))
  with pytest.raises(FileExistsError, match='refusing to overwrite'):
    import_torch.import_checkpoint(config, checkpoint, str(tmp_path), step=7)
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == before
  _, state = checkpointing.load_state(config, str(tmp_path))
  _assert_state_holds(state, checkpoint)


# Run in a subprocess before the script: `import torch` fails as if PyTorch
# were not installed. (Setting sys.modules['torch'] = None does that too, but
# SciPy looks torch up in sys.modules and trips over the None.)
_HIDE_TORCH = ('import runpy, sys\n'
               'class NoTorch:\n'
               '  def find_spec(self, name, path=None, target=None):\n'
               '    if name.split(".")[0] == "torch":\n'
               '      raise ModuleNotFoundError(name)\n'
               'sys.meta_path.insert(0, NoTorch())\n'
               'sys.argv[0] = "scripts/import_torch.py"\n'
               'runpy.run_path("scripts/import_torch.py", run_name="__main__")')


def _run_import_script(*args: str, timeout: int = 300
                       ) -> subprocess.CompletedProcess:
  """scripts/import_torch.py with PyTorch hidden."""
  return subprocess.run(
      [sys.executable, '-c', _HIDE_TORCH, *args], cwd=REPO,
      capture_output=True, text=True, timeout=timeout,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'})


def test_command_line_on_a_file_that_is_no_checkpoint_exits_with_one_line(
    tmp_path):
  path = tmp_path / 'model.pth'
  path.write_bytes(b'not a checkpoint')
  proc = _run_import_script(
      '--config=configs/cifar10.py', '--config.model.nef=256',
      f'--torch_checkpoint={path}', f'--workdir={tmp_path / "run"}')
  assert proc.returncode != 0
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith(f'error: {path}: cannot read as a PyTorch file')
  assert not os.path.exists(tmp_path / 'run')


# --------------------------------------------------------------------------
# The .pth reader on pickles written by hand (no PyTorch needed).
# --------------------------------------------------------------------------


class _Evil:
  """Unpickles to a call of os.mkdir: a global outside the allow-list."""

  def __init__(self, marker: str):
    self.marker = marker

  def __reduce__(self):
    return os.mkdir, (self.marker,)


def _write_legacy(path, obj, header=None) -> None:
  """A legacy-format file holding `obj` and no storages."""
  with open(path, 'wb') as f:
    for part in (header or pth._LEGACY_MAGIC, 1001,  # pylint: disable=protected-access
                 {'little_endian': True}, obj, []):
      pickle.dump(part, f, protocol=2)


def _write_zip(path, data_pkl: bytes, storages=None) -> None:
  """A zip-format file with the given pickle and raw storages."""
  with zipfile.ZipFile(path, 'w') as archive:
    archive.writestr('ck/data.pkl', data_pkl)
    archive.writestr('ck/byteorder', b'little')
    for key, raw in (storages or {}).items():
      archive.writestr(f'ck/data/{key}', raw)


@pytest.mark.parametrize('where', ['zip', 'legacy', 'legacy_header'])
def test_pth_reader_refuses_other_globals_without_running_them(tmp_path,
                                                               where):
  marker = str(tmp_path / 'ran')
  path = tmp_path / 'evil.pth'
  evil = {'epoch': 1, 'netG': collections.OrderedDict(w=_Evil(marker))}
  if where == 'zip':
    _write_zip(path, pickle.dumps(evil, protocol=2))
  elif where == 'legacy':
    _write_legacy(path, evil)
  else:
    _write_legacy(path, {}, header=_Evil(marker))
  with pytest.raises(ValueError) as e:
    import_torch.read_torch_checkpoint(str(path))
  message = str(e.value)
  assert f'refused the global {os.mkdir.__module__}.mkdir' in message
  assert message.startswith(f'{path}: cannot read as a PyTorch file')
  assert '\n' not in message
  assert not os.path.exists(marker)


def _tensor_pickle(size: tuple[int, int], stride: tuple[int, int],
                   numel: int) -> bytes:
  """Protocol-2 opcodes of {'t': a float32 tensor on storage '0'}."""
  text = lambda s: b'X' + struct.pack('<I', len(s)) + s.encode()
  small = lambda n: b'K' + bytes([n])
  storage = (b'(' + text('storage') + b'ctorch\nFloatStorage\n' + text('0') +
             text('cpu') + small(numel) + b'tQ')
  tensor = (b'ctorch._utils\n_rebuild_tensor_v2\n(' + storage + small(0) +
            small(size[0]) + small(size[1]) + b'\x86' + small(stride[0]) +
            small(stride[1]) + b'\x86\x89ccollections\nOrderedDict\n)RtR')
  return b'\x80\x02}' + text('t') + tensor + b's.'


def test_pth_reader_reads_strided_tensors_and_refuses_out_of_bounds(
    tmp_path):
  raw = np.arange(6, dtype='<f4').tobytes()
  path = tmp_path / 'ok.pth'
  _write_zip(path, _tensor_pickle((3, 2), (1, 3), 6), {'0': raw})
  np.testing.assert_array_equal(pth.load(str(path))['t'],
                                np.arange(6, dtype=np.float32).reshape(2, 3).T)
  path = tmp_path / 'oob.pth'
  _write_zip(path, _tensor_pickle((3, 2), (2, 1), 4), {'0': raw[:16]})
  with pytest.raises(ValueError, match="reaches element 5 of storage '0', "
                     'which has 4'):
    pth.load(str(path))


# --------------------------------------------------------------------------
# Real .pth files (only where PyTorch is installed; CI skips these).
# --------------------------------------------------------------------------


def _torch_checkpoint(torch, tr, nz, ngf, nef, nif, image_size, style,
                      train_step: bool):
  """Nets of torch_reference.py, optionally after one reference iteration."""
  torch.manual_seed(0)
  nets = tr.build_nets(nz, ngf, nef, nif, image_size, style)
  opts = tr.make_optimizers(*nets, tr.ReferenceArgs(nz=nz))
  if train_step:
    x = torch.rand(4, 3, image_size, image_size) * 2 - 1
    args = tr.ReferenceArgs(nz=nz, x_steps=2, z_steps=2)
    assert tr.reference_train_step(*nets, opts, x, args)['healthy']
  checkpoint = {'epoch': 0}
  for (net, _, opt), module, key in zip(import_torch.NETS, nets, 'GEI'):
    checkpoint[net] = module.state_dict()
    checkpoint[opt] = opts[key].state_dict()
  return nets, checkpoint


def _to_numpy(obj: Any) -> Any:
  """torch.load's result with every tensor as a numpy array (via torch)."""
  if hasattr(obj, 'detach'):
    t = obj.detach().cpu()
    # numpy has no bfloat16; the reader gives ml_dtypes.bfloat16.
    return (t.float() if str(t.dtype) == 'torch.bfloat16' else t).numpy()
  if isinstance(obj, dict):
    return {k: _to_numpy(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return type(obj)(_to_numpy(v) for v in obj)
  return obj


def _assert_same_tree(got: Any, want: Any, where: str = '') -> None:
  """Same containers, keys in the same order, equal arrays and dtypes."""
  if isinstance(want, dict):
    assert isinstance(got, dict) and list(got) == list(want), where
    for k in want:
      _assert_same_tree(got[k], want[k], f'{where}/{k}')
  elif isinstance(want, (list, tuple)):
    assert type(got) is type(want) and len(got) == len(want), where
    for i, (g, w) in enumerate(zip(got, want)):
      _assert_same_tree(g, w, f'{where}/{i}')
  elif isinstance(want, np.ndarray):
    assert isinstance(got, np.ndarray) and got.dtype == want.dtype, where
    np.testing.assert_array_equal(got, want, err_msg=where)
  else:
    assert got == want and type(got) is type(want), where


@pytest.mark.parametrize('zip_format', [True, False])
def test_pth_reader_reads_a_whole_checkpoint_as_torch_load_does(
    tmp_path, zip_format):
  torch = pytest.importorskip('torch')
  tr = pytest.importorskip('tests.torch_reference')
  _, checkpoint = _torch_checkpoint(torch, tr, 8, 16, 16, 4, 32, 'cifar',
                                    train_step=True)
  base = torch.arange(12.0)
  checkpoint['views'] = {  # Offsets, strides, shared storages, dtypes.
      'transposed': base.reshape(3, 4).t(), 'slice': base[3:7],
      'scalar': base[5], 'empty': base[:0], 'half': base.half(),
      'bfloat16': base.bfloat16(), 'int': torch.arange(5),
      'bool': base > 4, 'parameter': torch.nn.Parameter(base[:2])}
  path = tmp_path / 'ref.pth'
  torch.save(checkpoint, path, _use_new_zipfile_serialization=zip_format)
  got = import_torch.read_torch_checkpoint(str(path))
  want = _to_numpy(torch.load(path, weights_only=True))
  assert got['views']['bfloat16'].dtype.name == 'bfloat16'
  got['views']['bfloat16'] = got['views']['bfloat16'].astype(np.float32)
  _assert_same_tree(got, want)
  assert isinstance(got['netG'], collections.OrderedDict)


def test_real_pth_imports_through_the_command_line_without_torch(tmp_path):
  torch = pytest.importorskip('torch')
  tr = pytest.importorskip('tests.torch_reference')
  (netG, netE, netI), checkpoint = _torch_checkpoint(
      torch, tr, 8, 16, 16, 4, 32, 'cifar', train_step=True)
  path = tmp_path / 'ref.pth'
  torch.save(checkpoint, path)
  proc = _run_import_script(
      '--config=configs/cifar10.py', '--config.model.nz=8',
      '--config.model.ngf=16', '--config.model.nef=16',
      '--config.model.nif=4', f'--torch_checkpoint={path}',
      f'--workdir={tmp_path / "run"}')
  assert proc.returncode == 0, proc.stderr
  assert 'with their Adam states' in proc.stdout

  config = _config(nz=8, ngf=16, nef=16, nif=4)
  models, state = checkpointing.load_state(config, str(tmp_path / 'run'))
  numpy_ckpt = _to_numpy(checkpoint)
  _assert_state_holds(state, numpy_ckpt)
  assert int(state.step) == 1
  # Adam moments, in PyTorch's parameter order.
  opt_state = [s for s in state.ebm.opt_state
               if isinstance(s, optax.ScaleByAdamState)][0]
  assert int(opt_state.count) == 1
  variables = {'params': state.ebm.params, **state.ebm.state}
  mu = import_torch.to_torch_state_dict(opt_state.mu, variables)
  for index, (key, _) in enumerate(netE.named_parameters()):
    np.testing.assert_array_equal(
        mu[key], numpy_ckpt['optE']['state'][index]['exp_avg'])

  # The imported nets compute what the PyTorch ones compute.
  x = torch.rand(3, 3, 32, 32) * 2 - 1
  z = torch.randn(3, 8)
  with torch.no_grad():
    e_torch = netE(x).numpy()
    g_torch = netG(z.view(3, 8, 1, 1)).numpy()
    mu_torch = netI(x)[0].view(3, 8).numpy()
  x_nhwc = x.numpy().transpose(0, 2, 3, 1)
  with jax.default_matmul_precision('float32'):
    e, _ = models.ebm.apply({'params': state.ebm.params, **state.ebm.state},
                            x_nhwc, update_stats=True,
                            mutable=['batch_stats'])
    g, _ = models.gen.apply({'params': state.gen.params, **state.gen.state},
                            z.numpy(), mutable=['batch_stats'])
    mu_jax, _ = models.inf.apply({'params': state.inf.params}, x_nhwc)
  for a, b in ((e, e_torch), (np.asarray(g).transpose(0, 3, 1, 2), g_torch),
               (mu_jax, mu_torch)):
    assert np.max(np.abs(a - b)) / np.max(np.abs(b)) < 1e-5


def test_real_pth_at_the_paper_cifar10_widths(tmp_path):
  torch = pytest.importorskip('torch')
  tr = pytest.importorskip('tests.torch_reference')
  _, checkpoint = _torch_checkpoint(torch, tr, 128, 512, 512, 128, 32,
                                    'cifar', train_step=False)
  path = tmp_path / 'ref512.pth'
  torch.save(checkpoint, path)
  del checkpoint
  config = cifar10_config.get_config()  # ngf = nef = 512, nif = 128.
  numpy_ckpt = import_torch.read_torch_checkpoint(str(path))
  import_torch.import_checkpoint(config, numpy_ckpt, str(tmp_path / 'run'))
  _, state = checkpointing.load_state(config, str(tmp_path / 'run'))
  _assert_state_holds(state, numpy_ckpt)
  counts = {name: sum(int(np.prod(np.shape(p))) for p in jax.tree.leaves(
      getattr(state, name).params)) for name in ('gen', 'ebm', 'inf')}
  assert counts == {'gen': 16_024_579, 'ebm': 16_793_088,
                    'inf': 15_208_064}
  flat = traverse_util.flatten_dict(state.ebm.state['batch_stats'])
  assert len(flat) == 11  # Ten spectrally normalised convs and the linear.
