"""One dual-MCMC teaching iteration as a single compiled function.

`make_train_step` returns `train_step(state, batch) -> (state, metrics)`,
one iteration of the authors' training loop (jcui1224/dual-MCMC, `train.py`;
the paper's Algorithm 1 plus the second x-chain) end to end on the
accelerator:

1. z ~ N(0, I); x0 = G(z); x1 = Tx(x0)             (x-revision, EBM-guided)
2. z0 ~ q(z|x); z1 = Tz(z0 | x)                    (z-revision, generator-guided)
3. Adam step on G with the generator loss
4. Adam step on I with the inference loss
5. x0' = G'(z) with the updated G; x1' = Tx(x0')   (second x-chain, optional)
   Adam step on E with the temperature-scaled EBM loss

The `config.training` ablation switches (`z_revision`,
`generator_x_teaching`, `generator_data_teaching`, `x_chain_init`) remove
parts of this iteration for benchmarks/toy2d.py; their defaults are the
reference method, compiled to the same computation as before they existed.

Nothing here imports TensorFlow, so the step (and the benchmark built on it)
runs on machines with only jax, flax and optax.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from dual_mcmc_jax import langevin
from dual_mcmc_jax import losses
from dual_mcmc_jax import networks
from dual_mcmc_jax import noise
from dual_mcmc_jax import sampling
from dual_mcmc_jax import train_state as ts

Array = jax.Array
Metrics = dict[str, Array]


def _after(done: Any, *values: Any) -> Any:
  """Returns `values` unchanged, computed only once `done` is.

  XLA's CPU backend runs independent parts of the step concurrently; with
  few cores a Langevin chain then shares them with updates that do not
  depend on it, and the chain slows down by more than running in turn
  costs (docs/performance.md, change 17). That backend drops
  `lax.optimization_barrier` before it schedules, so the dependency is
  data: each value gets a zero added, made from the first element of each
  float leaf of `done` (non-finite elements count as zero). Values do not
  change. Other backends get `values` as they are.
  """
  leaves = [leaf for leaf in jax.tree.leaves(done)
            if jnp.issubdtype(leaf.dtype, jnp.inexact)]
  if jax.default_backend() != 'cpu' or not leaves:
    return values
  zero = jnp.zeros((), jnp.float32)
  for leaf in leaves:
    first = leaf.ravel()[0].astype(jnp.float32)
    zero = zero + 0.0 * jnp.where(jnp.isfinite(first), first, 0.0)
  return jax.tree.map(lambda v: v + zero.astype(v.dtype), values)


def _apply_update(net: ts.NetState, grads: Any, tx: optax.GradientTransformation,
                  new_state: dict[str, Any]) -> ts.NetState:
  updates, opt_state = tx.update(grads, net.opt_state, net.params)
  return net.replace(params=optax.apply_updates(net.params, updates),
                     state=new_state, opt_state=opt_state)


X_CHAIN_INITS = ('generator', 'noise')
NEGATIVE_CHAIN_INITS = ('generator', 'data')


def teaching_switches(training) -> tuple[bool, bool, bool, str]:
  """Reads and checks the ablation switches of `config.training`.

  Returns:
    (z_revision, generator_x_teaching, generator_data_teaching,
    x_chain_init).
  """
  x_init = str(training.x_chain_init)
  if x_init not in X_CHAIN_INITS:
    raise ValueError(f'config.training.x_chain_init={x_init!r} is unknown; '
                     f'allowed: {", ".join(X_CHAIN_INITS)}')
  # ConfigDict fields are type-checked, so these are bools already.
  z_revision = bool(training.z_revision)
  x_teaching = bool(training.generator_x_teaching)
  data_teaching = bool(training.generator_data_teaching)
  if x_init == 'generator' and not (x_teaching or data_teaching):
    raise ValueError('config.training.generator_x_teaching and '
                     'generator_data_teaching are both False, so the '
                     'generator would learn nothing; for an EBM alone use '
                     "config.training.x_chain_init='noise'")
  return z_revision, x_teaching, data_teaching, x_init


def negative_chain_init(training) -> str:
  """Checks and returns `config.training.negative_chain_init`."""
  init = str(training.get('negative_chain_init', 'generator'))
  if init not in NEGATIVE_CHAIN_INITS:
    raise ValueError(f'config.training.negative_chain_init={init!r} is '
                     f'unknown; allowed: {", ".join(NEGATIVE_CHAIN_INITS)}')
  return init


@dataclasses.dataclass(frozen=True)
class _Settings:
  """The config fields the step reads, read once outside the trace."""
  lx: langevin.LangevinSettings
  lz: langevin.LangevinSettings
  sigma: float
  prior_sigma: float
  g_factor: float
  s_factor: float
  i_factor: float
  temperature: float
  energy_l2: float
  second_chain: bool
  diff_limit: float
  w_rec: float
  w_prior: float
  z_revision: bool
  x_teaching: bool
  data_teaching: bool
  x_init: str
  noise_low: float
  noise_high: float
  negative_init: str = 'generator'
  long_chains: int = 0
  long_chain_steps: int = 0
  replay: ts.ReplaySpec | None = None

  @classmethod
  def from_config(cls, config) -> '_Settings':
    lx = langevin.LangevinSettings.from_config(config.langevin_x)
    lz = langevin.LangevinSettings.from_config(config.langevin_z)
    lc, t = config.loss, config.training
    sigma, prior_sigma = float(lc.sigma), float(lc.prior_sigma)
    w_rec, w_prior = langevin.z_energy_weights(lz.rule, sigma, prior_sigma)
    z_revision, x_teaching, data_teaching, x_init = teaching_switches(t)
    return cls(
        lx=lx, lz=lz, sigma=sigma, prior_sigma=prior_sigma,
        g_factor=float(lc.g_factor), s_factor=float(lc.s_factor),
        i_factor=float(lc.i_factor),
        temperature=losses.ebm_temperature(lx.step_size, lx.noise,
                                           bool(lc.ebm_temperature_scaling)),
        # Fields added after the first release: configs saved before them
        # (a workdir's config.json) run as they did.
        energy_l2=float(lc.get('energy_l2', 0.0)),
        second_chain=bool(t.second_x_chain),
        diff_limit=float(lc.energy_diff_limit), w_rec=w_rec, w_prior=w_prior,
        z_revision=z_revision, x_teaching=x_teaching,
        data_teaching=data_teaching, x_init=x_init,
        noise_low=float(t.x_noise_low), noise_high=float(t.x_noise_high),
        negative_init=negative_chain_init(t),
        long_chains=int(t.get('long_chains', 0)),
        long_chain_steps=int(t.get('long_chain_steps', 0)),
        replay=ts.replay_spec(config))


def make_train_step(config, models: networks.Models,
                    optimizers: ts.Optimizers,
                    normal: noise.Normal = noise.prng_normal
                    ) -> Callable[[ts.TrainState, Array],
                                  tuple[ts.TrainState, Metrics]]:
  """Builds the (un-jitted) train step for `config`.

  The `config.training` ablation switches (configs/default.py) remove parts
  of the iteration; the defaults are the reference method:

  * `z_revision=False`: no z-chain, z1 = z0 ~ q(z|x).
  * `generator_x_teaching=False`: no Sfactor term in the generator loss.
  * `generator_data_teaching=False`: no Gfactor term, no z-chain and no
    inference update (cooperative learning).
  * `x_chain_init='noise'`: one x-chain from uniform noise supplies the EBM's
    negatives; the generator and the inference model are not touched.

  Args:
    config: the experiment ConfigDict (read once here, not in the step).
    models: the three modules.
    optimizers: their optimisers.
    normal: the source of the Gaussian draws (`noise.py`; the PRNG).

  Returns:
    `train_step(state, batch) -> (state, metrics)`; jit it with
    `donate_argnums=0`.

  Raises:
    ValueError: an ablation switch has a value outside its allowed ones.
  """
  step = _Step(_Settings.from_config(config), models, optimizers, normal)
  return step.noise_init_step if step.s.x_init == 'noise' else step.dual_step


def make_iteration(config, models: networks.Models,
                   optimizers: ts.Optimizers,
                   normal: noise.Normal = noise.prng_normal
                   ) -> Callable[[ts.TrainState, Array],
                                 tuple[ts.TrainState, Metrics,
                                       dict[str, Array]]]:
  """The dual-MCMC iteration that also returns its revised samples.

  `iteration(state, batch) -> (state, metrics, samples)` with samples
  {'z', 'x0', 'x1', 'z1', 'x_neg'}: what the train step computes on the
  way (tests compare them with another implementation).
  """
  return _Step(_Settings.from_config(config), models, optimizers,
               normal).dual_iteration


class _Step:
  """The iteration's pieces; `dual_step` and `noise_init_step` compose them."""

  def __init__(self, settings: _Settings, models: networks.Models,
               optimizers: ts.Optimizers, normal: noise.Normal):
    self.s = settings
    self.models = models
    self.optimizers = optimizers
    self.normal = normal

  def ebm_update(self, state: ts.TrainState, ebm_sn: dict[str, Any],
                 x: Array, x_neg: Array, info: langevin.ChainInfo
                 ) -> tuple[ts.NetState, Metrics]:
    """The EBM's Adam step on negatives `x_neg` from the chain of `info`."""
    (_, (ebm_sn, m_e)), e_grads = jax.value_and_grad(
        losses.ebm_loss, has_aux=True)(
            state.ebm.params, ebm_sn, self.models.ebm.apply, x, x_neg,
            self.s.temperature, self.s.energy_l2)
    m_e.update(x_chain_energy_start=info.energy_start / x.shape[0],
               x_chain_energy_end=m_e['energy_x_revised'],
               x_chain_grad_norm=info.grad_norm)
    return _apply_update(state.ebm, e_grads, self.optimizers.ebm,
                         ebm_sn), m_e

  def finish(self, state: ts.TrainState, metrics: Metrics,
             **fields: Any) -> tuple[ts.TrainState, Metrics]:
    """Learning rates and the health flag into `metrics`; step + 1."""
    opt = self.optimizers
    metrics.update(lr_e=opt.lr_ebm(state.step), lr_g=opt.lr_gen(state.step),
                   lr_i=opt.lr_inf(state.step))
    finite = jnp.all(jnp.stack([
        jnp.isfinite(metrics[k]) for k in ('loss_g', 'loss_i', 'loss_e')]))
    metrics['healthy'] = jnp.logical_and(
        finite, jnp.abs(metrics['energy_diff']) <= self.s.diff_limit)
    return state.replace(step=state.step + 1, **fields), metrics

  def noise_init_step(self, state: ts.TrainState,
                      batch: Array) -> tuple[ts.TrainState, Metrics]:
    """Short-run MCMC from noise: only the EBM learns."""
    x = batch  # [B, ...]
    k_init, k_x = jax.random.split(ts.step_key(state))
    x0 = jax.random.uniform(k_init, x.shape, jnp.float32, self.s.noise_low,
                            self.s.noise_high)
    x0, slots = self.from_replay(state, x0, k_x)
    x_neg, ebm_sn, info = sampling.revise_x(self.models, state.ebm, x0, k_x,
                                            self.s.lx)
    ebm, m_e = self.ebm_update(state, ebm_sn, x, x_neg, info)
    # G and I are not trained; zero losses keep the metric names the
    # training loop reports and checks.
    metrics = {**m_e, 'loss_g': jnp.zeros((), jnp.float32),
               'loss_i': jnp.zeros((), jnp.float32)}
    return self.finish(state, metrics, ebm=ebm,
                       **self.to_replay(state, slots, x_neg))

  def dual_step(self, state: ts.TrainState,
                batch: Array) -> tuple[ts.TrainState, Metrics]:
    """The dual-MCMC iteration (module docstring, steps 1-5)."""
    state, metrics, _ = self.dual_iteration(state, batch)
    return state, metrics

  def dual_iteration(self, state: ts.TrainState, batch: Array
                     ) -> tuple[ts.TrainState, Metrics, dict[str, Array]]:
    """`dual_step` that also returns the revised samples."""
    x, models, s = batch, self.models, self.s  # x: [B, ...]
    k_z, k_x1, k_q, k_zc, k_x2 = jax.random.split(ts.step_key(state), 5)
    # 1. Generator proposal and its x-revision under the current EBM.
    z = self.normal(noise.PRIOR, k_z, (x.shape[0], models.nz), None)
    x0, gen_bn = sampling.generate(models, state.gen, z)
    # Metropolis jumps (langevin_x.jump_std) only move the EBM's negatives:
    # a jump to another mode would pull G(z) towards the midpoint of two.
    x1, ebm_sn, info_x1 = sampling.revise_x(
        models, state.ebm, x0, k_x1, dataclasses.replace(s.lx, jump_std=0.0),
        normal=self.normal, name=noise.X_CHAIN)
    (x,) = _after(x1, x)
    # 2. Inference proposal and its z-revision under the current generator.
    z1, gen_bn, chain_metrics = self.z_revision(state, gen_bn, x, k_q, k_zc)
    x, x1, z = _after(z1, x, x1, z)
    # 3. Generator update.
    (_, (gen_bn, m_g)), g_grads = jax.value_and_grad(
        losses.generator_loss, has_aux=True)(
            state.gen.params, gen_bn, models.gen.apply, x, z, z1,
            x1 if s.x_teaching else None, s.g_factor, s.s_factor)
    gen = _apply_update(state.gen, g_grads, self.optimizers.gen, gen_bn)
    # 4. Inference update.
    inf, m_i = self.inference_update(state, x, z, z1, x1)
    # 5. EBM update, negatives from a second chain off the updated generator.
    if s.negative_init == 'data' or s.second_chain:
      if s.negative_init == 'data':
        x0_neg = x
      else:
        x0_neg, gen_bn = sampling.generate(models, gen, z)
        gen = gen.replace(state=gen_bn)
      x0_neg, slots = self.from_replay(state, x0_neg, k_x2)
      (x0_neg,) = _after(inf, x0_neg)
      x_neg, ebm_sn, info_neg = sampling.revise_x(
          models, state.ebm.replace(state=ebm_sn), x0_neg, k_x2, s.lx,
          normal=self.normal, name=noise.X_CHAIN_NEGATIVE)
    else:
      x_neg, info_neg, slots = x1, info_x1, None
    x_neg, ebm_sn = self.lengthen_chains(state, ebm_sn, x_neg, k_x2)
    ebm, m_e = self.ebm_update(state, ebm_sn, x, x_neg, info_neg)
    metrics = {**m_g, **m_i, **m_e, **chain_metrics}
    if 'z_chain_rec_start' in metrics:
      metrics['z_chain_rec_end'] = m_g['g_rec_after_z_chain']
    state, metrics = self.finish(state, metrics, ebm=ebm, gen=gen, inf=inf,
                                 **self.to_replay(state, slots, x_neg))
    return state, metrics, {'z': z, 'x0': x0, 'x1': x1, 'z1': z1,
                            'x_neg': x_neg}

  def from_replay(self, state: ts.TrainState, x0: Array, key: Array
                  ) -> tuple[Array, Array | None]:
    """Restarts a `replay.fraction` of the chains from the replay buffer.

    Returns:
      (chain starts, the buffer slots drawn or None without a buffer).
    """
    replay = self.s.replay
    if replay is None:
      return x0, None
    k_slot, k_pick = jax.random.split(jax.random.fold_in(key, 2))
    slots = jax.random.randint(k_slot, (x0.shape[0],), 0, replay.size)
    pick = jax.random.uniform(k_pick, (x0.shape[0],)) < replay.fraction
    pick = pick.reshape((-1,) + (1,) * (x0.ndim - 1))
    return jnp.where(pick, state.replay[slots], x0), slots

  def to_replay(self, state: ts.TrainState, slots: Array | None,
                x_neg: Array) -> dict[str, Array]:
    """The buffer with the chains' ends written back to their slots."""
    if slots is None:
      return {}
    return {'replay': state.replay.at[slots].set(x_neg)}

  def lengthen_chains(self, state: ts.TrainState, ebm_sn: dict[str, Any],
                      x_neg: Array, key: Array
                      ) -> tuple[Array, dict[str, Any]]:
    """Runs `long_chain_steps` more steps on the first `long_chains` negatives."""
    s = self.s
    if not s.long_chains:
      return x_neg, ebm_sn
    head, ebm_sn, _ = sampling.revise_x(
        self.models, state.ebm.replace(state=ebm_sn), x_neg[:s.long_chains],
        jax.random.fold_in(key, 1),
        dataclasses.replace(s.lx, steps=s.long_chain_steps))
    return x_neg.at[:s.long_chains].set(head), ebm_sn

  def z_revision(self, state: ts.TrainState, gen_bn: dict[str, Any],
                 x: Array, k_q: Array, k_zc: Array
                 ) -> tuple[Array | None, dict[str, Any], Metrics]:
    """z0 ~ q(z|x) and its z-revision: (z1, generator BN state, metrics)."""
    s = self.s
    if not s.data_teaching:
      return None, gen_bn, {}
    z0, _, _ = sampling.infer_z(self.models, state.inf, x, k_q, self.normal)
    if not s.z_revision:
      return z0, gen_bn, {}
    z1, gen_bn, info_z = sampling.revise_z(
        self.models, state.gen.replace(state=gen_bn), z0, x, k_zc, s.lz,
        s.sigma, s.prior_sigma, normal=self.normal)
    # Reconstruction error at the chain's start, recovered from its energy.
    rec_start = (info_z.energy_start - s.w_prior * jnp.sum(jnp.square(z0))
                 ) / (s.w_rec * x.shape[0])
    return z1, gen_bn, {'z_chain_rec_start': rec_start,
                        'z_chain_grad_norm': info_z.grad_norm}

  def inference_update(self, state: ts.TrainState, x: Array, z: Array,
                       z1: Array | None, x1: Array
                       ) -> tuple[ts.NetState, Metrics]:
    """The inference model's Adam step (none in cooperative learning)."""
    s = self.s
    if not s.data_teaching:
      # Cooperative learning has no inference model; a zero loss keeps the
      # metric names the training loop reports and checks.
      return state.inf, {'loss_i': jnp.zeros((), jnp.float32)}
    (_, m_i), i_grads = jax.value_and_grad(
        losses.inference_loss, has_aux=True)(
            state.inf.params, self.models.inf.apply, x, z1, x1, z,
            s.g_factor, s.i_factor)
    return _apply_update(state.inf, i_grads, self.optimizers.inf,
                         state.inf.state), m_i
