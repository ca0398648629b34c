"""Tests for dual_mcmc_jax/langevin.py.

The statistical tests run many independent chains on a Gaussian energy
U(x) = 0.5 (x - mu)^T A (x - mu), for which one step of either rule is the
linear recursion x' = x - h A (x - mu) + c eps. Its mean and covariance after
n steps from a fixed x0 are known exactly,

  mean_n = mu + M^n (x0 - mu),  cov_n = S - M^n S M^nT,  M = I - h A,

with S the stationary covariance solving S = M S M^T + c^2 I (a discrete
Lyapunov equation), so the sample moments are compared with these to a few
Monte Carlo standard errors, not with a loose guess.
"""

import dataclasses

import jax
from jax.extend import core as jex_core
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from configs import default
from configs import test as test_config
from dual_mcmc_jax import langevin
from dual_mcmc_jax import networks
from dual_mcmc_jax import settings as settings_lib
from dual_mcmc_jax import train_state

_A = np.array([[2.0, 0.6], [0.6, 1.0]])  # non-diagonal, eigenvalues 0.72, 2.28
_MU = np.array([1.0, -2.0])
_X0 = np.array([-1.0, 1.5])


def _gaussian_energy(x, aux):
  d = x - jnp.asarray(_MU, x.dtype)
  return 0.5 * jnp.sum((d @ jnp.asarray(_A, x.dtype)) * d), aux


def _gaussian_grad(x):
  return (x - _MU) @ _A


def _exact_moments(h, c, n):
  m = np.eye(2) - h * _A
  s = scipy.linalg.solve_discrete_lyapunov(m, c**2 * np.eye(2))
  mn = np.linalg.matrix_power(m, n)
  return _MU + mn @ (_X0 - _MU), s - mn @ s @ mn.T, s


def _run_chains(settings, num_chains, seed=0):
  x0 = jnp.broadcast_to(jnp.asarray(_X0, jnp.float32), (num_chains, 2))
  run = jax.jit(lambda x, k: langevin.langevin(_gaussian_energy, x, k,
                                               settings)[0])
  return np.asarray(run(x0, jax.random.key(seed)), np.float64)


def _check_moments(samples, mean, cov):
  n = samples.shape[0]
  mean_se = np.sqrt(np.diag(cov) / n)
  np.testing.assert_array_less(np.abs(samples.mean(0) - mean), 5 * mean_se)
  # Standard error of a Gaussian sample covariance entry.
  var = np.diag(cov)
  cov_se = np.sqrt((np.outer(var, var) + cov**2) / n)
  np.testing.assert_array_less(np.abs(np.cov(samples.T) - cov), 5 * cov_se)


_NUM_CHAINS = 65536  # covariance entries to ~0.5% (one standard error)
_STEPS = 500  # (1 - h * 0.72)^500 = 7e-4 of the start remains at h = 0.02


def test_paper_rule_samples_gaussian():
  s = 0.02  # paper rule: gradient step s, noise sqrt(2 s)
  settings = settings_lib.ChainSettings(steps=_STEPS, step_size=s, noise=0.5,
                                       rule='paper')
  samples = _run_chains(settings, _NUM_CHAINS)
  mean, cov, stationary = _exact_moments(s, np.sqrt(2 * s), _STEPS)
  _check_moments(samples, mean, cov)
  # The long-run law is N(mu, A^-1) up to the O(s) discretisation bias, here
  # at most 2.3% of an entry (<= 0.012), plus Monte Carlo error: 5 standard
  # errors are <= 0.022 for the mean and <= 0.034 for the covariance.
  a_inv = np.linalg.inv(_A)
  assert np.max(np.abs(stationary - a_inv)) < 0.012
  np.testing.assert_allclose(samples.mean(0), _MU, atol=0.025)
  np.testing.assert_allclose(np.cov(samples.T), a_inv, atol=0.05)


def test_reference_rule_matches_discrete_lyapunov_solution():
  s, n = 0.2, 0.3  # h = s^2 / 2 = 0.02, noise n independent of h
  settings = settings_lib.ChainSettings(steps=_STEPS, step_size=s, noise=n,
                                       rule='reference')
  samples = _run_chains(settings, _NUM_CHAINS, seed=1)
  mean, cov, stationary = _exact_moments(s * s / 2, n, _STEPS)
  _check_moments(samples, mean, cov)
  np.testing.assert_allclose(samples.mean(0), _MU, atol=0.035)  # 5 SE
  # About n^2 / (2h) = 2.25 times A^-1: not the density exp(-U).
  assert np.all(np.diag(stationary) > 2 * np.diag(np.linalg.inv(_A)))


@pytest.mark.parametrize('rule,coef', [('reference', 0.5 * 0.3**2),
                                       ('paper', 0.3)])
def test_zero_noise_is_gradient_descent(rule, coef):
  x0 = np.random.default_rng(0).normal(size=(5, 2)).astype(np.float32)
  settings = settings_lib.ChainSettings(steps=1, step_size=0.3, noise=0.7,
                                       rule=rule)
  x1, _, _ = langevin.langevin(_gaussian_energy, jnp.asarray(x0),
                               jax.random.key(0), settings, noise_scale=0.0)
  np.testing.assert_allclose(x1, x0 - coef * _gaussian_grad(x0), rtol=1e-5,
                             atol=1e-6)


def test_two_noisy_steps_by_hand():
  # Step i draws its noise from fold_in(key, i): fresh noise every step.
  s, n = 0.4, 0.05
  key = jax.random.key(3)
  x0 = np.random.default_rng(1).normal(size=(6, 2)).astype(np.float32)
  settings = settings_lib.ChainSettings(steps=2, step_size=s, noise=n)
  x2, _, info = langevin.langevin(_gaussian_energy, jnp.asarray(x0), key,
                                  settings)
  x = x0.astype(np.float64)
  for i in range(2):
    eps = np.asarray(jax.random.normal(jax.random.fold_in(key, i), x.shape))
    x = x - 0.5 * s * s * _gaussian_grad(x) + n * eps
  np.testing.assert_allclose(x2, x, rtol=1e-5, atol=1e-5)
  u0 = 0.5 * np.sum(((x0 - _MU) @ _A) * (x0 - _MU))
  np.testing.assert_allclose(info.energy_start, u0, rtol=1e-5)


def test_mask_holds_observed_entries():
  rng = np.random.default_rng(2)
  x0 = rng.normal(size=(64, 2)).astype(np.float32)
  mask = rng.uniform(size=(64, 2)) < 0.5
  settings = settings_lib.ChainSettings(steps=20, step_size=0.3, noise=0.1)
  x, _, _ = langevin.langevin(_gaussian_energy, jnp.asarray(x0),
                              jax.random.key(0), settings,
                              mask=jnp.asarray(mask))
  x = np.asarray(x)
  np.testing.assert_array_equal(x[mask], x0[mask])
  assert np.all(x[~mask] != x0[~mask])


def _counting_gaussian_energy(x, count):
  return _gaussian_energy(x, None)[0], count + 1


def test_trajectory_follows_the_langevin_chain():
  # Same keys and updates: every snapshot is the end of a shorter `langevin`
  # chain, and the energies are the chain's own values.
  key = jax.random.key(5)
  x0 = jnp.asarray(np.random.default_rng(3).normal(size=(4, 2)), jnp.float32)
  settings = settings_lib.ChainSettings(steps=6, step_size=0.3, noise=0.2)
  snaps, energies, count = jax.jit(
      lambda x, k: langevin.trajectory(_counting_gaussian_energy, x, k,
                                       settings, every=2, aux=0))(x0, key)
  assert snaps.shape == (4, 4, 2) and energies.shape == (7,)
  np.testing.assert_array_equal(snaps[0], x0)
  for k in range(1, 4):
    xk, count_k, info = langevin.langevin(
        _counting_gaussian_energy, x0, key,
        settings_lib.ChainSettings(steps=2 * k, step_size=0.3, noise=0.2),
        aux=0)
    np.testing.assert_allclose(snaps[k], xk, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(energies[0], info.energy_start, rtol=1e-6)
    np.testing.assert_allclose(energies[2 * k - 1], info.energy_last,
                               rtol=1e-6)
  # The closing energy evaluation is not a step: aux as `langevin` leaves it.
  assert int(count) == int(count_k) == 6
  for k in range(4):
    np.testing.assert_allclose(
        energies[2 * k], _gaussian_energy(snaps[k], None)[0], rtol=1e-5)


def test_trajectory_checks_every():
  settings = settings_lib.ChainSettings(steps=6, step_size=0.3)
  for every in (0, 4):
    with pytest.raises(ValueError, match='divisor'):
      langevin.trajectory(_gaussian_energy, jnp.zeros((2, 2)),
                          jax.random.key(0), settings, every=every)


def test_aux_is_threaded_through_every_step():
  def counting_energy(x, count):
    return jnp.sum(x**2), count + 1

  settings = settings_lib.ChainSettings(steps=7, step_size=0.1, noise=0.1)
  _, count, _ = langevin.langevin(counting_energy, jnp.ones((3, 2)),
                                  jax.random.key(0), settings,
                                  aux=jnp.zeros((), jnp.int32))
  assert int(count) == 7


def _all_eqns(jaxpr):
  for eqn in jaxpr.eqns:
    yield eqn
    for sub in jex_core.jaxprs_in_params(eqn.params):
      yield from _all_eqns(sub)


def test_chain_is_a_loop_not_unrolled():
  def trace(steps):
    settings = settings_lib.ChainSettings(steps=steps, step_size=0.1,
                                         noise=0.1)
    return jax.make_jaxpr(lambda x: langevin.langevin(
        _gaussian_energy, x, jax.random.key(0), settings)[0])(
            jnp.zeros((4, 2))).jaxpr

  short, long = trace(50), trace(500)
  loops = [e for e in _all_eqns(short)
           if e.primitive.name in ('while', 'scan')]
  assert loops, 'the chain must run inside lax.fori_loop'
  # The program does not grow with the number of steps.
  assert len(list(_all_eqns(short))) == len(list(_all_eqns(long)))
  # A scan-based fori_loop must not stack per-step outputs (memory O(1) in
  # the number of steps).
  for eqn in loops:
    if eqn.primitive.name == 'scan':
      assert eqn.params['num_carry'] == len(eqn.outvars)


def test_unknown_rule_is_one_line_naming_the_field_and_the_rules():
  config = default.get_config()
  config.langevin_z.rule = 'mala'
  with pytest.raises(ValueError, match=r"config\.langevin_z\.rule='mala' is "
                     r'unknown; allowed: .*reference.*paper'):
    settings_lib.from_config(config)
  with pytest.raises(ValueError, match='rule'):
    langevin.z_energy_weights('mala', 0.3, 1.0)


def test_a_new_rule_is_one_registered_function():
  """Registering a rule makes it a valid config value and a working chain."""

  @langevin.register_rule('quarter')
  def quarter(step_size, noise):  # pylint: disable=unused-variable
    return 0.25 * step_size * step_size, noise

  try:
    config = test_config.get_config()
    config.langevin_x.rule = 'quarter'
    settings = settings_lib.from_config(config)
    assert langevin.step_coefficients(settings.langevin_x) == (0.0625, 0.001)
    x1, _, _ = langevin.langevin(
        lambda x, aux: (0.5 * jnp.sum(x * x), aux), jnp.ones((2, 2)),
        jax.random.key(0), dataclasses.replace(settings.langevin_x,
                                               noise=0.0))
    # x - s^2/4 * x for the energy |x|^2 / 2: three steps of s = 0.5.
    np.testing.assert_allclose(x1, (1 - 0.0625)**3, rtol=1e-6)
  finally:
    langevin.RULES.pop('quarter')


def test_settings_from_config():
  config = default.get_config()
  settings = settings_lib.from_config(config)
  lx, lz = settings.langevin_x, settings.langevin_z
  assert lx == settings_lib.XChainSettings(30, 0.5, 0.001, 'reference', 0.0)
  assert lz == settings_lib.ChainSettings(10, 0.1, 0.1, 'reference')
  assert langevin.step_coefficients(lx) == (0.125, 0.001)


@pytest.fixture(scope='module')
def tiny_generator():
  models = train_state.create_models(test_config.get_config())
  rng = np.random.default_rng(4)
  z = jnp.asarray(rng.normal(size=(4, models.nz)), jnp.float32)
  x = jnp.asarray(rng.uniform(-1, 1, size=(4,) + models.data_shape),
                  jnp.float32)
  variables = models.gen.init(jax.random.key(0, impl='rbg'), z)
  return models.gen, variables, z, x


def _np_gen(gen, variables, z):
  gz, _ = gen.apply(variables, z, mutable=['batch_stats'])
  return np.asarray(gz, np.float64)


# (w_rec, w_prior) as multiples of (1 / sigma^2, 1 / prior_sigma^2). The
# reference's z-update is z - s^2/2 (grad ||G(z) - x||^2 / sigma^2 +
# z / prior_sigma^2): no 1/2 on the reconstruction term, 1/2 on the prior.
# The paper's energy is the true negative log posterior.
_Z_ENERGY_FACTORS = [('reference', 1.0, 0.5), ('paper', 0.5, 0.5)]


@pytest.mark.parametrize('rule,rec_factor,prior_factor', _Z_ENERGY_FACTORS)
def test_z_energy_by_hand(tiny_generator, rule, rec_factor, prior_factor):
  gen, variables, z, x = tiny_generator
  sigma, prior_sigma = 0.3, 2.0
  w_rec, w_prior = langevin.z_energy_weights(rule, sigma, prior_sigma)
  np.testing.assert_allclose(w_rec, rec_factor / sigma**2, rtol=1e-12)
  np.testing.assert_allclose(w_prior, prior_factor / prior_sigma**2,
                             rtol=1e-12)
  fn = langevin.z_energy_fn(gen.apply, variables['params'], x, sigma,
                            prior_sigma, rule)
  energy, new_state = fn(z, {'batch_stats': variables['batch_stats']})
  _, expected_state = gen.apply(variables, z, mutable=['batch_stats'])
  gz, zz, xx = (np.asarray(a, np.float64)
                for a in (_np_gen(gen, variables, z), z, x))
  rec, prior = np.sum((gz - xx)**2), np.sum(zz**2)
  # The prior term is ~0.1% of the energy here, far above the tolerance.
  assert prior / (prior + rec) > 100 * 1e-5
  np.testing.assert_allclose(
      energy, rec_factor * rec / sigma**2 + prior_factor * prior
      / prior_sigma**2, rtol=1e-5)
  # The generator's BatchNorm statistics are threaded out as aux.
  jax.tree.map(np.testing.assert_allclose, new_state, dict(expected_state))


@pytest.mark.parametrize('rule,rec_factor,prior_factor', _Z_ENERGY_FACTORS)
def test_z_energy_mask_drops_unobserved_pixels(tiny_generator, rule,
                                               rec_factor, prior_factor):
  gen, variables, z, x = tiny_generator
  sigma, prior_sigma = 0.3, 2.0
  rng = np.random.default_rng(6)
  mask = rng.uniform(size=x.shape) < 0.5  # True = observed
  bn_state = {'batch_stats': variables['batch_stats']}
  fn = langevin.z_energy_fn(gen.apply, variables['params'], x, sigma,
                            prior_sigma, rule, jnp.asarray(mask))
  energy, _ = fn(z, bn_state)
  gz, zz, xx = (np.asarray(a, np.float64)
                for a in (_np_gen(gen, variables, z), z, x))
  rec = np.sum(((gz - xx)**2)[mask])
  prior = np.sum(zz**2)
  np.testing.assert_allclose(
      energy, rec_factor * rec / sigma**2 + prior_factor * prior
      / prior_sigma**2, rtol=1e-5)
  # Whatever sits in the unobserved pixels changes neither the energy nor
  # its gradient in z.
  x_garbage = jnp.where(jnp.asarray(mask), x,
                        jnp.asarray(rng.normal(0, 100, x.shape), x.dtype))
  fn_garbage = langevin.z_energy_fn(gen.apply, variables['params'],
                                    x_garbage, sigma, prior_sigma, rule,
                                    jnp.asarray(mask))
  np.testing.assert_allclose(fn_garbage(z, bn_state)[0], energy, rtol=1e-6)
  grad_z = lambda f: jax.grad(lambda z: f(z, bn_state)[0])(z)
  np.testing.assert_allclose(grad_z(fn_garbage), grad_z(fn), rtol=1e-5,
                             atol=1e-5)
  # Without the mask every pixel counts.
  unmasked, _ = langevin.z_energy_fn(gen.apply, variables['params'], x, sigma,
                                     prior_sigma, rule)(z, bn_state)
  full = rec_factor * np.sum((gz - xx)**2) / sigma**2
  np.testing.assert_allclose(unmasked - energy,
                             full - rec_factor * rec / sigma**2, rtol=1e-4)


def test_reference_z_update_is_the_authors_formula(tiny_generator):
  # One zero-noise step of the reference rule, written as in the authors'
  # code: z - s^2/2 * (grad_z ||G(z) - x||^2 / sigma^2 + z / prior_sigma^2).
  gen, variables, z, x = tiny_generator
  sigma, prior_sigma, s = 0.3, 2.0, 0.1
  fn = langevin.z_energy_fn(gen.apply, variables['params'], x, sigma,
                            prior_sigma, 'reference')
  settings = settings_lib.ChainSettings(steps=1, step_size=s, noise=0.0,
                                       rule='reference')
  z1, _, _ = langevin.langevin(fn, z, jax.random.key(0), settings,
                               aux={'batch_stats': variables['batch_stats']})

  def sum_of_squares(z):
    gz, _ = gen.apply(variables, z, mutable=['batch_stats'])
    return jnp.sum(jnp.square(gz - x))

  g = np.asarray(jax.grad(sum_of_squares)(z), np.float64)
  zz = np.asarray(z, np.float64)
  expected = zz - 0.5 * s**2 * (g / sigma**2 + zz / prior_sigma**2)
  np.testing.assert_allclose(z1, expected, rtol=1e-5, atol=1e-6)
  # The step is large enough that a wrong weight would show.
  assert np.max(np.abs(expected - zz)) > 1e-2


def test_x_energy_is_summed_ebm_energy_and_updates_power_iteration():
  models = train_state.create_models(test_config.get_config())
  x = jnp.asarray(np.random.default_rng(5).uniform(
      -1, 1, size=(3,) + models.data_shape), jnp.float32)
  variables = models.ebm.init(jax.random.key(0, impl='rbg'), x,
                              update_stats=False)
  fn = langevin.x_energy_fn(models.ebm.apply, variables['params'])
  energy, new_state = fn(x, {'batch_stats': variables['batch_stats']})
  e, expected = models.ebm.apply(variables, x, update_stats=True,
                                 mutable=['batch_stats'])
  np.testing.assert_allclose(energy, np.sum(e), rtol=1e-6)
  jax.tree.map(np.testing.assert_allclose, new_state, dict(expected))
  # One power iteration ran and its u was kept.
  u_before = variables['batch_stats']['block0']['conv1']['u']
  u_after = new_state['batch_stats']['block0']['conv1']['u']
  assert u_after.shape == u_before.shape
  assert np.max(np.abs(np.asarray(u_after) - np.asarray(u_before))) > 1e-3


def test_chain_metrics_move_is_the_rms_displacement():
  info = langevin.ChainInfo(energy_start=jnp.float32(4.0),
                            energy_last=jnp.float32(2.0),
                            grad_norm=jnp.float32(1.5))
  x0 = jnp.zeros((2, 2))
  x_end = jnp.array([[3.0, 4.0], [0.0, 0.0]])
  m = langevin.chain_metrics('c', info, x0, x_end)
  assert set(m) == {'c_energy_start', 'c_energy_end', 'c_grad_norm',
                    'c_move'}
  np.testing.assert_allclose(m['c_move'], np.sqrt(25.0 / 2))
  np.testing.assert_allclose(m['c_energy_start'], 2.0)
