"""Tests for dual_mcmc_jax/networks.py.

Parameter counts are taken with `jax.eval_shape`, so the paper-width nets
(16M parameters each) are never allocated; everything that runs a forward pass
uses narrow widths.
"""

import functools
import math

from clu import parameter_overview
from flax import linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from configs import test as test_config
from dual_mcmc_jax import networks
from dual_mcmc_jax import train_state


def _key(seed):
  # The statistics under test do not depend on the PRNG, and threefry keys
  # compile one kernel per parameter shape (about a second each on CPU); the
  # RngBitGenerator-based implementation keeps `init` to a few seconds.
  return jax.random.key(seed, impl='rbg')


def _config(arch='resnet', style='cifar', image_size=32, channels=3, ngf=512,
            nef=512, nif=128, nz=128):
  config = default.get_config()
  config.data.image_size = image_size
  config.data.num_channels = channels
  m = config.model
  m.arch, m.resnet_style = arch, style
  m.ngf, m.nef, m.nif, m.nz = ngf, nef, nif, nz
  return config


def _abstract_variables(models):
  """Variable shapes of the three nets, without allocating anything."""
  return jax.eval_shape(lambda k: networks.init_models(models, k),
                        jax.random.key(0))


def _counts(models):
  v = _abstract_variables(models)
  return {name: int(parameter_overview.count_parameters(v[name]['params']))
          for name in ('gen', 'inf', 'ebm')}


# Exact counts written out from the layer lists of the authors' nets.py
# (conv weights k*k*in*out, conv biases only where the reference has them, BN
# scale + bias), independent of the code under test.


def _gen_block(cin, cout):
  return (2 * cin + 9 * cin * cout + cout + 2 * cout + 9 * cout * cout + cout
          + cin * cout + cout)


def _expected_resnet_counts(ngf, nef, nif, nz, style, c=3):
  if style == 'cifar':
    g_widths = [ngf] * 4
    e = (9 * c * nef + 9 * nef * nef + c * nef  # start block
         + 2 * 9 * nef * nef + nef * nef  # downsampling block
         + 2 * 2 * 9 * nef * nef  # two plain blocks, identity shortcut
         + nef)  # linear, no bias
    i = 9 * c * nif
    i_widths = [nif, 2 * nif, 4 * nif, 8 * nif]
  else:  # celeba-64
    g_widths = [ngf // 2**k for k in range(5)]
    e_widths = [nef // 2**k for k in (4, 3, 2, 1, 0)]
    e = 9 * c * e_widths[0] + 9 * e_widths[0]**2 + c * e_widths[0]
    for cin, cout in zip(e_widths[:-1], e_widths[1:]):
      e += 9 * cin * cout + 9 * cout * cout + cin * cout
    e += nef
    i = 16 * c * nif
    i_widths = [nif, 2 * nif, 4 * nif, 8 * nif]
  g = nz * 16 * g_widths[0] + 16 * g_widths[0]
  for cin, cout in zip(g_widths[:-1], g_widths[1:]):
    g += _gen_block(cin, cout)
  g += 2 * g_widths[-1] + 9 * g_widths[-1] * c + c
  for cin, cout in zip(i_widths[:-1], i_widths[1:]):
    i += 16 * cin * cout
  i += 2 * (16 * 8 * nif * nz + nz)
  return {'gen': g, 'inf': i, 'ebm': e}


def test_cifar_resnet_counts_match_paper_table4():
  counts = _counts(train_state.create_models(_config()))
  paper = {'gen': 16e6, 'inf': 15e6, 'ebm': 16e6}
  for name, n in counts.items():
    assert abs(n / paper[name] - 1) < 0.05, (name, n)


@pytest.mark.parametrize('style,size,width', [
    ('cifar', 32, 256), ('cifar', 32, 512), ('cifar', 32, 1024),
    ('celeba', 64, 1024)])
def test_resnet_counts_match_reference_layer_list(style, size, width):
  models = train_state.create_models(
      _config(style=style, image_size=size, ngf=width, nef=width))
  assert _counts(models) == _expected_resnet_counts(width, width, 128, 128,
                                                    style)


@pytest.mark.parametrize('nef', [256, 512, 1024])
def test_ebm_width_sweep_builds(nef):
  models = train_state.create_models(_config(nef=nef))
  v = _abstract_variables(models)
  energy = jax.eval_shape(
      lambda var, x: models.ebm.apply(var, x, update_stats=False),
      v['ebm'], jax.ShapeDtypeStruct((5, 32, 32, 3), jnp.float32))
  assert energy.shape == (5,)


def test_celeba64_layout_builds_at_paper_width():
  models = train_state.create_models(
      _config(style='celeba', image_size=64, ngf=1024, nef=1024))
  v = _abstract_variables(models)
  # Generator widths halve per block: the last up-block has ngf / 16.
  assert v['gen']['params']['block3']['conv2']['conv']['kernel'].shape == (
      3, 3, 64, 64)
  # EBM widths double per block, from nef / 16 to nef.
  assert v['ebm']['params']['block0']['conv1']['kernel'].shape == (3, 3, 3,
                                                                   64)
  assert v['ebm']['params']['block4']['conv2']['kernel'].shape == (
      3, 3, 1024, 1024)
  assert v['ebm']['batch_stats']['block4']['conv2']['u'].shape == (1024,)
  # The first inference conv is 4x4 stride 2.
  assert v['inf']['params']['conv0']['conv']['kernel'].shape == (4, 4, 3, 128)
  x = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
  z = jax.ShapeDtypeStruct((2, 128), jnp.float32)
  gz = jax.eval_shape(
      lambda var, z: models.gen.apply(var, z, mutable=['batch_stats'])[0],
      v['gen'], z)
  mu, logvar = jax.eval_shape(models.inf.apply, v['inf'], x)
  assert gz.shape == (2, 64, 64, 3)
  assert mu.shape == logvar.shape == (2, 128)


def _run_all(models, batch=3, seed=0):
  """Runs the three nets once on random inputs.

  The variables are drawn with numpy at the shapes `init` would create: the
  shapes are what is under test here (the initialisers have their own tests),
  and skipping `init` keeps each case to one small compilation.
  """
  shapes = jax.eval_shape(
      lambda k: networks.init_models(models, k, batch_size=batch),
      jax.random.key(0))
  rng = np.random.default_rng(seed)
  variables = jax.tree.map(
      lambda s: (0.2 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)
  z = rng.standard_normal((batch, models.nz)).astype(np.float32)
  x = rng.uniform(-1, 1, (batch,) + models.data_shape).astype(np.float32)

  @jax.jit
  def run(variables, z, x):
    gz, _ = models.gen.apply(variables['gen'], z, mutable=['batch_stats'])
    e = models.ebm.apply(variables['ebm'], x, update_stats=False)
    mu, logvar = models.inf.apply(variables['inf'], x)
    return gz, e, mu, logvar

  return run(variables, z, x)


@pytest.mark.parametrize('arch,style,size,channels,ngf,nef,nif,nz', [
    ('resnet', 'cifar', 16, 1, 16, 16, 8, 8),
    ('resnet', 'cifar', 8, 3, 8, 8, 4, 4),
    ('resnet', 'celeba', 8, 3, 8, 8, 4, 4),
    ('resnet', 'celeba', 64, 3, 32, 32, 8, 16),
    ('resnet', 'cifar', 256, 3, 4, 4, 2, 4),
    ('resnet', 'celeba', 256, 3, 64, 64, 2, 4),
    ('simple', 'cifar', 16, 1, 8, 8, 8, 8),
    ('simple', 'cifar', 64, 3, 4, 4, 4, 8),
])
def test_output_shapes_and_ranges(arch, style, size, channels, ngf, nef, nif,
                                  nz):
  models = train_state.create_models(
      _config(arch, style, size, channels, ngf, nef, nif, nz))
  gz, e, mu, logvar = _run_all(models)
  assert gz.shape == (3, size, size, channels)
  assert e.shape == (3,)
  assert mu.shape == logvar.shape == (3, nz)
  for a in (gz, e, mu, logvar):
    assert np.all(np.isfinite(a))
  # tanh output; a missing tanh would leave values outside [-1, 1].
  assert np.all(np.abs(gz) <= 1.0)
  assert np.std(gz) > 1e-3


def test_simple_net_counts_match_paper_table1():
  models = train_state.create_models(
      _config(arch='simple', ngf=100, nef=112, nif=128, nz=128))
  counts = _counts(models)
  paper = {'gen': 8e6, 'inf': 5e6, 'ebm': 2e6}
  for name, n in counts.items():
    assert abs(n / paper[name] - 1) < 0.10, (name, n)


def test_mlp_shapes_for_points():
  config = _config(arch='mlp', nz=3)
  config.model.mlp_hidden = 32
  models = train_state.create_models(config)
  assert models.data_shape == (2,)
  gz, e, mu, logvar = _run_all(models, batch=5)
  assert gz.shape == (5, 2)
  assert e.shape == (5,)
  assert mu.shape == logvar.shape == (5, 3)


# ----------------------------------------------------------------------------
# Spectral normalisation of the EBM.
# ----------------------------------------------------------------------------


def _sn_u(flat_stats, param_path):
  """The power-iteration vector `u` stored for the kernel at `param_path`.

  The layer that owns `kernel` keeps its `u` (PyTorch's `weight_u`) at the
  same place in `batch_stats`.
  """
  return flat_stats.get(param_path[:-1] + ('u',))


def _np_normalize(v):
  return v / max(np.linalg.norm(v), 1e-12)


def _np_spectral_norm(w, u, n_steps):
  """PyTorch's power iteration on w [rest, out] from u [out], in float64.

  Returns (sigma, new u, v).
  """
  w, u = np.asarray(w, np.float64), np.asarray(u, np.float64)
  for _ in range(n_steps):
    v = _np_normalize(w @ u)
    u = _np_normalize(w.T @ v)
  return u @ (w.T @ v), u, v


_TINY_EBMS = [
    ('resnet', 'cifar', 16, 1, 16),
    ('resnet', 'celeba', 16, 3, 32),
    ('simple', 'cifar', 16, 1, 16),
]


@functools.lru_cache(maxsize=None)
def _tiny_ebm(arch, style, size, channels, nef):
  models = train_state.create_models(
      _config(arch, style, size, channels, nef=nef, ngf=8, nif=8, nz=8))
  x = jax.random.normal(_key(1), (2, size, size, channels))
  variables = models.ebm.init(_key(0), x, update_stats=False)
  return models.ebm, variables, x


@pytest.mark.parametrize('arch,style,size,channels,nef', _TINY_EBMS)
def test_spectral_norm_on_every_ebm_layer(arch, style, size, channels, nef):
  models = train_state.create_models(
      _config(arch, style, size, channels, nef=nef, ngf=8, nif=8, nz=8))
  variables = _abstract_variables(models)['ebm']
  flat_params = traverse_util.flatten_dict(variables['params'])
  flat_stats = traverse_util.flatten_dict(variables['batch_stats'])
  kernels = {p: k for p, k in flat_params.items() if k.ndim >= 2}
  assert len(kernels) >= 3
  for path, kernel in kernels.items():
    assert path[-1] == 'kernel', path
    u = _sn_u(flat_stats, path)
    assert u is not None, f'no spectral norm on {path}'
    assert u.shape == (kernel.shape[-1],), path
  # Nothing else in batch_stats: exactly one u per kernel.
  assert len(flat_stats) == len(kernels)


@pytest.mark.parametrize('arch,style,size,channels,nef', _TINY_EBMS)
def test_power_iteration_normalises_top_singular_value(arch, style, size,
                                                       channels, nef):
  ebm, variables, x = _tiny_ebm(arch, style, size, channels, nef)

  @jax.jit
  def iterate(stats):
    def body(_, s):
      _, new = ebm.apply({'params': variables['params'], 'batch_stats': s},
                         x, update_stats=True, mutable=['batch_stats'])
      return new['batch_stats']
    return jax.lax.fori_loop(0, 100, body, stats)

  stats = iterate(variables['batch_stats'])
  flat_stats = traverse_util.flatten_dict(stats)
  flat_init = traverse_util.flatten_dict(variables['batch_stats'])
  checked, moved = 0, 0
  for path, kernel in traverse_util.flatten_dict(variables['params']).items():
    if kernel.ndim < 2:
      continue
    checked += 1
    w = np.asarray(kernel).reshape(-1, kernel.shape[-1])  # [kh*kw*in, out]
    u = np.asarray(_sn_u(flat_stats, path))
    np.testing.assert_allclose(np.linalg.norm(u), 1.0, rtol=1e-5)
    # sigma as the library computes it: one more iteration from the stored u.
    sigma, _, _ = _np_spectral_norm(w, u, 1)
    top = np.linalg.svd(w, compute_uv=False)[0]
    # 100 power iterations converge to ~1e-4 on these random matrices, so
    # kernel / sigma has top singular value 1.
    assert abs(sigma / top - 1.0) < 1e-2, (path, sigma, top)
    top_normalised = np.linalg.svd(w / sigma, compute_uv=False)[0]
    assert abs(top_normalised - 1.0) < 1e-2, (path, top_normalised)
    if kernel.shape[-1] > 1:
      # The iteration moved u from its random start (a unit vector of
      # length 1 has nowhere to go).
      assert np.max(np.abs(u - np.asarray(_sn_u(flat_init, path)))) > 1e-3
      moved += 1
  assert checked >= 3 and moved >= 2


class _SpectralNormalized(nn.Module):
  """A bare kernel divided by `networks.spectral_normalize`'s sigma."""
  shape: tuple[int, ...]
  n_steps: int

  @nn.compact
  def __call__(self, update_stats: bool) -> jax.Array:
    kernel = self.param('kernel', networks.xavier_normal, self.shape)
    return kernel / networks.spectral_normalize(self, kernel, update_stats,
                                                self.n_steps)


@pytest.mark.parametrize('n_steps', [1, 3])
def test_spectral_normalize_matches_pytorch_power_iteration(n_steps):
  shape = (3, 3, 4, 5)
  module = _SpectralNormalized(shape, n_steps)
  variables = module.init(_key(2), update_stats=True)
  kernel = np.asarray(variables['params']['kernel'], np.float64)
  u0 = np.asarray(variables['batch_stats']['u'], np.float64)
  assert u0.shape == (5,)
  np.testing.assert_allclose(np.linalg.norm(u0), 1.0, rtol=1e-6)
  # Init never stores an iterated u, whatever update_stats says.
  np.testing.assert_array_equal(
      module.init(_key(2), update_stats=False)['batch_stats']['u'], u0)
  w = kernel.reshape(-1, 5)
  sigma, u1, v1 = _np_spectral_norm(w, u0, n_steps)

  # An apply without update_stats leaves u alone.
  out, vs = module.apply(variables, update_stats=False,
                         mutable=['batch_stats'])
  np.testing.assert_allclose(out, kernel / sigma, rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(vs['batch_stats']['u'], u0)
  # In train mode the new u is stored.
  out, vs = module.apply(variables, update_stats=True,
                         mutable=['batch_stats'])
  np.testing.assert_allclose(out, kernel / sigma, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(vs['batch_stats']['u'], u1, rtol=1e-5,
                             atol=1e-6)
  assert np.max(np.abs(u1 - u0)) > 1e-3

  # Gradients flow through sigma = v^T W u with u and v held constant, as in
  # PyTorch: d/dW sum(c * W / sigma) = c / sigma - sum(c * W) v u^T / sigma^2.
  c = np.random.default_rng(0).normal(size=shape)
  grad = jax.grad(lambda p: jnp.sum(jnp.asarray(c, jnp.float32) * module.apply(
      {'params': p, 'batch_stats': variables['batch_stats']},
      update_stats=False)))(variables['params'])['kernel']
  expected = (c / sigma - np.sum(c * kernel) / sigma**2
              * np.outer(v1, u1).reshape(shape))
  np.testing.assert_allclose(grad, expected, rtol=1e-4,
                             atol=1e-5 * np.max(np.abs(expected)))


@pytest.mark.parametrize('style', ['cifar', 'celeba'])
def test_resnet_ebm_is_invariant_to_kernel_scale(style):
  # Every EBM layer is spectrally normalised and has no bias, so multiplying
  # all weights by a constant leaves the energy unchanged; a single layer
  # without SN would scale the energy.
  ebm, variables, x = _tiny_ebm('resnet', style, 16, 1, 16)
  scaled = dict(variables,
                params=jax.tree.map(lambda p: 3.0 * p, variables['params']))
  e = ebm.apply(variables, x, update_stats=False)
  e_scaled = ebm.apply(scaled, x, update_stats=False)
  np.testing.assert_allclose(e_scaled, e, rtol=1e-4, atol=1e-6)
  assert np.std(np.asarray(e)) > 0


# ----------------------------------------------------------------------------
# Initialisation.
# ----------------------------------------------------------------------------


@pytest.fixture(scope='module')
def wide_variables():
  """Moderately wide nets (8x8 images) whose kernels give tight statistics."""
  models = train_state.create_models(
      _config(image_size=8, ngf=256, nef=128, nif=64, nz=128))
  return networks.init_models(models, _key(3))


def _conv_kernels(params):
  flat = traverse_util.flatten_dict(params)
  return {p: np.asarray(k) for p, k in flat.items()
          if p[-1] == 'kernel' and k.ndim == 4}


@pytest.mark.parametrize('name', ['gen', 'inf', 'ebm'])
def test_conv_kernels_are_xavier_normal(wide_variables, name):
  # For the EBM these are the stored (pre-spectral-norm) weights: the
  # reference applies weights_init before add_sn, so weight_orig is Xavier.
  checked = 0
  for path, k in _conv_kernels(wide_variables[name]['params']).items():
    kh, kw, cin, cout = k.shape
    expected = math.sqrt(2.0 / (kh * kw * cin + kh * kw * cout))
    n = k.size
    if n < 4096:
      continue
    # The std estimate has relative standard error 1/sqrt(2n): 6 of them is
    # 1.8% at n = 65536 and 0.6% at n = 589824.
    assert abs(k.std() / expected - 1) < 6 / math.sqrt(2 * n), (
        path, k.std() / expected)
    assert abs(k.mean()) < 6 * expected / math.sqrt(n), path
    if n > 100_000:
      # A normal (not truncated normal, not uniform) has 4.55% of its mass
      # beyond 2 std; both alternatives have none.
      tail = np.mean(np.abs(k) > 2 * expected)
      assert 0.040 < tail < 0.051, (path, tail)
    checked += 1
  assert checked >= 3


def test_batchnorm_scale_standard_normal_bias_zero(wide_variables):
  flat = traverse_util.flatten_dict(wide_variables['gen']['params'])
  scales = np.concatenate([np.asarray(v) for p, v in flat.items()
                           if p[-2].startswith('bn') and p[-1] == 'scale'])
  biases = [np.asarray(v) for p, v in flat.items()
            if p[-2].startswith('bn') and p[-1] == 'bias']
  assert scales.size >= 768
  # Mean 0 (not PyTorch's default 1) and std 1, to 4 standard errors.
  assert abs(scales.mean()) < 4 / math.sqrt(scales.size)
  assert abs(scales.std() - 1) < 4 / math.sqrt(2 * scales.size)
  assert biases and all(np.all(b == 0) for b in biases)


def _check_uniform(values, bound, what):
  values = np.asarray(values).ravel()
  assert np.all(np.abs(values) <= bound), (what, np.max(np.abs(values)), bound)
  if values.size >= 100:
    # Not a narrower distribution: the extremes reach the bound.
    assert np.max(np.abs(values)) > 0.9 * bound, what
  if values.size >= 10_000:
    assert abs(values.std() / (bound / math.sqrt(3)) - 1) < 0.02, what


def test_linear_layers_and_conv_biases_use_torch_default(wide_variables):
  g = wide_variables['gen']['params']
  fc = g['fc']['dense']
  _check_uniform(fc['kernel'], 1 / math.sqrt(128), 'gen fc kernel')
  _check_uniform(fc['bias'], 1 / math.sqrt(128), 'gen fc bias')
  # Conv biases: bound 1/sqrt(in * k * k) of their own conv.
  conv1 = g['block0']['conv1']['conv']
  _check_uniform(conv1['bias'], 1 / math.sqrt(9 * 256), 'gen conv1 bias')
  head = wide_variables['inf']['params']['mu']['conv']
  _check_uniform(head['bias'], 1 / math.sqrt(16 * head['kernel'].shape[2]),
                 'inference head bias')


def test_ebm_linear_layer_uses_torch_default(wide_variables):
  # The stored weight of the spectrally normalised EBM head (nef=128 -> 1).
  e_fc = wide_variables['ebm']['params']['fc']['kernel']
  assert e_fc.shape == (128, 1)
  _check_uniform(e_fc, 1 / math.sqrt(128), 'ebm fc kernel')


# ----------------------------------------------------------------------------
# Upsampling and BatchNorm semantics.
# ----------------------------------------------------------------------------


def _numpy_bilinear_align_corners(x, out_h, out_w):
  """Direct bilinear interpolation with align_corners=True, [B, H, W, C]."""
  b, h, w, c = x.shape
  out = np.zeros((b, out_h, out_w, c), np.float64)
  for p in range(out_h):
    sy = p * (h - 1) / (out_h - 1) if out_h > 1 else 0.0
    y0 = min(int(math.floor(sy)), h - 1)
    y1 = min(y0 + 1, h - 1)
    wy = sy - y0
    for q in range(out_w):
      sx = q * (w - 1) / (out_w - 1) if out_w > 1 else 0.0
      x0 = min(int(math.floor(sx)), w - 1)
      x1 = min(x0 + 1, w - 1)
      wx = sx - x0
      out[:, p, q] = ((1 - wy) * (1 - wx) * x[:, y0, x0]
                      + (1 - wy) * wx * x[:, y0, x1]
                      + wy * (1 - wx) * x[:, y1, x0]
                      + wy * wx * x[:, y1, x1])
  return out


def test_upsample2x_matches_align_corners_true():
  x = np.random.default_rng(0).normal(size=(2, 4, 5, 3)).astype(np.float32)
  y = np.asarray(networks.upsample2x(jnp.asarray(x)))
  assert y.shape == (2, 8, 10, 3)
  np.testing.assert_allclose(y, _numpy_bilinear_align_corners(x, 8, 10),
                             rtol=1e-5, atol=1e-6)
  # align_corners=True copies the border rows and the corners exactly.
  for i, j in ((0, 0), (0, -1), (-1, 0), (-1, -1)):
    np.testing.assert_array_equal(y[:, i, j], x[:, i, j])
  np.testing.assert_allclose(y[:, 0], _numpy_bilinear_align_corners(
      x[:, :1], 1, 10)[:, 0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(y[:, -1], _numpy_bilinear_align_corners(
      x[:, -1:], 1, 10)[:, 0], rtol=1e-5, atol=1e-6)
  # align_corners=False (jax.image.resize) would differ.
  half_pixel = jax.image.resize(x, (2, 8, 10, 3), 'bilinear')
  assert np.max(np.abs(half_pixel - y)) > 1e-2


def test_upsample2x_of_single_pixel_copies_it():
  x = jnp.arange(6, dtype=jnp.float32).reshape(2, 1, 1, 3)
  np.testing.assert_array_equal(networks.upsample2x(x),
                                jnp.broadcast_to(x, (2, 2, 2, 3)))


@pytest.fixture(scope='module')
def tiny_generator():
  models = train_state.create_models(test_config.get_config())
  z = jax.random.normal(_key(5), (4, models.nz))
  return models.gen, models.gen.init(_key(0), z), z


def test_generator_batchnorm_uses_batch_statistics(tiny_generator):
  gen, variables, z = tiny_generator
  apply = jax.jit(lambda v, z: gen.apply(v, z, mutable=['batch_stats'])[0])
  out = apply(variables, z)
  np.testing.assert_array_equal(apply(variables, z), out)  # deterministic
  # Other batch members change the batch statistics, hence sample 0.
  z_other = z.at[1:].set(jax.random.normal(_key(9), (3, z.shape[1])))
  out_other = apply(variables, z_other)
  assert np.max(np.abs(out_other[0] - out[0])) > 1e-4
  # Running statistics are never used for normalisation.
  garbage = jax.tree.map(lambda s: s + 5.0, variables['batch_stats'])
  np.testing.assert_allclose(
      apply({'params': variables['params'], 'batch_stats': garbage}, z), out,
      rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------
# Config validation.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize('overrides,field', [
    ({'arch': 'transformer'}, 'config.model.arch'),
    ({'style': 'lsun'}, 'config.model.resnet_style'),
    ({'image_size': 48}, 'config.data.image_size'),
    ({'image_size': 4}, 'config.data.image_size'),
    ({'image_size': 0}, 'config.data.image_size'),
    ({'arch': 'simple', 'image_size': 24}, 'config.data.image_size'),
])
def test_bad_config_raises_naming_field(overrides, field):
  with pytest.raises(ValueError, match=field.replace('.', r'\.')):
    train_state.create_models(_config(**overrides))
