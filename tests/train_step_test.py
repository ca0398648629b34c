"""Tests for dual_mcmc_jax/train_step.py and dual_mcmc_jax/train_state.py.

Everything runs on the tiny `configs/test.py` networks. The train step is
compiled once per config variant (module-scoped fixtures) because XLA
compilation, not execution, dominates on CPU; states are copied before each
call since the step donates its input state.
"""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import test as test_config
from configs import toy2d as toy2d_config
from dual_mcmc_jax import experiment
from dual_mcmc_jax import remedies
from dual_mcmc_jax import sampling
from dual_mcmc_jax import settings as settings_lib
from dual_mcmc_jax import toy2d
from dual_mcmc_jax import train_state as ts
from dual_mcmc_jax import train_step as tstep

_STEPS_PER_EPOCH = 100


def _copy(tree):
  return jax.tree.map(jnp.copy, tree)


def _leaves_equal(a, b):
  return all(np.array_equal(x, y)
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _make_step(config, models, optimizers, max_traces=None):
  fn = tstep.make_train_step(config, models, optimizers)
  if max_traces is not None:
    fn = chex.assert_max_traces(fn, n=max_traces)
  return jax.jit(fn, donate_argnums=0)


@pytest.fixture(scope='module')
def setup():
  config = test_config.get_config()
  models = ts.create_models(config)
  optimizers = ts.create_optimizers(config.optim, _STEPS_PER_EPOCH)
  state = ts.create_train_state(models, optimizers, seed=0)
  batch = jnp.asarray(np.random.default_rng(0).uniform(
      -1, 1, (config.training.batch_size,) + models.data_shape), jnp.float32)
  # Every test that uses `step` shares one trace: a second one would fail.
  step = _make_step(config, models, optimizers, max_traces=1)
  return config, models, optimizers, state, batch, step


@pytest.fixture(scope='module')
def one_step(setup):
  """(state, metrics) after one step from the initial state."""
  _, _, _, state, batch, step = setup
  return step(_copy(state), batch)


def test_one_step_is_finite_and_updates_everything(setup, one_step):
  _, _, _, state, _, _ = setup
  new_state, metrics = one_step
  for name, value in metrics.items():
    assert np.all(np.isfinite(value)), name
  assert bool(metrics['healthy'])
  assert int(new_state.step) == 1
  for name in ('ebm', 'gen', 'inf'):
    before = jax.tree_util.tree_leaves_with_path(getattr(state, name).params)
    after = jax.tree.leaves(getattr(new_state, name).params)
    for (path, old), new in zip(before, after):
      assert not np.array_equal(old, new), (
          f'{name}{jax.tree_util.keystr(path)} did not change')
      assert np.all(np.isfinite(new))
  # The EBM's power-iteration vectors and G's BatchNorm statistics move too.
  assert not _leaves_equal(state.ebm.state, new_state.ebm.state)
  assert not _leaves_equal(state.gen.state, new_state.gen.state)
  # Learning rates of step 0 are the configured base rates.
  np.testing.assert_allclose(metrics['lr_e'], 1e-4, rtol=1e-6)
  np.testing.assert_allclose(metrics['lr_g'], 3e-4, rtol=1e-6)
  np.testing.assert_allclose(metrics['lr_i'], 1e-4, rtol=1e-6)


def test_z_chain_rec_start_is_the_reconstruction_error_of_z0(setup,
                                                             one_step):
  # The step recovers ||G(z0) - x||^2 per example from the z-chain's start
  # energy w_rec ||G(z0) - x||^2 + w_prior ||z0||^2; recompute it directly.
  config, models, _, state, batch, _ = setup
  _, metrics = one_step
  assert config.langevin_z.rule == 'reference'
  k_q = jax.random.split(ts.step_key(state), 5)[2]
  mu, logvar = models.inf.apply({'params': state.inf.params}, batch)
  z0 = mu + jnp.exp(0.5 * logvar) * jax.random.normal(k_q, mu.shape)
  # BatchNorm normalises with the batch's statistics, so G(z0) does not
  # depend on the running statistics the step has updated by then.
  g_z0, _ = models.gen.apply({'params': state.gen.params, **state.gen.state},
                             z0, mutable=['batch_stats'])
  rec = np.sum((np.asarray(g_z0, np.float64) - np.asarray(batch))**2)
  b = batch.shape[0]
  np.testing.assert_allclose(metrics['z_chain_rec_start'], rec / b, rtol=1e-4)
  # A wrong prior weight would shift the metric by a multiple of this.
  prior_shift = (0.5 * np.sum(np.square(z0)) / config.loss.prior_sigma**2
                 * config.loss.sigma**2 / b)
  assert prior_shift > 1e-3 * rec / b


def test_step_compiles_once(setup):
  _, _, _, state, batch, step = setup
  s = _copy(state)
  for _ in range(3):
    s, metrics = step(s, batch)  # chex raises if `step` is traced again
  assert int(s.step) == 3
  assert bool(metrics['healthy'])


def test_same_seed_and_batch_is_deterministic(setup):
  _, models, optimizers, state, batch, step = setup
  again = ts.create_train_state(models, optimizers, seed=0)
  assert _leaves_equal(state, again)
  a, b = _copy(state), again
  for _ in range(2):
    a, metrics_a = step(a, batch)
    b, metrics_b = step(b, batch)
  assert _leaves_equal(a, b)
  assert _leaves_equal(metrics_a, metrics_b)


def test_different_step_draws_different_noise(setup, one_step):
  _, _, _, state, batch, step = setup
  # Step 5 is in the same epoch, so the learning rates are the same and only
  # the per-step randomness (fold_in(key, step)) differs.
  later, metrics = step(_copy(state).replace(step=jnp.asarray(5, jnp.int32)),
                        batch)
  first, first_metrics = one_step
  np.testing.assert_allclose(metrics['lr_g'], first_metrics['lr_g'])
  for name in ('ebm', 'gen', 'inf'):
    assert not _leaves_equal(getattr(later, name).params,
                             getattr(first, name).params), name
  key_data = lambda s: np.asarray(jax.random.key_data(ts.step_key(s)))
  assert not np.array_equal(key_data(state),
                            key_data(state.replace(step=jnp.asarray(5))))


def test_nan_batch_is_unhealthy(setup):
  _, _, _, state, batch, step = setup
  _, metrics = step(_copy(state), batch.at[0, 3, 4, 0].set(jnp.nan))
  assert not bool(metrics['healthy'])


@pytest.fixture(scope='module')
def converged_sn(setup):
  """The initial state with converged spectral-norm vectors, and one step.

  Every EBM forward pass runs a power iteration, so chains of different
  lengths leave different spectral-norm estimates behind and E(x) differs
  for that reason alone. Converging u first makes further iterations no-ops,
  which isolates the effect of the negatives on the EBM update.
  """
  _, models, _, state, batch, step = setup

  @jax.jit
  def converge(params, sn_state):
    def body(_, s):
      _, vs = models.ebm.apply({'params': params, **s}, batch,
                               update_stats=True, mutable=['batch_stats'])
      return dict(vs)
    return jax.lax.fori_loop(0, 300, body, sn_state)

  sn_state = converge(state.ebm.params, state.ebm.state)
  state = state.replace(ebm=state.ebm.replace(state=sn_state))
  return state, step(_copy(state), batch)


def test_single_x_chain_differs_only_in_the_ebm_update(setup, converged_sn):
  _, models, optimizers, _, batch, _ = setup
  state, (s_double, m_double) = converged_sn
  config = test_config.get_config()
  config.training.second_x_chain = False
  single = _make_step(config, models, optimizers)
  s_single, m_single = single(_copy(state), batch)
  assert bool(m_single['healthy'])
  # Steps 1-4 (chains, G and I updates) are the same computation ...
  for name in ('gen', 'inf'):
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        getattr(s_single, name).params, getattr(s_double, name).params)
  for k in ('loss_g', 'loss_i', 'energy_data'):
    np.testing.assert_allclose(m_single[k], m_double[k], rtol=1e-4)
  # ... but the EBM sees different negatives: x1 instead of Tx(G'(z)).
  assert m_single['energy_x_revised'] != m_double['energy_x_revised']
  assert not _leaves_equal(s_single.ebm.params, s_double.ebm.params)


def test_ebm_loss_depends_on_the_x_chain(setup, converged_sn):
  _, models, optimizers, _, batch, _ = setup
  state, (_, metrics_chain) = converged_sn
  # Negatives straight from the generator: zero chain steps, which a config
  # refuses (settings.py), so the settings are changed after reading.
  settings = settings_lib.from_config(test_config.get_config())
  settings = settings.replace(langevin_x=dataclasses.replace(
      settings.langevin_x, steps=0))
  no_chain = _make_step(settings, models, optimizers)
  _, metrics = no_chain(_copy(state), batch)
  temperature = (0.001 / 0.5)**2
  d_data = abs(float(metrics['energy_data'] - metrics_chain['energy_data']))
  d_loss = abs(float(metrics['loss_e'] - metrics_chain['loss_e']))
  # The data term is unchanged (to float32 rounding), so the change in the
  # loss comes from the negatives.
  assert d_data < 1e-6
  assert d_loss > 100 * d_data / temperature
  assert d_loss > 1e-2


# ----------------------------------------------------------------------------
# Ablation switches (config.training.z_revision, generator_x_teaching,
# generator_data_teaching, x_chain_init). Small 2-D MLP nets: each variant is
# a separate compilation, and these compile in a second or two.
# ----------------------------------------------------------------------------


def _toy_config(**training):
  config = toy2d_config.get_config()
  config.model.mlp_hidden = 16
  config.model.mlp_layers = 2
  config.langevin_x.steps = 3
  config.langevin_z.steps = 3
  config.training.batch_size = 16
  config.training.x_noise_low = -4.0
  config.training.x_noise_high = 4.0
  # The switches under test, without the 2-D configs' remedies (generator
  # jumps, noise starts, a replay buffer: tests/remedies_test.py covers them).
  config.langevin_x.generator_jumps = False
  config.training.negative_noise_fraction = 0.0
  config.training.replay_buffer_size = 0
  # Adam's first update is lr * sign(gradient): the x-teaching term must be
  # large enough to flip some signs for the EBM to show in the generator.
  config.loss.s_factor = 1.0
  for k, v in training.items():
    config.training[k] = v
  return config


@pytest.fixture(scope='module')
def toy():
  config = _toy_config()
  models = ts.create_models(config)
  optimizers = ts.create_optimizers(config.optim, _STEPS_PER_EPOCH,
                                    total_steps=_STEPS_PER_EPOCH)
  state = ts.create_train_state(models, optimizers, seed=0)
  batch = jnp.asarray(toy2d.sample('8gaussians', 16,
                                   np.random.default_rng(0)))
  full = _make_step(config, models, optimizers)
  return models, optimizers, state, batch, full


def _ablated(toy, **training):
  models, optimizers, _, _, _ = toy
  return _make_step(_toy_config(**training), models, optimizers)


def _perturbed(net):
  return net.replace(params=jax.tree.map(lambda a: a * 1.5 + 0.1, net.params))


def test_default_switches_are_the_reference_method():
  t = test_config.get_config().training
  assert (t.z_revision, t.generator_x_teaching, t.generator_data_teaching,
          t.x_chain_init) == (True, True, True, 'generator')


def test_without_z_revision_the_generator_learns_from_z0(toy):
  models, _, state, batch, full = toy
  step = _ablated(toy, z_revision=False)
  _, m = step(_copy(state), batch)
  _, m_full = full(_copy(state), batch)
  assert 'z_chain_rec_start' not in m and 'z_chain_rec_start' in m_full
  # The reconstruction term is ||G(z0) - x||^2 / B with z0 the step's draw
  # from q(z|x): recompute it from the same key.
  k_q = jax.random.split(ts.step_key(state), 5)[2]
  z0, _, _ = sampling.infer_z(models, state.inf, batch, k_q)
  g_z0, _ = sampling.generate(models, state.gen, z0)
  rec = np.sum(np.square(np.asarray(g_z0) - np.asarray(batch))) / len(batch)
  np.testing.assert_allclose(m['g_rec_after_z_chain'], rec, rtol=1e-5)
  np.testing.assert_allclose(m_full['z_chain_rec_start'], rec, rtol=1e-4)
  # The full method's z-chain moves the latents by far more than the
  # tolerance above (3 short steps on an untrained net: a small move).
  assert abs(float(m_full['g_rec_after_z_chain']) - rec) > 1e-4 * rec


def test_without_x_teaching_the_generator_ignores_the_ebm(toy):
  _, _, state, batch, full = toy
  step = _ablated(toy, generator_x_teaching=False)
  other_ebm = state.replace(ebm=_perturbed(state.ebm))
  a, m = step(_copy(state), batch)
  b, _ = step(_copy(other_ebm), batch)
  assert 'g_dist_to_x_revised' not in m
  assert _leaves_equal(a.gen.params, b.gen.params)
  # The full method's generator update does depend on the EBM (via x1).
  c, _ = full(_copy(state), batch)
  d, _ = full(_copy(other_ebm), batch)
  assert not _leaves_equal(c.gen.params, d.gen.params)


def test_without_data_teaching_only_x1_teaches_the_generator(toy):
  _, _, state, batch, full = toy
  step = _ablated(toy, generator_data_teaching=False)
  other_batch = batch[::-1] * 0.5
  a, m = step(_copy(state), batch)
  b, m_b = step(_copy(state), other_batch)
  assert bool(m['healthy'])
  assert 'g_rec_after_z_chain' not in m and 'z_chain_rec_start' not in m
  # No inference model: its parameters and optimiser state stay put.
  assert _leaves_equal(a.inf, state.inf)
  # The generator never sees the data; the EBM does.
  assert _leaves_equal(a.gen.params, b.gen.params)
  assert m['energy_data'] != m_b['energy_data']
  c, _ = full(_copy(state), batch)
  d, _ = full(_copy(state), other_batch)
  assert not _leaves_equal(c.gen.params, d.gen.params)


def test_noise_init_trains_the_ebm_alone_on_chains_from_uniform_noise(toy):
  models, _, state, batch, _ = toy
  config = _toy_config(x_chain_init='noise')
  step = _ablated(toy, x_chain_init='noise')
  new, m = step(_copy(state), batch)
  assert bool(m['healthy'])
  assert _leaves_equal(new.gen, state.gen) and _leaves_equal(new.inf,
                                                             state.inf)
  assert not _leaves_equal(new.ebm.params, state.ebm.params)
  # A different generator changes nothing.
  other, _ = step(_copy(state.replace(gen=_perturbed(state.gen))), batch)
  assert _leaves_equal(other.ebm, new.ebm)
  # The negatives are one x-chain from U(-4, 4)^2 with the step's keys.
  key = tstep.StepKeys.of(state).negatives
  x0 = jax.random.uniform(jax.random.fold_in(key, 3), batch.shape,
                          jnp.float32, -4.0, 4.0)
  lx = settings_lib.from_config(config).langevin_x
  # The toy config's Metropolis jumps follow every step (remedies.py).
  x_neg, _, _ = sampling.revise_x(
      models, state.ebm, x0, key, lx,
      then=remedies.jumps(models, state.ebm.params, lx))
  e_neg = models.ebm.apply({'params': state.ebm.params, **state.ebm.state},
                           x_neg, update_stats=False)
  np.testing.assert_allclose(m['energy_x_revised'], np.mean(e_neg),
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('field,value,match', [
    ('x_chain_init', 'gaussian',
     r"x_chain_init=.*allowed: 'generator', 'noise'"),
    ('x_chain_init', 'Noise', r"x_chain_init='Noise' is unknown"),
])
def test_unknown_x_chain_init_raises(toy, field, value, match):
  models, optimizers, _, _, _ = toy
  with pytest.raises(ValueError, match=match):
    tstep.make_train_step(_toy_config(**{field: value}), models, optimizers)


def test_generator_with_no_teaching_at_all_raises(toy):
  models, optimizers, _, _, _ = toy
  config = _toy_config(generator_x_teaching=False,
                       generator_data_teaching=False)
  with pytest.raises(ValueError, match='learn nothing'):
    tstep.make_train_step(config, models, optimizers)


# ----------------------------------------------------------------------------
# Optimisers.
# ----------------------------------------------------------------------------


def _torch_adam(params, grads_seq, lrs, wd, b1, b2, eps):
  """PyTorch's Adam (weight_decay = coupled L2), written out in numpy."""
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v = {k: np.zeros_like(x) for k, x in p.items()}
  for t, (grads, lr) in enumerate(zip(grads_seq, lrs), start=1):
    for k in p:
      g = np.asarray(grads[k], np.float64) + wd * p[k]
      m[k] = b1 * m[k] + (1 - b1) * g
      v[k] = b2 * v[k] + (1 - b2) * g * g
      m_hat = m[k] / (1 - b1**t)
      v_hat = v[k] / (1 - b2**t)
      p[k] = p[k] - lr * m_hat / (np.sqrt(v_hat) + eps)
  return p


@pytest.mark.parametrize('b1', [0.0, 0.5])
def test_adam_with_coupled_weight_decay_matches_pytorch(b1):
  rng = np.random.default_rng(0)
  params = {'a': rng.normal(size=(3,)), 'b': rng.normal(size=(2, 2))}
  grads_seq = [{k: 0.01 * rng.normal(size=v.shape) for k, v in params.items()}
               for _ in range(3)]
  lr, wd = 1e-2, 0.1  # a large wd so coupled and decoupled clearly differ
  schedule = ts.create_learning_rate_fn(lr, 0.5, steps_per_epoch=2)
  tx = ts.create_optimizer(schedule, wd, b1, 0.9, 1e-8)
  p = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
  opt_state = tx.init(p)
  for grads in grads_seq:
    updates, opt_state = tx.update(
        jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), grads),
        opt_state, p)
    p = optax.apply_updates(p, updates)
  # Updates 0 and 1 use lr, update 2 (second epoch) uses lr * 0.5.
  expected = _torch_adam(params, grads_seq, [lr, lr, 0.5 * lr], wd, b1, 0.9,
                         1e-8)
  for k in params:
    np.testing.assert_allclose(p[k], expected[k], rtol=1e-5, atol=1e-7)
  # Decoupled (AdamW-style) decay would land elsewhere.
  adamw = optax.adamw(lr, b1=b1, b2=0.9, eps=1e-8, weight_decay=wd)
  q = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
  s = adamw.init(q)
  updates, _ = adamw.update(
      jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), grads_seq[0]), s, q)
  first = _torch_adam(params, grads_seq[:1], [lr], wd, b1, 0.9, 1e-8)
  assert max(np.max(np.abs(np.asarray(optax.apply_updates(q, updates)[k])
                           - first[k])) for k in params) > 1e-4


def test_default_optimizers_decay_g_and_i_but_not_e():
  config = test_config.get_config()
  opt = ts.create_optimizers(config.optim, _STEPS_PER_EPOCH)
  params = {'w': jnp.ones((4,))}
  zeros = {'w': jnp.zeros((4,))}
  for tx, decays in ((opt.ebm, False), (opt.gen, True), (opt.inf, True)):
    updates, _ = tx.update(zeros, tx.init(params), params)
    # With zero gradient only the decay term moves the parameters; Adam then
    # normalises it to a step of size lr against the sign of the parameter.
    if decays:
      assert np.all(np.asarray(updates['w']) < 0)
    else:
      np.testing.assert_array_equal(updates['w'], 0.0)
  assert float(opt.lr_gen(0)) == pytest.approx(3e-4)
  assert float(opt.lr_ebm(0)) == pytest.approx(1e-4)
  assert float(opt.lr_inf(0)) == pytest.approx(1e-4)


@pytest.mark.parametrize('epoch', [0, 1, 2, 7, 300])
def test_learning_rate_decays_once_per_epoch(epoch):
  spe = 50
  fn = ts.create_learning_rate_fn(1e-4, 0.998, spe)
  expected = 1e-4 * 0.998**epoch
  for offset in (0, 1, spe // 2, spe - 1):
    np.testing.assert_allclose(fn(epoch * spe + offset), expected, rtol=1e-5)


def test_cosine_schedule_spans_the_run_and_ignores_the_epoch_decay():
  config = test_config.get_config()
  config.optim.lr_schedule = 'cosine'
  config.optim.lr_decay = 0.5
  config.training.num_train_steps = 200
  settings = settings_lib.from_config(config)
  run = settings_lib.num_train_steps(settings, 7)
  opt = ts.create_optimizers(settings.optim, 7, run)
  base = config.optim.lr_g
  for step, factor in ((0, 1.0), (7, (1 + np.cos(np.pi * 7 / 200)) / 2),
                       (100, 0.5), (150, (1 + np.cos(0.75 * np.pi)) / 2),
                       (200, 0.0), (300, 0.0)):
    np.testing.assert_allclose(opt.lr_gen(step), base * factor, rtol=1e-5,
                               atol=1e-12)
  # experiment.build (main.py's and the benchmarks' path) spans the run.
  built = experiment.build(config, steps_per_epoch=7)
  np.testing.assert_allclose(built.optimizers.lr_gen(100), base / 2, rtol=1e-5)
  np.testing.assert_allclose(built.optimizers.lr_ebm(200), 0.0, atol=1e-12)
  # The reference's schedule is unchanged by the new field's default.
  config.optim.lr_schedule = 'exponential'
  opt = ts.create_optimizers(settings_lib.from_config(config).optim, 7, run)
  np.testing.assert_allclose(opt.lr_gen(7), base * 0.5, rtol=1e-6)


def test_a_cosine_schedule_without_the_run_length_is_refused():
  # Guessing a length would end the rate there (at 1, it was 0 after the
  # first step).
  config = test_config.get_config()
  config.optim.lr_schedule = 'cosine'
  optim = settings_lib.from_config(config).optim
  with pytest.raises(ValueError,
                     match=r"lr_schedule='cosine' needs .*total_steps"):
    ts.create_optimizers(optim, 7)
  assert float(ts.create_optimizers(optim, 7, 10).lr_gen(5)) > 0


def test_a_batch_of_the_wrong_shape_is_refused_when_the_step_is_traced(
    setup):
  config, models, optimizers, state, batch, _ = setup
  step = tstep.make_train_step(config, models, optimizers)
  with pytest.raises(AssertionError, match='shape'):
    jax.eval_shape(step, state, batch[:, :8])
  with pytest.raises(AssertionError, match='type'):
    jax.eval_shape(step, state, batch.astype(jnp.float16))
