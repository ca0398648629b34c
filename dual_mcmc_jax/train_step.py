"""One dual-MCMC teaching iteration as a single compiled function.

`make_train_step` returns `train_step(state, batch) -> (state, metrics)`:
one iteration of the paper's Algorithm 1, as the authors' training loop runs
it (jcui1224/dual-MCMC, `train.py`, the body of `fit`), on the accelerator.
`dual_mcmc_iteration` is that algorithm line by line, one stage each:

1. proposal:           z ~ N(0, I), x0 = G(z)
2. x-revision:         x1 = Tx(x0), Langevin on x under the EBM
3. z-revision:         z0 ~ q(z|x), z1 = Tz(z0), Langevin on z (G's posterior)
4. generator update:   Gfactor ||G(z1) - x||^2 + Sfactor ||x0 - x1||^2
5. inference update:   Gfactor NLL(z1 | I(x)) + Ifactor NLL(z | I(x1))
6. second chain:       x_neg = Tx(G'(z)) from the updated generator
7. EBM update:         (mean E(x) - mean E(x_neg)) / (n_x / s_x)^2

The stages follow the authors' loop in what each pass sees: the generator
loss differentiates the proposal pass G(z) itself (its VJP is kept), so the
generator runs the same train-mode passes as theirs; between the generator
update and the second chain the EBM runs their two passes on the data (a
logged E(x), then the E(x) of the EBM loss, each one spectral-norm power
iteration), so E(x) enters the loss normalised as it was before the second
chain. `tests/golden_iteration_test.py` pins all of it against their loop.

What varies is chosen when the step is built (`build_stages`), as
score_sde's factories choose a loss and a sampler: the ablations of
`config.training` (`z_revision`, `generator_x_teaching`,
`second_x_chain`), the other algorithms (`generator_data_teaching=False`:
cooperative learning, `cooperative_iteration`; `x_chain_init='noise'`:
short-run MCMC from noise, `short_run_iteration`), the remedies the
reference does not have (remedies.py) and a backend plug-in's hooks
(compute.py; `dual_mcmc_jax/cpu/` on the CPU).

Nothing here imports TensorFlow, so the step (and the benchmark built on it)
runs on machines with only jax, flax and optax.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp
import optax

from dual_mcmc_jax import cpu
from dual_mcmc_jax import langevin
from dual_mcmc_jax import losses
from dual_mcmc_jax import networks
from dual_mcmc_jax import noise
from dual_mcmc_jax import remedies
from dual_mcmc_jax import sampling
from dual_mcmc_jax import settings as settings_lib
from dual_mcmc_jax import train_state as ts

Array = jax.Array
Metrics = dict[str, Array]


@dataclasses.dataclass(frozen=True)
class StepKeys:
  """The iteration's PRNG keys, all derived from fold_in(run key, step)."""
  prior: Array
  x_chain: Array
  reparam: Array
  z_chain: Array
  negatives: Array

  @classmethod
  def of(cls, state: ts.TrainState) -> StepKeys:
    return cls(*jax.random.split(ts.step_key(state), 5))


@dataclasses.dataclass(frozen=True)
class Proposal:
  """Stage 1's output: z, x0 = G(z), the VJP of that pass, G's new state."""
  z: Array  # [B, nz]
  x0: Array  # [B, ...]
  pullback: Callable[[Array], tuple[Any]]  # d x0 -> d params
  gen_state: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Negatives:
  """Stage 6's output: the EBM's negatives and the states its passes use."""
  x: Array  # [B, ...]
  sn_pos: dict[str, Any]  # EBM state E(x) of the loss starts from
  sn_neg: dict[str, Any]  # EBM state E(x_neg) starts from
  metrics: Metrics
  state_updates: dict[str, Array]  # Train-state fields a remedy changes.


@dataclasses.dataclass(frozen=True)
class Stages:
  """The stages of an iteration, chosen when the step is built.

  Each is `stage(state, *inputs) -> outputs`; `dual_mcmc_iteration` says
  what each takes and gives.
  """
  propose: Callable[..., Proposal]
  revise_x: Callable[..., tuple[Array, dict[str, Any], Metrics]]
  revise_z: Callable[..., tuple[Array, dict[str, Any], Metrics]]
  update_generator: Callable[..., tuple[ts.NetState, Metrics]]
  update_inference: Callable[..., tuple[ts.NetState, Metrics]]
  negatives: Callable[..., tuple[Negatives, ts.NetState]]
  update_ebm: Callable[..., tuple[ts.NetState, Metrics]]
  finish: Callable[..., tuple[ts.TrainState, Metrics]]


def dual_mcmc_iteration(st: Stages, state: ts.TrainState, x: Array
                        ) -> tuple[ts.TrainState, Metrics, dict[str, Array]]:
  """Algorithm 1 with the authors' second chain (module docstring)."""
  keys = StepKeys.of(state)
  proposal = st.propose(state, x.shape[0], keys.prior)                    # 1
  x1, ebm_sn, m_x = st.revise_x(state, proposal.x0, keys.x_chain)         # 2
  z1, gen_sn, m_z = st.revise_z(state, proposal.gen_state, x, keys)       # 3
  gen, m_g = st.update_generator(state, gen_sn, proposal, x, x1, z1=z1)   # 4
  inf, m_i = st.update_inference(state, x, proposal.z, z1, x1)            # 5
  neg, gen = st.negatives(state, gen, ebm_sn, x, keys.negatives,          # 6
                          z=proposal.z, x1=x1)
  ebm, m_e = st.update_ebm(state, x, neg)                                 # 7
  state, metrics = st.finish(state, {**m_x, **m_z, **m_g, **m_i, **m_e},
                             ebm=ebm, gen=gen, inf=inf, **neg.state_updates)
  return state, metrics, dict(z=proposal.z, x0=proposal.x0, x1=x1, z1=z1,
                              x_neg=neg.x)


def cooperative_iteration(st: Stages, state: ts.TrainState, x: Array
                          ) -> tuple[ts.TrainState, Metrics,
                                     dict[str, Array]]:
  """Cooperative learning: no data teaching, no z-chain, no inference model.

  The generator learns only from the x-revised samples
  (`config.training.generator_data_teaching=False`).
  """
  keys = StepKeys.of(state)
  proposal = st.propose(state, x.shape[0], keys.prior)
  x1, ebm_sn, m_x = st.revise_x(state, proposal.x0, keys.x_chain)
  gen, m_g = st.update_generator(state, proposal.gen_state, proposal, x, x1)
  neg, gen = st.negatives(state, gen, ebm_sn, x, keys.negatives,
                          z=proposal.z, x1=x1)
  ebm, m_e = st.update_ebm(state, x, neg)
  metrics = {**m_x, **m_g, **m_e, 'loss_i': jnp.zeros((), jnp.float32)}
  state, metrics = st.finish(state, metrics, ebm=ebm, gen=gen,
                             **neg.state_updates)
  return state, metrics, dict(z=proposal.z, x0=proposal.x0, x1=x1,
                              x_neg=neg.x)


def short_run_iteration(st: Stages, state: ts.TrainState, x: Array
                        ) -> tuple[ts.TrainState, Metrics, dict[str, Array]]:
  """Short-run MCMC from noise: only the EBM learns (x_chain_init='noise').

  G and I are not trained; their zero losses keep the metric names the
  training loop reports and checks.
  """
  keys = StepKeys.of(state)
  neg, _ = st.negatives(state, state.gen, state.ebm.state, x,
                        keys.negatives)
  ebm, m_e = st.update_ebm(state, x, neg)
  zero = jnp.zeros((), jnp.float32)
  state, metrics = st.finish(state, {**m_e, 'loss_g': zero, 'loss_i': zero},
                             ebm=ebm, **neg.state_updates)
  return state, metrics, dict(x_neg=neg.x)


def make_iteration(settings: settings_lib.Settings | Any,
                   models: networks.Models,
                   optimizers: ts.Optimizers,
                   normal: noise.Normal = noise.prng_normal
                   ) -> Callable[[ts.TrainState, Array],
                                 tuple[ts.TrainState, Metrics,
                                       dict[str, Array]]]:
  """The iteration `settings` describes, also returning its samples.

  `iteration(state, batch) -> (state, metrics, samples)` with the samples
  {'z', 'x0', 'x1', 'z1', 'x_neg'} it computed on the way (those of its
  algorithm); tests compare them with another implementation.

  Args:
    settings: the experiment's settings (or the config they are read from).
    models: the three modules.
    optimizers: their optimisers.
    normal: the source of the Gaussian draws (`noise.py`; the PRNG).

  Returns:
    The iteration; jit it with `donate_argnums=0`.
  """
  settings = settings_lib.from_config(settings)
  t = settings.training
  stages = build_stages(settings, models, optimizers, normal)
  if t.x_chain_init == 'noise':
    body = short_run_iteration
  elif not t.generator_data_teaching:
    body = cooperative_iteration
  else:
    body = dual_mcmc_iteration
  return functools.partial(body, stages)


def make_train_step(settings: settings_lib.Settings | Any,
                    models: networks.Models, optimizers: ts.Optimizers,
                    normal: noise.Normal = noise.prng_normal
                    ) -> Callable[[ts.TrainState, Array],
                                  tuple[ts.TrainState, Metrics]]:
  """Builds the (un-jitted) train step `(state, batch) -> (state, metrics)`.

  Args:
    settings: the experiment's settings (or the config they are read
      from); read here, not in the step.
    models: the three modules.
    optimizers: their optimisers.
    normal: the source of the Gaussian draws (`noise.py`; the PRNG).

  Returns:
    The train step; jit it with `donate_argnums=0`.
  """
  iteration = make_iteration(settings, models, optimizers, normal)

  def train_step(state, batch):
    # Checked when the step is traced: a batch of the models' examples.
    chex.assert_shape(batch, (None, *models.data_shape))
    chex.assert_type(batch, jnp.float32)
    chex.assert_shape(state.step, ())
    state, metrics, _ = iteration(state, batch)
    return state, metrics

  return train_step


# --------------------------------------------------------------------------
# The stages.
# --------------------------------------------------------------------------


def adam_update(net: ts.NetState, grads: Any, tx: optax.GradientTransformation,
                new_state: dict[str, Any]) -> ts.NetState:
  """One optimiser step of a net; its mutable collections become `new_state`."""
  updates, opt_state = tx.update(grads, net.opt_state, net.params)
  return net.replace(params=optax.apply_updates(net.params, updates),
                     state=new_state, opt_state=opt_state)


def build_stages(settings: settings_lib.Settings, models: networks.Models,
                 optimizers: ts.Optimizers,
                 normal: noise.Normal = noise.prng_normal) -> Stages:
  """The stages `settings` chooses, in the backend's order.

  Args:
    settings: the experiment's settings.
    models: the three modules.
    optimizers: their optimisers.
    normal: the source of the Gaussian draws.

  Returns:
    The stages of every iteration body of this module.
  """
  compute = cpu.compute_for(settings.training.cpu_plugin)
  b = _Builder(settings, models, optimizers, normal, compute.chain_loop)
  t = settings.training
  stages = Stages(
      propose=b.propose, revise_x=b.revise_x,
      revise_z=b.z_chain if t.z_revision else b.z_prior_draw,
      update_generator=b.generator_update(),
      update_inference=b.update_inference,
      negatives=b.negatives(), update_ebm=b.update_ebm, finish=b.finish)
  return compute.order(stages)


class _Builder:
  """Makes the stages; each method is one stage or chooses one."""

  def __init__(self, settings: settings_lib.Settings, models: networks.Models,
               optimizers: ts.Optimizers, normal: noise.Normal,
               loop: langevin.ChainLoop):
    self.s, self.models, self.opt = settings, models, optimizers
    self.normal, self.loop = normal, loop

  # 1. Proposal.
  def propose(self, state: ts.TrainState, batch_size: int,
              key: Array) -> Proposal:
    """z ~ N(0, I) and x0 = G(z), keeping the pass's VJP for stage 4."""
    z = self.normal(noise.PRIOR, key, (batch_size, self.models.nz), None)

    def g(params):
      return sampling.generate(self.models, state.gen.replace(params=params),
                               z)

    x0, pullback, gen_state = jax.vjp(g, state.gen.params, has_aux=True)
    return Proposal(z=z, x0=x0, pullback=pullback, gen_state=gen_state)

  # 2. x-revision.
  def revise_x(self, state: ts.TrainState, x0: Array, key: Array
               ) -> tuple[Array, dict[str, Any], Metrics]:
    """x1 = Tx(x0) under the current EBM; returns (x1, EBM state, metrics)."""
    x1, ebm_sn, info = sampling.revise_x(
        self.models, state.ebm, x0, key, self.s.langevin_x,
        normal=self.normal, name=noise.X_CHAIN, loop=self.loop)
    return x1, ebm_sn, langevin.chain_metrics('x_chain', info, x0, x1)

  # 3. z-revision.
  def z_chain(self, state: ts.TrainState, gen_state: dict[str, Any],
              x: Array, keys: StepKeys
              ) -> tuple[Array, dict[str, Any], Metrics]:
    """z0 ~ q(z|x), z1 = Tz(z0); returns (z1, G's state, metrics)."""
    s = self.s
    z0, _, _ = sampling.infer_z(self.models, state.inf, x, keys.reparam,
                                self.normal)
    z1, gen_state, info = sampling.revise_z(
        self.models, state.gen.replace(state=gen_state), z0, x, keys.z_chain,
        s.langevin_z, s.loss.sigma, s.loss.prior_sigma, normal=self.normal,
        loop=self.loop)
    w_rec, w_prior = langevin.z_energy_weights(
        s.langevin_z.rule, s.loss.sigma, s.loss.prior_sigma)
    # Reconstruction error at the chain's start, recovered from its energy.
    rec_start = (info.energy_start - w_prior * jnp.sum(jnp.square(z0))
                 ) / (w_rec * x.shape[0])
    return z1, gen_state, {'z_chain_rec_start': rec_start,
                           'z_chain_grad_norm': info.grad_norm}

  def z_prior_draw(self, state: ts.TrainState, gen_state: dict[str, Any],
                   x: Array, keys: StepKeys
                   ) -> tuple[Array, dict[str, Any], Metrics]:
    """No z-revision (`training.z_revision=False`): z1 = z0 ~ q(z|x)."""
    z0, _, _ = sampling.infer_z(self.models, state.inf, x, keys.reparam,
                                self.normal)
    return z0, gen_state, {}

  # 4. Generator update.
  def generator_update(self) -> Callable[..., tuple[ts.NetState, Metrics]]:
    """The generator's Adam step on the terms the settings keep."""
    t = self.s.training
    terms = []
    if t.generator_data_teaching:
      terms.append(self.reconstruction_term)
    if t.generator_x_teaching:
      terms.append(self.x_teaching_term)

    def update(state, gen_state, proposal, x, x1, z1=None):
      # z1 is absent in cooperative learning, whose terms do not read it.
      grads = jax.tree.map(jnp.zeros_like, state.gen.params)
      total, metrics = jnp.zeros((), jnp.float32), {}
      for term in terms:
        value, g, gen_state, m = term(state, gen_state, proposal, x, x1, z1)
        grads = jax.tree.map(jnp.add, grads, g)
        total, metrics = total + value, {**metrics, **m}
      metrics['loss_g'] = total
      return adam_update(state.gen, grads, self.opt.gen, gen_state), metrics

    return update

  def reconstruction_term(self, state, gen_state, proposal, x, x1, z1):
    """Gfactor ||G(z1) - x||^2 / B through a fresh pass G(z1)."""
    del proposal, x1
    (value, (gen_state, m)), g = jax.value_and_grad(
        losses.reconstruction_loss, has_aux=True)(
            state.gen.params, gen_state, self.models.gen.apply, x, z1,
            self.s.loss.g_factor)
    m['z_chain_rec_end'] = m['g_rec_after_z_chain']
    return value, g, gen_state, m

  def x_teaching_term(self, state, gen_state, proposal, x, x1, z1):
    """Sfactor ||x0 - x1||^2 / B through the proposal pass x0 = G(z)."""
    del state, x, z1
    (value, m), d_x0 = jax.value_and_grad(losses.x_teaching_loss,
                                          has_aux=True)(
        proposal.x0, x1, self.s.loss.s_factor)
    (g,) = proposal.pullback(d_x0)
    return value, g, gen_state, m

  # 5. Inference update.
  def update_inference(self, state: ts.TrainState, x: Array, z: Array,
                       z1: Array, x1: Array) -> tuple[ts.NetState, Metrics]:
    """The inference model's Adam step."""
    loss = self.s.loss
    (_, m), grads = jax.value_and_grad(losses.inference_loss, has_aux=True)(
        state.inf.params, self.models.inf.apply, x, z1, x1, z, loss.g_factor,
        loss.i_factor)
    return adam_update(state.inf, grads, self.opt.inf, state.inf.state), m

  # 6. The EBM's negatives.
  def negatives(self) -> Callable[..., tuple[Negatives, ts.NetState]]:
    """The negatives stage: the data passes, then the start and its chain."""
    t = self.s.training
    if t.x_chain_init == 'noise':
      start = self.noise_start
    elif t.negative_chain_init == 'data':
      start = remedies.data_start
    elif t.second_x_chain:
      start = self.second_proposal
    else:
      start = self.first_chain_end
    if t.negative_noise_fraction > 0:
      start = remedies.with_noise_starts(start, t.negative_noise_fraction,
                                         t.x_noise_low, t.x_noise_high)
    chain = self.negative_chain()

    def stage(state, gen, ebm_sn, x, key, z=None, x1=None):
      # z and x1 are absent in short-run MCMC, whose start is noise.
      sn_pos, sn = self.data_passes(state, ebm_sn, x)
      x0, gen = start(state, gen, key, x=x, z=z, x1=x1)
      x_neg, sn, m, updates = chain(state, sn, x0, key)
      return Negatives(x_neg, sn_pos, sn, m, updates), gen

    return stage

  def data_passes(self, state: ts.TrainState, ebm_sn: dict[str, Any],
                  x: Array) -> tuple[dict[str, Any], dict[str, Any]]:
    """The authors' two E(x) passes before the negatives' chain.

    train.py logs `et = netE(x)` after the generator update, then computes
    the EBM loss's `Eng_T = netE(x)` before its second chain; in train mode
    each runs one power iteration. Returns (the state the loss's E(x)
    starts from, the state after it), the second for the negatives' chain;
    the loss recomputes that E(x) pass with its gradient (stage 7).
    """
    ebm = state.ebm
    _, sn_pos = sampling.ebm_energies(self.models, ebm.replace(state=ebm_sn),
                                      x)
    _, sn = sampling.ebm_energies(self.models, ebm.replace(state=sn_pos), x)
    return sn_pos, sn

  def second_proposal(self, state, gen, key, *, x, z, x1):
    """x0' = G'(z): the same z through the updated generator."""
    del state, x, x1, key
    x0, gen_state = sampling.generate(self.models, gen, z)
    return x0, gen.replace(state=gen_state)

  def first_chain_end(self, state, gen, key, *, x, z, x1):
    """The paper's Algorithm 1 (`second_x_chain=False`): x_neg = x1."""
    del state, z, x, key
    return x1, gen

  def noise_start(self, state, gen, key, *, x, z, x1):
    """Uniform noise in [x_noise_low, x_noise_high) (short-run MCMC)."""
    del state, z, x1
    t = self.s.training
    return jax.random.uniform(jax.random.fold_in(key, 3), x.shape,
                              jnp.float32, t.x_noise_low,
                              t.x_noise_high), gen

  def negative_chain(self) -> remedies.Chain:
    """Tx on the negatives' start, with the remedies the settings add."""
    s, t = self.s, self.s.training
    if not (t.second_x_chain or t.negative_chain_init == 'data' or
            t.x_chain_init == 'noise'):
      return lambda state, sn, x0, key: (x0, sn, {}, {})

    def chain(state, sn, x0, key):
      ebm = state.ebm.replace(state=sn)
      then = remedies.negative_chain_jumps(self.models, ebm.params, state.gen,
                                           s.langevin_x, key, x0.shape[0])
      x_neg, sn, info = sampling.revise_x(
          self.models, ebm, x0, key, s.langevin_x, normal=self.normal,
          name=noise.X_CHAIN_NEGATIVE, loop=self.loop, then=then)
      return x_neg, sn, langevin.chain_metrics('negative_chain', info, x0,
                                                x_neg), {}

    if t.long_chains:
      chain = remedies.with_long_chains(chain, self.models, s.langevin_x,
                                        t.long_chains, t.long_chain_steps)
    replay = ts.replay_spec(t)
    if replay is not None:
      chain = remedies.with_replay(chain, replay)
    return chain

  # 7. EBM update.
  def update_ebm(self, state: ts.TrainState, x: Array,
                 neg: Negatives) -> tuple[ts.NetState, Metrics]:
    """The EBM's Adam step on the temperature-scaled loss."""
    s = self.s
    temperature = losses.ebm_temperature(
        s.langevin_x.step_size, s.langevin_x.noise,
        s.loss.ebm_temperature_scaling)
    (_, (ebm_sn, m)), grads = jax.value_and_grad(losses.ebm_loss,
                                                 has_aux=True)(
        state.ebm.params, neg.sn_pos, neg.sn_neg, self.models.ebm.apply, x,
        neg.x, temperature, remedies.extra_ebm_terms(s))
    return (adam_update(state.ebm, grads, self.opt.ebm, ebm_sn),
            {**m, **neg.metrics})

  def finish(self, state: ts.TrainState, metrics: Metrics,
             **fields: Any) -> tuple[ts.TrainState, Metrics]:
    """Learning rates and the health flag into `metrics`; step + 1."""
    opt = self.opt
    metrics = {**metrics, 'lr_e': opt.lr_ebm(state.step),
               'lr_g': opt.lr_gen(state.step), 'lr_i': opt.lr_inf(state.step)}
    finite = jnp.all(jnp.stack([
        jnp.isfinite(metrics[k]) for k in ('loss_g', 'loss_i', 'loss_e')]))
    bounded = jnp.abs(metrics['energy_diff']) <= self.s.loss.energy_diff_limit
    metrics['healthy'] = jnp.logical_and(finite, bounded)
    return state.replace(step=state.step + 1, **fields), metrics
