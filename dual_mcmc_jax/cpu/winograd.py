"""Winograd's minimal-filtering convolutions, for the CPU's conv rule.

Two of Lavin & Gray's (2016) algorithms, used by `conv.conv2d` on its
`forward_conv` rule (docs/performance.md, changes 11 and 12):

* `conv3x3`: 3x3 'same' convolutions by F(2x2, 3x3), 16 matrix products
  per 2x2 output block where the direct convolution has 36;
* `conv2x2`: 2x2 'valid' convolutions by F(2x2, 2x2), 9 products for 16;
  the 4x4 stride-2 convolutions of the nets become these after
  space-to-depth (`conv._strided_conv_by_matmul`).

The transforms are additions written out, which XLA fuses; the products
run on XLA's matrix kernels, their kernel sides behind `kernel_operands`
so that a chain computes them once. Both have custom VJPs whose input gradient is
the same algorithm with the flipped kernel; the kernel gradients (needed
outside the chains only) are direct. Values equal the direct convolution's
to float32 rounding (about 1e-6 relative).
"""

from __future__ import annotations

import jax
from jax import lax
import jax.numpy as jnp

Array = jax.Array
_DIMS = ('NHWC', 'HWIO', 'NHWC')
# Multiply-adds per transform-domain product from which each product runs on
# its own, not as one batched product of the stacked tiles (docs/
# performance.md, change 18): measured faster from about 34M (a [4096, 448]
# x [448, 224] product), slower at 8M.
SEPARATE_MIN = 2**25
# Whether `kernel_operands` marks the kernel side of the products (a switch
# for A/B measurements; the values are the same either way).
HOIST = True


def kernel_operands(ws):
  """The kernel-side operands of matrix products, computed once per loop.

  Inside a Langevin chain the weights do not change (spectral norm divides
  the layers' outputs, not their kernels), but the slices, flips and
  transposes that bring a kernel to its product's layout sit in the loop
  body. XLA's loop-invariant code motion leaves slices and transposes in
  the loop on their own (it judges them cheap); behind an optimization
  barrier, which it does move, the whole invariant chain is computed once
  before the loop (docs/performance.md, change 19). Values and gradients
  are unchanged.
  """
  return lax.optimization_barrier(ws) if HOIST else ws


def valid_conv_by_matmul(xb: Array, wb: Array) -> Array:
  """Stride-1 'valid' conv as one matrix product per kernel tap, summed."""
  kh, kw = wb.shape[:2]
  ho, wo = xb.shape[1] - kh + 1, xb.shape[2] - kw + 1
  taps = kernel_operands([wb[i, j] for i in range(kh) for j in range(kw)])
  y = None
  for i in range(kh):
    for j in range(kw):
      part = jnp.einsum('bhwk,kd->bhwd', xb[:, i:i + ho, j:j + wo],
                        taps[i * kw + j])
      y = part if y is None else y + part
  return y


def im2col_conv(xb: Array, wb: Array) -> Array:
  """Stride-1 'valid' conv as one matrix product of the gathered windows.

  For few input channels (the first layer's 3, or 12 after space-to-depth)
  one product [B * H' * W', kh * kw * in] x [kh * kw * in, out] keeps the
  matrix kernels busier than one thin product per tap.
  """
  kh, kw = wb.shape[:2]
  ho, wo = xb.shape[1] - kh + 1, xb.shape[2] - kw + 1
  cols = jnp.concatenate([xb[:, i:i + ho, j:j + wo] for i in range(kh)
                          for j in range(kw)], axis=-1)
  return jnp.einsum('bhwk,kd->bhwd', cols,
                    kernel_operands(wb.reshape(-1, wb.shape[3])))


def _winograd_f2(xp: Array, w: Array, b_t, g_, a_t) -> Array:
  """Winograd's F(2x2, r x r) 'valid' conv of an (already padded) input.

  Each (r + 1) x (r + 1) input tile (stride 2) and the kernel go to the
  transform domain (`b_t` on rows then columns of the tile, `g_` on those
  of the kernel), where the conv is (r + 1)^2 matrix products
  [tiles, in] x [in, out]; `a_t` maps each tile back to a 2x2 output
  block, and the blocks are interleaved. The output sizes must be even.
  """
  n = w.shape[0] + 1  # input tile size
  b, ho, wo, c = (xp.shape[0], xp.shape[1] - n + 2, xp.shape[2] - n + 2,
                  xp.shape[3])
  rows = b_t([xp[:, i:i + ho:2] for i in range(n)])  # [B, ho/2, W, in]
  v = [t for r in rows for t in b_t([r[:, :, j:j + wo:2] for j in range(n)])]
  u = [t for r in g_(list(w)) for t in g_(list(r))]
  if b * (ho // 2) * (wo // 2) * c * w.shape[3] >= SEPARATE_MIN:
    # Large products: one each, reading the transformed tiles where they
    # are; stacking them first is a copy of the whole transformed input.
    m = jnp.stack([jnp.einsum('bhwc,cd->bhwd', vi, ui)
                   for vi, ui in zip(v, kernel_operands(u))])
  else:
    m = jnp.einsum('tnc,tcd->tnd', jnp.stack(v).reshape(n * n, -1, c),
                   kernel_operands(jnp.stack(u)))  # [n^2, B*ho/2*wo/2, out]
  m = m.reshape(n, n, b, ho // 2, wo // 2, -1)
  y = [a_t(list(r)) for r in a_t(list(m))]
  y = jnp.stack([jnp.stack(r, axis=3) for r in y], axis=2)
  return y.reshape(b, ho, wo, -1)  # [B, ho/2, 2, wo/2, 2, out] interleaved


def f22(xb: Array, wb: Array) -> Array:
  """2x2 'valid' conv by Winograd's F(2x2, 2x2); even output sizes.

  In one dimension, y0 = d0 g0 + d1 g1 and y1 = d1 g0 + d2 g1 are
  m0 + m1 and m1 + m2 with m0 = (d0 - d1) g0, m1 = d1 (g0 + g1),
  m2 = (d2 - d1) g1: three products for four. In two, each 3x3 input tile
  (stride 2) gives a 2x2 output block through 9 matrix products
  [tiles, in] x [in, out] instead of 16.
  """
  return _winograd_f2(
      xb, wb,
      b_t=lambda r: [r[0] - r[1], r[1], r[2] - r[1]],
      g_=lambda r: [r[0], r[0] + r[1], r[1]],
      a_t=lambda r: [r[0] + r[1], r[1] + r[2]])


def conv2x2_forward(xb: Array, wb: Array) -> Array:
  """2x2 'valid' conv: Winograd where the output sizes are even (float32)."""
  if (xb.shape[1] % 2 and xb.shape[2] % 2 and xb.dtype == jnp.float32):
    return f22(xb, wb)
  return valid_conv_by_matmul(xb, wb)


@jax.custom_vjp
def conv2x2(xb: Array, wb: Array) -> Array:
  """[B, H, W, in] x [2, 2, in, out] 'valid' conv -> [B, H-1, W-1, out]."""
  return conv2x2_forward(xb, wb)


def _conv2x2_fwd(xb, wb):
  return conv2x2_forward(xb, wb), (xb, wb)


def _conv2x2_bwd(res, g):
  """Input gradient: the 'full' correlation with the flipped kernel.

  That is a 2x2 valid conv of g padded by one on each side; one more row
  and column of padding make its output even for Winograd, then cropped.
  """
  xb, wb = res
  gp = jnp.pad(g, ((0, 0), (1, 2), (1, 2), (0, 0)))
  gx = conv2x2_forward(gp, jnp.flip(wb, (0, 1)).transpose(0, 1, 3, 2))
  gx = gx[:, :xb.shape[1], :xb.shape[2]]
  _, w_vjp = jax.vjp(lambda w_: valid_conv_by_matmul(xb, w_), wb)
  (gw,) = w_vjp(g)
  return gx.astype(xb.dtype), gw


conv2x2.defvjp(_conv2x2_fwd, _conv2x2_bwd)


def f23(x: Array, w: Array) -> Array:
  """3x3 'same' conv by Winograd's F(2x2, 3x3) algorithm.

  Each 4x4 input tile (stride 2) and the kernel are mapped to a 4x4
  transform domain (B^T d B and G g G^T), where the conv is an elementwise
  product, summed over channels: 16 matrix products [tiles, in] x [in, out]
  instead of 36 (2.25x fewer multiplications); A^T m A maps each back to a
  2x2 output block. With B^T = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]],
  G = [[1,0,0],[.5,.5,.5],[.5,-.5,.5],[0,0,1]], A^T = [[1,1,1,0],
  [0,1,-1,-1]] (Lavin & Gray, 2016), written out as adds so that XLA fuses
  them. Values equal the direct conv's to about 1e-6 relative (float32).
  """
  return _winograd_f2(
      jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))), w,
      b_t=lambda r: [r[0] - r[2], r[1] + r[2], r[2] - r[1], r[1] - r[3]],
      g_=lambda r: [r[0], 0.5 * (r[0] + r[1] + r[2]),
                    0.5 * (r[0] - r[1] + r[2]), r[2]],
      a_t=lambda r: [r[0] + r[1] + r[2], r[1] - r[2] - r[3]])


@jax.custom_vjp
def conv3x3(x: Array, w: Array) -> Array:
  """[B, H, W, in] x [3, 3, in, out] 'same' conv (H, W even) -> [B, H, W, out]."""
  return f23(x, w)


def _conv3x3_fwd(x, w):
  return f23(x, w), (x, w)


def _conv3x3_bwd(res, g):
  """Input gradient: the same 'same' conv of g with the flipped kernel."""
  x, w = res
  gx = f23(g, jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2))
  _, w_vjp = jax.vjp(
      lambda w_: lax.conv_general_dilated(
          x, w_, (1, 1), ((1, 1), (1, 1)), dimension_numbers=_DIMS), w)
  (gw,) = w_vjp(g)
  return gx, gw


conv3x3.defvjp(_conv3x3_fwd, _conv3x3_bwd)
