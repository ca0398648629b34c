"""The three learning objectives of dual-MCMC teaching, as pure functions.

Formulas follow the authors' training loop (jcui1224/dual-MCMC, `train.py`,
the body of `fit`):

* generator:  Gfactor * ||G(z1) - x||^2 / B + Sfactor * ||x0 - x1||^2 / B,
  x0 = G(z) the proposal the x-chain started from;
* inference:  Gfactor * mean NLL(z1 | I(x)) + Ifactor * mean NLL(z | I(x1));
* EBM:        (mean E(x) - mean E(x_neg)) / (n_x / s_x)^2.

The generator's two terms are separate functions (`reconstruction_loss`,
`x_teaching_loss`) because they are differentiated differently: the first
through a fresh pass G(z1), the second through the proposal pass that
produced x0 (the reference keeps that pass's graph; `train_step.py` keeps
its VJP). Each `*_loss` that takes parameters takes them first and returns
`(loss, aux)`, so that `jax.value_and_grad(..., has_aux=True)` gives the
update directly.
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


def reconstruction_loss(params: Any, bn_state: dict[str, Any],
                        gen_apply: Callable[..., Any], x: Array, z1: Array,
                        g_factor: float
                        ) -> tuple[Array, tuple[dict[str, Any],
                                                dict[str, Array]]]:
  """The generator's data term: Gfactor * ||G(z1) - x||^2 / B.

  Args:
    params: generator parameters (differentiated).
    bn_state: {'batch_stats': ...} or {} (threaded, not differentiated).
    gen_apply: generator `module.apply`.
    x: data batch, [B, ...].
    z1: z-revised posterior latents for x, [B, nz].
    g_factor: the term's weight.

  Returns:
    (loss, (new bn_state, metrics)).
  """
  g_z1, vs = gen_apply({'params': params, **bn_state}, z1,
                       mutable=['batch_stats'])
  rec = sum_sq_per_batch(g_z1, x)
  return g_factor * rec, (dict(vs), {'g_rec_after_z_chain': rec})


def x_teaching_loss(x0: Array, x1: Array, s_factor: float
                    ) -> tuple[Array, dict[str, Array]]:
  """The generator's teaching term Sfactor * ||x0 - x1||^2 / B.

  Differentiated with respect to the proposal `x0 = G(z)`; the train step
  carries that gradient back to the generator through the proposal pass.

  Returns:
    (loss, metrics).
  """
  teach = sum_sq_per_batch(x0, x1)
  return s_factor * teach, {'g_dist_to_x_revised': teach}


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


# An extra term of the EBM loss: (energies of x [B], of x_neg [B]) -> scalar.
EnergyTerm = Callable[[Array, Array], Array]


def ebm_loss(params: Any, sn_pos: dict[str, Any], sn_neg: dict[str, Any],
             ebm_apply: Callable[..., Any], x: Array, x_neg: Array,
             temperature: float, extra_terms: tuple[EnergyTerm, ...] = ()
             ) -> tuple[Array, tuple[dict[str, Any], dict[str, Array]]]:
  """Maximum-likelihood EBM objective with MCMC-revised negatives.

  The two energies are separate passes, each running one spectral-norm
  power iteration from its own state, as in the authors' loop, where E(x)
  is evaluated before the second x-chain and E(x_neg) after it.

  Args:
    params: EBM parameters (differentiated).
    sn_pos: {'batch_stats': spectral-norm vectors} E(x) starts from (or {}).
    sn_neg: the vectors E(x_neg) starts from.
    ebm_apply: EBM `module.apply`.
    x: data batch (positives).
    x_neg: x-revised samples (negatives, constant).
    temperature: the maximum-likelihood term is divided by this.
    extra_terms: added to the loss (remedies.py: the energy penalty).

  Returns:
    (loss, (the vectors after E(x_neg), metrics)).
  """
  e_pos, _ = ebm_apply({'params': params, **sn_pos}, x, update_stats=True,
                       mutable=['batch_stats'])
  e_neg, vs = ebm_apply({'params': params, **sn_neg}, x_neg,
                        update_stats=True, mutable=['batch_stats'])
  diff = jnp.mean(e_pos) - jnp.mean(e_neg)
  loss = diff / temperature
  for term in extra_terms:
    loss = loss + term(e_pos, e_neg)
  return loss, (dict(vs), {'loss_e': loss, 'energy_data': jnp.mean(e_pos),
                           'energy_x_revised': jnp.mean(e_neg),
                           'energy_diff': diff})
