"""One dual-MCMC teaching iteration as a single compiled function.

`make_train_step` returns `train_step(state, batch) -> (state, metrics)`
doing REFERENCE.md section 4 end to end on the accelerator:

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

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from dual_mcmc_jax import langevin
from dual_mcmc_jax import losses
from dual_mcmc_jax import networks
from dual_mcmc_jax import sampling
from dual_mcmc_jax import train_state as ts

Array = jax.Array
Metrics = dict[str, Array]


def _apply_update(net: ts.NetState, grads: Any, tx: optax.GradientTransformation,
                  new_state: dict[str, Any]) -> ts.NetState:
  updates, opt_state = tx.update(grads, net.opt_state, net.params)
  return net.replace(params=optax.apply_updates(net.params, updates),
                     state=new_state, opt_state=opt_state)


X_CHAIN_INITS = ('generator', 'noise')


def _teaching_switches(training) -> tuple[bool, bool, bool, str]:
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


def make_train_step(config, models: networks.Models,
                    optimizers: ts.Optimizers
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

  Returns:
    `train_step(state, batch) -> (state, metrics)`; jit it with
    `donate_argnums=0`.

  Raises:
    ValueError: an ablation switch has a value outside its allowed ones.
  """
  lx = langevin.LangevinSettings.from_config(config.langevin_x)
  lz = langevin.LangevinSettings.from_config(config.langevin_z)
  lc = config.loss
  sigma, prior_sigma = float(lc.sigma), float(lc.prior_sigma)
  g_factor, s_factor, i_factor = (float(lc.g_factor), float(lc.s_factor),
                                  float(lc.i_factor))
  temperature = losses.ebm_temperature(lx.step_size, lx.noise,
                                       bool(lc.ebm_temperature_scaling))
  second_chain = bool(config.training.second_x_chain)
  diff_limit = float(lc.energy_diff_limit)
  w_rec, w_prior = langevin.z_energy_weights(lz.rule, sigma, prior_sigma)
  z_revision, x_teaching, data_teaching, x_init = _teaching_switches(
      config.training)
  noise_low = float(config.training.x_noise_low)
  noise_high = float(config.training.x_noise_high)

  def ebm_update(state: ts.TrainState, ebm_sn: dict[str, Any], x: Array,
                 x_neg: Array, info: langevin.ChainInfo
                 ) -> tuple[ts.NetState, Metrics]:
    """The EBM's Adam step on negatives `x_neg` from the chain of `info`."""
    (_, (ebm_sn, m_e)), e_grads = jax.value_and_grad(
        losses.ebm_loss, has_aux=True)(
            state.ebm.params, ebm_sn, models.ebm.apply, x, x_neg, temperature)
    m_e.update(x_chain_energy_start=info.energy_start / x.shape[0],
               x_chain_energy_end=m_e['energy_x_revised'],
               x_chain_grad_norm=info.grad_norm)
    return _apply_update(state.ebm, e_grads, optimizers.ebm, ebm_sn), m_e

  def finish(state: ts.TrainState, metrics: Metrics, **nets: ts.NetState
             ) -> tuple[ts.TrainState, Metrics]:
    metrics.update(lr_e=optimizers.lr_ebm(state.step),
                   lr_g=optimizers.lr_gen(state.step),
                   lr_i=optimizers.lr_inf(state.step))
    finite = jnp.all(jnp.stack([
        jnp.isfinite(metrics[k]) for k in ('loss_g', 'loss_i', 'loss_e')]))
    metrics['healthy'] = jnp.logical_and(
        finite, jnp.abs(metrics['energy_diff']) <= diff_limit)
    return state.replace(step=state.step + 1, **nets), metrics

  def noise_init_step(state: ts.TrainState,
                      batch: Array) -> tuple[ts.TrainState, Metrics]:
    """Short-run MCMC from noise: only the EBM learns."""
    x = batch  # [B, ...]
    k_init, k_x = jax.random.split(ts.step_key(state))
    x0 = jax.random.uniform(k_init, x.shape, jnp.float32, noise_low,
                            noise_high)
    x_neg, ebm_sn, info = sampling.revise_x(models, state.ebm, x0, k_x, lx)
    ebm, m_e = ebm_update(state, ebm_sn, x, x_neg, info)
    # G and I are not trained; zero losses keep the metric names the
    # training loop reports and checks.
    metrics = {**m_e, 'loss_g': jnp.zeros((), jnp.float32),
               'loss_i': jnp.zeros((), jnp.float32)}
    return finish(state, metrics, ebm=ebm)

  def train_step(state: ts.TrainState,
                 batch: Array) -> tuple[ts.TrainState, Metrics]:
    x = batch  # [B, ...]
    b = x.shape[0]
    k_z, k_x1, k_q, k_zc, k_x2 = jax.random.split(ts.step_key(state), 5)

    # 1. Generator proposal and its x-revision under the current EBM.
    z = jax.random.normal(k_z, (b, models.nz), jnp.float32)
    x0, gen_bn = sampling.generate(models, state.gen, z)
    x1, ebm_sn, info_x1 = sampling.revise_x(models, state.ebm, x0, k_x1, lx)

    # 2. Inference proposal and its z-revision under the current generator.
    chain_metrics = {}
    z1 = None
    if data_teaching:
      z0, _, _ = sampling.infer_z(models, state.inf, x, k_q)
      z1 = z0
      if z_revision:
        z1, gen_bn, info_z = sampling.revise_z(models, state.gen.replace(state=gen_bn),
                                      z0, x, k_zc, lz, sigma, prior_sigma)
        # Reconstruction error at the chain's start, recovered from its
        # energy.
        chain_metrics.update(
            z_chain_rec_start=(info_z.energy_start -
                               w_prior * jnp.sum(jnp.square(z0))) / (w_rec * b),
            z_chain_grad_norm=info_z.grad_norm)

    # 3. Generator update.
    (_, (gen_bn, m_g)), g_grads = jax.value_and_grad(
        losses.generator_loss, has_aux=True)(
            state.gen.params, gen_bn, models.gen.apply, x, z, z1,
            x1 if x_teaching else None, g_factor, s_factor)
    gen = _apply_update(state.gen, g_grads, optimizers.gen, gen_bn)

    # 4. Inference update.
    if data_teaching:
      (_, m_i), i_grads = jax.value_and_grad(
          losses.inference_loss, has_aux=True)(
              state.inf.params, models.inf.apply, x, z1, x1, z, g_factor,
              i_factor)
      inf = _apply_update(state.inf, i_grads, optimizers.inf, state.inf.state)
    else:
      # Cooperative learning has no inference model; a zero loss keeps the
      # metric names the training loop reports and checks.
      inf, m_i = state.inf, {'loss_i': jnp.zeros((), jnp.float32)}

    # 5. EBM update, negatives from a second chain off the updated generator.
    if second_chain:
      x0_neg, gen_bn = sampling.generate(models, gen, z)
      gen = gen.replace(state=gen_bn)
      x_neg, ebm_sn, info_neg = sampling.revise_x(
          models, state.ebm.replace(state=ebm_sn), x0_neg, k_x2, lx)
    else:
      x_neg, info_neg = x1, info_x1
    ebm, m_e = ebm_update(state, ebm_sn, x, x_neg, info_neg)

    metrics = {**m_g, **m_i, **m_e, **chain_metrics}
    if 'z_chain_rec_start' in metrics:
      metrics['z_chain_rec_end'] = m_g['g_rec_after_z_chain']
    return finish(state, metrics, ebm=ebm, gen=gen, inf=inf)

  return noise_init_step if x_init == 'noise' else train_step
