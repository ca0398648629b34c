"""Langevin chains whose next noise is drawn during the current step.

`noise_ahead_chain` runs the very steps of `langevin.fori_chain` with the
same noise, but draws step i+1's noise during step i: the threefry bits and
the normal transform (about 2 ms per x-step of the Table 1 nets, at the end
of the step on the critical path) then run beside the network passes
(docs/performance.md, change 20: the x-chain about 4% faster in two runs of
three). The last step draws one unused block. The update may differ by one
ulp where the compiler contracts a multiply-add differently.
"""

from __future__ import annotations

from typing import Any

import jax

from dual_mcmc_jax import langevin

Array = jax.Array


def noise_ahead_chain(step: langevin.Step, noise: langevin.Noise, x0: Array,
                      aux: Any, steps: int
                      ) -> tuple[Array, Any, langevin.ChainInfo]:
  """`langevin.fori_chain` with each step's noise drawn one step ahead."""
  diag = langevin.Diagnostics(steps, x0.shape[0])

  def body(i, carry):
    x, aux, acc, eps = carry
    eps_next = noise(i + 1)
    x, aux, energy, grad = step(i, x, aux, eps)
    return x, aux, diag.update(i, acc, energy, grad), eps_next

  x, aux, acc, _ = jax.lax.fori_loop(
      0, steps, body, (x0, aux, diag.start(), noise(0)))
  return x, aux, langevin.Diagnostics.info(acc)
