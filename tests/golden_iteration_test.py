"""The whole training iteration against the authors' loop, stage by stage.

Agreement with the authors' code (jcui1224/dual-MCMC) is tested piece by
piece elsewhere (`agreement_test.py`: the nets, one Langevin step, the
losses, Adam). This test pins the wiring: which samples feed which loss,
which state each pass uses, the order of the three updates, the second
x-chain. It runs one whole iteration two ways from the same weights, on the
same batch, with the same Gaussian draws (the prior z, the
reparameterisation noise and every chain step's noise):

* the project's jitted iteration (`train_step.make_iteration`), its draws
  read from a table (`noise.table_normal`);
* the body of the training loop of the authors' `train.py`, re-expressed in
  PyTorch statement by statement (`tests/torch_reference.authors_iteration`),
  whose results `scripts/golden_iteration.py` stores in
  `tests/fixtures/golden_iteration_<case>.npz`, so that this test needs no
  PyTorch; where PyTorch is installed, the fixtures are checked against a
  fresh run of the authors' loop too.

and compares, in float32, each group to 1e-5 relative to the group's
largest value: the x-revised samples of both chains, the z-revised latents,
the three losses, each net's gradients (as Adam's first moment: with
beta1 = 0 it is the gradient plus the coupled weight decay),
the EBM's spectral-norm vectors, the generator's BatchNorm running
statistics (PyTorch folds the unbiased batch variance into its running
variance, Flax the biased one; the comparison undoes the n / (n - 1), which
needs the number of generator passes to be the same) and the parameters.

Two facts shape the test:

* The z-chain is chaotic on random-weight nets at the reference's z-step
  0.1: a 1e-6 change of z0 moves z1 by about 1.4 after 10 steps, in either
  code. On this test's nets a perturbation of z0 still grows 30-40 times
  over 10 steps at 0.01 (residual nets), and about 1x at 0.002 (both
  nets). The test pins the iteration with the reference's 10 steps at the
  contractive z-step 0.002; the gradient's part of the move is still about
  1% of |z1|, a thousand times the tolerance.
* Adam's first step turns rounding-level gradients into +-lr (a conv bias
  before a batch-statistics BatchNorm has an exact zero gradient). So the
  gradients are compared directly, and the parameters only where the
  gradient is well above rounding (elsewhere each side moved by at most lr;
  such biases do not change any output).

`PYTHONPATH=. python tests/golden_iteration_test.py` prints every group's
error for each case.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dual_mcmc_jax import import_torch
from dual_mcmc_jax import noise
from dual_mcmc_jax import settings as settings_lib
from dual_mcmc_jax import train_state as ts
from dual_mcmc_jax import train_step
from scripts import golden_iteration as golden
from scripts.golden_iteration import Case
from scripts.golden_iteration import section

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                        'fixtures')
TOLERANCE = 1e-5
# Parameters are compared where |grad| exceeds this share of the net's
# largest gradient entry (see the module docstring).
WELL_ABOVE_ROUNDING = 1e-4


def rel_err(actual: Any, expected: Any) -> float:
  """max|actual - expected| / max|expected| over a whole group."""
  a = np.asarray(actual, np.float64).ravel()
  b = np.asarray(expected, np.float64).ravel()
  assert a.shape == b.shape, (a.shape, b.shape)
  scale = np.max(np.abs(b))
  return float(np.max(np.abs(a - b)) / scale) if scale > 0 else float(
      np.max(np.abs(a)))


def nhwc(a: Any) -> np.ndarray:
  return np.asarray(a).transpose(0, 2, 3, 1)


# --------------------------------------------------------------------------
# Names: Flax variables <-> the PyTorch state dicts of torch_reference.
# --------------------------------------------------------------------------


def _simple_keys(case: Case) -> dict[str, dict[tuple[str, ...], str]]:
  """(collection, *Flax path) -> PyTorch key, for the simple nets."""
  n = int(np.log2(case.image_size)) - 2
  gen = {('params', 'convt0', 'kernel'): 'main.0.weight',
         ('params', 'convt0', 'bias'): 'main.0.bias'}
  for i in range(n):
    bn, conv = f'main.{1 + 3 * i}', f'main.{3 + 3 * i}'
    gen.update({('params', f'bn{i}', 'scale'): f'{bn}.weight',
                ('params', f'bn{i}', 'bias'): f'{bn}.bias',
                ('batch_stats', f'bn{i}', 'mean'): f'{bn}.running_mean',
                ('batch_stats', f'bn{i}', 'var'): f'{bn}.running_var',
                ('params', f'convt{i + 1}', 'kernel'): f'{conv}.weight',
                ('params', f'convt{i + 1}', 'bias'): f'{conv}.bias'})
  ebm, inf = {}, {}
  for i, name in enumerate([f'conv{i}' for i in range(n)] + ['conv_out']):
    ebm.update({('params', name, 'kernel'): f'main.{2 * i}.weight_orig',
                ('params', name, 'bias'): f'main.{2 * i}.bias',
                ('batch_stats', name, 'u'): f'main.{2 * i}.weight_u'})
  for i in range(n):
    inf[('params', f'conv{i}', 'conv', 'kernel')] = f'main.{2 * i}.weight'
  for head in ('mu', 'logvar'):
    inf[('params', head, 'conv', 'kernel')] = f'{head}.weight'
    inf[('params', head, 'conv', 'bias')] = f'{head}.bias'
  return {'gen': gen, 'ebm': ebm, 'inf': inf}


def _to_flax(net: str, a: np.ndarray) -> np.ndarray:
  """A PyTorch tensor of the simple nets in its Flax layout."""
  if a.ndim == 4 and net == 'gen':
    # ConvTranspose2d [in, out, kh, kw] -> the flipped kernel of the
    # input-dilated forward conv, [kh, kw, in, out].
    return a.transpose(2, 3, 0, 1)[::-1, ::-1]
  if a.ndim == 4:  # Conv2d [out, in, kh, kw] -> [kh, kw, in, out].
    return a.transpose(2, 3, 1, 0)
  return a


def _to_torch(net: str, a: np.ndarray) -> np.ndarray:
  """The inverse of `_to_flax`."""
  if a.ndim == 4 and net == 'gen':
    return a[::-1, ::-1].transpose(2, 3, 0, 1)
  if a.ndim == 4:
    return a.transpose(3, 2, 0, 1)
  return a


class Names:
  """Maps each net's Flax variables to PyTorch names, both ways."""

  def __init__(self, case: Case, variables: dict[str, Any]):
    self.case, self.variables = case, variables
    self.simple = _simple_keys(case) if case.arch == 'simple' else None

  def torch_dict(self, net: str, tree: Any, collection: str = 'params'
                 ) -> dict[str, np.ndarray]:
    """A Flax tree of `collection` (params-shaped) as {torch key: array}."""
    if self.simple is None:
      return {k: np.asarray(v) for k, v in import_torch.to_torch_state_dict(
          tree, self.variables[net], collection).items()}
    flat = {(collection, *p): np.asarray(v) for p, v in
            _flatten(tree).items()}
    return {key: _to_torch(net, flat[path])
            for path, key in self.simple[net].items() if path in flat}


def _flatten(tree: Any) -> dict[tuple[str, ...], Any]:
  return traverse_util.flatten_dict(jax.device_get(tree))


def flax_variables(case: Case, config, init: dict[str, dict[str, Any]]
                   ) -> tuple[Any, dict[str, Any]]:
  """The models, and Flax variables holding the PyTorch state dicts `init`."""
  checkpoint = {'netG': init['G'], 'netE': init['E'], 'netI': init['I']}
  if case.arch == 'resnet':
    return import_torch.map_networks(config, checkpoint)
  models = ts.create_models(settings_lib.from_config(config))
  variables = {}
  for net, key in (('gen', 'G'), ('ebm', 'E'), ('inf', 'I')):
    flat = {path: np.ascontiguousarray(_to_flax(net, init[key][name]))
            for path, name in _simple_keys(case)[net].items()}
    variables[net] = traverse_util.unflatten_dict(flat)
  return models, variables


def _adam_state(opt_state: Any) -> optax.ScaleByAdamState:
  found = [s for s in jax.tree.leaves(
      opt_state, is_leaf=lambda s: isinstance(s, optax.ScaleByAdamState))
           if isinstance(s, optax.ScaleByAdamState)]
  assert len(found) == 1
  return found[0]


def run_jax(config, models, variables, x: np.ndarray,
            table: dict[str, np.ndarray]):
  """The project's iteration from `variables` on `x` with the draws `table`."""
  settings = settings_lib.from_config(config)
  optimizers = ts.create_optimizers(settings.optim, steps_per_epoch=1)
  state = ts.train_state_from_variables(
      jax.tree.map(jnp.asarray, variables), optimizers, seed=0)
  # The same draws in the project's layout: images NHWC.
  jax_table = {k: (v.transpose(0, 1, 3, 4, 2) if v.ndim == 5 else v)
               for k, v in table.items()}
  iteration = train_step.make_iteration(settings, models, optimizers,
                                        noise.table_normal(jax_table))
  return jax.jit(iteration)(state, jnp.asarray(nhwc(x)))


def load_fixture(name: str) -> dict[str, np.ndarray]:
  with np.load(golden.fixture_path(FIXTURES, name)) as f:
    return {k: f[k] for k in f.files}


@functools.cache
def compare(name: str) -> dict[str, float]:
  """Runs case `name` from its fixture; returns {group: relative error}."""
  case = golden.CASES[name]
  config = golden.case_config(case)
  ref = load_fixture(name)
  table = golden.draws(case, config)
  meta = json.loads(str(ref['meta']))
  assert meta['draws_checksum'] == pytest.approx(
      golden.draws_checksum(table), rel=1e-12), 'numpy drew another stream'
  init = {k: section(ref, f'init/{k}') for k in 'GEI'}
  models, variables = flax_variables(case, config, init)
  state, metrics, samples = run_jax(config, models, variables, ref['x'],
                                    table)
  return _errors(case, config, Names(case, variables), state, metrics,
                 samples, ref)


def _errors(case: Case, config, names: Names, state, metrics, samples,
            ref: dict[str, np.ndarray]) -> dict[str, float]:
  err = {'x1 (x-revision of G(z))': rel_err(samples['x1'],
                                            nhwc(ref['out/x1'])),
         'z1 (z-revision)': rel_err(samples['z1'],
                                    ref['out/z1'].reshape(case.batch, -1)),
         'x_neg (second x-chain)': rel_err(samples['x_neg'],
                                           nhwc(ref['out/x_neg']))}
  for k in ('loss_g', 'loss_i', 'loss_e', 'energy_diff'):
    err[k] = rel_err(metrics[k], ref[f'loss/{k}'])
  for key, net in (('G', 'gen'), ('I', 'inf'), ('E', 'ebm')):
    ours = names.torch_dict(net, _adam_state(getattr(state, net).opt_state).mu)
    mu = section(ref, f'mu/{key}')
    keys = sorted(mu)
    err[f'{key} gradient (Adam mu)'] = rel_err(
        np.concatenate([ours[k].ravel() for k in keys]),
        np.concatenate([mu[k].ravel() for k in keys]))
    # mu = grad + wd * param (coupled weight decay).
    wd = float(config.optim[f'wd_{key.lower()}'])
    init = section(ref, f'init/{key}')
    err[f'{key} parameters'] = _param_error(
        names.torch_dict(net, getattr(state, net).params),
        section(ref, f'after/{key}'),
        {k: mu[k] - wd * init[k] for k in keys})
  err.update(_bn_errors(case, names, state, ref))
  u = names.torch_dict('ebm', state.ebm.state['batch_stats'], 'batch_stats')
  after_e = section(ref, 'after/E')
  err['E spectral-norm u'] = rel_err(
      np.concatenate([u[k].ravel() for k in sorted(u)]),
      np.concatenate([after_e[k].ravel() for k in sorted(u)]))
  return err


def _bn_side(case: Case, key: str) -> int:
  """Pixels a side at a generator BatchNorm layer (its PyTorch key)."""
  if case.arch == 'simple':  # main.{1 + 3i} runs at 4 * 2**i.
    return 4 * 2**((int(key.split('.')[1]) - 1) // 3)
  module, layer = key.split('.')[:2]
  if module.startswith('block'):  # block{k}: bn_1 before its upsampling.
    return 4 * 2**(int(module[len('block'):]) - 2) * (
        1 if layer == 'bn_1' else 2)
  return case.image_size


def _mean_shifts(case: Case, ours: dict[str, np.ndarray],
                 theirs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """How far our last generator pass moves each BatchNorm's batch mean.

  The biases added before a batch-statistics BatchNorm get exact-zero
  gradients by construction, so Adam moves them by +-lr on rounding noise
  and the two sides end up with different biases there. They change no
  output, but they shift the batch mean each BatchNorm sees in the last
  pass, G'(z), by a constant per channel. Returns that shift (ours minus
  theirs) per BatchNorm, PyTorch names. In the residual generator the shift
  of a block's output also reaches the next block's output through its
  1x1 shortcut (bilinear upsampling keeps constants).
  """
  d = {k: ours[k] - theirs[k] for k in theirs if k.endswith('.bias')}
  if case.arch == 'simple':  # main.{1 + 3i} follows main.{3i}.
    return {f'main.{3 * i + 1}': d[f'main.{3 * i}.bias']
            for i in range(int(np.log2(case.image_size)) - 2)}
  c0 = len(theirs['block2.bn_1.running_mean'])
  x = d['lin_1.bias'].reshape(c0, 16).mean(1)  # Viewed as [C, 4, 4].
  shifts = {}
  last = int(np.log2(case.image_size)) - 1  # Up-blocks block2..block{last}.
  for k in range(2, last + 1):
    shifts[f'block{k}.bn_1'] = x
    shifts[f'block{k}.bn_2'] = d[f'block{k}.conv1.bias']
    w_sc = theirs[f'block{k}.sc.weight'][:, :, 0, 0]  # [out, in]
    x = d[f'block{k}.conv2.bias'] + d[f'block{k}.sc.bias'] + w_sc @ x
  shifts[f'bn_{last + 1}'] = x
  return shifts


def _bn_errors(case: Case, names: Names, state,
               ref: dict[str, np.ndarray]) -> dict[str, float]:
  """The generator's BatchNorm running statistics after the iteration.

  Each train-mode generator pass moves them: r <- 0.9 r + 0.1 v, with v
  the biased batch variance in Flax and the unbiased one in PyTorch. After
  T passes from r0, Flax's is 0.9^T r0 + (PyTorch's - 0.9^T r0)(n - 1)/n.
  The authors' loop makes T = z-steps + 3 passes: G(z), the z-chain, G(z1)
  in the generator loss and G'(z) for the second chain. The last pass
  runs with updated biases that Adam set from rounding noise; the running
  means are compared after removing their effect (`_mean_shifts`).
  """
  stats = names.torch_dict('gen', state.gen.state['batch_stats'],
                           'batch_stats')
  after, before = section(ref, 'after/G'), section(ref, 'init/G')
  passes = int(golden.case_config(case).langevin_z.steps) + 3
  means = sorted(k for k in stats if k.endswith('running_mean'))
  variances = sorted(k for k in stats if k.endswith('running_var'))
  shifts = _mean_shifts(case, names.torch_dict('gen', state.gen.params),
                        after)
  expected_means = [after[k] + 0.1 * shifts[k[:-len('.running_mean')]]
                    for k in means]
  expected_vars = []
  for k in variances:
    n = case.batch * _bn_side(case, k)**2
    start = 0.9**passes * before[k]
    expected_vars.append(start + (after[k] - start) * (n - 1) / n)
  return {
      'G BatchNorm running means': rel_err(
          np.concatenate([stats[k] for k in means]),
          np.concatenate(expected_means)),
      'G BatchNorm running variances': rel_err(
          np.concatenate([stats[k] for k in variances]),
          np.concatenate(expected_vars))}


def _param_error(params: dict[str, np.ndarray], after: dict[str, np.ndarray],
                 grads: dict[str, np.ndarray]) -> float:
  """Parameters after the update, where the gradient is well determined."""
  keys = sorted(params)
  a = np.concatenate([params[k].ravel() for k in keys])
  b = np.concatenate([after[k].ravel() for k in keys])
  g = np.concatenate([grads[k].ravel() for k in keys])
  keep = np.abs(g) > WELL_ABOVE_ROUNDING * np.max(np.abs(g))
  return float(np.max(np.abs(a - b)[keep]) / np.max(np.abs(b)))


@pytest.mark.parametrize('name', sorted(golden.CASES))
def test_the_iteration_matches_the_authors_loop(name):
  errors = compare(name)
  bad = {k: v for k, v in errors.items() if not v <= TOLERANCE}
  assert not bad, bad


@pytest.mark.parametrize('name', sorted(golden.CASES))
def test_the_fixture_is_what_the_authors_loop_computes(name):
  """Reruns the authors' loop (PyTorch) and checks the stored fixture."""
  pytest.importorskip('torch')
  fresh = golden.run_authors(golden.CASES[name])
  stored = load_fixture(name)
  assert set(fresh) == set(stored)
  for k in sorted(stored):
    if k != 'meta':
      np.testing.assert_allclose(fresh[k], stored[k], rtol=1e-6, atol=1e-7,
                                 err_msg=k)


if __name__ == '__main__':
  for case_name in sorted(golden.CASES):
    print(case_name)
    for group, e in compare(case_name).items():
      print(f'  {group:32s} {e:.2e}')
