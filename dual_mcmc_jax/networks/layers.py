"""Layers shared by the nets, with the reference implementation's conventions.

Every convolution of the nets is one thin wrapper, `Conv` (or `SNConv` for
the EBM's spectrally normalised ones), whose arithmetic is a `ConvOps`
given when the models are built: by default XLA's own
`lax.conv_general_dilated`, the path GPUs and TPUs run; the CPU plug-in
(`dual_mcmc_jax/cpu/`) supplies other forms of the same convolutions.

So that the authors' PyTorch checkpoints (jcui1224/dual-MCMC, `nets.py`)
map one-to-one: conv kernels are Xavier-normal (their `weights_init`), linear
layers and conv biases use PyTorch's default uniform(+-1/sqrt(fan_in)) init,
BatchNorm scale is drawn from N(0, 1) with zero bias and always normalises
with the statistics of the current batch (the reference never switches it to
inference mode; running statistics are still kept in `batch_stats` so that
imported checkpoints round-trip), and bilinear upsampling uses
align_corners=True. Spectral norm follows PyTorch's `spectral_norm`: the raw
weight is the parameter and the power-iteration vector lives in
`batch_stats`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Dtype = Any
Pair = tuple[int, int]
_DIMS = ('NHWC', 'HWIO', 'NHWC')

# kaiming_uniform(a=sqrt(5)), i.e. uniform(+-1/sqrt(fan_in)).
torch_default_kernel_init = nn.initializers.variance_scaling(
    1.0 / 3.0, 'fan_in', 'uniform')
# The reference re-initialises every conv weight with xavier_normal_.
xavier_normal = nn.initializers.variance_scaling(1.0, 'fan_avg', 'normal')
# BatchNorm weight ~ N(0, 1) in the reference's weights_init.
bn_scale_init = nn.initializers.normal(stddev=1.0)


def torch_default_bias_init(fan_in: int) -> Callable[..., Array]:
  """PyTorch's default bias init, uniform(+-1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def _interp_matrix(n_in: int, n_out: int) -> np.ndarray:
  """Linear interpolation matrix [n_out, n_in] with align_corners=True."""
  m = np.zeros((n_out, n_in), np.float32)
  if n_in == 1:
    m[:, 0] = 1.0
    return m
  pos = np.arange(n_out) * (n_in - 1) / (n_out - 1)
  lo = np.clip(np.floor(pos).astype(np.int64), 0, n_in - 2)
  frac = (pos - lo).astype(np.float32)
  m[np.arange(n_out), lo] = 1.0 - frac
  m[np.arange(n_out), lo + 1] += frac
  return m


def upsample2x(x: Array) -> Array:
  """Bilinear x2 upsampling with align_corners=True (PyTorch semantics).

  Written as two small matmuls, which XLA maps onto the MXU / tensor cores,
  instead of a gather.

  Args:
    x: [B, H, W, C].

  Returns:
    [B, 2H, 2W, C].
  """
  _, h, w, _ = x.shape
  mh = jnp.asarray(_interp_matrix(h, 2 * h), x.dtype)
  mw = jnp.asarray(_interp_matrix(w, 2 * w), x.dtype)
  x = jnp.einsum('oh,bhwc->bowc', mh, x)
  return jnp.einsum('pw,bowc->bopc', mw, x)


def avg_pool2(x: Array) -> Array:
  return nn.avg_pool(x, (2, 2), strides=(2, 2))



def log2_int(n: int, what: str) -> int:
  """log2(n) for a power of two `n`; ValueError naming `what` otherwise."""
  k = int(round(math.log2(n))) if n > 0 else -1
  if n <= 0 or 2**k != n:
    raise ValueError(f'{what} must be a power of two, got {n}')
  return k


@dataclasses.dataclass(frozen=True)
class ConvOps:
  """How the nets compute their convolutions: XLA's own, by default.

  A backend plug-in subclasses it (dual_mcmc_jax/cpu/conv.py); the values
  are the same to float32 rounding either way.
  """

  def conv(self, x: Array, w: Array, strides: Pair, padding: tuple[Pair, Pair],
           lhs_dilation: Pair = (1, 1)) -> Array:
    """NHWC x HWIO conv; `lhs_dilation > 1` makes it a transposed conv."""
    return lax.conv_general_dilated(x, w, strides, padding,
                                    lhs_dilation=lhs_dilation,
                                    dimension_numbers=_DIMS)

  def normalized_conv(self, x: Array, w: Array, sigma: Array | None,
                      stride: int, padding: int, pool: bool) -> Array:
    """conv(x, w / sigma), then a 2x2 average pool if `pool`."""
    if sigma is not None:
      w = w / sigma
    y = self.conv(x, w.astype(x.dtype), (stride, stride),
                  ((padding, padding), (padding, padding)))
    return avg_pool2(y) if pool else y


class Conv(nn.Module):
  """Square-kernel NHWC conv computed by `ops`.

  Holds `kernel` [k, k, in, out] and `bias` like `nn.Conv` (so parameter
  trees and checkpoints are those of flax's layer); `lhs_dilation > 1`
  makes it a transposed convolution (PyTorch's ConvTranspose2d with the
  given explicit padding).
  """
  features: int
  kernel: int
  stride: int = 1
  padding: tuple[int, int] = (0, 0)
  lhs_dilation: int = 1
  use_bias: bool = True
  kernel_init: Callable[..., Array] = xavier_normal
  bias_init: Callable[..., Array] = nn.initializers.zeros
  ops: ConvOps = ConvOps()
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    k = self.kernel
    w = self.param('kernel', self.kernel_init,
                   (k, k, x.shape[-1], self.features))
    y = self.ops.conv(x.astype(self.dtype), w.astype(self.dtype),
                      (self.stride,) * 2, (tuple(self.padding),) * 2,
                      (self.lhs_dilation,) * 2)
    if self.use_bias:
      b = self.param('bias', self.bias_init, (self.features,))
      y = y + b.astype(self.dtype)
    return y


class TorchConv(nn.Module):
  """Conv with the reference init and PyTorch-style explicit padding."""
  features: int
  kernel: int
  stride: int = 1
  padding: int = 0
  use_bias: bool = True
  ops: ConvOps = ConvOps()
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    fan_in = x.shape[-1] * self.kernel * self.kernel
    return Conv(self.features, self.kernel, self.stride,
                (self.padding, self.padding), use_bias=self.use_bias,
                bias_init=torch_default_bias_init(fan_in), ops=self.ops,
                dtype=self.dtype, name='conv')(x)


class TorchDense(nn.Module):
  """nn.Dense with PyTorch's default init."""
  features: int
  use_bias: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return nn.Dense(
        self.features, use_bias=self.use_bias,
        kernel_init=torch_default_kernel_init,
        bias_init=torch_default_bias_init(x.shape[-1]), dtype=self.dtype,
        name='dense')(x)


def batch_norm(name: str | None = None, dtype: Dtype = jnp.float32):
  # PyTorch momentum 0.1 is Flax momentum 0.9; batch statistics always.
  return nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5,
                      scale_init=bn_scale_init, dtype=dtype, name=name)


def _l2_normalize(v: Array, eps: float = 1e-12) -> Array:
  # PyTorch's F.normalize: v / max(||v||, eps).
  return v / jnp.maximum(jnp.linalg.norm(v), eps)


def spectral_normalize(module: nn.Module, kernel: Array, update_stats: bool,
                       n_steps: int) -> Array:
  """The top singular value of `kernel`, PyTorch `spectral_norm` style.

  The stored parameter is the raw weight (PyTorch's `weight_orig`) and the
  power-iteration vector `u` (PyTorch's `weight_u`, length = output features)
  lives in the `batch_stats` collection. Flax's `nn.SpectralNorm` is not used
  because it stores the *normalised* kernel as the parameter at init, which
  breaks the reference initialisation (Xavier-normal raw weights) and the
  one-to-one mapping of PyTorch checkpoints.

  Args:
    module: the calling module (owns the `u` variable).
    kernel: [..., in, out] weight; flattened to [rest, out].
    update_stats: store the new `u` (train mode: every forward pass).
    n_steps: power iterations per call.

  Returns:
    sigma, with gradients flowing through it as in PyTorch (u and v are
    constants); the layer divides by it.
  """
  out = kernel.shape[-1]
  mat = kernel.reshape(-1, out).astype(jnp.float32)  # [rest, out]
  u_var = module.variable(
      'batch_stats', 'u',
      lambda: _l2_normalize(jax.random.normal(module.make_rng('params'),
                                              (out,), jnp.float32)))
  u = u_var.value
  v = None
  # v @ mat rather than mat.T @ v: the same sums, without XLA copying the
  # transposed weight at every call (every Langevin step).
  for _ in range(max(n_steps, 1)):
    v = _l2_normalize(mat @ u)  # [rest]
    u = _l2_normalize(v @ mat)  # [out]
  u = jax.lax.stop_gradient(u)
  v = jax.lax.stop_gradient(v)
  if update_stats and not module.is_initializing():
    u_var.value = u
  return jnp.dot(u, v @ mat)


class SNConv(nn.Module):
  """Conv with optional spectral norm (no bias by default), as in the EBM.

  `pool` follows the conv by a 2x2 average pool (`ConvOps.normalized_conv`
  computes both).
  """
  features: int
  kernel: int
  stride: int = 1
  padding: int = 0
  use_bias: bool = False
  spectral_norm: bool = True
  sn_steps: int = 1
  pool: bool = False
  ops: ConvOps = ConvOps()
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, update_stats: bool) -> Array:
    fan_in = x.shape[-1] * self.kernel * self.kernel
    w = self.param('kernel', xavier_normal,
                   (self.kernel, self.kernel, x.shape[-1], self.features))
    sigma = (spectral_normalize(self, w, update_stats, self.sn_steps)
             if self.spectral_norm else None)
    y = self.ops.normalized_conv(x.astype(self.dtype), w, sigma, self.stride,
                                 self.padding, self.pool)
    if self.use_bias:
      b = self.param('bias', torch_default_bias_init(fan_in), (self.features,))
      y = y + b.astype(self.dtype)
    return y


class SNDense(nn.Module):
  """Linear layer with optional spectral norm."""
  features: int
  use_bias: bool = False
  spectral_norm: bool = True
  sn_steps: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, update_stats: bool) -> Array:
    w = self.param('kernel', torch_default_kernel_init,
                   (x.shape[-1], self.features))
    if self.spectral_norm:
      w = w / spectral_normalize(self, w, update_stats, self.sn_steps)
    y = x.astype(self.dtype) @ w.astype(self.dtype)
    if self.use_bias:
      b = self.param('bias', torch_default_bias_init(x.shape[-1]),
                     (self.features,))
      y = y + b.astype(self.dtype)
    return y


def gaussian_conv_heads(h: Array, nz: int, dtype: Dtype,
                        ops: ConvOps = ConvOps()) -> tuple[Array, Array]:
  """The inference nets' two 4x4 valid-conv heads, mu and logvar.

  Called inside a compact `__call__`, so the convs become its submodules
  'mu' and 'logvar'.

  Args:
    h: [B, 4, 4, C] features.
    nz: latent size.
    dtype: compute dtype.
    ops: how the convs compute.

  Returns:
    (mu, logvar), each [B, nz] float32.
  """
  b = h.shape[0]
  mu = TorchConv(nz, 4, 1, 0, ops=ops, dtype=dtype, name='mu')(h)
  logvar = TorchConv(nz, 4, 1, 0, ops=ops, dtype=dtype, name='logvar')(h)
  return (mu.reshape(b, nz).astype(jnp.float32),
          logvar.reshape(b, nz).astype(jnp.float32))
