"""Tests for dual_mcmc_jax/losses.py against hand-written formulas.

The tiny networks of `configs/test.py` supply realistic module applies; the
expected values are recomputed in float64 numpy from the network outputs, so
only the loss arithmetic is under test.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from configs import default
from configs import test as test_config
from dual_mcmc_jax import losses
from dual_mcmc_jax import networks
from dual_mcmc_jax import train_state


def _np_nll(z, mu, logvar):
  z, mu, logvar = (np.asarray(a, np.float64) for a in (z, mu, logvar))
  return (0.5 * logvar.sum(-1)
          + 0.5 * ((z - mu)**2 / (1e-6 + np.exp(logvar))).sum(-1))


def test_gaussian_nll_by_hand_and_scipy():
  rng = np.random.default_rng(0)
  z, mu = rng.normal(size=(2, 5, 7))
  logvar = rng.uniform(-1, 1, size=(5, 7))
  nll = np.asarray(losses.gaussian_nll(*(jnp.asarray(a, jnp.float32)
                                         for a in (z, mu, logvar))))
  assert nll.shape == (5,)
  np.testing.assert_allclose(nll, _np_nll(z, mu, logvar), rtol=1e-5)
  # Up to the dropped 0.5 log(2 pi) per dimension (and the 1e-6, which
  # moves these values by < 1e-5), the negative Gaussian log density.
  logpdf = scipy.stats.norm.logpdf(z, mu, np.exp(0.5 * logvar)).sum(-1)
  np.testing.assert_allclose(nll + 0.5 * 7 * np.log(2 * np.pi), -logpdf,
                             rtol=1e-4, atol=1e-4)


def test_gaussian_nll_adds_1e6_to_the_variance():
  # With variance 1e-6 the denominator is 2e-6: the quadratic term halves.
  z = jnp.ones((1, 1))
  logvar = jnp.full((1, 1), np.log(1e-6))
  nll = losses.gaussian_nll(z, jnp.zeros((1, 1)), logvar)
  np.testing.assert_allclose(nll, 0.5 * np.log(1e-6) + 0.5 / 2e-6, rtol=1e-5)


@pytest.fixture(scope='module')
def tiny():
  """Tiny models, their variables and fixed inputs (batch of 4)."""
  models = train_state.create_models(test_config.get_config())
  variables = networks.init_models(models, jax.random.key(0, impl='rbg'), 4)
  rng = np.random.default_rng(1)
  b, nz, shape = 4, models.nz, models.data_shape
  data = {
      'x': rng.uniform(-1, 1, (b,) + shape),
      'x1': rng.uniform(-1, 1, (b,) + shape),
      'z': rng.normal(size=(b, nz)),
      'z1': rng.normal(size=(b, nz)),
  }
  data = {k: jnp.asarray(v, jnp.float32) for k, v in data.items()}
  return models, variables, data


def test_generator_terms_by_hand(tiny):
  models, variables, d = tiny
  gen = variables['gen']
  bn_state = {'batch_stats': gen['batch_stats']}
  rec_loss, (new_state, metrics) = losses.reconstruction_loss(
      gen['params'], bn_state, models.gen.apply, d['x'], d['z1'], 1.5)
  # One batch-statistics pass G(z1).
  g_z1, vs = models.gen.apply(gen, d['z1'], mutable=['batch_stats'])
  g_z, _ = models.gen.apply(gen, d['z'], mutable=['batch_stats'])
  g_z1, g_z, x, x1 = (np.asarray(a, np.float64)
                      for a in (g_z1, g_z, d['x'], d['x1']))
  rec = np.sum((g_z1 - x)**2) / 4
  np.testing.assert_allclose(rec_loss, 1.5 * rec, rtol=1e-5)
  np.testing.assert_allclose(metrics['g_rec_after_z_chain'], rec, rtol=1e-5)
  jax.tree.map(np.testing.assert_allclose, new_state, dict(vs))
  teach_loss, metrics = losses.x_teaching_loss(jnp.asarray(g_z, jnp.float32),
                                               d['x1'], 50.0)
  teach = np.sum((g_z - x1)**2) / 4
  np.testing.assert_allclose(teach_loss, 50.0 * teach, rtol=1e-5)
  np.testing.assert_allclose(metrics['g_dist_to_x_revised'], teach, rtol=1e-5)


def test_x_teaching_gradient_is_the_proposal_pass_pullback(tiny):
  """The teaching term through the proposal's VJP = through G(z) itself."""
  models, variables, d = tiny
  gen = variables['gen']

  def g(params):
    return models.gen.apply({'params': params,
                             'batch_stats': gen['batch_stats']}, d['z'],
                            mutable=['batch_stats'])[0]

  @jax.jit
  def both(params):
    x0, pullback = jax.vjp(g, params)
    d_x0 = jax.grad(lambda x: losses.x_teaching_loss(x, d['x1'], 50.0)[0])(
        x0)
    direct = jax.grad(lambda p: losses.x_teaching_loss(g(p), d['x1'],
                                                       50.0)[0])(params)
    return pullback(d_x0)[0], direct

  via_vjp, direct = both(gen['params'])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-7),
               via_vjp, direct)
  assert max(float(jnp.max(jnp.abs(l))) for l in jax.tree.leaves(direct)) > 0


def test_inference_loss_by_hand(tiny):
  models, variables, d = tiny
  inf = variables['inf']
  loss, metrics = losses.inference_loss(
      inf['params'], models.inf.apply, d['x'], d['z1'], d['x1'], d['z'], 1.0,
      0.1)
  mu, logvar = models.inf.apply(inf, d['x'])
  mu_s, logvar_s = models.inf.apply(inf, d['x1'])
  nll_data = np.mean(_np_nll(d['z1'], mu, logvar))
  nll_samples = np.mean(_np_nll(d['z'], mu_s, logvar_s))
  np.testing.assert_allclose(loss, nll_data + 0.1 * nll_samples, rtol=1e-5)
  np.testing.assert_allclose(metrics['i_nll_data'], nll_data, rtol=1e-5)
  np.testing.assert_allclose(metrics['i_nll_samples'], nll_samples, rtol=1e-5)


def test_ebm_temperature_at_defaults():
  lx = default.get_config().langevin_x
  t = losses.ebm_temperature(lx.step_size, lx.noise, True)
  np.testing.assert_allclose(t, (0.001 / 0.5)**2, rtol=1e-12)
  assert losses.ebm_temperature(lx.step_size, lx.noise, False) == 1.0


def test_ebm_loss_value_and_gradient_by_hand(tiny):
  models, variables, d = tiny
  ebm = variables['ebm']
  sn_state = {'batch_stats': ebm['batch_stats']}
  temperature = losses.ebm_temperature(0.5, 0.001, True)
  fn = lambda p: losses.ebm_loss(p, sn_state, sn_state, models.ebm.apply,
                                 d['x'], d['x1'], temperature)
  (loss, (new_state, metrics)), grads = jax.jit(jax.value_and_grad(
      fn, has_aux=True))(ebm['params'])

  # Each pass starts from the state it is given (here the same one) and
  # runs one power iteration; the loss returns the negatives' new state.
  def mean_energy(params, state, x):
    e, vs = models.ebm.apply({'params': params, **state}, x,
                             update_stats=True, mutable=['batch_stats'])
    return jnp.mean(e), dict(vs)

  grad_fn = jax.jit(jax.value_and_grad(mean_energy, has_aux=True))
  (e_pos, state_pos), g_pos = grad_fn(ebm['params'], sn_state, d['x'])
  (e_neg, state_neg), g_neg = grad_fn(ebm['params'], sn_state, d['x1'])
  np.testing.assert_allclose(
      loss, (float(e_pos) - float(e_neg)) / 4e-6, rtol=1e-4, atol=1e-2)
  np.testing.assert_allclose(metrics['energy_data'], e_pos, rtol=1e-6)
  np.testing.assert_allclose(metrics['energy_x_revised'], e_neg, rtol=1e-6)
  jax.tree.map(np.testing.assert_allclose, new_state, state_neg)
  jax.tree.map(
      lambda g, gp, gn: np.testing.assert_allclose(
          g, (gp - gn) / temperature, rtol=1e-4,
          atol=1e-4 * float(jnp.max(jnp.abs(g)))),
      grads, g_pos, g_neg)
