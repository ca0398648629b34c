"""Plain convolutional nets of the paper's Table 1 ("Ours" with simple nets).

In the style of Divergence Triangle / Cooperative Networks, sized to the
paper's Table 1 (G 8M, I 5M, E 2M parameters at the widths of
`configs/cifar10_simple.py`).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dual_mcmc_jax.networks.layers import batch_norm
from dual_mcmc_jax.networks.layers import Conv
from dual_mcmc_jax.networks.layers import ConvOps
from dual_mcmc_jax.networks.layers import gaussian_conv_heads
from dual_mcmc_jax.networks.layers import log2_int
from dual_mcmc_jax.networks.layers import SNConv
from dual_mcmc_jax.networks.layers import TorchConv

Array = jax.Array
Dtype = Any


class SimpleGenerator(nn.Module):
  """DCGAN-style generator: ConvT 1->4, then stride-2 ConvTs to image size."""
  nz: int
  ngf: int
  image_size: int = 32
  num_channels: int = 3
  ops: ConvOps = ConvOps()
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z: Array) -> Array:
    n_up = log2_int(self.image_size, 'image_size') - 2
    # Transposed convs as input-dilated convs (lax.conv_transpose's
    # arithmetic): a 4x4 'VALID' transposed conv of a 1x1 map pads by 3.
    convt = functools.partial(Conv, kernel=4, ops=self.ops, dtype=self.dtype)
    h = z[:, None, None, :].astype(self.dtype)  # [B, 1, 1, nz]
    h = convt(self.ngf * 2**n_up, padding=(3, 3), name='convt0')(h)  # [B, 4, 4, C]
    for i in range(n_up):
      h = nn.relu(batch_norm(f'bn{i}', self.dtype)(h))
      last = i == n_up - 1
      feats = self.num_channels if last else self.ngf * 2**(n_up - 1 - i)
      # PyTorch ConvTranspose2d(k=4, s=2, p=1) doubles the resolution: an
      # input dilated by 2 and padded by k - 1 - p = 2 per side.
      h = convt(feats, padding=(2, 2), lhs_dilation=2,
                name=f'convt{i + 1}')(h)
    return jnp.tanh(h).astype(jnp.float32)


class SimpleEBM(nn.Module):
  """Plain conv EBM: stride-2 SN convs with LReLU, then a 4x4 valid conv."""
  nef: int
  image_size: int = 32
  spectral_norm: bool = True
  sn_steps: int = 1
  ops: ConvOps = ConvOps()
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, update_stats: bool = True) -> Array:
    n_down = log2_int(self.image_size, 'image_size') - 2
    conv = functools.partial(SNConv, use_bias=True,
                             spectral_norm=self.spectral_norm,
                             sn_steps=self.sn_steps, ops=self.ops,
                             dtype=self.dtype)
    h = x.astype(self.dtype)
    for i in range(n_down):
      h = conv(self.nef * 2**i, 4, 2, 1, name=f'conv{i}')(h, update_stats)
      h = nn.leaky_relu(h, 0.2)
    e = conv(1, 4, 1, 0, name='conv_out')(h, update_stats)
    return e.reshape(x.shape[0]).astype(jnp.float32)


class SimpleInference(nn.Module):
  """Plain conv encoder: stride-2 convs with LReLU, then two 4x4 heads."""
  nz: int
  nif: int
  image_size: int = 32
  dtype: Dtype = jnp.float32
  ops: ConvOps = ConvOps()

  @nn.compact
  def __call__(self, x: Array) -> tuple[Array, Array]:
    n_down = log2_int(self.image_size, 'image_size') - 2
    h = x.astype(self.dtype)
    for i in range(n_down):
      h = TorchConv(self.nif * 2**i, 4, 2, 1, use_bias=False, ops=self.ops,
                    dtype=self.dtype, name=f'conv{i}')(h)
      h = nn.leaky_relu(h, 0.2)
    return gaussian_conv_heads(h, self.nz, self.dtype, self.ops)
