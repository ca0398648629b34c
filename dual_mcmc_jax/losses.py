"""The three learning objectives of dual-MCMC teaching, as pure functions.

Each `*_loss` takes the network parameters it differentiates first and the
(constant) chain outputs after, and returns `(loss, aux)`, so that
`jax.value_and_grad(..., has_aux=True)` gives the update directly. Formulas
follow the authors' training loop (jcui1224/dual-MCMC, `train.py`):

* generator:  Gfactor * ||G(z1) - x||^2 / B + Sfactor * ||G(z) - x1||^2 / B
* inference:  Gfactor * mean NLL(z1 | I(x)) + Ifactor * mean NLL(z | I(x1))
* EBM:        (mean E(x) - mean E(x1)) / (n_x / s_x)^2
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

Array = jax.Array


def gaussian_nll(z: Array, mu: Array, logvar: Array) -> Array:
  """Per-example negative log-likelihood of z under N(mu, exp(logvar)).

  The constant 0.5 * log(2 pi) per dimension is dropped and 1e-6 is added to
  the variance, exactly as the reference does.

  Args:
    z, mu, logvar: [B, nz].

  Returns:
    [B].
  """
  return 0.5 * jnp.sum(logvar, -1) + 0.5 * jnp.sum(
      jnp.square(z - mu) / (1e-6 + jnp.exp(logvar)), -1)


def sum_sq_per_batch(a: Array, b: Array) -> Array:
  """||a - b||^2 summed over everything, divided by the batch size."""
  return jnp.sum(jnp.square(a - b)) / a.shape[0]


def generator_loss(params: Any, bn_state: dict[str, Any],
                   gen_apply: Callable[..., Any], x: Array, z: Array,
                   z1: Array | None, x1: Array | None, g_factor: float,
                   s_factor: float
                   ) -> tuple[Array, tuple[dict[str, Any], dict[str, Array]]]:
  """Generator objective: explain data from z1, and move G(z) to x1.

  Args:
    params: generator parameters (differentiated).
    bn_state: {'batch_stats': ...} or {} (threaded, not differentiated).
    gen_apply: generator `module.apply`.
    x: data batch, [B, ...].
    z: prior latents that produced the x-chain's start x0 = G(z), [B, nz].
    z1: z-revised posterior latents for x, [B, nz]; None drops the
      reconstruction term (no data teaching, the cooperative-learning
      ablation).
    x1: x-revised samples, [B, ...]; None drops the x-teaching term.
    g_factor, s_factor: weights of the two terms.

  Returns:
    (loss, (new bn_state, metrics)); a dropped term has no metric.
  """
  if z1 is None and x1 is None:
    raise ValueError('generator_loss needs z1 or x1: with neither term the '
                     'generator learns nothing')
  # Two separate forward passes, as in the reference: with BatchNorm in
  # batch-statistics mode each is normalised by its own batch. A dropped
  # term skips its pass, so it does not move the running statistics either.
  loss = jnp.zeros((), jnp.float32)
  metrics = {}
  vs = bn_state
  if z1 is not None:
    g_z1, vs = gen_apply({'params': params, **vs}, z1,
                         mutable=['batch_stats'])
    vs = dict(vs)
    rec = sum_sq_per_batch(g_z1, x)
    loss = loss + g_factor * rec
    metrics['g_rec_after_z_chain'] = rec
  if x1 is not None:
    x0, vs = gen_apply({'params': params, **vs}, z, mutable=['batch_stats'])
    vs = dict(vs)
    teach = sum_sq_per_batch(x0, x1)
    loss = loss + s_factor * teach
    metrics['g_dist_to_x_revised'] = teach
  metrics['loss_g'] = loss
  return loss, (vs, metrics)


def inference_loss(params: Any, inf_apply: Callable[..., Any], x: Array,
                   z1: Array, x1: Array, z: Array, g_factor: float,
                   i_factor: float) -> tuple[Array, dict[str, Array]]:
  """Inference objective: fit z1 for data x, and z for revised samples x1.

  Args:
    params: inference parameters (differentiated).
    inf_apply: inference `module.apply`.
    x: data batch; z1: its z-revised latents.
    x1: x-revised samples; z: the prior latents they started from.
    g_factor, i_factor: weights of the two terms.

  Returns:
    (loss, metrics).
  """
  mu, logvar = inf_apply({'params': params}, x)
  nll_data = jnp.mean(gaussian_nll(z1, mu, logvar))
  mu_s, logvar_s = inf_apply({'params': params}, x1)
  nll_samples = jnp.mean(gaussian_nll(z, mu_s, logvar_s))
  loss = g_factor * nll_data + i_factor * nll_samples
  return loss, {'loss_i': loss, 'i_nll_data': nll_data,
                'i_nll_samples': nll_samples}


def ebm_temperature(step_size: float, noise: float, enabled: bool) -> float:
  """(n_x / s_x)^2, the reference's divisor of the EBM loss (1 if disabled)."""
  return (noise / step_size)**2 if enabled else 1.0


def ebm_loss(params: Any, sn_state: dict[str, Any],
             ebm_apply: Callable[..., Any], x: Array, x_neg: Array,
             temperature: float, energy_l2: float = 0.0
             ) -> tuple[Array, tuple[dict[str, Any], dict[str, Array]]]:
  """Maximum-likelihood EBM objective with MCMC-revised negatives.

  Args:
    params: EBM parameters (differentiated).
    sn_state: {'batch_stats': spectral-norm vectors} or {}.
    ebm_apply: EBM `module.apply`.
    x: data batch (positives).
    x_neg: x-revised samples (negatives, constant).
    temperature: the loss is divided by this.
    energy_l2: weight of the energy-magnitude penalty
      mean(E(x)^2) + mean(E(x_neg)^2) added to the loss (Du & Mordatch,
      2019); 0 (the reference) adds nothing.

  Returns:
    (loss, (new sn_state, metrics)).
  """
  # Two forward passes, as in the reference (each runs one power iteration).
  e_pos, vs = ebm_apply({'params': params, **sn_state}, x, update_stats=True,
                        mutable=['batch_stats'])
  e_neg, vs = ebm_apply({'params': params, **dict(vs)}, x_neg,
                        update_stats=True, mutable=['batch_stats'])
  diff = jnp.mean(e_pos) - jnp.mean(e_neg)
  loss = diff / temperature
  if energy_l2:
    loss = loss + energy_l2 * (jnp.mean(jnp.square(e_pos)) +
                               jnp.mean(jnp.square(e_neg)))
  return loss, (dict(vs), {'loss_e': loss, 'energy_data': jnp.mean(e_pos),
                           'energy_x_revised': jnp.mean(e_neg),
                           'energy_diff': diff})
