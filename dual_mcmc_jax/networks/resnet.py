"""The reference implementation's residual nets (its `nets.py`).

`style='cifar'` is the CIFAR-10 layout (constant width), `style='celeba'` the
CelebA-64 layout (widths halve per generator block, double per EBM block).
Both generalise to any power-of-two image size >= 8 and any channel count, so
16x16 grayscale, 64x64 and 256x256 RGB come from the same code.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dual_mcmc_jax.networks.layers import avg_pool2
from dual_mcmc_jax.networks.layers import batch_norm
from dual_mcmc_jax.networks.layers import ConvOps
from dual_mcmc_jax.networks.layers import gaussian_conv_heads
from dual_mcmc_jax.networks.layers import log2_int
from dual_mcmc_jax.networks.layers import SNConv
from dual_mcmc_jax.networks.layers import SNDense
from dual_mcmc_jax.networks.layers import TorchConv
from dual_mcmc_jax.networks.layers import TorchDense
from dual_mcmc_jax.networks.layers import upsample2x

Array = jax.Array
Dtype = Any


class GenUpBlock(nn.Module):
  """Generator residual block that doubles the resolution."""
  features: int
  ops: ConvOps = ConvOps()
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    conv = functools.partial(TorchConv, ops=self.ops, dtype=self.dtype)
    h = nn.relu(batch_norm('bn1', self.dtype)(x))
    h = upsample2x(h)
    h = conv(self.features, 3, 1, 1, name='conv1')(h)
    h = nn.relu(batch_norm('bn2', self.dtype)(h))
    h = conv(self.features, 3, 1, 1, name='conv2')(h)
    s = conv(self.features, 1, 1, 0, name='shortcut')(upsample2x(x))
    return h + s


def resnet_generator_widths(ngf: int, image_size: int,
                            style: str) -> list[int]:
  """Channel widths at 4x4, 8x8, ..., image_size."""
  n_up = log2_int(image_size, 'image_size') - 2
  if style == 'cifar':
    return [ngf] * (n_up + 1)
  return [max(ngf // 2**i, 1) for i in range(n_up + 1)]


class ResGenerator(nn.Module):
  """Residual generator G(z): linear to 4x4, up-blocks, BN-ReLU-conv-tanh."""
  nz: int
  ngf: int
  image_size: int = 32
  num_channels: int = 3
  style: str = 'cifar'
  ops: ConvOps = ConvOps()
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z: Array) -> Array:
    widths = resnet_generator_widths(self.ngf, self.image_size, self.style)
    b = z.shape[0]
    h = TorchDense(4 * 4 * widths[0], dtype=self.dtype, name='fc')(z)
    # The reference views the linear output as [B, C, 4, 4].
    h = h.reshape(b, widths[0], 4, 4).transpose(0, 2, 3, 1)  # [B, 4, 4, C]
    for i, w in enumerate(widths[1:]):
      h = GenUpBlock(w, self.ops, dtype=self.dtype, name=f'block{i}')(h)
    h = nn.relu(batch_norm('bn_out', self.dtype)(h))
    h = TorchConv(self.num_channels, 3, 1, 1, ops=self.ops, dtype=self.dtype,
                  name='conv_out')(h)
    return jnp.tanh(h).astype(jnp.float32)  # [B, H, W, C]


class EbmBlock(nn.Module):
  """EBM residual block (all convs spectrally normalised, no bias)."""
  features: int
  downsample: bool
  first: bool = False  # The start block: no leading ReLU, pool-then-conv skip.
  spectral_norm: bool = True
  sn_steps: int = 1
  ops: ConvOps = ConvOps()
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, update_stats: bool) -> Array:
    conv = functools.partial(SNConv, stride=1,
                             spectral_norm=self.spectral_norm,
                             sn_steps=self.sn_steps, ops=self.ops,
                             dtype=self.dtype)
    h = x if self.first else nn.relu(x)
    h = conv(self.features, 3, padding=1, name='conv1')(h, update_stats)
    h = nn.relu(h)
    # The main path's 2x2 average pool (downsampling blocks) is the conv's.
    h = conv(self.features, 3, padding=1, pool=self.downsample,
             name='conv2')(h, update_stats)
    if self.first:
      s = conv(self.features, 1, name='shortcut')(avg_pool2(x), update_stats)
    elif self.downsample or x.shape[-1] != self.features:
      s = conv(self.features, 1, name='shortcut')(x, update_stats)
      if self.downsample:
        s = avg_pool2(s)
    else:
      s = x
    return h + s


def resnet_ebm_layout(nef: int, image_size: int,
                      style: str) -> list[tuple[int, bool]]:
  """(width, downsample) per block, start block first."""
  if style == 'cifar':
    return [(nef, True), (nef, True), (nef, False), (nef, False)]
  n = log2_int(image_size, 'image_size') - 1  # down to 2x2
  return [(max(nef // 2**(n - 1 - i), 1), True) for i in range(n)]


class ResEBM(nn.Module):
  """Residual EBM E(x) -> energy per example (low on data)."""
  nef: int
  image_size: int = 32
  style: str = 'cifar'
  spectral_norm: bool = True
  sn_steps: int = 1
  ops: ConvOps = ConvOps()
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, update_stats: bool = True) -> Array:
    h = x.astype(self.dtype)
    layout = resnet_ebm_layout(self.nef, self.image_size, self.style)
    for i, (w, down) in enumerate(layout):
      h = EbmBlock(w, down, first=(i == 0), spectral_norm=self.spectral_norm,
                   sn_steps=self.sn_steps, ops=self.ops, dtype=self.dtype,
                   name=f'block{i}')(h, update_stats)
    h = jnp.mean(nn.relu(h), axis=(1, 2))  # [B, nef]
    e = SNDense(1, use_bias=False, spectral_norm=self.spectral_norm,
                sn_steps=self.sn_steps, dtype=self.dtype,
                name='fc')(h, update_stats)
    return e[:, 0].astype(jnp.float32)  # [B]


def conv_inference_widths(nif: int, image_size: int) -> list[int]:
  n_down = log2_int(image_size, 'image_size') - 2
  return [nif * min(2**(i + 1), 8) for i in range(n_down)]


class ResInference(nn.Module):
  """Inference model q(z|x) = N(mu(x), diag(exp(logvar(x))))."""
  nz: int
  nif: int
  image_size: int = 32
  style: str = 'cifar'
  dtype: Dtype = jnp.float32
  ops: ConvOps = ConvOps()

  @nn.compact
  def __call__(self, x: Array) -> tuple[Array, Array]:
    h = x.astype(self.dtype)
    widths = conv_inference_widths(self.nif, self.image_size)
    conv = functools.partial(TorchConv, use_bias=False, ops=self.ops,
                             dtype=self.dtype)
    if self.style == 'cifar':
      h = conv(self.nif, 3, 1, 1, name='conv0')(h)
    else:  # celeba: the first conv already halves the resolution.
      h = conv(self.nif, 4, 2, 1, name='conv0')(h)
      widths = widths[:-1]
    h = nn.leaky_relu(h, 0.2)
    for i, w in enumerate(widths):
      h = conv(w, 4, 2, 1, name=f'conv{i + 1}')(h)
      h = nn.leaky_relu(h, 0.2)
    # h: [B, 4, 4, C]
    return gaussian_conv_heads(h, self.nz, self.dtype, self.ops)
