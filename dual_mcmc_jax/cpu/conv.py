"""The CPU plug-in's convolutions: the nets' convs in forms XLA's CPU runs fast.

Both Langevin chains differentiate a network with respect to its *input*
at every step, so the input gradient of the convolutions is most of an
iteration's work. JAX's autodiff writes it as a convolution of the output
gradient with the flipped kernel, expressed by swapping the kernel's
dimension labels (`01oi`); XLA's CPU backend runs that layout 12x or more
slower inside loops than the standard `01io` one (docs/performance.md).
`conv2d` computes the same forward pass; its custom VJP materialises the
flipped, in/out-swapped kernel and calls an ordinary forward convolution.
A stride-2 convolution's input gradient, a convolution of the output
gradient dilated by 2 (three quarters zeros, which XLA multiplies too), is
computed as four quarter-kernel convolutions instead
(`_dilated_conv_by_phases`). Kernel gradients keep JAX's rule, except for
transposed convolutions, whose kernel gradient is a plain convolution of the
explicitly dilated input. Values are autodiff's up to summation order.

On the same rule, four kinds of convolution skip XLA's convolution
altogether (docs/performance.md, changes 9-13, 16, 18 and 19):

* transposed convolutions (the plain generator's upsampling): XLA's CPU
  convolution also multiplies the zeros of a forward pass's dilated input,
  so they are one matrix product of every input pixel with every kernel
  tap, added into the output positions (`_transposed_conv_by_matmul`),
  and their input gradient is the strided convolution below;
* stride-2 convolutions with an even kernel (the plain nets' 4x4
  downsampling, the residual EBM's pooled convs): after space-to-depth they
  are stride-1 convolutions of 2x2 blocks, done by Winograd's F(2x2, 2x2)
  (`_strided_conv_by_matmul`); the 4x4 ones with padding 1 take their
  input gradient, a transposed convolution, as four output phases, each
  by F(2x2, 2x2) (`_strided_conv4`, change 16);
* 3x3 'same' convolutions with at least 32 channels, float32: Winograd's
  F(2x2, 3x3) (`winograd.conv3x3`), with the flipped kernel for the input
  gradient;
* kernels that cover the whole unpadded input (4x4 to 1x1): one matrix
  product (`_whole_window_conv`).

Every kernel-side operand of those products passes through
`winograd.kernel_operands`, so that inside a chain, where the weights do
not change, its slices and transposes are computed once before the loop.

Winograd's algorithms trade multiplications for additions: their values
differ from the direct convolution's by float32 rounding (about 1e-6
relative; `tests/cpu_test.py`; the golden PyTorch fixtures within 1e-5).

`CpuConvOps` hands all of it to the networks (`networks.layers.ConvOps`,
the hook every conv of the nets computes through), and adds two more
rewrites for the EBM's spectrally normalised convs: a 2x2 average pool
after a conv is folded into it (a stride-2 conv with the kernel convolved
with a 2x2 box / 4: a quarter of the output positions), and the output is
divided by sigma instead of the kernel, so that every transform of the
kernel above depends only on the parameters and XLA computes it once per
chain rather than at every step (docs/performance.md, change 14).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
from jax import lax
import jax.numpy as jnp

from dual_mcmc_jax.cpu import winograd
from dual_mcmc_jax.networks import layers

Array = jax.Array
Pair = tuple[int, int]
_DIMS = ('NHWC', 'HWIO', 'NHWC')


def _conv(x: Array, w: Array, strides: Pair, padding: tuple[Pair, Pair],
          lhs_dilation: Pair) -> Array:
  return lax.conv_general_dilated(x, w, strides, padding,
                                  lhs_dilation=lhs_dilation,
                                  dimension_numbers=_DIMS)


def _phase(x: Array, w: Array, pad: tuple[Pair, Pair],
           out_size: Pair, r: Pair) -> Array:
  """Output rows/cols r (mod 2) of a stride-1 conv of x dilated by 2.

  Only every second kernel tap meets a non-zero of the dilated input: the
  taps t = s (mod 2) with s = (pad_lo - r) mod 2. Output 2m + r reads input
  m + c + u through tap 2u + s, with c = (r + s - pad_lo) / 2, so the phase
  is a plain stride-1 conv of the undilated x with the sub-kernel w[s::2],
  x cropped or padded to the rows it needs.
  """
  sub, cfg = w, []
  for d in range(2):
    s_d = (pad[d][0] - r[d]) % 2
    c_d = (r[d] + s_d - pad[d][0]) // 2
    taps = len(range(s_d, w.shape[d], 2))
    m_d = (out_size[d] - r[d] + 1) // 2
    sub = lax.slice_in_dim(sub, s_d, w.shape[d], 2, axis=d)
    cfg.append((-c_d, m_d - 1 + c_d + taps - 1 - (x.shape[1 + d] - 1), 0))
  xp = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), *cfg, (0, 0, 0)])
  return _conv(xp, sub, (1, 1), ((0, 0), (0, 0)), (1, 1))


def _dilated_conv_by_phases(x: Array, w: Array,
                            padding: tuple[Pair, Pair]) -> Array:
  """A stride-1 conv of x dilated by 2, without multiplying the zeros.

  The input gradient of a stride-2 conv is such a conv of the output
  gradient. The four output phases (even / odd rows and columns) are each a
  plain conv with a quarter of the kernel (`_phase`), interleaved: a
  quarter of the dilated conv's multiplications. Odd output sizes (none in
  the nets) fall back to the dilated conv.
  """
  out = tuple((x.shape[1 + d] - 1) * 2 + 1 + sum(padding[d]) - w.shape[d] + 1
              for d in range(2))
  if out[0] % 2 or out[1] % 2:
    return _conv(x, w, (1, 1), padding, (2, 2))
  rows = [jnp.stack([_phase(x, w, padding, out, (rh, rw)) for rw in (0, 1)],
                    axis=3) for rh in (0, 1)]
  y = jnp.stack(rows, axis=2)
  b, h2, _, w2, _, c = y.shape
  return y.reshape(b, 2 * h2, 2 * w2, c)


def _input_grad_padding(in_size: int, out_size: int, k: int, stride: int,
                        lhs_dilation: int, pad: Pair) -> Pair:
  """Padding of the forward conv that computes a conv's input gradient.

  The output gradient, dilated by the stride, is convolved with the flipped
  kernel; `before` undoes the forward pass's leading padding and `after`
  restores the (dilated) input rows that no output position reached.
  """
  before = k - 1 - pad[0]
  dilated_in = (in_size - 1) * lhs_dilation + 1
  dilated_out = (out_size - 1) * stride + 1
  return before, dilated_in + k - 1 - dilated_out - before


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_forward_conv_grad(x: Array, w: Array, strides: Pair,
                            padding: tuple[Pair, Pair],
                            lhs_dilation: Pair) -> Array:
  return _conv(x, w, strides, padding, lhs_dilation)


def _fwd(x, w, strides, padding, lhs_dilation):
  return _conv(x, w, strides, padding, lhs_dilation), (x, w)


def _input_grad_conv_args(x: Array, g: Array, w: Array, strides: Pair,
                          padding: tuple[Pair, Pair], lhs_dilation: Pair
                          ) -> tuple[Array, tuple[Pair, Pair]]:
  """Kernel and padding of the forward conv of g that is x's gradient.

  The kernel is flipped and in/out-swapped, materialised on purpose (a
  transposed *view* is what XLA runs slowly); that conv's window stride is
  the forward's input dilation and its input dilation the forward's stride.
  """
  pads = tuple(_input_grad_padding(x.shape[1 + i], g.shape[1 + i],
                                   w.shape[i], strides[i], lhs_dilation[i],
                                   padding[i]) for i in range(2))
  w_t = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)  # [kh, kw, out, in]
  return winograd.kernel_operands(w_t.astype(g.dtype)), pads


def _bwd(strides, padding, lhs_dilation, res, g):
  x, w = res
  w_t, pads = _input_grad_conv_args(x, g, w, strides, padding, lhs_dilation)
  if lhs_dilation == (1, 1) and strides == (2, 2):
    gx = _dilated_conv_by_phases(g, w_t, pads)
  else:
    gx = _conv(g, w_t, lhs_dilation, pads, strides)
  if strides == (1, 1) and lhs_dilation != (1, 1):
    gw = _transposed_conv_kernel_grad(x, g, padding, lhs_dilation)
  else:
    _, w_vjp = jax.vjp(
        lambda w_: _conv(x, w_, strides, padding, lhs_dilation), w)
    (gw,) = w_vjp(g)
  return gx.astype(x.dtype), gw.astype(w.dtype)


def _transposed_conv_kernel_grad(x: Array, g: Array,
                                 padding: tuple[Pair, Pair],
                                 lhs_dilation: Pair) -> Array:
  """Kernel gradient of an input-dilated, stride-1 conv as a plain conv.

  Autodiff's form keeps the input dilation inside the convolution, which
  XLA's CPU backend runs slowly; here the zeros are inserted explicitly
  (`lax.pad` with interior padding) and the gradient is the correlation of
  the padded input with the output gradient, batch as the contracted
  feature axis.
  """
  pads = [(0, 0, 0)] + [(lo, hi, d - 1) for (lo, hi), d in
                        zip(padding, lhs_dilation)] + [(0, 0, 0)]
  xp = lax.pad(x, jnp.zeros((), x.dtype), pads)  # [B, Hp, Wp, in]
  gw = _conv(xp.transpose(3, 1, 2, 0), g.transpose(1, 2, 0, 3).astype(x.dtype),
             (1, 1), ((0, 0), (0, 0)), (1, 1))  # [in, kh, kw, out]
  return gw.transpose(1, 2, 0, 3)


_conv_forward_conv_grad.defvjp(_fwd, _bwd)


def _is_transposed(x: Array, w: Array, strides: Pair,
                   padding: tuple[Pair, Pair], lhs_dilation: Pair) -> bool:
  """Whether `_transposed_conv_by_matmul` computes this convolution.

  Transposed convolutions: stride 1, the same padding on both sides of
  each axis, at most k - 1, and either an input dilation or the full
  padding k - 1 (the 1x1-to-kxk first layer of the plain generator).
  """
  if strides != (1, 1):
    return False
  k = w.shape[:2]
  same = all(lo == hi and 0 <= lo <= k[d] - 1 for d, (lo, hi) in
             enumerate(padding))
  # A 1x1 conv has "full" padding 0 too, but no taps to spread.
  full = all(padding[d][0] == k[d] - 1 > 0 for d in range(2))
  return same and (lhs_dilation != (1, 1) or full) and x.ndim == 4


def _overlap_add(y: Array, axis: int, tap_axis: int, stride: int,
                 pad: int) -> Array:
  """Sums the taps of one spatial axis of `y` into that axis's output rows.

  Input row i reaches output row o = stride * i + pad - t through tap t. With
  u = o + k - 1 - pad = stride * (i + q) + r for k - 1 - t = stride * q + r,
  each (q, r) is a shifted copy of one tap: the rows are summed as
  [i + q, r] blocks, flattened, and cropped to the output.
  """
  k, n = y.shape[tap_axis], y.shape[axis]
  q_max = (k - 1) // stride
  phases = []
  for r in range(stride):
    acc = None
    for q in range((k - 1 - r) // stride + 1):
      tap = lax.index_in_dim(y, k - 1 - stride * q - r, tap_axis,
                             keepdims=False)
      widths = [(0, 0)] * tap.ndim
      widths[axis] = (q, q_max - q)
      part = jnp.pad(tap, widths)
      acc = part if acc is None else acc + part
    phases.append(acc)
  z = jnp.stack(phases, axis=axis + 1)  # [.., n + q_max, stride, ..]
  shape = list(z.shape)
  shape[axis:axis + 2] = [(n + q_max) * stride]
  z = z.reshape(shape)
  out = (n - 1) * stride + 1 + 2 * pad - k + 1
  return lax.slice_in_dim(z, k - 1 - pad, k - 1 - pad + out, axis=axis)


def _transposed_conv_by_matmul(x: Array, w: Array,
                               padding: tuple[Pair, Pair],
                               lhs_dilation: Pair) -> Array:
  """A transposed convolution as one matrix product and an overlap-add.

  XLA's CPU convolution multiplies the zeros of an input-dilated input
  (three quarters of them at stride 2). Here each input pixel is multiplied
  by every tap of the kernel at once (one [B*H*W, in] x [in, k*k*out]
  product, exactly the model's multiplications) and the k*k results are
  added into their output positions (`_overlap_add`). The input gradient
  is a strided conv of the output gradient, computed by `conv2d` itself
  (for the 4x4 stride-2 layers: Winograd on space-to-depth blocks, change
  12); the kernel gradient is autodiff's, products and slices.
  """
  # The kernel in the product's layout [in, kh, kw, out], once per chain.
  wk = winograd.kernel_operands(w.transpose(2, 0, 1, 3))
  y = jnp.einsum('bhwc,cyxd->bhwyxd', x, wk)  # [B, H, W, kh, kw, out]
  y = _overlap_add(y, 1, 3, lhs_dilation[0], padding[0][0])
  return _overlap_add(y, 2, 3, lhs_dilation[1], padding[1][0])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _transposed_conv(x: Array, w: Array, padding: tuple[Pair, Pair],
                     lhs_dilation: Pair) -> Array:
  return _transposed_conv_by_matmul(x, w, padding, lhs_dilation)


def _transposed_conv_fwd(x, w, padding, lhs_dilation):
  return _transposed_conv_by_matmul(x, w, padding, lhs_dilation), (x, w)


def _transposed_conv_bwd(padding, lhs_dilation, res, g):
  x, w = res
  w_t, pads = _input_grad_conv_args(x, g, w, (1, 1), padding, lhs_dilation)
  gx = conv2d(g, w_t, lhs_dilation, pads)
  _, w_vjp = jax.vjp(
      lambda w_: _transposed_conv_by_matmul(x, w_, padding, lhs_dilation), w)
  (gw,) = w_vjp(g)
  return gx.astype(x.dtype), gw


_transposed_conv.defvjp(_transposed_conv_fwd, _transposed_conv_bwd)


def _upsample_by_phases(x: Array, w: Array) -> Array:
  """A 4x4 transposed convolution with stride 2 and padding 1, by phases.

  That is the conv of x dilated by 2 and padded by 2 with the 4x4 kernel
  w: output row 2m + p reads input rows m - 1 + p and m + p through taps
  p and p + 2, so each of the four output phases (even / odd rows and
  columns) is a 2x2 'valid' conv of x padded by one, with the taps
  w[p::2, q::2], done by Winograd's F(2x2, 2x2) (9 products per 2x2
  block of each phase where the direct form has 16). Below 32 output
  channels the transforms cost more than they save, and the one matrix
  product of `_transposed_conv_by_matmul` is used instead.
  """
  b, h, wd, _ = x.shape
  if w.shape[3] < 32:
    return _transposed_conv_by_matmul(x, w, ((2, 2), (2, 2)), (2, 2))
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  rows = [jnp.stack([winograd.conv2x2_forward(
      xp[:, p:p + h + 1, q:q + wd + 1], w[p::2, q::2]) for q in (0, 1)],
                    axis=3) for p in (0, 1)]  # 2 x [B, H, W, 2, out]
  return jnp.stack(rows, axis=2).reshape(b, 2 * h, 2 * wd, -1)


def _is_strided4(x: Array, w: Array, padding: tuple[Pair, Pair]) -> bool:
  """A 4x4 stride-2 conv with padding 1 of an even-sized input (the nets')."""
  return (w.shape[:2] == (4, 4) and padding == ((1, 1), (1, 1))
          and x.shape[1] % 2 == 0 and x.shape[2] % 2 == 0)


@jax.custom_vjp
def _strided_conv4(x: Array, w: Array) -> Array:
  return _strided_conv_by_matmul(x, w, ((1, 1), (1, 1)))


def _strided_conv4_fwd(x, w):
  return _strided_conv4(x, w), (x, w)


def _strided_conv4_bwd(res, g):
  """Input gradient: the transposed conv of g, by phases; kernel: direct.

  The input gradient of a 4x4 stride-2 conv with padding 1 is the 4x4
  transposed conv (stride 2, padding 1) of the output gradient with the
  flipped, in/out-swapped kernel. Done in the space-to-depth blocks, the
  blocks at the border are computed and then cropped (2.25x the needed
  products at a 4x4 output); by phases, only the needed outputs are.
  """
  x, w = res
  # Its padding is 2 on every side: what `_upsample_by_phases` computes.
  w_t, _ = _input_grad_conv_args(x, g, w, (2, 2), ((1, 1), (1, 1)), (1, 1))
  gx = _upsample_by_phases(g, w_t)
  _, w_vjp = jax.vjp(lambda w_: _strided_conv_by_matmul(
      x, w_, ((1, 1), (1, 1)), direct=True), w)
  (gw,) = w_vjp(g)
  return gx.astype(x.dtype), gw.astype(w.dtype)


_strided_conv4.defvjp(_strided_conv4_fwd, _strided_conv4_bwd)


def _is_strided(x: Array, w: Array, strides: Pair,
                lhs_dilation: Pair) -> bool:
  """Whether `_strided_conv_by_matmul` computes this convolution.

  Stride-2 convolutions with an even kernel and no input dilation: the
  plain nets' 4x4 downsampling convs and the residual EBM's pooled convs.
  """
  return (strides == (2, 2) and lhs_dilation == (1, 1) and x.ndim == 4
          and w.shape[0] % 2 == 0 and w.shape[1] % 2 == 0)


def _strided_conv_by_matmul(x: Array, w: Array,
                            padding: tuple[Pair, Pair],
                            direct: bool = False) -> Array:
  """A stride-2 conv with an even kernel as a stride-1 conv of 2x2 blocks.

  After space-to-depth (each 2x2 block of the padded input becomes one
  position with 4 * in channels), kernel tap (2q + p) reads block o + q at
  phase p: the conv is a (k/2) x (k/2) stride-1 'valid' conv of the blocks.
  The 4x4 kernels of the nets become 2x2 block convs, computed by
  Winograd's F(2x2, 2x2) (`winograd.conv2x2`); other sizes as a sum of
  matrix products, and inputs with fewer than 8 channels (the images) as
  one matrix product of the gathered windows (`winograd.im2col_conv`).
  XLA runs these, and the pads and reshapes around them, faster than its
  stride-2 convolution and that convolution's input gradient
  (docs/performance.md, changes 10, 12 and 16). The values equal the
  convolution's to float32 rounding. `direct=True` skips Winograd (the
  kernel gradients, outside the chains, are autodiff's of the products).
  """
  b, c, d = x.shape[0], x.shape[3], w.shape[3]
  kh, kw = w.shape[0] // 2, w.shape[1] // 2
  out = [(x.shape[1 + i] + sum(padding[i]) - w.shape[i]) // 2 + 1
         for i in range(2)]
  # Rows 0 .. 2 * (out + k/2 - 1) - 1 of the padded input are read.
  need = [2 * (out[i] + w.shape[i] // 2 - 1) for i in range(2)]
  cfg = [(0, 0, 0)] + [(padding[i][0],
                        need[i] - x.shape[1 + i] - padding[i][0], 0)
                       for i in range(2)] + [(0, 0, 0)]
  xp = lax.pad(x, jnp.zeros((), x.dtype), cfg)
  blocks = xp.reshape(b, need[0] // 2, 2, need[1] // 2, 2, c)
  blocks = blocks.transpose(0, 1, 3, 2, 4, 5).reshape(
      b, need[0] // 2, need[1] // 2, 4 * c)
  wb = w.reshape(kh, 2, kw, 2, c, d).transpose(0, 2, 1, 3, 4, 5).reshape(
      kh, kw, 4 * c, d)
  if 4 * c < 32:
    return winograd.im2col_conv(blocks, wb)
  if (kh, kw) == (2, 2) and not direct:
    return winograd.conv2x2(blocks, wb)
  return winograd.valid_conv_by_matmul(blocks, wb)


def _is_winograd(x: Array, w: Array, strides: Pair,
                 padding: tuple[Pair, Pair], lhs_dilation: Pair) -> bool:
  """Whether `winograd.conv3x3` computes this convolution.

  3x3, stride 1, padding 1, even height and width, float32, and at least
  32 channels in and out: below that the transforms cost more than the
  multiplications they save (docs/performance.md, change 11).
  """
  return (w.shape[:2] == (3, 3) and strides == (1, 1)
          and lhs_dilation == (1, 1) and padding == ((1, 1), (1, 1))
          and x.ndim == 4 and x.shape[1] % 2 == 0 and x.shape[2] % 2 == 0
          and x.dtype == jnp.float32 and min(w.shape[2:]) >= 32)


def _is_whole_window(x: Array, w: Array, padding: tuple[Pair, Pair],
                     lhs_dilation: Pair) -> bool:
  """Whether the kernel covers the whole unpadded input (one output).

  The plain nets' 4x4-to-1x1 layers: the EBM's output, the inference
  heads, the generator's first layer's input gradient.
  """
  return (x.ndim == 4 and tuple(w.shape[:2]) == tuple(x.shape[1:3])
          and padding == ((0, 0), (0, 0)) and lhs_dilation == (1, 1))


def _whole_window_conv(x: Array, w: Array) -> Array:
  """That conv as one [B, kh*kw*in] x [kh*kw*in, out] matrix product.

  XLA's CPU convolution ran it at about a sixth of the matrix product's
  rate (docs/performance.md, change 19); autodiff of the product gives
  both gradients as products too.
  """
  y = jnp.einsum('bhwc,hwcd->bd', x, winograd.kernel_operands(w))
  return y[:, None, None, :]


def conv2d(x: Array, w: Array, strides: Sequence[int] = (1, 1),
           padding: Sequence[Pair] = ((0, 0), (0, 0)),
           lhs_dilation: Sequence[int] = (1, 1)) -> Array:
  """NHWC x HWIO convolution in the fastest of the forms above.

  Args:
    x: [B, H, W, C_in] input.
    w: [kh, kw, C_in, C_out] kernel.
    strides: (sh, sw) window strides.
    padding: ((top, bottom), (left, right)) explicit padding.
    lhs_dilation: input dilation; a transposed convolution with stride s is
      a convolution with `lhs_dilation=(s, s)`.

  Returns:
    [B, H', W', C_out], equal to `lax.conv_general_dilated`'s to float32
    rounding, with gradients to match.
  """
  strides = tuple(int(s) for s in strides)
  padding = tuple((int(a), int(b)) for a, b in padding)
  lhs_dilation = tuple(int(d) for d in lhs_dilation)
  if _is_whole_window(x, w, padding, lhs_dilation):
    return _whole_window_conv(x, w)
  if _is_transposed(x, w, strides, padding, lhs_dilation):
    return _transposed_conv(x, w, padding, lhs_dilation)
  if _is_strided(x, w, strides, lhs_dilation):
    if _is_strided4(x, w, padding):
      return _strided_conv4(x, w)
    return _strided_conv_by_matmul(x, w, padding)
  if _is_winograd(x, w, strides, padding, lhs_dilation):
    return winograd.conv3x3(x, w)
  return _conv_forward_conv_grad(x, w, strides, padding, lhs_dilation)


def fold_pool(w: Array) -> Array:
  """[k, k, in, out] -> the [k + 1, k + 1, in, out] kernel of conv + pool.

  A conv then a 2x2 average pool is one conv of twice the stride with the
  kernel convolved with a 2x2 box / 4 (exact up to summation order).
  """
  w = 0.25 * jnp.pad(w, ((0, 1), (0, 1), (0, 0), (0, 0)))
  w = w + jnp.roll(w, 1, 0)
  return w + jnp.roll(w, 1, 1)


@dataclasses.dataclass(frozen=True)
class CpuConvOps(layers.ConvOps):
  """The networks' convolutions on the CPU: `conv2d`, pools folded in."""

  def conv(self, x: Array, w: Array, strides: Pair, padding: tuple[Pair, Pair],
           lhs_dilation: Pair = (1, 1)) -> Array:
    return conv2d(x, w, strides, padding, lhs_dilation)

  def normalized_conv(self, x: Array, w: Array, sigma: Array | None,
                      stride: int, padding: int, pool: bool) -> Array:
    if pool:
      w, stride = fold_pool(w), 2 * stride
    y = conv2d(x, w.astype(x.dtype), (stride, stride),
               ((padding, padding), (padding, padding)))
    # Dividing the output leaves the kernel a constant of the chain.
    return y if sigma is None else y / sigma.astype(y.dtype)
