"""Tests of the separated-mode remedies: Metropolis jumps, the energy penalty,
long chains, the replay buffer and data-initialised negatives.

The jump is checked where the answer is known: on a two-mode mixture with
weights 0.8 / 0.2 and a barrier no Langevin chain at this step size crosses,
chains started in one mode must end with a fifth of them in the other. The
step switches are checked against the parts of the step they change.
"""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dual_mcmc_jax import langevin
from dual_mcmc_jax import losses
from dual_mcmc_jax import remedies
from dual_mcmc_jax import settings as settings_lib
from dual_mcmc_jax import toy2d
from dual_mcmc_jax import train_state as ts
from dual_mcmc_jax import train_step as tstep
from tests import train_step_test

_CENTRES = np.array([[-2.0, 0.0], [2.0, 0.0]])
_WEIGHTS = np.array([0.8, 0.2])
_STD = 0.3


def _mixture_energies(x, aux):
  """-log p of the two-mode mixture, per example [B]."""
  del aux
  sq = jnp.sum(jnp.square(x[:, None, :] - _CENTRES[None]), -1)
  return -jax.nn.logsumexp(-sq / (2 * _STD**2) + jnp.log(_WEIGHTS), axis=-1)


def _mixture_energy(x, aux):
  return jnp.sum(_mixture_energies(x, aux)), aux


def _chains(jump_std: float, steps: int = 400, n: int = 4000):
  settings = settings_lib.XChainSettings(steps=steps, step_size=0.01,
                                       rule='paper', jump_std=jump_std)
  x0 = jnp.tile(jnp.asarray(_CENTRES[:1], jnp.float32), (n, 1))
  temperature = langevin.temperature(settings)

  def jump(i, x, aux, key):
    del i
    return remedies.metropolis_jump(_mixture_energies, x, aux,
                                    jax.random.fold_in(key, 1), jump_std,
                                    temperature)

  then = jump if jump_std > 0 else langevin.unchanged
  x, _, _ = jax.jit(lambda k: langevin.langevin(
      _mixture_energy, x0, k, settings, then=then))(jax.random.key(0))
  return np.asarray(x)


def test_metropolis_jumps_find_the_true_mode_weights():
  in_second = lambda x: float(np.mean(x[:, 0] > 0))
  # Langevin alone never leaves the first mode (a barrier of ~22 nats) ...
  assert in_second(_chains(0.0)) == 0.0
  # ... with jumps the chains reach the mixture's weights: 0.2 in the
  # second mode (binomial standard error 0.006 at 4000 chains, plus the
  # chains' remaining correlation with their start).
  x = _chains(3.0)
  assert in_second(x) == pytest.approx(0.2, abs=0.03)
  # Within a mode the law is still the Gaussian (std 0.3, ~1% Langevin bias).
  first = x[x[:, 0] < 0]
  np.testing.assert_allclose(first.std(0), [_STD, _STD], rtol=0.08)


def test_generator_jumps_find_the_true_mode_weights_from_a_wrong_pool():
  # The pool puts the modes at 50 / 50, not the target's 80 / 20: the jumps
  # only propose moves between modes; the weights come from the energy.
  settings = settings_lib.XChainSettings(steps=100, step_size=0.01,
                                         rule='paper')
  rng = np.random.default_rng(0)
  pool = jnp.asarray(_CENTRES[rng.integers(0, 2, 256)] +
                     _STD * rng.standard_normal((256, 2)), jnp.float32)
  x0 = jnp.tile(jnp.asarray(_CENTRES[:1], jnp.float32), (4000, 1))

  def jump(i, x, aux, key):
    del i
    return remedies.generator_jump(_mixture_energies, x, aux,
                                   jax.random.fold_in(key, 2), pool, 1.0)

  x = np.asarray(jax.jit(lambda k: langevin.langevin(
      _mixture_energy, x0, k, settings, then=jump)[0])(jax.random.key(1)))
  # A quarter of the random-walk chain's length reaches the weights (the
  # random walk of std 3 needs 400 steps in the test above).
  assert float(np.mean(x[:, 0] > 0)) == pytest.approx(0.2, abs=0.03)
  first = x[x[:, 0] < 0]
  np.testing.assert_allclose(first.std(0), [_STD, _STD], rtol=0.08)


def test_generator_jump_fraction_jumps_only_the_first_chains():
  # Half the chains take the jumps and reach the weights; the other half
  # never leave the first mode, as without jumps.
  settings = settings_lib.XChainSettings(
      steps=100, step_size=0.01, rule='paper', generator_jumps=True,
      generator_jump_fraction=0.5)
  models = types.SimpleNamespace(ebm=types.SimpleNamespace(
      apply=lambda variables, x, update_stats: _mixture_energies(x, None)))
  rng = np.random.default_rng(0)
  pool = jnp.asarray(_CENTRES[rng.integers(0, 2, 256)], jnp.float32)
  then = remedies.jumps(models, None, settings, pool)
  x0 = jnp.tile(jnp.asarray(_CENTRES[:1], jnp.float32), (4000, 1))
  x = np.asarray(jax.jit(lambda k: langevin.langevin(
      _mixture_energy, x0, k, settings, aux={}, then=then)[0])(
          jax.random.key(1)))
  assert float(np.mean(x[:2000, 0] > 0)) == pytest.approx(0.2, abs=0.04)
  assert float(np.max(x[2000:, 0])) < 0


def test_first_rows_rounds_and_keeps_at_least_one():
  a, b = jnp.ones((10, 2)), jnp.zeros((10, 2))
  assert [float(r) for r in remedies.first_rows(a, b, 0.26)[:, 0]] == (
      [1.0] * 3 + [0.0] * 7)
  assert float(remedies.first_rows(a, b, 0.01).sum()) == 2.0
  assert remedies.first_rows(a, b, 1.0) is a


def test_generator_jump_acceptance_by_hand():
  x = jnp.asarray([[-2.0, 0.0], [2.0, 0.0], [-2.0, 0.3]], jnp.float32)
  pool = jnp.asarray([[0.0, 0.0], [4.0, 0.0], [0.0, 1.0]], jnp.float32)
  key = jax.random.key(3)
  got = remedies.generator_jump(_mixture_energies, x, None, key, pool, 1.0)
  k_i, k_j, k_accept = jax.random.split(key, 3)
  i = jax.random.randint(k_i, (3,), 0, 3)
  j = (i + jax.random.randint(k_j, (3,), 1, 3)) % 3
  assert np.all(np.asarray(i) != np.asarray(j))
  proposal = x + pool[i] - pool[j]
  ratio = _mixture_energies(x, None) - _mixture_energies(proposal, None)
  accept = jnp.log(jax.random.uniform(k_accept, (3,))) < ratio
  np.testing.assert_array_equal(got, jnp.where(accept[:, None], proposal, x))


def test_metropolis_jump_acceptance_by_hand():
  x = jnp.asarray([[-2.0, 0.0], [2.0, 0.0]], jnp.float32)
  key = jax.random.key(3)
  got = remedies.metropolis_jump(_mixture_energies, x, None, key, 1.5, 1.0)
  k_prop, k_accept = jax.random.split(key)
  proposal = x + 1.5 * jax.random.normal(k_prop, x.shape)
  ratio = _mixture_energies(x, None) - _mixture_energies(proposal, None)
  accept = jnp.log(jax.random.uniform(k_accept, (2,))) < ratio
  np.testing.assert_array_equal(got, jnp.where(accept[:, None], proposal, x))


def test_energy_penalty_adds_squared_energies():
  apply = lambda variables, x, update_stats, mutable: (
      jnp.sum(x, axis=-1) * variables['params']['w'], {})
  x, x_neg = jnp.ones((4, 2)), 2 * jnp.ones((4, 2))
  params = {'w': jnp.asarray(1.5)}
  plain, _ = losses.ebm_loss(params, {}, {}, apply, x, x_neg, 2.0)
  penalised, _ = losses.ebm_loss(params, {}, {}, apply, x, x_neg, 2.0,
                                 (remedies.energy_penalty(0.1),))
  assert float(plain) == pytest.approx((3.0 - 6.0) / 2.0)
  assert float(penalised) == pytest.approx(-1.5 + 0.1 * (9.0 + 36.0))


def _toy(**training):
  # The small 2-D MLP setup of the ablation tests (train_step_test.py).
  return train_step_test._toy_config(**training)  # pylint: disable=protected-access


def _run(config, steps=2):
  models = ts.create_models(config)
  optimizers = ts.create_optimizers(config.optim, 100, total_steps=100)
  state = ts.create_train_state(models, optimizers, 0,
                                ts.replay_spec(config.training))
  step = jax.jit(tstep.make_train_step(config, models, optimizers))
  batch = jnp.asarray(toy2d.sample('8gaussians', 16,
                                   np.random.default_rng(0)))
  states = [state]
  for _ in range(steps):
    state, metrics = step(state, batch)
    states.append(state)
  return states, metrics


def test_noise_starts_replace_the_last_chains():
  def start(state, gen, key, *, x, z, x1):
    del state, key, z, x1
    return jnp.zeros_like(x), gen

  run = remedies.with_noise_starts(start, 0.25, -4.0, 4.0)
  x0, _ = run(None, 'gen', jax.random.key(0), x=jnp.ones((16, 2)), z=None,
              x1=None)
  x0 = np.asarray(x0)
  assert np.all(x0[:12] == 0)  # The first 12 keep their start ...
  tail = x0[12:]  # ... the last 4 are uniform in the box, all different.
  assert np.all((tail >= -4.0) & (tail < 4.0))
  assert len(np.unique(tail)) == tail.size
  # A share below one chain changes nothing.
  same, _ = remedies.with_noise_starts(start, 0.01, -4.0, 4.0)(
      None, 'gen', jax.random.key(0), x=jnp.ones((16, 2)), z=None, x1=None)
  assert np.all(np.asarray(same) == 0)


def test_replay_buffer_is_state_and_takes_the_chain_ends():
  config = _toy(replay_buffer_size=64, replay_fraction=1.0)
  states, metrics = _run(config)
  assert bool(metrics['healthy'])
  first, last = np.asarray(states[0].replay), np.asarray(states[-1].replay)
  assert first.shape == (64, 2)
  # Started uniform in the noise box; two steps rewrote at most 32 slots.
  assert first.min() >= -4.0 and first.max() <= 4.0
  changed = np.any(first != last, axis=1)
  assert 0 < changed.sum() <= 32
  assert isinstance(states[-1], ts.ReplayTrainState)
  # Without a buffer the state is the plain one, as before buffers existed.
  assert type(_run(_toy(), steps=1)[0][-1]) is ts.TrainState  # pylint: disable=unidiomatic-typecheck


@pytest.mark.parametrize('training', [
    {'long_chains': 4, 'long_chain_steps': 5},
    {'negative_chain_init': 'data'},
    {'x_chain_init': 'noise', 'replay_buffer_size': 32},
    {'negative_noise_fraction': 0.25},
    {'negative_noise_fraction': 0.25, 'langevin_x.generator_jumps': True},
    {'langevin_x.generator_jumps': True,
     'langevin_x.generator_jump_fraction': 0.5},
])
def test_remedy_switches_train(training):
  config = _toy(**{k: v for k, v in training.items() if '.' not in k})
  for path, value in training.items():
    if '.' in path:
      group, field = path.split('.')
      config[group][field] = value
  states, metrics = _run(config)
  assert bool(metrics['healthy'])
  assert not np.array_equal(
      jax.tree.leaves(states[0].ebm.params)[0],
      jax.tree.leaves(states[-1].ebm.params)[0])


def test_remedies_need_the_negative_chain():
  # Without its own negative chain the EBM learns from x1, which never
  # jumps and never uses the buffer: the switches would do nothing.
  config = _toy(second_x_chain=False)
  config.langevin_x.jump_std = 0.0
  settings_lib.from_config(config)
  for group, field, value in (('langevin_x', 'jump_std', 1.5),
                              ('langevin_x', 'generator_jumps', True),
                              ('training', 'replay_buffer_size', 8),
                              ('training', 'negative_noise_fraction', 0.25)):
    bad = _toy(second_x_chain=False)
    bad.langevin_x.jump_std = 0.0
    bad[group][field] = value
    with pytest.raises(ValueError, match='second_x_chain=False removes'):
      settings_lib.from_config(bad)


def test_generator_jumps_need_a_generator():
  config = _toy(x_chain_init='noise')
  config.langevin_x.generator_jumps = True
  with pytest.raises(ValueError, match=(
      r"generator_jumps needs a generator, which .*x_chain_init='noise' "
      'never trains')):
    settings_lib.from_config(config)


def test_generator_jump_fraction_is_a_share_of_the_chains():
  for value in (0.0, 1.5):
    config = _toy()
    config.langevin_x.generator_jump_fraction = value
    with pytest.raises(ValueError, match=(
        f'generator_jump_fraction={value} must be a finite number > 0 and '
        '<= 1')):
      settings_lib.from_config(config)


@pytest.mark.parametrize('field,value,match', [
    ('negative_chain_init', 'noise',
     r"negative_chain_init='noise' is unknown; allowed: 'generator', 'data'"),
    ('long_chains', 17, r'long_chains=17 must be <= .*batch_size=16'),
    ('replay_fraction', 0.0, r'replay_fraction'),
    ('replay_buffer_size', -1, r'replay_buffer_size'),
    ('negative_noise_fraction', 1.0,
     r'negative_noise_fraction=1.0 must be a finite number >= 0 and < 1'),
])
def test_bad_remedy_settings_are_one_line_errors(field, value, match):
  with pytest.raises(ValueError, match=match) as info:
    settings_lib.from_config(_toy(**{field: value}))
  assert '\n' not in str(info.value)
