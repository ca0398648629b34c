"""Tests of the CPU plug-in, dual_mcmc_jax/cpu/: the same numbers, faster.

Its convolutions (`cpu.conv.conv2d`, Winograd's algorithms) and their
gradients equal XLA's own; the networks built on them compute what plain
Flax layers compute; the compiled chains contain no convolution with a
transposed-kernel layout (the slow case on XLA's CPU backend) and compute
the kernels' layouts once per chain; the chain loop that draws noise ahead
and the stages run in turn leave the iteration's values unchanged; and the
plug-in is attached, under its one switch, only where it is asked for.
The tests that read compiled HLO text live here alone: they check this
plug-in's reason to exist on XLA's CPU backend, and change with XLA.
"""

import dataclasses
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import test as test_config
from dual_mcmc_jax import compute
from dual_mcmc_jax import cpu
from dual_mcmc_jax import langevin
from dual_mcmc_jax import networks
from dual_mcmc_jax import sampling
from dual_mcmc_jax import settings as settings_lib
from dual_mcmc_jax import train_state as ts
from dual_mcmc_jax import train_step as tstep
from dual_mcmc_jax.cpu import chains
from dual_mcmc_jax.cpu import conv
from dual_mcmc_jax.cpu import schedule
from dual_mcmc_jax.cpu import winograd
from dual_mcmc_jax.networks import layers


def _conv(x, w, strides, padding, lhs_dilation, rule):
  """XLA's own conv ('xla') or the plug-in's ('forward_conv')."""
  ops = layers.ConvOps() if rule == 'xla' else conv.CpuConvOps()
  return ops.conv(x, w, tuple(strides), tuple(map(tuple, padding)),
                  tuple(lhs_dilation))

# (size, kernel, stride, padding, lhs_dilation): every conv the nets use, and
# odd sizes where the stride leaves input rows unreached.
CASES = [
    (8, 3, 1, (1, 1), 1),  # residual 3x3
    (8, 1, 1, (0, 0), 1),  # residual 1x1 shortcut
    (16, 4, 2, (1, 1), 1),  # plain EBM / inference downsampling
    (15, 4, 2, (1, 1), 1),
    (7, 3, 2, (1, 0), 1),  # asymmetric padding
    (4, 4, 1, (0, 0), 1),  # 4x4 valid head
    (1, 4, 1, (3, 3), 1),  # plain generator's first transposed conv
    (4, 4, 1, (2, 2), 2),  # plain generator's upsampling transposed conv
    (5, 4, 1, (2, 2), 2),
]


@pytest.mark.parametrize('size,k,stride,pad,dil', CASES)
def test_forward_conv_gradients_equal_autodiff(size, k, stride, pad, dil):
  kx, kw = jax.random.split(jax.random.key(size * 10 + k))
  x = jax.random.normal(kx, (2, size, size, 3))
  w = jax.random.normal(kw, (k, k, 3, 5))

  def loss(x, w, rule):
    y = _conv(x, w, (stride, stride), (pad, pad), (dil, dil), rule)
    return jnp.sum(jnp.sin(y))  # a non-constant output gradient

  y_ref = _conv(x, w, (stride, stride), (pad, pad), (dil, dil), 'xla')
  y = _conv(x, w, (stride, stride), (pad, pad), (dil, dil),
                  'forward_conv')
  args = (x, w, (stride, stride), (pad, pad), (dil, dil))
  if (conv._is_transposed(*args) or conv._is_strided(x, w, args[2], args[4])
      or conv._is_whole_window(x, w, args[3], args[4])):
    # Transposed, stride-2 and whole-window convs are matrix products (and
    # an overlap-add): the same sums in another order.
    np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), rtol=1e-5,
                               atol=1e-6 * float(jnp.max(jnp.abs(y_ref))))
  else:
    np.testing.assert_array_equal(np.asarray(y), np.asarray(y_ref))
  g_ref = jax.grad(loss, (0, 1))(x, w, 'xla')
  g = jax.grad(loss, (0, 1))(x, w, 'forward_conv')
  for a, b in zip(g, g_ref):
    assert a.shape == b.shape
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5,
                               atol=1e-5 * float(jnp.max(jnp.abs(b))))


def test_plain_generator_equals_flax_conv_transpose():
  """The input-dilated convs are the transposed convs they replace."""
  config = test_config.get_config()
  config.model.arch = 'simple'
  models = ts.create_models(config)
  variables = models.gen.init(jax.random.key(0), jnp.zeros((4, models.nz)))
  z = jax.random.normal(jax.random.key(1), (4, models.nz))
  got, _ = models.gen.apply(variables, z, mutable=['batch_stats'])

  class FlaxReference(nn.Module):

    @nn.compact
    def __call__(self, z):
      g = models.gen
      n_up = int(np.log2(g.image_size)) - 2
      h = nn.ConvTranspose(g.ngf * 2**n_up, (4, 4), padding='VALID',
                           name='convt0')(z[:, None, None, :])
      for i in range(n_up):
        h = nn.relu(networks.batch_norm(f'bn{i}')(h))
        feats = g.num_channels if i == n_up - 1 else g.ngf * 2**(n_up - 1 - i)
        h = nn.ConvTranspose(feats, (4, 4), strides=(2, 2),
                             padding=((2, 2), (2, 2)),
                             name=f'convt{i + 1}')(h)
      return jnp.tanh(h)

  want, _ = FlaxReference().apply(variables, z, mutable=['batch_stats'])
  assert got.shape == (4,) + models.data_shape
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5,
                             atol=1e-6)


@pytest.mark.parametrize('arch', ['resnet', 'simple'])
def test_chains_agree_and_compile_without_transposed_kernel_layout(arch):
  config = test_config.get_config()
  config.model.arch = arch
  settings = settings_lib.from_config(config)
  lx, lz = settings.langevin_x, settings.langevin_z
  out, hlo = {}, {}
  for rule, switch in (('xla', 'off'), ('forward_conv', 'on')):
    config.training.cpu_plugin = switch
    models = ts.create_models(config)
    state = ts.create_train_state(
        models, ts.create_optimizers(config.optim, 10), 0)
    x = jax.random.uniform(jax.random.key(2), (8,) + models.data_shape,
                           minval=-1, maxval=1)
    z = jax.random.normal(jax.random.key(3), (8, models.nz))

    def chains(state, x, z, models=models):
      x1, _, _ = sampling.revise_x(models, state.ebm, x, jax.random.key(4),
                                     lx)
      z1, _, _ = sampling.revise_z(models, state.gen, z, x,
                                     jax.random.key(5), lz, 0.3, 1.0)
      return x1 - x, z1 - z  # what the chains moved

    fn = jax.jit(chains)
    out[rule] = fn(state, x, z)
    hlo[rule] = fn.lower(state, x, z).compile().as_text()
  for a, b in zip(out['forward_conv'], out['xla']):
    assert float(jnp.max(jnp.abs(b))) > 1e-4  # the chains did move
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4,
                               atol=1e-4 * float(jnp.max(jnp.abs(b))))
  layouts = lambda text: set(re.findall(r'dim_labels=\w+_(\w+)->', text))
  # Inside the chains' loops XLA keeps autodiff's transposed-kernel layout
  # (the slow case on the CPU); the forward-conv rule leaves only the
  # standard one.
  assert '01oi' in layouts(hlo['xla']), layouts(hlo['xla'])
  assert layouts(hlo['forward_conv']) <= {'01io'}, layouts(hlo['forward_conv'])


@pytest.mark.parametrize('size,k,pad', [(8, 4, (2, 2)), (4, 4, (3, 3)),
                                        (16, 3, (1, 1)), (8, 4, (1, 2)),
                                        (5, 4, (2, 2)), (8, 5, (2, 2))])
def test_dilated_conv_by_phases_equals_the_dilated_conv(size, k, pad):
  """The stride-2 convs' input gradient: four quarter-kernel convs."""
  x = jax.random.normal(jax.random.key(0), (2, size, size, 3))
  w = jax.random.normal(jax.random.key(1), (k, k, 3, 5))
  expected = jax.lax.conv_general_dilated(
      x, w, (1, 1), (pad, pad), lhs_dilation=(2, 2),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  got = conv._dilated_conv_by_phases(x, w, (pad, pad))
  assert got.shape == expected.shape
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('sn', [True, False])
def test_cpu_normalized_conv_folds_the_pool_and_divides_the_output(sn):
  """XLA's conv(x, w / sigma) then pool = the plug-in's folded conv / sigma."""
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  w = jax.random.normal(jax.random.key(1), (3, 3, 3, 5))
  sigma = jnp.asarray(2.5) if sn else None
  for pool in (False, True):
    want = layers.ConvOps().normalized_conv(x, w, sigma, 1, 1, pool)
    got = conv.CpuConvOps().normalized_conv(x, w, sigma, 1, 1, pool)
    assert got.shape == want.shape == (2, 4 if pool else 8, 4 if pool else 8,
                                       5)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('shape,out', [((2, 8, 6, 32), 40), ((1, 4, 4, 64), 32)])
def test_winograd_conv_equals_the_direct_conv_and_its_gradients(shape, out):
  """3x3 'same' convs with >= 32 channels: Winograd F(2x2, 3x3)."""
  x = jax.random.normal(jax.random.key(0), shape)
  w = jax.random.normal(jax.random.key(1), (3, 3, shape[3], out))
  args = ((1, 1), ((1, 1), (1, 1)), (1, 1))
  assert conv._is_winograd(x, w, *args)

  def loss(x, w, rule):
    return jnp.sum(jnp.sin(_conv(x, w, *args, rule)))

  expected = _conv(x, w, *args, 'xla')
  got = _conv(x, w, *args, 'forward_conv')
  scale = float(jnp.max(jnp.abs(expected)))
  np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6 * scale)
  for a, b in zip(jax.grad(loss, (0, 1))(x, w, 'forward_conv'),
                  jax.grad(loss, (0, 1))(x, w, 'xla')):
    np.testing.assert_allclose(a, b, rtol=0,
                               atol=2e-5 * float(jnp.max(jnp.abs(b))))


def test_winograd_is_kept_to_where_it_was_measured_faster():
  w32, x32 = jnp.zeros((3, 3, 32, 32)), jnp.zeros((1, 8, 8, 32))
  same = ((1, 1), ((1, 1), (1, 1)), (1, 1))
  assert conv._is_winograd(x32, w32, *same)
  assert not conv._is_winograd(jnp.zeros((1, 8, 8, 3)),
                               jnp.zeros((3, 3, 3, 32)), *same)  # RGB input
  assert not conv._is_winograd(x32, jnp.zeros((3, 3, 32, 16)), *same)
  assert not conv._is_winograd(jnp.zeros((1, 7, 8, 32)), w32, *same)  # odd
  assert not conv._is_winograd(x32.astype(jnp.bfloat16), w32, *same)
  assert not conv._is_winograd(x32, w32, (2, 2), same[1], (1, 1))
  assert not conv._is_winograd(x32, w32, (1, 1), ((0, 0), (0, 0)), (1, 1))


def test_winograd_2x2_block_conv_equals_the_sum_of_tap_products():
  """The 4x4 stride-2 convs after space-to-depth: F(2x2, 2x2)."""
  xb = jax.random.normal(jax.random.key(0), (2, 9, 5, 12))
  wb = jax.random.normal(jax.random.key(1), (2, 2, 12, 7))
  expected = winograd.valid_conv_by_matmul(xb, wb)
  assert expected.shape == (2, 8, 4, 7)
  got = winograd.f22(xb, wb)
  np.testing.assert_allclose(got, expected, rtol=0,
                             atol=2e-6 * float(jnp.max(jnp.abs(expected))))
  direct = jax.lax.conv_general_dilated(
      xb, wb, (1, 1), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  np.testing.assert_allclose(got, direct, rtol=0,
                             atol=2e-6 * float(jnp.max(jnp.abs(direct))))


@pytest.mark.parametrize('size,cin,cout', [
    (8, 32, 40),  # 4 * cin >= 32: Winograd blocks; input gradient by phases
    (16, 3, 32),  # RGB input: gathered windows; gradient as one product
    (4, 40, 33),  # a 2x2 output
    (8, 6, 48),   # 4 * cin < 32 with a 32+-channel gradient
])
def test_strided_4x4_conv_and_its_phase_gradient_equal_autodiff(size, cin,
                                                                cout):
  """4x4 stride-2 convs with padding 1 (`conv._strided_conv4`)."""
  x = jax.random.normal(jax.random.key(0), (2, size, size, cin))
  w = jax.random.normal(jax.random.key(1), (4, 4, cin, cout))
  args = ((2, 2), ((1, 1), (1, 1)), (1, 1))
  assert conv._is_strided4(x, w, args[1])

  def loss(x, w, rule):
    return jnp.sum(jnp.sin(_conv(x, w, *args, rule)))

  expected = _conv(x, w, *args, 'xla')
  got = _conv(x, w, *args, 'forward_conv')
  np.testing.assert_allclose(got, expected, rtol=0,
                             atol=2e-6 * float(jnp.max(jnp.abs(expected))))
  for a, b in zip(jax.grad(loss, (0, 1))(x, w, 'forward_conv'),
                  jax.grad(loss, (0, 1))(x, w, 'xla')):
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=0,
                               atol=2e-5 * float(jnp.max(jnp.abs(b))))


@pytest.mark.parametrize('cout', [3, 32])
def test_upsampling_by_phases_equals_the_transposed_conv(cout):
  """Four F(2x2, 2x2) phases (or one product below 32 outputs)."""
  x = jax.random.normal(jax.random.key(2), (2, 4, 6, 40))
  w = jax.random.normal(jax.random.key(3), (4, 4, 40, cout))
  expected = jax.lax.conv_general_dilated(
      x, w, (1, 1), ((2, 2), (2, 2)), lhs_dilation=(2, 2),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  got = conv._upsample_by_phases(x, w)
  assert got.shape == expected.shape == (2, 8, 12, cout)
  np.testing.assert_allclose(got, expected, rtol=0,
                             atol=2e-6 * float(jnp.max(jnp.abs(expected))))


def test_gathered_windows_conv_equals_the_sum_of_tap_products():
  xb = jax.random.normal(jax.random.key(4), (2, 9, 7, 12))
  wb = jax.random.normal(jax.random.key(5), (2, 3, 12, 5))
  expected = winograd.valid_conv_by_matmul(xb, wb)
  np.testing.assert_allclose(winograd.im2col_conv(xb, wb), expected,
                             rtol=0,
                             atol=2e-6 * float(jnp.max(jnp.abs(expected))))


def test_winograd_with_one_product_per_tap_equals_the_stacked_form(
    monkeypatch):
  """Large layers run one product per transform tap (`SEPARATE_MIN`)."""
  x = jax.random.normal(jax.random.key(6), (2, 8, 6, 32))
  w3 = jax.random.normal(jax.random.key(7), (3, 3, 32, 40))
  xb = jax.random.normal(jax.random.key(8), (2, 9, 5, 12))
  wb = jax.random.normal(jax.random.key(9), (2, 2, 12, 7))
  stacked = winograd.f23(x, w3), winograd.f22(xb, wb)
  monkeypatch.setattr(winograd, 'SEPARATE_MIN', 0)
  separate = winograd.f23(x, w3), winograd.f22(xb, wb)
  for a, b in zip(separate, stacked):
    np.testing.assert_allclose(a, b, rtol=0,
                               atol=1e-6 * float(jnp.max(jnp.abs(b))))


def test_kernel_layout_work_runs_once_before_a_chain(monkeypatch):
  """The kernel's product layout is computed before the loop, not per step.

  The transposed conv's kernel goes into its product as [in, kh, kw, out];
  behind `winograd.kernel_operands` XLA computes that once and carries it
  through the loop (change 19), where without it the loop carries the
  stored [kh, kw, in, out] kernel and rearranges it on every step.
  """
  x0 = jax.random.normal(jax.random.key(10), (2, 4, 4, 8))
  w = jax.random.normal(jax.random.key(11), (4, 4, 8, 16))
  out, carried = {}, {}
  for hoist in (False, True):
    monkeypatch.setattr(winograd, 'HOIST', hoist)

    def chain(x0, w):
      def body(i, x):
        y = conv.conv2d(x, w, (1, 1), ((2, 2), (2, 2)), (2, 2))  # [2, 8, 8, 16]
        return x + 1e-2 * jnp.tanh(y[:, ::2, ::2, :8])
      return jax.lax.fori_loop(0, 3, body, x0)

    fn = jax.jit(chain)
    out[hoist] = fn(x0, w)
    text = fn.lower(x0, w).compile().as_text()
    carried[hoist] = re.findall(r'= \(([^)]*)\) while\(', text)
  assert len(carried[True]) == len(carried[False]) == 1, carried
  np.testing.assert_array_equal(out[True], out[False])
  assert 'f32[4,4,8,16]' in carried[False][0], carried[False]
  assert 'f32[4,4,8,16]' not in carried[True][0], carried[True]
  assert 'f32[8,' in carried[True][0], carried[True]


# ----------------------------------------------------------------------------
# The chains and the step: the same values in another schedule.
# ----------------------------------------------------------------------------


def test_after_keeps_values_and_makes_them_wait_for_done():
  """`after` adds an exact zero that reads `done` (chains run in turn)."""
  done = {'a': jnp.array([jnp.nan, 1.0]), 'b': jnp.array([jnp.inf]),
          'n': jnp.array([3], jnp.int32)}
  values = (jnp.array([-0.5, 2.0, 1e-30]), jnp.array([[7.0]]))
  got = schedule.after(done, values)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(values)):
    np.testing.assert_array_equal(a, b)
  hlo = jax.jit(schedule.after).lower(done['a'], values[0]).compile().as_text()
  # The compiled function still reads `done` (parameter 0), so whatever
  # uses its outputs is scheduled after `done` is computed.
  param = re.search(r'%([\w.]+) = f32\[2\]\{0\} parameter\(0\)', hlo)
  assert param and hlo.count('%' + param.group(1)) > 1, hlo


def test_noise_drawn_ahead_gives_the_same_chain():
  """Drawing step i + 1's noise during step i: the same chain (change 20).

  The same noise and updates; only float32 rounding of the fused update
  (where the compiler contracts a multiply-add) may differ.
  """
  key = jax.random.key(7)
  x0 = jnp.asarray(np.random.default_rng(4).normal(size=(4, 2)), jnp.float32)
  settings = settings_lib.ChainSettings(steps=5, step_size=0.2, noise=0.3)
  energy = lambda x, aux: (0.5 * jnp.sum(jnp.square(x - 1.0)), aux)
  out = {}
  for loop in (langevin.fori_chain, chains.noise_ahead_chain):
    out[loop] = jax.jit(lambda x, k, loop=loop: langevin.langevin(
        energy, x, k, settings, loop=loop)[::2])(x0, key)
  a, b = out[chains.noise_ahead_chain], out[langevin.fori_chain]
  assert float(jnp.max(jnp.abs(a[0] - x0))) > 0.1  # it moved
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-7)


def test_step_values_do_not_depend_on_the_stage_order(monkeypatch):
  config = test_config.get_config()
  config.training.cpu_plugin = 'on'
  models = ts.create_models(config)
  optimizers = ts.create_optimizers(config.optim, 100)
  state = ts.create_train_state(models, optimizers, seed=0)
  batch = jax.random.uniform(jax.random.key(0), (8,) + models.data_shape,
                             minval=-1, maxval=1)
  copy = lambda tree: jax.tree.map(jnp.copy, tree)
  ordered = jax.jit(tstep.make_train_step(config, models, optimizers))(
      copy(state), batch)
  monkeypatch.setattr(cpu, 'CPU', dataclasses.replace(
      cpu.CPU, order=compute.unchanged))
  unordered = jax.jit(tstep.make_train_step(config, models, optimizers))(
      copy(state), batch)
  for a, b in zip(jax.tree.leaves(ordered), jax.tree.leaves(unordered)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------
# One switch, attached when the models and the step are built.
# ----------------------------------------------------------------------------


def test_the_switch_attaches_the_plug_in_where_asked():
  on_cpu = jax.default_backend() == 'cpu'
  assert cpu.compute_for('auto') is (cpu.CPU if on_cpu else compute.XLA)
  assert cpu.compute_for('on') is cpu.CPU
  assert cpu.compute_for('off') is compute.XLA
  config = test_config.get_config()
  for switch, ops in (('off', layers.ConvOps()),
                      ('on', conv.CpuConvOps())):
    config.training.cpu_plugin = switch
    models = ts.create_models(config)
    # Every conv of the three nets computes through the chosen ops.
    for net in (models.ebm, models.gen, models.inf):
      assert net.ops == ops, (switch, net)


def test_an_unknown_switch_is_one_line_naming_the_values():
  config = test_config.get_config()
  config.training.cpu_plugin = 'fast'
  with pytest.raises(ValueError, match=r"config\.training\.cpu_plugin='fast' "
                     r"is unknown; allowed: 'auto', 'on', 'off'"):
    settings_lib.from_config(config)



def test_stages_in_order_survive_a_second_trace():
  """Each trace orders its own stages; none waits on an earlier trace's."""

  @dataclasses.dataclass(frozen=True)
  class TwoStages:
    first: Any
    second: Any
    finish: Any

  stages = schedule.in_order(TwoStages(
      first=lambda state, x: x * 2.0, second=lambda state, y: y + state,
      finish=lambda state, y: y))

  def iteration(state, x):  # No 'propose' stage, like short-run MCMC.
    return stages.finish(state, stages.second(state, stages.first(state, x)))

  with jax.checking_leaks():  # A tracer of the first trace would leak.
    for n in (3, 2):  # Two shapes: two traces of the same stages.
      out = jax.jit(iteration)(jnp.ones(()), jnp.arange(n, dtype=jnp.float32))
      np.testing.assert_array_equal(out, 2.0 * np.arange(n) + 1.0)
