"""Sampling with trained networks: the pieces every chain is made of.

`generate` (x = G(z)), `revise_x` (x-revision under the EBM), `infer_z`
(z0 ~ q(z|x)) and `revise_z` (z-revision under the generator posterior) are
what the train step, the evaluators (FID, OOD, inpainting, classifier) and
the notebook compose; `make_sample_fn` builds the image grids the training
loop writes. They sit below both the train step and the evaluators, so
evaluation never passes through the training modules. Each takes the
modules, a network's state and explicit chain settings
(`settings.ChainSettings`).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from dual_mcmc_jax import langevin
from dual_mcmc_jax import networks
from dual_mcmc_jax import noise
from dual_mcmc_jax import settings as settings_lib
from dual_mcmc_jax import train_state as ts

Array = jax.Array


def generate(models: networks.Models, gen: ts.NetState,
             z: Array) -> tuple[Array, dict[str, Any]]:
  """x = G(z) with batch-statistics BatchNorm; returns (x, new gen state)."""
  x, vs = models.gen.apply({'params': gen.params, **gen.state}, z,
                           mutable=['batch_stats'])
  return x, dict(vs)


def ebm_energies(models: networks.Models, ebm: ts.NetState, x: Array,
                 update_stats: bool = True
                 ) -> tuple[Array, dict[str, Any]]:
  """E(x) per example [B] in train mode; returns (energies, new EBM state).

  Each call runs one spectral-norm power iteration, as every forward pass
  of the reference's EBM in train mode does.
  """
  e, vs = models.ebm.apply({'params': ebm.params, **ebm.state}, x,
                           update_stats=update_stats, mutable=['batch_stats'])
  return e, dict(vs)


def revise_x(models: networks.Models, ebm: ts.NetState, x0: Array, key: Array,
             settings: settings_lib.ChainSettings, mask: Array | None = None,
             normal: noise.Normal = noise.prng_normal,
             name: str = noise.X_CHAIN,
             loop: langevin.ChainLoop = langevin.fori_chain,
             then: langevin.Then = langevin.unchanged
             ) -> tuple[Array, dict[str, Any], langevin.ChainInfo]:
  """x-revision of `x0` under the EBM; returns (x1, new EBM state, info).

  `normal` and `name` choose where the chain's noise comes from
  (`noise.py`; the PRNG by default), `loop` how its steps run and `then`
  what follows each step (`langevin.langevin`).
  """
  fn = langevin.x_energy_fn(models.ebm.apply, ebm.params)
  return langevin.langevin(fn, x0, key, settings, aux=ebm.state, mask=mask,
                           normal=normal, name=name, loop=loop, then=then)


def infer_z(models: networks.Models, inf: ts.NetState, x: Array,
            key: Array | None, normal: noise.Normal = noise.prng_normal
            ) -> tuple[Array, Array, Array]:
  """Draws z0 ~ q(z|x) (the mean if `key` is None); returns (z0, mu, logvar)."""
  mu, logvar = models.inf.apply({'params': inf.params}, x)
  if key is None:
    return mu, mu, logvar
  eps = normal(noise.REPARAM, key, mu.shape, None)
  return mu + jnp.exp(0.5 * logvar) * eps, mu, logvar


def revise_z(models: networks.Models, gen: ts.NetState, z0: Array, x: Array,
             key: Array, settings: settings_lib.ChainSettings, sigma: float,
             prior_sigma: float, x_mask: Array | None = None,
             normal: noise.Normal = noise.prng_normal,
             loop: langevin.ChainLoop = langevin.fori_chain
             ) -> tuple[Array, dict[str, Any], langevin.ChainInfo]:
  """z-revision of `z0` under the generator posterior given x.

  Args:
    models, gen: the generator and its state.
    z0: initial latents, [B, nz].
    x: observed data, [B, ...].
    key: PRNG key of the chain.
    settings: the chain's settings.
    sigma, prior_sigma: generator noise and prior scale.
    x_mask: optional mask of observed pixels (True = observed); unobserved
      pixels do not enter the likelihood (inpainting).
    normal: the source of the chain's noise (`noise.py`).
    loop: how the chain's steps run (`langevin.ChainLoop`).

  Returns:
    (z1, new generator state, chain info).
  """
  fn = langevin.z_energy_fn(models.gen.apply, gen.params, x, sigma,
                            prior_sigma, settings.rule, x_mask)
  return langevin.langevin(fn, z0, key, settings, aux=gen.state,
                           normal=normal, name=noise.Z_CHAIN, loop=loop)


def make_sample_fn(settings: settings_lib.Settings | Any,
                   models: networks.Models
                   ) -> Callable[[ts.TrainState, Array, Array],
                                 dict[str, Array]]:
  """Builds `sample(state, key, x) -> images` for TensorBoard grids.

  Returns generator samples, their x-revision under the EBM, and
  reconstructions of the data batch `x` before and after z-revision. Uses the
  training chain settings (`settings`, or the config they are read from);
  the state is not modified.
  """
  settings = settings_lib.from_config(settings)
  lx, lz, loss = settings.langevin_x, settings.langevin_z, settings.loss

  def sample(state: ts.TrainState, key: Array, x: Array) -> dict[str, Array]:
    k_z, k_x, k_zc = jax.random.split(key, 3)
    z = jax.random.normal(k_z, (x.shape[0], models.nz), jnp.float32)
    x0, _ = generate(models, state.gen, z)
    x1, _, _ = revise_x(models, state.ebm, x0, k_x, lx)
    z0, _, _ = infer_z(models, state.inf, x, None)
    rec0, _ = generate(models, state.gen, z0)
    z1, _, _ = revise_z(models, state.gen, z0, x, k_zc, lz, loss.sigma,
                        loss.prior_sigma)
    rec1, _ = generate(models, state.gen, z1)
    return {'generator_samples': x0, 'ebm_revised_samples': x1,
            'data': x, 'reconstruction_before_z_revision': rec0,
            'reconstruction_after_z_revision': rec1}

  return sample
