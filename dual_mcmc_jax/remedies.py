"""Additions the reference does not have: switches on the EBM's negatives.

Dual-MCMC teaching (the paper's Algorithm 1, `train_step.py`) gives the EBM
negatives from a short x-chain started at generator samples. On densities
with separated modes such a chain keeps the generator's share of each mode,
and the benchmarks of `benchmarks/toy2d.py` try these remedies
(docs/results.md measures each). All are off in the image configs; each is
composed into the step when it is built, never branched in its body:

* data negatives (`config.training.negative_chain_init='data'`): the chain
  starts at the data batch (contrastive divergence);
* a replay buffer (`training.replay_buffer_size`, `replay_fraction`): a share
  of the chains continue from past negatives (Du & Mordatch, 2019);
* long chains (`training.long_chains`, `long_chain_steps`): the first few
  negatives run more steps;
* noise starts (`training.negative_noise_fraction`): the last few chains
  start uniform in the data's box instead;
* Metropolis jumps (`langevin_x.jump_std`): a random-walk Metropolis step
  after every Langevin step, so that a chain can change mode;
* generator jumps (`langevin_x.generator_jumps`): a Metropolis step by the
  difference of two generator samples after every Langevin step, which
  proposes the generator's other modes, in the first
  `generator_jump_fraction` of the chains;
* an energy penalty (`loss.energy_l2`): energy_l2 * (mean E(x)^2 +
  mean E(x_neg)^2) joins the EBM loss (Du & Mordatch, 2019).

A negative chain here is `chain(state, sn, x0, key) -> (x_neg, sn, info,
state updates)` and its start `start(state, gen, key, *, x, z, x1) -> (x0,
gen)`; the remedies wrap one or the other.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from dual_mcmc_jax import langevin
from dual_mcmc_jax import losses
from dual_mcmc_jax import networks
from dual_mcmc_jax import sampling
from dual_mcmc_jax import settings as settings_lib
from dual_mcmc_jax import train_state as ts

Array = jax.Array
# chain(state, sn, x0, key) -> (x_neg, sn, info, {state field: new value}).
Chain = Callable[[ts.TrainState, dict[str, Any], Array, Array],
                 tuple[Array, dict[str, Any], langevin.ChainInfo,
                       dict[str, Array]]]
Start = Callable[..., tuple[Array, ts.NetState]]


def _accept(energies_fn: Callable[[Array, Any], Array], x: Array,
            proposal: Array, aux: Any, key: Array,
            temperature: float) -> Array:
  """Moves each example to its proposal with the Metropolis probability.

  min(1, exp((E(x) - E(x')) / T)), right for a symmetric proposal; both
  jumps below use it.
  """
  log_ratio = (energies_fn(x, aux) - energies_fn(proposal, aux)) / temperature
  log_u = jnp.log(jax.random.uniform(key, log_ratio.shape))
  accept = (log_u < log_ratio).reshape((-1,) + (1,) * (x.ndim - 1))
  return jnp.where(accept, proposal, x)


def metropolis_jump(energies_fn: Callable[[Array, Any], Array], x: Array,
                    aux: Any, key: Array, std: float,
                    temperature: float) -> Array:
  """One Metropolis step with a Gaussian random-walk proposal of `std`.

  Each example proposes x' = x + std * eps and moves there with probability
  min(1, exp((E(x) - E(x')) / T)), which leaves exp(-E / T) exactly
  invariant. With a proposal as wide as the gaps between modes, a chain can
  change mode, which Langevin steps at a low temperature never do.

  Args:
    energies_fn: `(x, aux) -> per-example energies [B]`.
    x: current points [B, ...].
    aux: state the energy reads (not updated).
    key: PRNG key.
    std: proposal standard deviation.
    temperature: T of the target exp(-E / T).

  Returns:
    The new points.
  """
  k_prop, k_accept = jax.random.split(key)
  proposal = x + std * jax.random.normal(k_prop, x.shape, x.dtype)
  return _accept(energies_fn, x, proposal, aux, k_accept, temperature)


def generator_jump(energies_fn: Callable[[Array, Any], Array], x: Array,
                   aux: Any, key: Array, pool: Array,
                   temperature: float) -> Array:
  """One Metropolis step by the difference of two generator samples.

  Each example proposes x' = x + pool[i] - pool[j] for a random ordered pair
  i != j of a pool of generator samples G(z) drawn apart from the chain.
  Given the pool the proposal is symmetric (the pair (j, i) is as likely as
  (i, j)) and does not depend on x, so accepting with probability
  min(1, exp((E(x) - E(x')) / T)) leaves exp(-E / T) exactly invariant. The
  differences are the displacements between the generator's modes, so a
  chain in one mode proposes the others about as often as the generator
  visits them, where a random walk must hit a far, narrow mode by chance
  (differential-evolution proposals, ter Braak, 2006).

  Args:
    energies_fn: `(x, aux) -> per-example energies [B]`.
    x: current points [B, ...].
    aux: state the energy reads (not updated).
    key: PRNG key.
    pool: generator samples [N, ...], N >= 2.
    temperature: T of the target exp(-E / T).

  Returns:
    The new points.
  """
  k_i, k_j, k_accept = jax.random.split(key, 3)
  n = pool.shape[0]
  i = jax.random.randint(k_i, (x.shape[0],), 0, n)
  j = (i + jax.random.randint(k_j, (x.shape[0],), 1, n)) % n  # j != i
  proposal = x + pool[i] - pool[j]
  return _accept(energies_fn, x, proposal, aux, k_accept, temperature)


def generator_pool(models: networks.Models, gen: ts.NetState, key: Array,
                   n: int) -> Array:
  """n generator samples for `generator_jump`, drawn apart from the chain."""
  z = jax.random.normal(jax.random.fold_in(key, 5), (n, models.nz))
  return sampling.generate(models, gen, z)[0]  # The state is not updated.


def first_rows(a: Array, b: Array, fraction: float) -> Array:
  """`a` in the first round(fraction * B) rows (at least one), else `b`."""
  n = max(1, round(fraction * a.shape[0]))
  if n >= a.shape[0]:
    return a
  rows = (jnp.arange(a.shape[0]) < n).reshape((-1,) + (1,) * (a.ndim - 1))
  return jnp.where(rows, a, b)


def jumps(models: networks.Models, params: Any,
          chain: settings_lib.XChainSettings,
          pool: Array | None = None) -> langevin.Then:
  """A chain's `then`: the Metropolis jumps after every Langevin step.

  A random-walk jump (`metropolis_jump`) when `chain.jump_std > 0`, then a
  generator-difference jump (`generator_jump`) when `pool` is given.
  """
  temperature = langevin.temperature(chain)

  def energies(x, sn_state):
    return models.ebm.apply({'params': params, **sn_state}, x,
                            update_stats=False)

  def then(i, x, aux, key):
    del i
    if chain.jump_std > 0:
      x = metropolis_jump(energies, x, aux, jax.random.fold_in(key, 1),
                          chain.jump_std, temperature)
    if pool is not None:
      moved = generator_jump(energies, x, aux, jax.random.fold_in(key, 2),
                             pool, temperature)
      x = first_rows(moved, x, chain.generator_jump_fraction)
    return x

  return then


def negative_chain_jumps(models: networks.Models, ebm_params: Any,
                         gen: ts.NetState, chain: settings_lib.XChainSettings,
                         key: Array, n: int) -> langevin.Then:
  """The `then` of a negative chain of n samples, as `chain` asks.

  `langevin.unchanged` without jumps; with generator jumps, the pool is n
  samples of `gen` (`generator_pool`).
  """
  if not (chain.jump_std > 0 or chain.generator_jumps):
    return langevin.unchanged
  pool = (generator_pool(models, gen, key, n) if chain.generator_jumps
          else None)
  return jumps(models, ebm_params, chain, pool)


def data_start(state: ts.TrainState, gen: ts.NetState, key: Array, *,
               x: Array, z: Array | None, x1: Array | None
               ) -> tuple[Array, ts.NetState]:
  """Negative chains start at the data batch (contrastive divergence)."""
  del state, z, x1, key
  return x, gen


def with_noise_starts(start: Start, fraction: float, low: float,
                      high: float) -> Start:
  """The last `fraction` of the chains start uniform in [low, high)."""

  def run(state, gen, key, *, x, z, x1):
    x0, gen = start(state, gen, key, x=x, z=z, x1=x1)
    count = round(fraction * x0.shape[0])
    if not count:
      return x0, gen
    noise = jax.random.uniform(jax.random.fold_in(key, 4),
                               (count,) + x0.shape[1:], x0.dtype, low, high)
    return x0.at[x0.shape[0] - count:].set(noise), gen

  return run


def with_replay(chain: Chain, spec: ts.ReplaySpec) -> Chain:
  """Continues a `replay.fraction` of the chains from the replay buffer.

  The chains' ends are written back to the slots they came from, so the
  buffer (a field of the train state) carries them to later steps.
  """

  def run(state, sn, x0, key):
    k_slot, k_pick = jax.random.split(jax.random.fold_in(key, 2))
    slots = jax.random.randint(k_slot, (x0.shape[0],), 0, spec.size)
    pick = jax.random.uniform(k_pick, (x0.shape[0],)) < spec.fraction
    pick = pick.reshape((-1,) + (1,) * (x0.ndim - 1))
    x0 = jnp.where(pick, state.replay[slots], x0)
    x_neg, sn, info, updates = chain(state, sn, x0, key)
    return x_neg, sn, info, {**updates,
                             'replay': state.replay.at[slots].set(x_neg)}

  return run


def with_long_chains(chain: Chain, models: networks.Models,
                     settings: settings_lib.XChainSettings, count: int,
                     extra_steps: int) -> Chain:
  """Runs `extra_steps` more steps on the first `count` negatives."""
  longer = dataclasses.replace(settings, steps=extra_steps)

  def run(state, sn, x0, key):
    x_neg, sn, info, updates = chain(state, sn, x0, key)
    head, sn, _ = sampling.revise_x(
        models, state.ebm.replace(state=sn), x_neg[:count],
        jax.random.fold_in(key, 1), longer)
    return x_neg.at[:count].set(head), sn, info, updates

  return run


def energy_penalty(weight: float) -> losses.EnergyTerm:
  """weight * (mean E(x)^2 + mean E(x_neg)^2), an extra EBM loss term."""

  def term(e_pos: Array, e_neg: Array) -> Array:
    return weight * (jnp.mean(jnp.square(e_pos)) +
                     jnp.mean(jnp.square(e_neg)))

  return term


def extra_ebm_terms(settings: settings_lib.Settings
                    ) -> tuple[losses.EnergyTerm, ...]:
  """The EBM loss terms the remedies add (none in the reference)."""
  if settings.loss.energy_l2 > 0:
    return (energy_penalty(settings.loss.energy_l2),)
  return ()
