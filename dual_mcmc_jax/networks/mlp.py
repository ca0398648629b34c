"""Small fully connected nets for low-dimensional points (2-D densities)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dual_mcmc_jax.networks.layers import SNDense
from dual_mcmc_jax.networks.layers import TorchDense

Array = jax.Array
Dtype = Any


class MlpEBM(nn.Module):
  """MLP energy for low-dimensional points (smooth swish activations)."""
  hidden: int = 128
  layers: int = 3
  spectral_norm: bool = False
  sn_steps: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, update_stats: bool = True) -> Array:
    h = x.astype(self.dtype)
    for i in range(self.layers):
      h = SNDense(self.hidden, use_bias=True, spectral_norm=self.spectral_norm,
                  sn_steps=self.sn_steps, dtype=self.dtype,
                  name=f'fc{i}')(h, update_stats)
      h = nn.swish(h)
    e = SNDense(1, use_bias=True, spectral_norm=self.spectral_norm,
                sn_steps=self.sn_steps, dtype=self.dtype,
                name='fc_out')(h, update_stats)
    return e[:, 0].astype(jnp.float32)


class MlpGenerator(nn.Module):
  """MLP generator z -> point."""
  out_dim: int = 2
  hidden: int = 128
  layers: int = 3
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z: Array) -> Array:
    h = z.astype(self.dtype)
    for i in range(self.layers):
      h = nn.relu(TorchDense(self.hidden, dtype=self.dtype, name=f'fc{i}')(h))
    return TorchDense(self.out_dim, dtype=self.dtype,
                      name='fc_out')(h).astype(jnp.float32)


class MlpInference(nn.Module):
  """MLP encoder point -> (mu, logvar)."""
  nz: int
  hidden: int = 128
  layers: int = 3
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> tuple[Array, Array]:
    h = x.astype(self.dtype)
    for i in range(self.layers):
      h = nn.leaky_relu(
          TorchDense(self.hidden, dtype=self.dtype, name=f'fc{i}')(h), 0.2)
    mu = TorchDense(self.nz, dtype=self.dtype, name='mu')(h)
    logvar = TorchDense(self.nz, dtype=self.dtype, name='logvar')(h)
    return mu.astype(jnp.float32), logvar.astype(jnp.float32)
