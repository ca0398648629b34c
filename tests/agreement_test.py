"""Numerical agreement with the reference implementation (PyTorch).

The golden fixtures in tests/fixtures/ were computed by
`scripts/make_golden_fixtures.py` with `tests/torch_reference.py`
(the reference's residual nets and iteration pieces in PyTorch) at small
widths, for the CIFAR-10 and CelebA-64 layouts. This test needs no PyTorch:
it maps the fixtures' state dicts with the checkpoint importer's own mapping
(`import_torch.map_networks`) and checks, in float32:

* E(x), G(z) (train-mode BatchNorm), I(x), z0 = mu + exp(logvar/2) eps;
* the spectral-norm vectors u after each EBM pass, and the BatchNorm running
  statistics after a generator pass;
* one noiseless x-Langevin and z-Langevin step through `langevin.langevin`,
  and the gradients they use;
* the three losses of `losses.py` and their parameter gradients, mapped back
  to PyTorch names and layouts;
* two Adam steps of `train_state.create_optimizer` against torch.optim.Adam.

Error measure: max|jax - torch| / max|torch| over one tensor, or over a
net's whole gradient (see `_grad_pairs`), required below 1e-5.
`PYTHONPATH=. python tests/agreement_test.py` prints the worst error per
network and quantity.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import celeba64 as celeba64_config
from configs import cifar10 as cifar10_config
from dual_mcmc_jax import import_torch
from dual_mcmc_jax import langevin
from dual_mcmc_jax import losses
from dual_mcmc_jax import settings as settings_lib
from dual_mcmc_jax import train_state as ts
from scripts.golden_recipe import first_gradient
from scripts.golden_recipe import pixels_to_float
from scripts.golden_recipe import second_gradient

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                        'fixtures')
ARCHS = ('cifar10', 'celeba64')
TOLERANCE = 1e-5

Pairs = dict[str, tuple[np.ndarray, np.ndarray]]  # name -> (jax, torch)

# Each function below runs once, so compilation dominates the test's time;
# XLA's backend optimisation level halves it and does not change what is
# computed (no fast-math), only how fast.
_jit = functools.partial(
    jax.jit, compiler_options={'xla_backend_optimization_level': 0})


def rel_err(actual: Any, expected: Any) -> float:
  """max|actual - expected| / max|expected| (0 when both are zero)."""
  a = np.asarray(actual, np.float64)
  b = np.asarray(expected, np.float64)
  assert a.shape == b.shape, (a.shape, b.shape)
  scale = np.max(np.abs(b)) if b.size else 0.0
  diff = np.max(np.abs(a - b)) if b.size else 0.0
  return float(diff / scale) if scale > 0 else float(diff)


def nhwc(a: np.ndarray) -> np.ndarray:
  return np.asarray(a).transpose(0, 2, 3, 1)


def nchw(a: Any) -> np.ndarray:
  return np.asarray(a).transpose(0, 3, 1, 2)


def section(arrays: Any, prefix: str) -> dict[str, np.ndarray]:
  """{key: array} for the fixture entries `prefix/key`, in stored order."""
  n = len(prefix) + 1
  return {k[n:]: arrays[k] for k in arrays.files if k.startswith(prefix + '/')}


def fixture_config(meta: dict[str, Any]):
  """The experiment config of a fixture: the stock config at its widths."""
  base = cifar10_config if meta['style'] == 'cifar' else celeba64_config
  config = base.get_config()
  config.data.image_size = meta['image_size']
  config.data.num_channels = meta['num_channels']
  for f in ('nz', 'ngf', 'nef', 'nif'):
    config.model[f] = meta[f]
  config.langevin_x.step_size, config.langevin_x.noise = meta['s_x'], meta[
      'n_x']
  config.langevin_z.step_size, config.langevin_z.noise = meta['s_z'], meta[
      'n_z']
  config.loss.sigma, config.loss.prior_sigma = meta['sigma'], meta[
      'prior_sigma']
  config.loss.g_factor, config.loss.s_factor, config.loss.i_factor = (
      meta['g_factor'], meta['s_factor'], meta['i_factor'])
  return config


@functools.cache
def load(name: str) -> dict[str, Any]:
  """A fixture with its config, models and mapped Flax variables."""
  arrays = np.load(os.path.join(FIXTURES, f'golden_{name}.npz'))
  meta = json.loads(str(arrays['meta']))
  config = fixture_config(meta)
  checkpoint = {net: section(arrays, f'init/{net}')
                for net, _, _ in import_torch.NETS}
  models, variables = import_torch.map_networks(config, checkpoint)
  return dict(arrays=arrays, meta=meta, config=config, models=models,
              variables=variables, checkpoint=checkpoint)


def _named(prefix: str, actual: dict[str, np.ndarray],
           expected: dict[str, np.ndarray]) -> Pairs:
  assert set(actual) == set(expected), (
      sorted(set(actual) ^ set(expected)))
  return {f'{prefix}/{k}': (actual[k], expected[k]) for k in expected}


def _u_vectors(batch_stats: Any, variables: Any) -> dict[str, np.ndarray]:
  return import_torch.to_torch_state_dict(batch_stats, variables,
                                          'batch_stats')


def _bn_count(key: str, batch: int, image_size: int) -> int:
  """Values per channel that a generator BatchNorm layer normalises.

  Up-block `block{k}` (k = 2, 3, ...) runs `bn_1` before its upsampling, at
  4 * 2**(k - 2) pixels a side, and `bn_2` after it; the last BatchNorm
  (`bn_{n+2}`) runs at the output size.
  """
  module, layer = key.split('.')[:2]
  if module.startswith('block'):
    side = 4 * 2**(int(module[len('block'):]) - 2) * (
        1 if layer == 'bn_1' else 2)
  else:
    side = image_size
  return batch * side * side


# --------------------------------------------------------------------------
# The quantities, per fixture.
# --------------------------------------------------------------------------


def forward_pairs(name: str) -> Pairs:
  """E(x), G(z), I(x), z0, and the state each forward pass leaves."""
  f = load(name)
  a, m, v = f['arrays'], f['models'], f['variables']
  b, size = f['meta']['batch'], f['meta']['image_size']

  @_jit
  def run(v, x, z, eps):
    e, e_vars = m.ebm.apply(v['ebm'], x, update_stats=True,
                            mutable=['batch_stats'])
    g, g_vars = m.gen.apply(v['gen'], z, mutable=['batch_stats'])
    mu, logvar = m.inf.apply(v['inf'], x)
    z0 = mu + jnp.exp(0.5 * logvar) * eps
    return e, e_vars['batch_stats'], g, g_vars['batch_stats'], mu, logvar, z0

  e, u, g, stats, mu, logvar, z0 = run(
      v, nhwc(pixels_to_float(a['in/x_pixels'])), a['in/z'], a['in/eps'])
  pairs: Pairs = {'E/energy': (e, a['out/energy'])}
  pairs.update(_named('E/u_after_pass', _u_vectors(u, v['ebm']),
                      section(a, 'out/energy_u')))
  pairs['G/output'] = (nchw(g), a['out/gen'])
  stats = import_torch.to_torch_state_dict(stats, v['gen'], 'batch_stats')
  init = f['checkpoint']['netG']
  for k, t in section(a, 'out/gen_stats').items():
    if k.endswith('running_mean'):
      pairs[f'G/bn_running_mean/{k}'] = (stats[k], t)
    else:
      # PyTorch folds the unbiased batch variance into its running
      # estimate, Flax the biased one (docs/differences.md): undo the
      # n / (n - 1) before comparing.
      n = _bn_count(k, b, size)
      start = 0.9 * init[k]
      pairs[f'G/bn_running_var_biased/{k}'] = (
          stats[k], start + (t - start) * (n - 1) / n)
  pairs['I/mu'] = (mu, a['out/mu'])
  pairs['I/logvar'] = (logvar, a['out/logvar'])
  pairs['I/z0'] = (z0, a['out/z0'])
  return pairs


def langevin_pairs(name: str) -> Pairs:
  """One noiseless x-step and z-step, through the library's sampler."""
  f = load(name)
  a, m, v, meta = f['arrays'], f['models'], f['variables'], f['meta']
  x_settings = settings_lib.ChainSettings(1, meta['s_x'], meta['n_x'])
  z_settings = settings_lib.ChainSettings(1, meta['s_z'], meta['n_z'])

  @_jit
  def run(v, x_start, x, z_start):
    key = jax.random.key(0)
    fn = langevin.x_energy_fn(m.ebm.apply, v['ebm']['params'])
    aux = {'batch_stats': v['ebm']['batch_stats']}
    x_grad = jax.grad(lambda x: fn(x, aux)[0])(x_start)
    x_new, x_aux, _ = langevin.langevin(fn, x_start, key, x_settings, aux=aux,
                                        noise_scale=0.0)
    fn = langevin.z_energy_fn(m.gen.apply, v['gen']['params'], x,
                              meta['sigma'], meta['prior_sigma'], 'reference')
    aux = {'batch_stats': v['gen']['batch_stats']}
    z_grad = jax.grad(lambda z: fn(z, aux)[0])(z_start)
    z_new, _, _ = langevin.langevin(fn, z_start, key, z_settings, aux=aux,
                                    noise_scale=0.0)
    return x_grad, x_new, x_aux['batch_stats'], z_grad, z_new

  x_grad, x_new, u, z_grad, z_new = run(
      v, nhwc(a['out/gen']), nhwc(pixels_to_float(a['in/x_pixels'])),
      a['out/z0'])
  pairs: Pairs = {}
  torch_grad = a['xstep/grad']
  pairs['x_step/grad'] = (nchw(x_grad), torch_grad)
  pairs['x_step/x_new'] = (
      nchw(x_new), a['out/gen'] - 0.5 * meta['s_x']**2 * torch_grad)
  pairs.update(_named('x_step/u_after', _u_vectors(u, v['ebm']),
                      section(a, 'xstep/u')))
  torch_grad = a['zstep/grad']
  pairs['z_step/grad'] = (z_grad, torch_grad)
  pairs['z_step/z_new'] = (
      z_new, a['out/z0'] - 0.5 * meta['s_z']**2 * torch_grad)
  return pairs


def _grad_pairs(prefix: str, grads: Any, variables: Any,
                expected: dict[str, np.ndarray]) -> Pairs:
  """The gradient of a net as one vector (all tensors, in PyTorch layout).

  One vector, not one check per tensor, because some tensors' exact
  gradient is zero or tiny next to the rest (a conv bias feeding a
  batch-statistics BatchNorm; the 2-channel last block of the CelebA
  generator), and there both frameworks return float32 rounding noise of
  the size of the whole gradient's. A wrong tensor still shows: its error
  is measured against the largest entry of the net's gradient.
  """
  pairs = _named(prefix, import_torch.to_torch_state_dict(grads, variables),
                 expected)
  keys = sorted(pairs)
  return {prefix: tuple(np.concatenate([np.ravel(pairs[k][i]) for k in keys])
                        for i in (0, 1))}


def loss_pairs(name: str) -> Pairs:
  """The three losses and their parameter gradients (and E's u after)."""
  f = load(name)
  a, m, v, meta = f['arrays'], f['models'], f['variables'], f['meta']
  temperature = losses.ebm_temperature(meta['s_x'], meta['n_x'], True)

  @_jit
  def run(v, x, x1, z, z1):
    bn = {'batch_stats': v['gen']['batch_stats']}

    def generator_loss(params):
      # The train step's two terms: a pass G(z1), and G(z) (the proposal).
      rec, _ = losses.reconstruction_loss(params, bn, m.gen.apply, x, z1,
                                          meta['g_factor'])
      x0, _ = m.gen.apply({'params': params, **bn}, z,
                          mutable=['batch_stats'])
      teach, _ = losses.x_teaching_loss(x0, x1, meta['s_factor'])
      return rec + teach

    loss_g, grads_g = jax.value_and_grad(generator_loss)(v['gen']['params'])
    (loss_i, _), grads_i = jax.value_and_grad(
        losses.inference_loss, has_aux=True)(
            v['inf']['params'], m.inf.apply, x, z1, x1, z, meta['g_factor'],
            meta['i_factor'])
    # The fixture's loss runs E(x), then E(x1) from the state E(x) left.
    sn_pos = {'batch_stats': v['ebm']['batch_stats']}
    _, sn_neg = m.ebm.apply({'params': v['ebm']['params'], **sn_pos}, x,
                            update_stats=True, mutable=['batch_stats'])
    (loss_e, (sn, _)), grads_e = jax.value_and_grad(
        losses.ebm_loss, has_aux=True)(
            v['ebm']['params'], sn_pos, dict(sn_neg), m.ebm.apply, x, x1,
            temperature)
    return ((loss_g, grads_g), (loss_i, grads_i), (loss_e, grads_e),
            sn['batch_stats'])

  *results, u = run(v, nhwc(pixels_to_float(a['in/x_pixels'])),
                    nhwc(pixels_to_float(a['in/x1_pixels'])), a['in/z'],
                    a['in/z1'])
  pairs: Pairs = {}
  for (loss, grads), prefix, net in zip(results, ('loss_g', 'loss_i',
                                                  'loss_e'),
                                        ('gen', 'inf', 'ebm')):
    pairs[f'{prefix}/value'] = (loss, a[f'{prefix}/value'])
    pairs.update(_grad_pairs(f'{prefix}/grad', grads, v[net],
                             section(a, f'{prefix}/grad')))
  pairs.update(_named('loss_e/u_after', _u_vectors(u, v['ebm']),
                      section(a, 'loss_e/u')))
  return pairs


def torch_grads_as_flax(f: dict[str, Any], net: str, name: str,
                        grads: dict[str, np.ndarray]) -> Any:
  """PyTorch-named parameter gradients -> a Flax params pytree."""
  mapped = import_torch.map_state_dict(net, grads, f['variables'][name],
                                       f['config'], ('params',))
  return mapped['params']


@functools.partial(jax.jit, static_argnums=0)
def _adam_step(tx: optax.GradientTransformation, grads: Any, opt_state: Any,
               params: Any) -> tuple[Any, Any]:
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state


def adam_pairs() -> Pairs:
  """Two steps of the library's Adam against torch.optim.Adam (G and E).

  Compares the parameter changes of each step (the fixture's learning rate
  makes them large enough to be measured in float32).
  """
  f = load('cifar10')
  adam = np.load(os.path.join(FIXTURES, 'golden_adam_cifar10.npz'))
  groups = json.loads(str(adam['meta']))['param_groups']
  pairs: Pairs = {}
  for net, name, loss in (('netG', 'gen', 'loss_g'), ('netE', 'ebm', 'loss_e')):
    g = groups['opt' + net[-1]][0]
    tx = ts.create_optimizer(optax.constant_schedule(g['lr']),
                             g['weight_decay'], *g['betas'], g['eps'])
    variables = f['variables'][name]
    params = variables['params']
    opt_state = tx.init(params)
    before = import_torch.to_torch_state_dict(params, variables)
    torch_before = {k: f['checkpoint'][net][k] for k in before}
    g1 = first_gradient(section(f['arrays'], f'{loss}/grad'))
    for step, grads in ((1, g1), (2, {k: second_gradient(v)
                                      for k, v in g1.items()})):
      flax_grads = torch_grads_as_flax(f, net, name, grads)
      params, opt_state = _adam_step(tx, flax_grads, opt_state, params)
      after = import_torch.to_torch_state_dict(params, variables)
      torch_after = section(adam, f'step{step}/{net}')
      pairs.update(_named(
          f'adam_{net}/step{step}_change',
          {k: after[k] - before[k] for k in after},
          {k: torch_after[k] - torch_before[k] for k in torch_after}))
      before, torch_before = after, torch_after
  return pairs


GROUPS: dict[str, Callable[..., Pairs]] = {
    'forward': forward_pairs,
    'langevin': langevin_pairs,
    'losses': loss_pairs,
}


@functools.cache
def measure(group: str, name: str | None = None) -> dict[str, float]:
  """Relative error of every quantity of a group, in float32 matmuls."""
  # On GPUs XLA may run float32 convolutions in TF32; pin full precision so
  # the test means the same everywhere.
  with jax.default_matmul_precision('float32'):
    pairs = adam_pairs() if group == 'adam' else GROUPS[group](name)
  return {k: rel_err(a, b) for k, (a, b) in pairs.items()}


def _assert_small(errors: dict[str, float]) -> None:
  assert errors
  bad = {k: e for k, e in errors.items() if not e < TOLERANCE}
  worst = max(errors, key=errors.get)
  assert not bad, (f'relative error >= {TOLERANCE}: {bad} '
                   f'(worst of {len(errors)}: {worst})')


@pytest.mark.parametrize('name', ARCHS)
def test_forward_passes_agree(name):
  _assert_small(measure('forward', name))


@pytest.mark.parametrize('name', ARCHS)
def test_langevin_steps_agree(name):
  _assert_small(measure('langevin', name))


@pytest.mark.parametrize('name', ARCHS)
def test_losses_and_gradients_agree(name):
  _assert_small(measure('losses', name))


def test_adam_steps_agree_with_torch_optim_adam():
  _assert_small(measure('adam'))


def test_fixtures_cover_every_tensor_of_the_state_dicts():
  for name in ARCHS:
    f = load(name)
    for net, key, _ in import_torch.NETS:
      slots = import_torch.tensor_slots(f['variables'][key])
      ignored = [k for k in f['checkpoint'][net] if k not in slots]
      assert all(k.endswith(('num_batches_tracked', 'weight_v'))
                 for k in ignored), ignored


def report() -> None:
  """Prints the measured errors: worst per network and quantity."""
  rows = {}
  for group in ('forward', 'langevin', 'losses', 'adam'):
    for name in (ARCHS if group != 'adam' else (None,)):
      for k, e in measure(group, name).items():
        parts = k.split('/')
        label = '/'.join(parts[:2]) if len(parts) > 2 else k
        row = f'{name or "cifar10"}  {label}'
        rows[row] = max(rows.get(row, 0.0), e)
  for row, e in rows.items():
    print(f'{row:55s} {e:.2e}')
  print(f'max over all: {max(rows.values()):.2e} (tolerance {TOLERANCE:g})')


if __name__ == '__main__':
  jax.config.update('jax_platforms', 'cpu')
  report()
