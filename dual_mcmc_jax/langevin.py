"""The two MCMC revision processes: Langevin dynamics on x and on z.

`langevin` is one pure sampler; `x_energy_fn` (EBM-guided x-revision, started
at generator samples) and `z_energy_fn` (generator-posterior z-revision,
started at the inference model's guess) build the energies it follows.
Inpainting and evaluation reuse the same sampler with a mask.

An update rule is one registered function (`register_rule`) giving the
step's gradient coefficient and noise scale, so that a step is
``x <- x - coef * grad U(x) + noise_std * eps``. Two are registered:

* ``'reference'`` (the authors' implementation, default):
  ``x <- x - (s^2 / 2) * grad U(x) + n * eps``, the gradient coefficient and
  the noise scale ``n`` set independently.
* ``'paper'`` (supplementary Eq. 5-6): ``x <- x - s * grad U(x) + sqrt(2 s) eps``,
  standard Langevin dynamics for the density ``exp(-U)``.

A chain's settings (steps, step size, noise, rule) are a
`settings.ChainSettings`; `config.langevin_x.rule` / `langevin_z.rule`
accept any registered name.

The chain runs in `lax.fori_loop` (`fori_chain`), so memory does not grow
with the number of steps, and per-step noise keys come from
`fold_in(key, step)`. The EBM's spectral-norm power iteration (and the
generator's BatchNorm running statistics) are threaded through the loop as
`aux` state, so that, as in the reference where every forward pass in train
mode runs one power iteration, each Langevin step sees an updated
normalisation. A backend plug-in may run the same steps in another loop
(`ChainLoop`; dual_mcmc_jax/cpu/ draws each step's noise one step ahead).

`trajectory` runs the same chain (same keys, same iterates) but also returns
every k-th point and the energy at every step, for pictures of a chain in
motion (the notebook); training only needs the end point.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Protocol, TYPE_CHECKING

import jax
import jax.numpy as jnp

from dual_mcmc_jax import noise as noise_lib

if TYPE_CHECKING:
  # pylint: disable-next=g-bad-import-order
  from dual_mcmc_jax.settings import ChainSettings

Array = jax.Array
# energy_fn(x, aux) -> (scalar energy summed over the batch, new aux).
EnergyFn = Callable[[Array, Any], tuple[Array, Any]]


@dataclasses.dataclass(frozen=True)
class LangevinRule:
  """A registered update rule.

  Attributes:
    coefficients: (step size, noise) -> (gradient coefficient, noise std).
    likelihood_weight: the weight of ||G(z) - x||^2 / sigma^2 in the
      z-revision's energy (`z_energy_weights`).
  """
  coefficients: Callable[[float, float], tuple[float, float]]
  likelihood_weight: float = 0.5


# Rule name -> rule; `register_rule` adds to it.
RULES: dict[str, LangevinRule] = {}


def register_rule(name: str, likelihood_weight: float = 0.5
                  ) -> Callable[[Callable[[float, float], tuple[float, float]]],
                                Callable[[float, float], tuple[float, float]]]:
  """Registers `(step_size, noise) -> (coef, noise_std)` as rule `name`.

  Args:
    name: the name configs use (`config.langevin_x.rule`).
    likelihood_weight: the weight of ||G(z) - x||^2 / sigma^2 in the
      z-energy; 1/2 is the true negative log posterior.

  Returns:
    A decorator that registers the function and returns it unchanged.
  """
  def register(fn):
    RULES[name] = LangevinRule(fn, likelihood_weight)
    return fn
  return register


@register_rule('reference', likelihood_weight=1.0)
def reference_rule(step_size: float, noise: float) -> tuple[float, float]:
  """The authors' update: coefficient s^2 / 2, noise n set on its own.

  Their z-revision differentiates ||G(z) - x||^2 / sigma^2 without the 1/2
  (`langevin_z` in train.py), hence the likelihood weight 1.
  """
  return 0.5 * step_size * step_size, noise


@register_rule('paper')
def paper_rule(step_size: float, noise: float) -> tuple[float, float]:
  """Langevin dynamics for exp(-U) (supplementary Eq. 5-6); `noise` unused."""
  del noise
  return step_size, math.sqrt(2.0 * step_size)


def get_rule(name: str) -> LangevinRule:
  if name not in RULES:
    raise ValueError(f'langevin rule={name!r} is unknown; allowed: '
                     f'{", ".join(RULES)}')
  return RULES[name]


def step_coefficients(settings: ChainSettings) -> tuple[float, float]:
  """Returns (gradient coefficient, noise standard deviation) of one step."""
  return get_rule(settings.rule).coefficients(settings.step_size,
                                              settings.noise)


def temperature(settings: ChainSettings) -> float:
  """T such that the chain is Langevin dynamics for exp(-U / T).

  A step x -= c dU/dx + sigma eps is the Euler step of Langevin dynamics
  for exp(-U / T) with c = sigma^2 / (2 T): T = sigma^2 / (2 c), which is
  n^2 / s^2 for the reference rule and 1 for the paper's.
  """
  coef, noise_std = step_coefficients(settings)
  return noise_std * noise_std / (2.0 * coef)


@dataclasses.dataclass(frozen=True)
class ChainInfo:
  """Diagnostics of one chain, all from values the chain computes anyway."""
  energy_start: Array  # total energy at the initial point
  energy_last: Array  # total energy at the last point whose gradient was used
  grad_norm: Array  # mean per-example gradient norm over the chain


jax.tree_util.register_dataclass(
    ChainInfo, data_fields=['energy_start', 'energy_last', 'grad_norm'],
    meta_fields=[])

# step(i, x, aux, eps) -> (x_new, aux, energy at x, gradient at x).
Step = Callable[[Array, Array, Any, Array], tuple[Array, Any, Array, Array]]
# noise(i) -> step i's standard-normal draw, shaped like x.
Noise = Callable[[Array], Array]
# then(i, x_new, aux, key) -> x_new: what follows each step (remedies.py
# adds Metropolis jumps here).
Then = Callable[[Array, Array, Any, Array], Array]


def unchanged(i: Array, x: Array, aux: Any, key: Array) -> Array:
  """The default `Then`: nothing follows a step."""
  del i, aux, key
  return x


class ChainLoop(Protocol):
  """How a chain's steps are run: `fori_chain`, or a backend plug-in's."""

  def __call__(self, step: Step, noise: Noise, x0: Array, aux: Any,
               steps: int) -> tuple[Array, Any, ChainInfo]:
    ...


class Diagnostics:
  """Accumulates `ChainInfo` along a chain (shared by every `ChainLoop`)."""

  def __init__(self, steps: int, batch: int):
    self.scale = 1.0 / (max(steps, 1) * math.sqrt(batch))

  def start(self) -> tuple[Array, Array, Array]:
    zero = jnp.zeros((), jnp.float32)
    return zero, zero, zero

  def update(self, i: Array, acc: tuple[Array, Array, Array], energy: Array,
             grad: Array) -> tuple[Array, Array, Array]:
    e_start, _, gnorm = acc
    e_start = jnp.where(i == 0, energy, e_start)
    gnorm = gnorm + jnp.sqrt(jnp.sum(jnp.square(grad))) * self.scale
    return e_start, energy, gnorm

  @staticmethod
  def info(acc: tuple[Array, Array, Array]) -> ChainInfo:
    return ChainInfo(energy_start=acc[0], energy_last=acc[1],
                     grad_norm=acc[2])


def fori_chain(step: Step, noise: Noise, x0: Array, aux: Any,
               steps: int) -> tuple[Array, Any, ChainInfo]:
  """Runs `steps` steps in `lax.fori_loop`, drawing step i's noise in step i."""
  diag = Diagnostics(steps, x0.shape[0])

  def body(i, carry):
    x, aux, acc = carry
    x, aux, energy, grad = step(i, x, aux, noise(i))
    return x, aux, diag.update(i, acc, energy, grad)

  x, aux, acc = jax.lax.fori_loop(0, steps, body, (x0, aux, diag.start()))
  return x, aux, Diagnostics.info(acc)


def langevin(energy_fn: EnergyFn,
             x0: Array,
             key: Array,
             settings: ChainSettings,
             aux: Any = None,
             mask: Array | None = None,
             noise_scale: float | Array = 1.0,
             normal: noise_lib.Normal = noise_lib.prng_normal,
             name: str = noise_lib.X_CHAIN,
             loop: ChainLoop = fori_chain,
             then: Then = unchanged
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
    normal: the source of the per-step Gaussian noise (`noise.py`).
    name: the chain's name for `normal`.
    loop: how the steps run (`fori_chain`, or a backend plug-in's).
    then: applied to each step's result, `then(i, x_new, aux, key_i)`
      (remedies.py: Metropolis jumps).

  Returns:
    (samples with gradients stopped, final aux, ChainInfo).
  """
  step = make_step(energy_fn, x0, key, settings, mask, noise_scale, then)
  x, aux, info = loop(step, chain_noise(normal, name, key, x0), x0, aux,
                      settings.steps)
  return jax.lax.stop_gradient(x), aux, info


def chain_noise(normal: noise_lib.Normal, name: str, key: Array,
                x0: Array) -> Noise:
  """Step i's noise: `normal(name, fold_in(key, i), x0.shape, i)`."""
  return lambda i: normal(name, jax.random.fold_in(key, i), x0.shape, i)


def make_step(energy_fn: EnergyFn, x0: Array, key: Array,
              settings: ChainSettings, mask: Array | None = None,
              noise_scale: float | Array = 1.0,
              then: Then = unchanged) -> Step:
  """One update `step(i, x, aux, eps) -> (x_new, aux, energy, grad)`.

  Energy and gradient are those at x; `eps` is step i's standard-normal
  noise. Shared by `langevin` and `trajectory` so that both follow the
  same chain.
  """
  coef, noise_std = step_coefficients(settings)
  grad_fn = jax.value_and_grad(energy_fn, has_aux=True)

  def step(i, x, aux, eps):
    (energy, aux), grad = grad_fn(x, aux)
    x_new = x - coef * grad + (noise_std * noise_scale) * eps
    if mask is not None:
      x_new = jnp.where(mask, x0, x_new)
    x_new = then(i, x_new, aux, jax.random.fold_in(key, i))
    return x_new, aux, energy, grad

  return step


def trajectory(energy_fn: EnergyFn,
               x0: Array,
               key: Array,
               settings: ChainSettings,
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
  step = make_step(energy_fn, x0, key, settings, mask, noise_scale)
  noise = chain_noise(noise_lib.prng_normal, noise_lib.X_CHAIN, key, x0)

  def segment(carry, start):
    def body(j, inner):
      x, aux, energies = inner
      x_new, aux, energy, _ = step(start + j, x, aux, noise(start + j))
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

  `w_rec = likelihood_weight / sigma^2` and `w_prior = 1 / (2 prior_sigma^2)`.
  The reference rule's likelihood weight is 1: the authors' update is
  `z - s^2/2 * (grad ||G(z) - x||^2 / sigma^2 + z / prior_sigma^2) + n eps`,
  the gradient of `||G(z)-x||^2 / sigma^2 + ||z||^2 / (2 prior_sigma^2)`.
  Other rules use the true negative log posterior (weight 1/2).

  Args:
    rule: a registered rule name.
    sigma: generator observation noise.
    prior_sigma: prior standard deviation.

  Returns:
    (w_rec, w_prior).
  """
  return (get_rule(rule).likelihood_weight / sigma**2, 0.5 / prior_sigma**2)


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
    rule: a registered rule name.
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


def chain_metrics(prefix: str, info: ChainInfo, x0: Array,
                  x_end: Array) -> dict[str, Array]:
  """A chain's mean energies at its ends, gradient norm and RMS move.

  `<prefix>_move` is the root mean square of ||x_end - x0|| over the batch:
  how far the chain carried its samples.
  """
  batch = x0.shape[0]
  move = jnp.sqrt(jnp.mean(jnp.sum(jnp.square(x_end - x0).reshape(batch, -1),
                                   axis=1)))
  return {f'{prefix}_energy_start': info.energy_start / batch,
          f'{prefix}_energy_end': info.energy_last / batch,
          f'{prefix}_grad_norm': info.grad_norm, f'{prefix}_move': move}
