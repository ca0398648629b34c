"""Tests of conv.conv2d: the forward-conv input gradient equals autodiff's.

Also checks that the networks built on it compute what the plain Flax
layers compute, and that the compiled chains contain no convolution with a
transposed-kernel layout (the slow case on XLA's CPU backend).
"""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import test as test_config
from dual_mcmc_jax import conv
from dual_mcmc_jax import langevin
from dual_mcmc_jax import networks
from dual_mcmc_jax import settings as settings_lib
from dual_mcmc_jax import train_state as ts
from dual_mcmc_jax import winograd
from dual_mcmc_jax import sampling

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
    y = conv.conv2d(x, w, (stride, stride), (pad, pad), (dil, dil), rule)
    return jnp.sum(jnp.sin(y))  # a non-constant output gradient

  y_ref = conv.conv2d(x, w, (stride, stride), (pad, pad), (dil, dil), 'xla')
  y = conv.conv2d(x, w, (stride, stride), (pad, pad), (dil, dil),
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


def test_pooled_sn_conv_equals_conv_then_average_pool():
  """EbmBlock folds its 2x2 average pool into the preceding 3x3 conv."""
  from dual_mcmc_jax.networks import layers  # pylint: disable=g-import-not-at-top
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  plain = layers.SNConv(5, 3, 1, 1)
  pooled = layers.SNConv(5, 3, 1, 1, pool_after=True)
  variables = plain.init(jax.random.key(1), x, False)
  expected = layers.avg_pool2(plain.apply(variables, x, False))
  np.testing.assert_allclose(pooled.apply(variables, x, False), expected,
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('shape,out', [((2, 8, 6, 32), 40), ((1, 4, 4, 64), 32)])
def test_winograd_conv_equals_the_direct_conv_and_its_gradients(shape, out):
  """3x3 'same' convs with >= 32 channels: Winograd F(2x2, 3x3)."""
  x = jax.random.normal(jax.random.key(0), shape)
  w = jax.random.normal(jax.random.key(1), (3, 3, shape[3], out))
  args = ((1, 1), ((1, 1), (1, 1)), (1, 1))
  assert conv._is_winograd(x, w, *args)

  def loss(x, w, rule):
    return jnp.sum(jnp.sin(conv.conv2d(x, w, *args, rule)))

  expected = conv.conv2d(x, w, *args, 'xla')
  got = conv.conv2d(x, w, *args, 'forward_conv')
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
    return jnp.sum(jnp.sin(conv.conv2d(x, w, *args, rule)))

  expected = conv.conv2d(x, w, *args, 'xla')
  got = conv.conv2d(x, w, *args, 'forward_conv')
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
        y = conv.conv2d(x, w, (1, 1), ((2, 2), (2, 2)), (2, 2),
                        'forward_conv')  # [2, 8, 8, 16]
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
