"""The three networks: EBM E(x), generator G(z) and inference model q(z|x).

Three families, all built from explicit fields (never from a ConfigDict; see
`create_models` for the mapping):

* `Res*`: the reference implementation's residual nets. `style='cifar'` is
  the CIFAR-10 layout (constant width), `style='celeba'` the CelebA-64 layout
  (widths halve per generator block, double per EBM block). Both generalise
  to any power-of-two image size >= 8 and any channel count, so 16x16
  grayscale, 64x64 and 256x256 RGB come from the same code.
* `Simple*`: plain convolutional nets in the style of Divergence Triangle /
  Cooperative Networks, sized to the paper's Table 1 (G 8M, I 5M, E 2M
  parameters at the widths of `configs/cifar10_simple.py`).
* `Mlp*`: small fully connected nets for 2-D densities.

Conventions shared with the reference (PyTorch) so that its checkpoints map
one-to-one: conv kernels are Xavier-normal, linear layers and conv biases use
PyTorch's default uniform(+-1/sqrt(fan_in)) init, BatchNorm scale is drawn
from N(0, 1) with zero bias, the generator's first linear layer is reshaped
in channel-major (NCHW) order, and bilinear upsampling uses
align_corners=True. The generator's BatchNorm always normalises with the
statistics of the current batch, as the reference never switches it to
inference mode; running statistics are still kept (collection
`batch_stats`) so that imported checkpoints round-trip. Every EBM layer is
spectrally normalised (`spectral_normalize`); its power-iteration vector also
lives in `batch_stats`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dual_mcmc_jax import conv as conv_lib

Array = jax.Array
Dtype = Any

# PyTorch's default init for nn.Linear / nn.Conv weights is
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


def _log2_int(n: int, what: str) -> int:
  k = int(round(math.log2(n))) if n > 0 else -1
  if n <= 0 or 2**k != n:
    raise ValueError(f'{what} must be a power of two, got {n}')
  return k


def check_image_size(image_size: int, arch: str, style: str = 'cifar') -> None:
  """Raises ValueError if `arch` cannot be built for `image_size`."""
  if arch == 'mlp':
    return
  del style  # Every conv layout needs at least one 2x downsampling to 4x4.
  # The nets double (or halve) the resolution per block from 4x4.
  if image_size < 8 or image_size & (image_size - 1):
    raise ValueError(
        f'config.data.image_size={image_size} cannot be built by '
        f'config.model.arch={arch!r}; use a power of two >= 8 (8, 16, 32, '
        '64, ...)')


class Conv2d(nn.Module):
  """Square-kernel NHWC conv whose input gradient rule can be chosen.

  Holds `kernel` [k, k, in, out] and `bias` like `nn.Conv` /
  `nn.ConvTranspose` (so parameter trees and checkpoints are the same) and
  computes through `conv.conv2d`; `lhs_dilation > 1` makes it a transposed
  convolution (PyTorch's ConvTranspose2d with the given explicit padding).
  """
  features: int
  kernel: int
  stride: int = 1
  padding: tuple[int, int] = (0, 0)
  lhs_dilation: int = 1
  use_bias: bool = True
  kernel_init: Callable[..., Array] = xavier_normal
  bias_init: Callable[..., Array] = nn.initializers.zeros
  input_grad: str = 'auto'
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    k = self.kernel
    w = self.param('kernel', self.kernel_init,
                   (k, k, x.shape[-1], self.features))
    y = conv_lib.conv2d(
        x.astype(self.dtype), w.astype(self.dtype), (self.stride,) * 2,
        (tuple(self.padding),) * 2, (self.lhs_dilation,) * 2,
        self.input_grad)
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
  input_grad: str = 'auto'
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    fan_in = x.shape[-1] * self.kernel * self.kernel
    return Conv2d(self.features, self.kernel, self.stride,
                  (self.padding, self.padding), use_bias=self.use_bias,
                  bias_init=torch_default_bias_init(fan_in),
                  input_grad=self.input_grad, dtype=self.dtype,
                  name='conv')(x)


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
  """Divides `kernel` by its top singular value, PyTorch `spectral_norm` style.

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
    kernel / sigma, with gradients flowing through sigma as in PyTorch.
  """
  out = kernel.shape[-1]
  mat = kernel.reshape(-1, out).astype(jnp.float32)  # [rest, out]
  u_var = module.variable(
      'batch_stats', 'u',
      lambda: _l2_normalize(jax.random.normal(module.make_rng('params'),
                                              (out,), jnp.float32)))
  u = u_var.value
  v = None
  for _ in range(max(n_steps, 1)):
    v = _l2_normalize(mat @ u)  # [rest]
    u = _l2_normalize(mat.T @ v)  # [out]
  u = jax.lax.stop_gradient(u)
  v = jax.lax.stop_gradient(v)
  sigma = jnp.dot(u, mat.T @ v)
  if update_stats and not module.is_initializing():
    u_var.value = u
  return (kernel / sigma).astype(kernel.dtype)


class SNConv(nn.Module):
  """Conv with optional spectral norm (no bias by default), as in the EBM."""
  features: int
  kernel: int
  stride: int = 1
  padding: int = 0
  use_bias: bool = False
  spectral_norm: bool = True
  sn_steps: int = 1
  input_grad: str = 'auto'
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, update_stats: bool) -> Array:
    fan_in = x.shape[-1] * self.kernel * self.kernel
    w = self.param('kernel', xavier_normal,
                   (self.kernel, self.kernel, x.shape[-1], self.features))
    if self.spectral_norm:
      w = spectral_normalize(self, w, update_stats, self.sn_steps)
    p = self.padding
    y = conv_lib.conv2d(x.astype(self.dtype), w.astype(self.dtype),
                        (self.stride, self.stride), [(p, p), (p, p)],
                        input_grad=self.input_grad)
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
      w = spectral_normalize(self, w, update_stats, self.sn_steps)
    y = x.astype(self.dtype) @ w.astype(self.dtype)
    if self.use_bias:
      b = self.param('bias', torch_default_bias_init(x.shape[-1]),
                     (self.features,))
      y = y + b.astype(self.dtype)
    return y


# ----------------------------------------------------------------------------
# Residual nets of the reference implementation.
# ----------------------------------------------------------------------------


class GenUpBlock(nn.Module):
  """Generator residual block that doubles the resolution."""
  features: int
  conv_input_grad: str = 'auto'
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    conv = functools.partial(TorchConv, input_grad=self.conv_input_grad,
                             dtype=self.dtype)
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
  n_up = _log2_int(image_size, 'config.data.image_size') - 2
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
  conv_input_grad: str = 'auto'
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z: Array) -> Array:
    widths = resnet_generator_widths(self.ngf, self.image_size, self.style)
    b = z.shape[0]
    h = TorchDense(4 * 4 * widths[0], dtype=self.dtype, name='fc')(z)
    # The reference views the linear output as [B, C, 4, 4].
    h = h.reshape(b, widths[0], 4, 4).transpose(0, 2, 3, 1)  # [B, 4, 4, C]
    for i, w in enumerate(widths[1:]):
      h = GenUpBlock(w, self.conv_input_grad, dtype=self.dtype,
                     name=f'block{i}')(h)
    h = nn.relu(batch_norm('bn_out', self.dtype)(h))
    h = TorchConv(self.num_channels, 3, 1, 1,
                  input_grad=self.conv_input_grad, dtype=self.dtype,
                  name='conv_out')(h)
    return jnp.tanh(h).astype(jnp.float32)  # [B, H, W, C]


class EbmBlock(nn.Module):
  """EBM residual block (all convs spectrally normalised, no bias)."""
  features: int
  downsample: bool
  first: bool = False  # The start block: no leading ReLU, pool-then-conv skip.
  spectral_norm: bool = True
  sn_steps: int = 1
  conv_input_grad: str = 'auto'
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, update_stats: bool) -> Array:
    conv = lambda f, k, p, name: SNConv(  # pylint: disable=g-long-lambda
        f, k, 1, p, spectral_norm=self.spectral_norm, sn_steps=self.sn_steps,
        input_grad=self.conv_input_grad, dtype=self.dtype, name=name)
    h = x if self.first else nn.relu(x)
    h = conv(self.features, 3, 1, 'conv1')(h, update_stats)
    h = nn.relu(h)
    h = conv(self.features, 3, 1, 'conv2')(h, update_stats)
    if self.downsample:
      h = avg_pool2(h)
    if self.first:
      s = conv(self.features, 1, 0, 'shortcut')(avg_pool2(x), update_stats)
    elif self.downsample or x.shape[-1] != self.features:
      s = conv(self.features, 1, 0, 'shortcut')(x, update_stats)
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
  n = _log2_int(image_size, 'config.data.image_size') - 1  # down to 2x2
  return [(max(nef // 2**(n - 1 - i), 1), True) for i in range(n)]


class ResEBM(nn.Module):
  """Residual EBM E(x) -> energy per example (low on data)."""
  nef: int
  image_size: int = 32
  style: str = 'cifar'
  spectral_norm: bool = True
  sn_steps: int = 1
  conv_input_grad: str = 'auto'
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, update_stats: bool = True) -> Array:
    h = x.astype(self.dtype)
    layout = resnet_ebm_layout(self.nef, self.image_size, self.style)
    for i, (w, down) in enumerate(layout):
      h = EbmBlock(w, down, first=(i == 0), spectral_norm=self.spectral_norm,
                   sn_steps=self.sn_steps,
                   conv_input_grad=self.conv_input_grad, dtype=self.dtype,
                   name=f'block{i}')(h, update_stats)
    h = jnp.mean(nn.relu(h), axis=(1, 2))  # [B, nef]
    e = SNDense(1, use_bias=False, spectral_norm=self.spectral_norm,
                sn_steps=self.sn_steps, dtype=self.dtype,
                name='fc')(h, update_stats)
    return e[:, 0].astype(jnp.float32)  # [B]


def conv_inference_widths(nif: int, image_size: int) -> list[int]:
  n_down = _log2_int(image_size, 'config.data.image_size') - 2
  return [nif * min(2**(i + 1), 8) for i in range(n_down)]


def gaussian_conv_heads(h: Array, nz: int,
                        dtype: Dtype) -> tuple[Array, Array]:
  """The inference nets' two 4x4 valid-conv heads, mu and logvar.

  Called inside a compact `__call__`, so the convs become its submodules
  'mu' and 'logvar'.

  Args:
    h: [B, 4, 4, C] features.
    nz: latent size.
    dtype: compute dtype.

  Returns:
    (mu, logvar), each [B, nz] float32.
  """
  b = h.shape[0]
  mu = TorchConv(nz, 4, 1, 0, dtype=dtype, name='mu')(h)
  logvar = TorchConv(nz, 4, 1, 0, dtype=dtype, name='logvar')(h)
  return (mu.reshape(b, nz).astype(jnp.float32),
          logvar.reshape(b, nz).astype(jnp.float32))


class ResInference(nn.Module):
  """Inference model q(z|x) = N(mu(x), diag(exp(logvar(x))))."""
  nz: int
  nif: int
  image_size: int = 32
  style: str = 'cifar'
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> tuple[Array, Array]:
    h = x.astype(self.dtype)
    widths = conv_inference_widths(self.nif, self.image_size)
    if self.style == 'cifar':
      h = TorchConv(self.nif, 3, 1, 1, use_bias=False, dtype=self.dtype,
                    name='conv0')(h)
    else:  # celeba: the first conv already halves the resolution.
      h = TorchConv(self.nif, 4, 2, 1, use_bias=False, dtype=self.dtype,
                    name='conv0')(h)
      widths = widths[:-1]
    h = nn.leaky_relu(h, 0.2)
    for i, w in enumerate(widths):
      h = TorchConv(w, 4, 2, 1, use_bias=False, dtype=self.dtype,
                    name=f'conv{i + 1}')(h)
      h = nn.leaky_relu(h, 0.2)
    return gaussian_conv_heads(h, self.nz, self.dtype)  # h: [B, 4, 4, C]


# ----------------------------------------------------------------------------
# Simple plain-conv nets (paper Table 1).
# ----------------------------------------------------------------------------


class SimpleGenerator(nn.Module):
  """DCGAN-style generator: ConvT 1->4, then stride-2 ConvTs to image size."""
  nz: int
  ngf: int
  image_size: int = 32
  num_channels: int = 3
  conv_input_grad: str = 'auto'
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z: Array) -> Array:
    n_up = _log2_int(self.image_size, 'config.data.image_size') - 2
    # Transposed convs as input-dilated convs (lax.conv_transpose's
    # arithmetic): a 4x4 'VALID' transposed conv of a 1x1 map pads by 3.
    convt = functools.partial(Conv2d, kernel=4,
                              input_grad=self.conv_input_grad,
                              dtype=self.dtype)
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
  conv_input_grad: str = 'auto'
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, update_stats: bool = True) -> Array:
    n_down = _log2_int(self.image_size, 'config.data.image_size') - 2
    conv = functools.partial(SNConv, use_bias=True,
                             spectral_norm=self.spectral_norm,
                             sn_steps=self.sn_steps,
                             input_grad=self.conv_input_grad, dtype=self.dtype)
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

  @nn.compact
  def __call__(self, x: Array) -> tuple[Array, Array]:
    n_down = _log2_int(self.image_size, 'config.data.image_size') - 2
    h = x.astype(self.dtype)
    for i in range(n_down):
      h = TorchConv(self.nif * 2**i, 4, 2, 1, use_bias=False, dtype=self.dtype,
                    name=f'conv{i}')(h)
      h = nn.leaky_relu(h, 0.2)
    return gaussian_conv_heads(h, self.nz, self.dtype)


# ----------------------------------------------------------------------------
# MLPs for 2-D data.
# ----------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------
# Config -> modules.
# ----------------------------------------------------------------------------

ARCHS = ('resnet', 'simple', 'mlp')
RESNET_STYLES = ('cifar', 'celeba')


@dataclasses.dataclass(frozen=True)
class Models:
  """The three modules of one experiment."""
  ebm: nn.Module
  gen: nn.Module
  inf: nn.Module
  data_shape: tuple[int, ...]  # per-example shape of x
  nz: int


COMPUTE_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def compute_dtype(config) -> Dtype:
  """`config.training.compute_dtype` as a jnp dtype (float32 if absent)."""
  name = config.training.get('compute_dtype', 'float32')
  if name not in COMPUTE_DTYPES:
    raise ValueError(f'config.training.compute_dtype={name!r} is unknown; '
                     f'allowed: {", ".join(COMPUTE_DTYPES)}')
  return COMPUTE_DTYPES[name]


def create_models(config, dtype: Dtype | None = None) -> Models:
  """Maps `config.model` / `config.data` onto the three modules.

  Args:
    config: the experiment ConfigDict.
    dtype: compute dtype of the networks (parameters stay float32); defaults
      to `config.training.compute_dtype`.

  Returns:
    A `Models` holding the EBM, generator and inference modules.
  """
  if dtype is None:
    dtype = compute_dtype(config)
  m, d = config.model, config.data
  if m.arch not in ARCHS:
    raise ValueError(
        f'config.model.arch={m.arch!r} is unknown; allowed: {", ".join(ARCHS)}')
  if m.arch == 'mlp':
    dim = int(d.get('point_dim', 2))
    return Models(
        ebm=MlpEBM(m.mlp_hidden, m.mlp_layers, m.ebm_spectral_norm,
                   m.sn_power_iterations, dtype),
        gen=MlpGenerator(dim, m.mlp_hidden, m.mlp_layers, dtype),
        inf=MlpInference(m.nz, m.mlp_hidden, m.mlp_layers, dtype),
        data_shape=(dim,), nz=m.nz)
  check_image_size(d.image_size, m.arch, m.get('resnet_style', 'cifar'))
  # Validated here; 'auto' is resolved when the step is traced.
  input_grad = str(m.get('conv_input_grad', 'auto'))
  conv_lib.resolve_input_grad(input_grad)
  shape = (d.image_size, d.image_size, d.num_channels)
  if m.arch == 'simple':
    return Models(
        ebm=SimpleEBM(m.nef, d.image_size, m.ebm_spectral_norm,
                      m.sn_power_iterations, input_grad, dtype),
        gen=SimpleGenerator(m.nz, m.ngf, d.image_size, d.num_channels,
                            input_grad, dtype),
        inf=SimpleInference(m.nz, m.nif, d.image_size, dtype),
        data_shape=shape, nz=m.nz)
  if m.resnet_style not in RESNET_STYLES:
    raise ValueError(f'config.model.resnet_style={m.resnet_style!r} is '
                     f'unknown; allowed: {", ".join(RESNET_STYLES)}')
  return Models(
      ebm=ResEBM(m.nef, d.image_size, m.resnet_style, m.ebm_spectral_norm,
                 m.sn_power_iterations, input_grad, dtype),
      gen=ResGenerator(m.nz, m.ngf, d.image_size, d.num_channels,
                       m.resnet_style, input_grad, dtype),
      inf=ResInference(m.nz, m.nif, d.image_size, m.resnet_style, dtype),
      data_shape=shape, nz=m.nz)


def count_params(params: Any) -> int:
  """Number of scalar parameters in a pytree."""
  return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))


def init_models(models: Models, key: Array,
                batch_size: int = 2) -> dict[str, dict[str, Any]]:
  """Initialises the three networks.

  Args:
    models: the modules.
    key: PRNG key.
    batch_size: dummy batch size for shape inference (BatchNorm needs > 1).

  Returns:
    {'ebm'|'gen'|'inf': {'params': ..., 'batch_stats': ... (may be absent)}}.
  """
  ke, kg, ki = jax.random.split(key, 3)
  x = jnp.zeros((batch_size,) + models.data_shape, jnp.float32)
  z = jnp.zeros((batch_size, models.nz), jnp.float32)
  return {
      'ebm': dict(models.ebm.init(ke, x, update_stats=False)),
      'gen': dict(models.gen.init(kg, z)),
      'inf': dict(models.inf.init(ki, x)),
  }
