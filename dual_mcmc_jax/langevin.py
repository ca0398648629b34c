"""The two MCMC revision processes: Langevin dynamics on x and on z.

`langevin` is one pure sampler; `x_energy_fn` (EBM-guided x-revision, started
at generator samples) and `z_energy_fn` (generator-posterior z-revision,
started at the inference model's guess) build the energies it follows.
Inpainting and evaluation reuse the same sampler with a mask.

Two update rules (`rule`):

* ``'reference'`` (the authors' implementation, default):
  ``x <- x - (s^2 / 2) * grad U(x) + n * eps``, the gradient coefficient and
  the noise scale ``n`` set independently.
* ``'paper'`` (supplementary Eq. 5-6): ``x <- x - s * grad U(x) + sqrt(2 s) eps``,
  standard Langevin dynamics for the density ``exp(-U)``.

The chain runs in `lax.fori_loop`, so memory does not grow with the number of
steps, and per-step noise keys come from `fold_in(key, step)`. The EBM's
spectral-norm power iteration (and the generator's BatchNorm running
statistics) are threaded through the loop as `aux` state, so that, as in the
reference where every forward pass in train mode runs one power iteration,
each Langevin step sees an updated normalisation.

`trajectory` runs the same chain (same keys, same iterates) but also returns
every k-th point and the energy at every step, for pictures of a chain in
motion (the notebook); training only needs the end point.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from dual_mcmc_jax import noise as noise_lib

Array = jax.Array
# energy_fn(x, aux) -> (scalar energy summed over the batch, new aux).
EnergyFn = Callable[[Array, Any], tuple[Array, Any]]

RULES = ('reference', 'paper')
# Whether `langevin` draws each step's noise one step ahead (a switch for
# A/B measurements; the noise and updates are the same either way, up to
# float32 rounding where the compiler contracts a multiply-add).
NOISE_AHEAD = True


@dataclasses.dataclass(frozen=True)
class LangevinSettings:
  """Step settings of one chain (mirrors config.langevin_x / langevin_z)."""
  steps: int
  step_size: float
  noise: float = 0.0
  rule: str = 'reference'
  # Std of the Metropolis jump proposed after every step; 0: no jumps.
  jump_std: float = 0.0

  @classmethod
  def from_config(cls, cfg) -> 'LangevinSettings':
    return cls(steps=int(cfg.steps), step_size=float(cfg.step_size),
               noise=float(cfg.noise), rule=str(cfg.rule),
               jump_std=float(cfg.get('jump_std', 0.0)))

  @property
  def temperature(self) -> float:
    """T such that the chain is Langevin dynamics for exp(-U / T).

    A step x -= c dU/dx + sigma eps is the Euler step of Langevin dynamics
    for exp(-U / T) with c = sigma^2 / (2 T): T = sigma^2 / (2 c), which is
    n^2 / s^2 for the reference rule and 1 for the paper's.
    """
    coef, noise_std = step_coefficients(self)
    return noise_std * noise_std / (2.0 * coef)


def step_coefficients(settings: LangevinSettings) -> tuple[float, float]:
  """Returns (gradient coefficient, noise standard deviation) of one step."""
  s = settings.step_size
  if settings.rule == 'reference':
    return 0.5 * s * s, settings.noise
  if settings.rule == 'paper':
    return s, math.sqrt(2.0 * s)
  raise ValueError(f'langevin rule={settings.rule!r} is unknown; allowed: '
                   f'{", ".join(RULES)}')


@dataclasses.dataclass(frozen=True)
class ChainInfo:
  """Diagnostics of one chain, all from values the chain computes anyway."""
  energy_start: Array  # total energy at the initial point
  energy_last: Array  # total energy at the last point whose gradient was used
  grad_norm: Array  # mean per-example gradient norm over the chain


jax.tree_util.register_dataclass(
    ChainInfo, data_fields=['energy_start', 'energy_last', 'grad_norm'],
    meta_fields=[])


def langevin(energy_fn: EnergyFn,
             x0: Array,
             key: Array,
             settings: LangevinSettings,
             aux: Any = None,
             mask: Array | None = None,
             noise_scale: float | Array = 1.0,
             energies_fn: Callable[[Array, Any], Array] | None = None,
             normal: noise_lib.Normal = noise_lib.prng_normal,
             name: str = noise_lib.X_CHAIN
             ) -> tuple[Array, Any, ChainInfo]:
  """Runs `settings.steps` Langevin updates from `x0`.

  Args:
    energy_fn: `(x, aux) -> (energy summed over the batch, aux)`.
    x0: initial points, [B, ...].
    key: PRNG key; step i uses `fold_in(key, i)`.
    settings: steps, step size, noise and rule.
    aux: state threaded through the energy calls (spectral-norm vectors,
      BatchNorm statistics), or None.
    mask: optional boolean array broadcastable to x0; where True the value is
      observed and held fixed at `x0` (inpainting).
    noise_scale: multiplies the noise (0 gives deterministic gradient
      descent, used by the agreement tests).
    energies_fn: `(x, aux) -> per-example energies [B]`, needed when
      `settings.jump_std > 0` (`metropolis_jump`).
    normal: the source of the per-step Gaussian noise (`noise.py`).
    name: the chain's name for `normal`.

  Returns:
    (samples with gradients stopped, final aux, ChainInfo).
  """
  step = _make_step(energy_fn, x0, key, settings, mask, noise_scale,
                    energies_fn, normal, name)
  batch = x0.shape[0]

  def body(i, carry):
    x, aux, e_start, e_last, gnorm, eps = carry
    if NOISE_AHEAD:
      # Step i + 1's noise does not depend on x: drawn here, it runs beside
      # step i's network passes instead of after them (docs/performance.md,
      # change 20). The last step draws one unused block.
      eps_next = step.noise(i + 1, x)
    else:
      eps, eps_next = step.noise(i, x), eps
    x_new, aux, energy, grad = step(i, x, aux, eps)
    e_start = jnp.where(i == 0, energy, e_start)
    gnorm = gnorm + jnp.sqrt(jnp.sum(jnp.square(grad))) / (
        settings.steps * math.sqrt(batch))
    return x_new, aux, e_start, energy, gnorm, eps_next

  zero = jnp.zeros((), jnp.float32)
  eps0 = step.noise(0, x0) if NOISE_AHEAD else jnp.zeros_like(x0)
  x, aux, e_start, e_last, gnorm, _ = jax.lax.fori_loop(
      0, settings.steps, body, (x0, aux, zero, zero, zero, eps0))
  return (jax.lax.stop_gradient(x), aux,
          ChainInfo(energy_start=e_start, energy_last=e_last, grad_norm=gnorm))


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
  log_ratio = (energies_fn(x, aux) - energies_fn(proposal, aux)) / temperature
  log_u = jnp.log(jax.random.uniform(k_accept, log_ratio.shape))
  accept = (log_u < log_ratio).reshape((-1,) + (1,) * (x.ndim - 1))
  return jnp.where(accept, proposal, x)


def _make_step(energy_fn: EnergyFn, x0: Array, key: Array,
               settings: LangevinSettings, mask: Array | None,
               noise_scale: float | Array,
               energies_fn: Callable[[Array, Any], Array] | None = None,
               normal: noise_lib.Normal = noise_lib.prng_normal,
               name: str = noise_lib.X_CHAIN
               ) -> Callable[[Array, Array, Any], tuple[Array, Any, Array,
                                                         Array]]:
  """One update `step(i, x, aux, eps=None) -> (x_new, aux, energy, grad)`.

  Energy and gradient are those at x. Shared by `langevin` and `trajectory`
  so that both follow the same chain; `step.noise(i, x)` is step i's noise,
  which `eps` may pass in (drawn ahead). With `settings.jump_std > 0` a
  `metropolis_jump` follows each step.
  """
  coef, noise_std = step_coefficients(settings)
  grad_fn = jax.value_and_grad(energy_fn, has_aux=True)
  jumps = settings.jump_std > 0
  if jumps and (energies_fn is None or mask is not None):
    raise ValueError('Metropolis jumps (jump_std > 0) need per-example '
                     'energies and cannot hold observed values fixed')

  def noise(i, x):
    return normal(name, jax.random.fold_in(key, i), x.shape, i)

  def step(i, x, aux, eps=None):
    (energy, aux), grad = grad_fn(x, aux)
    if eps is None:
      eps = noise(i, x)
    x_new = x - coef * grad + (noise_std * noise_scale) * eps
    if mask is not None:
      x_new = jnp.where(mask, x0, x_new)
    if jumps:
      x_new = metropolis_jump(
          energies_fn, x_new, aux,
          jax.random.fold_in(jax.random.fold_in(key, i), 1),
          settings.jump_std, settings.temperature)
    return x_new, aux, energy, grad

  step.noise = noise
  return step


def trajectory(energy_fn: EnergyFn,
               x0: Array,
               key: Array,
               settings: LangevinSettings,
               every: int = 1,
               aux: Any = None,
               mask: Array | None = None,
               noise_scale: float | Array = 1.0
               ) -> tuple[Array, Array, Any]:
  """Runs the chain of `langevin` and keeps snapshots and energies.

  Same arguments, keys and iterates as `langevin`, so the last snapshot is
  `langevin`'s result. The steps run in a `lax.scan` over snapshots, each a
  `fori_loop` of `every` steps, so memory grows with the number of
  snapshots only.

  Args:
    energy_fn: `(x, aux) -> (energy summed over the batch, aux)`.
    x0: initial points, [B, ...].
    key: PRNG key; step i uses `fold_in(key, i)`.
    settings: steps (a multiple of `every`), step size, noise and rule.
    every: keep every `every`-th iterate.
    aux: state threaded through the energy calls, or None.
    mask: optional observation mask, as in `langevin`.
    noise_scale: multiplies the noise.

  Returns:
    (snapshots [steps // every + 1, B, ...] holding x_0, x_every, ...,
    x_steps; total energies [steps + 1] at x_0, x_1, ..., x_steps; the
    final aux, as `langevin` returns it). The last energy costs one extra
    energy evaluation.
  """
  if every < 1 or settings.steps % every:
    raise ValueError(f'every={every} must be a positive divisor of the '
                     f'chain length {settings.steps}')
  step = _make_step(energy_fn, x0, key, settings, mask, noise_scale)

  def segment(carry, start):
    def body(j, inner):
      x, aux, energies = inner
      x_new, aux, energy, _ = step(start + j, x, aux)
      return x_new, aux, energies.at[j].set(energy)

    x, aux = carry
    x, aux, energies = jax.lax.fori_loop(
        0, every, body, (x, aux, jnp.zeros((every,), jnp.float32)))
    return (x, aux), (x, energies)

  starts = jnp.arange(0, settings.steps, every)
  (x, aux), (xs, energies) = jax.lax.scan(segment, (x0, aux), starts)
  # The final aux stays `langevin`'s: this evaluation is not a chain step.
  e_end, _ = energy_fn(x, aux)
  snapshots = jnp.concatenate([x0[None], xs], axis=0)
  energies = jnp.concatenate([energies.reshape(-1),
                              jnp.asarray(e_end, jnp.float32)[None]])
  return (jax.lax.stop_gradient(snapshots), jax.lax.stop_gradient(energies),
          aux)


def x_energy_fn(ebm_apply: Callable[..., Any], params: Any,
                ) -> EnergyFn:
  """Energy of the x-revision: sum over the batch of E(x).

  Args:
    ebm_apply: `module.apply` of the EBM.
    params: EBM parameters (held fixed during the chain).

  Returns:
    An EnergyFn whose aux is the EBM's `batch_stats` (spectral-norm state).
  """

  def fn(x, sn_state):
    e, new_vars = ebm_apply({'params': params, **sn_state}, x,
                            update_stats=True, mutable=['batch_stats'])
    return jnp.sum(e), dict(new_vars)

  return fn


def z_energy_weights(rule: str, sigma: float,
                     prior_sigma: float) -> tuple[float, float]:
  """Weights (w_rec, w_prior) of ||G(z) - x||^2 and ||z||^2 in the z-energy.

  Reference rule: the authors' update is
  `z - s^2/2 * (grad ||G(z) - x||^2 / sigma^2 + z / prior_sigma^2) + n eps`,
  i.e. the gradient of `||G(z)-x||^2 / sigma^2 + ||z||^2 / (2 prior_sigma^2)`
  (no 1/2 on the reconstruction term, 1/2 on the prior). Paper rule: the true
  negative log posterior, 1/2 on both terms.

  Args:
    rule: 'reference' or 'paper'.
    sigma: generator observation noise.
    prior_sigma: prior standard deviation.

  Returns:
    (w_rec, w_prior).
  """
  if rule == 'reference':
    return 1.0 / sigma**2, 0.5 / prior_sigma**2
  if rule == 'paper':
    return 0.5 / sigma**2, 0.5 / prior_sigma**2
  raise ValueError(f'config.langevin_z.rule={rule!r} is unknown; allowed: '
                   f'{", ".join(RULES)}')


def z_energy_fn(gen_apply: Callable[..., Any], params: Any, x: Array,
                sigma: float, prior_sigma: float, rule: str,
                x_mask: Array | None = None) -> EnergyFn:
  """Energy of the z-revision: the generator's negative log posterior.

  `w_rec * ||G(z) - x||^2 + w_prior * ||z||^2` summed over the batch, with
  the weights of `z_energy_weights`.

  Args:
    gen_apply: `module.apply` of the generator.
    params: generator parameters (fixed during the chain).
    x: the data the latents explain, [B, ...].
    sigma: observation noise of the generator.
    prior_sigma: standard deviation of the latent prior.
    rule: 'reference' or 'paper'.
    x_mask: optional boolean mask of observed pixels (True = observed); the
      others do not enter the likelihood (inpainting).

  Returns:
    An EnergyFn whose aux is the generator's `batch_stats`.
  """
  w_rec, w_prior = z_energy_weights(rule, sigma, prior_sigma)

  def fn(z, bn_state):
    gz, new_vars = gen_apply({'params': params, **bn_state}, z,
                             mutable=['batch_stats'])
    sq = jnp.square(gz - x)
    if x_mask is not None:
      sq = jnp.where(x_mask, sq, 0.0)
    return w_rec * jnp.sum(sq) + w_prior * jnp.sum(jnp.square(z)), dict(
        new_vars)

  return fn
