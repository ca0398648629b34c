"""The FID Inception network (pytorch-fid's InceptionV3 variant) in Flax.

A port of pytorch-fid's `fid_inception_v3`: torchvision's InceptionV3 with
the blocks patched to match TensorFlow's 2015 FID graph (`FIDInceptionA`,
`FIDInceptionC`, `FIDInceptionE_1`: average pools that ignore the padding;
`FIDInceptionE_2`: a max pool in the pool branch). It returns the 2048-d
pool3 features that FID is computed on. Inputs are images in [0, 1],
[B, H, W, 3], resized to 299x299 by bilinear interpolation exactly as
PyTorch's `F.interpolate(mode='bilinear', align_corners=False)` does (no
antialiasing), then mapped to [-1, 1] by `2 x - 1`, as pytorch-fid does.
BatchNorm runs in inference mode with the stored statistics (eps 1e-3).

Weights: pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`. Accepted as

* the `.pth` file itself (read without PyTorch by `import_torch.pth`), or
* an `.npz` written by `scripts/convert_inception_weights.py`. Its key layout
  is the PyTorch state dict's: one float32 array per entry, named as in the
  state dict and in PyTorch's layout, e.g. `Conv2d_1a_3x3.conv.weight`
  ([out, in, kh, kw]), `Mixed_5b.branch1x1.bn.weight` / `.bn.bias` /
  `.bn.running_mean` / `.bn.running_var` ([C]). Entries the features do not
  use (`fc.*`, `AuxLogits.*`, `*.num_batches_tracked`) may be present and are
  ignored.

Flax variables mirror those names: `params[<path>]['conv']['kernel']`
([kh, kw, in, out]), `params[<path>]['bn']['scale'|'bias']`,
`batch_stats[<path>]['bn']['mean'|'var']`, where `<path>` is the state-dict
prefix split at the dots (e.g. `('Mixed_5b', 'branch1x1')`).
"""

from __future__ import annotations

import collections
import functools
import hashlib
import os
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dual_mcmc_jax.import_torch import pth

Array = jax.Array

INPUT_SIZE = 299
FEATURE_DIM = 2048
_BN_EPS = 1e-3
# pytorch-fid's weights, ported from TensorFlow's inception-2015-12-05.
FID_WEIGHTS_URL = ('https://github.com/mseitzer/pytorch-fid/releases/download/'
                   'fid_weights/pt_inception-2015-12-05-6726825d.pth')
_HIGHEST = jax.lax.Precision.HIGHEST


def _torch_bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] weights of PyTorch's bilinear resize, align_corners=False.

  PyTorch maps output pixel i to source position (i + 0.5) n_in / n_out - 0.5,
  clamps negative positions to 0 and interpolates between the two
  neighbouring pixels, without widening the filter when downsampling.
  """
  scale = n_in / n_out
  src = np.maximum((np.arange(n_out) + 0.5) * scale - 0.5, 0.0)
  lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
  hi = np.minimum(lo + 1, n_in - 1)
  frac = src - lo
  m = np.zeros((n_out, n_in), np.float64)
  np.add.at(m, (np.arange(n_out), lo), 1.0 - frac)
  np.add.at(m, (np.arange(n_out), hi), frac)
  return m.astype(np.float32)


def resize_bilinear(x: Array, size: int | tuple[int, int]) -> Array:
  """PyTorch-equivalent bilinear resize of [B, H, W, C] to [B, *size, C]."""
  out_h, out_w = (size, size) if isinstance(size, int) else size
  _, h, w, _ = x.shape
  mh = jnp.asarray(_torch_bilinear_matrix(h, out_h))
  mw = jnp.asarray(_torch_bilinear_matrix(w, out_w))
  x = jnp.einsum('oh,bhwc->bowc', mh, x, precision=_HIGHEST)
  return jnp.einsum('pw,bowc->bopc', mw, x, precision=_HIGHEST)


class BasicConv2d(nn.Module):
  """conv (no bias) -> BatchNorm (inference mode, eps 1e-3) -> ReLU."""
  features: int
  kernel: tuple[int, int]
  stride: int = 1
  padding: tuple[int, int] = (0, 0)

  @nn.compact
  def __call__(self, x: Array) -> Array:
    ph, pw = self.padding
    x = nn.Conv(self.features, self.kernel, strides=(self.stride, self.stride),
                padding=((ph, ph), (pw, pw)), use_bias=False,
                precision=_HIGHEST, name='conv')(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=_BN_EPS, name='bn')(x)
    return nn.relu(x)


def _avg_pool_3x3(x: Array) -> Array:
  # TensorFlow's average pool (pytorch-fid's patch): padding not counted.
  return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)),
                     count_include_pad=False)


def _max_pool_3x3_s2(x: Array) -> Array:
  return nn.max_pool(x, (3, 3), (2, 2))


class InceptionA(nn.Module):
  """FIDInceptionA: 1x1, 5x5, double 3x3 and pool branches (35x35)."""
  pool_features: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b1 = BasicConv2d(64, (1, 1), name='branch1x1')(x)
    b5 = BasicConv2d(48, (1, 1), name='branch5x5_1')(x)
    b5 = BasicConv2d(64, (5, 5), padding=(2, 2), name='branch5x5_2')(b5)
    b3 = BasicConv2d(64, (1, 1), name='branch3x3dbl_1')(x)
    b3 = BasicConv2d(96, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(b3)
    b3 = BasicConv2d(96, (3, 3), padding=(1, 1), name='branch3x3dbl_3')(b3)
    bp = BasicConv2d(self.pool_features, (1, 1),
                     name='branch_pool')(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Grid reduction 35 -> 17 (torchvision's InceptionB, unpatched)."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b3 = BasicConv2d(384, (3, 3), stride=2, name='branch3x3')(x)
    bd = BasicConv2d(64, (1, 1), name='branch3x3dbl_1')(x)
    bd = BasicConv2d(96, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(bd)
    bd = BasicConv2d(96, (3, 3), stride=2, name='branch3x3dbl_3')(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
  """FIDInceptionC: factorised 7x7 branches (17x17)."""
  channels_7x7: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = self.channels_7x7
    b1 = BasicConv2d(192, (1, 1), name='branch1x1')(x)
    b7 = BasicConv2d(c, (1, 1), name='branch7x7_1')(x)
    b7 = BasicConv2d(c, (1, 7), padding=(0, 3), name='branch7x7_2')(b7)
    b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name='branch7x7_3')(b7)
    bd = BasicConv2d(c, (1, 1), name='branch7x7dbl_1')(x)
    bd = BasicConv2d(c, (7, 1), padding=(3, 0), name='branch7x7dbl_2')(bd)
    bd = BasicConv2d(c, (1, 7), padding=(0, 3), name='branch7x7dbl_3')(bd)
    bd = BasicConv2d(c, (7, 1), padding=(3, 0), name='branch7x7dbl_4')(bd)
    bd = BasicConv2d(192, (1, 7), padding=(0, 3), name='branch7x7dbl_5')(bd)
    bp = BasicConv2d(192, (1, 1), name='branch_pool')(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Grid reduction 17 -> 8 (torchvision's InceptionD, unpatched)."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b3 = BasicConv2d(192, (1, 1), name='branch3x3_1')(x)
    b3 = BasicConv2d(320, (3, 3), stride=2, name='branch3x3_2')(b3)
    b7 = BasicConv2d(192, (1, 1), name='branch7x7x3_1')(x)
    b7 = BasicConv2d(192, (1, 7), padding=(0, 3), name='branch7x7x3_2')(b7)
    b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name='branch7x7x3_3')(b7)
    b7 = BasicConv2d(192, (3, 3), stride=2, name='branch7x7x3_4')(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
  """FIDInceptionE_1 (pool='avg') / FIDInceptionE_2 (pool='max') (8x8)."""
  pool: str

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b1 = BasicConv2d(320, (1, 1), name='branch1x1')(x)
    b3 = BasicConv2d(384, (1, 1), name='branch3x3_1')(x)
    b3 = jnp.concatenate([
        BasicConv2d(384, (1, 3), padding=(0, 1), name='branch3x3_2a')(b3),
        BasicConv2d(384, (3, 1), padding=(1, 0), name='branch3x3_2b')(b3),
    ], axis=-1)
    bd = BasicConv2d(448, (1, 1), name='branch3x3dbl_1')(x)
    bd = BasicConv2d(384, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(bd)
    bd = jnp.concatenate([
        BasicConv2d(384, (1, 3), padding=(0, 1), name='branch3x3dbl_3a')(bd),
        BasicConv2d(384, (3, 1), padding=(1, 0), name='branch3x3dbl_3b')(bd),
    ], axis=-1)
    if self.pool == 'avg':
      pooled = _avg_pool_3x3(x)
    else:
      # pytorch-fid's FIDInceptionE_2 patch: TensorFlow's graph max-pools.
      pooled = nn.max_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)))
    bp = BasicConv2d(192, (1, 1), name='branch_pool')(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FidInceptionV3(nn.Module):
  """pytorch-fid's FID InceptionV3 up to the final average pool.

  Attributes:
    resize_input: resize to 299x299 first (pytorch-fid's default).
  """
  resize_input: bool = True

  @nn.compact
  def __call__(self, x: Array,
               return_blocks: bool = False) -> Array | dict[str, Array]:
    """Pool3 features of images in [0, 1].

    Args:
      x: [B, H, W, 3] images in [0, 1].
      return_blocks: also return the spatial means of the outputs of
        pytorch-fid's blocks 0-2 (used by the tests).

    Returns:
      [B, 2048] features, or a dict with 'pool' and 'block0'..'block2'
      ([B, 64], [B, 192], [B, 768]).
    """
    x = x.astype(jnp.float32)
    if self.resize_input:
      x = resize_bilinear(x, INPUT_SIZE)  # [B, 299, 299, 3]
    x = 2.0 * x - 1.0
    x = BasicConv2d(32, (3, 3), stride=2, name='Conv2d_1a_3x3')(x)
    x = BasicConv2d(32, (3, 3), name='Conv2d_2a_3x3')(x)
    x = BasicConv2d(64, (3, 3), padding=(1, 1), name='Conv2d_2b_3x3')(x)
    x = _max_pool_3x3_s2(x)  # [B, 73, 73, 64]
    block0 = x
    x = BasicConv2d(80, (1, 1), name='Conv2d_3b_1x1')(x)
    x = BasicConv2d(192, (3, 3), name='Conv2d_4a_3x3')(x)
    x = _max_pool_3x3_s2(x)  # [B, 35, 35, 192]
    block1 = x
    x = InceptionA(32, name='Mixed_5b')(x)
    x = InceptionA(64, name='Mixed_5c')(x)
    x = InceptionA(64, name='Mixed_5d')(x)
    x = InceptionB(name='Mixed_6a')(x)  # [B, 17, 17, 768]
    x = InceptionC(128, name='Mixed_6b')(x)
    x = InceptionC(160, name='Mixed_6c')(x)
    x = InceptionC(160, name='Mixed_6d')(x)
    x = InceptionC(192, name='Mixed_6e')(x)
    block2 = x
    x = InceptionD(name='Mixed_7a')(x)  # [B, 8, 8, 1280]
    x = InceptionE('avg', name='Mixed_7b')(x)
    x = InceptionE('max', name='Mixed_7c')(x)  # [B, 8, 8, 2048]
    pool = jnp.mean(x, axis=(1, 2))  # [B, 2048]
    if not return_blocks:
      return pool
    return {'pool': pool, 'block0': jnp.mean(block0, axis=(1, 2)),
            'block1': jnp.mean(block1, axis=(1, 2)),
            'block2': jnp.mean(block2, axis=(1, 2))}


# ----------------------------------------------------------------------------
# State dict <-> Flax variables.
# ----------------------------------------------------------------------------

# (Flax collection, Flax leaf) of each BasicConv2d state-dict suffix.
_SUFFIXES = {
    'conv.weight': ('params', 'conv', 'kernel'),
    'bn.weight': ('params', 'bn', 'scale'),
    'bn.bias': ('params', 'bn', 'bias'),
    'bn.running_mean': ('batch_stats', 'bn', 'mean'),
    'bn.running_var': ('batch_stats', 'bn', 'var'),
}


@functools.cache
def variable_shapes() -> dict[str, dict[str, Any]]:
  """Shapes of the Flax variables ({'params': ..., 'batch_stats': ...})."""
  shapes = jax.eval_shape(
      lambda: FidInceptionV3().init(jax.random.key(0),
                                    jnp.zeros((1, 75, 75, 3)))
  )
  return flax.core.unfreeze(jax.tree.map(lambda s: tuple(s.shape), shapes))


@functools.cache
def state_dict_shapes() -> dict[str, tuple[int, ...]]:
  """The PyTorch state-dict keys the features need and their shapes.

  Returns:
    An ordered {key: shape} in PyTorch's layout (conv weights
    [out, in, kh, kw]), sorted by key.
  """
  out = {}
  flat = flax.traverse_util.flatten_dict(variable_shapes()['params'])
  for path, shape in flat.items():
    prefix = '.'.join(path[:-2])
    if path[-2:] == ('conv', 'kernel'):
      kh, kw, cin, cout = shape
      out[f'{prefix}.conv.weight'] = (cout, cin, kh, kw)
    elif path[-2:] == ('bn', 'scale'):
      for name in ('weight', 'bias', 'running_mean', 'running_var'):
        out[f'{prefix}.bn.{name}'] = shape
  return collections.OrderedDict(sorted(out.items()))


def state_dict_to_variables(state_dict: dict[str, np.ndarray],
                            source: str = 'state dict'
                            ) -> dict[str, dict[str, Any]]:
  """Maps pytorch-fid state-dict arrays onto the Flax variables.

  Args:
    state_dict: {key: array} in PyTorch's layout; extra keys (fc, AuxLogits,
      num_batches_tracked) are ignored.
    source: where the arrays come from, for error messages.

  Returns:
    {'params': ..., 'batch_stats': ...} for `FidInceptionV3().apply`.

  Raises:
    ValueError: a needed key is missing or has the wrong shape.
  """
  variables: dict[str, Any] = {'params': {}, 'batch_stats': {}}
  for key, shape in state_dict_shapes().items():
    if key not in state_dict:
      raise ValueError(f'{source}: missing Inception weight {key!r}; is this '
                       "pytorch-fid's pt_inception-2015-12-05 file?")
    value = np.asarray(state_dict[key], np.float32)
    if value.shape != shape:
      raise ValueError(f'{source}: {key!r} has shape {value.shape}, '
                       f'expected {shape}')
    for suffix, (collection, module, leaf) in _SUFFIXES.items():
      if key.endswith('.' + suffix):
        path = tuple(key[:-len(suffix) - 1].split('.')) + (module, leaf)
        if leaf == 'kernel':
          value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        node = variables[collection]
        for part in path[:-1]:
          node = node.setdefault(part, {})
        node[path[-1]] = value
        break
  return variables


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads Inception weights from an .npz (see module doc) or a .pth file."""
  if path.endswith('.npz'):
    with np.load(path) as archive:
      return {k: archive[k] for k in archive.files}
  return pth.load_state_dict(path)


def load_variables(path: str) -> dict[str, dict[str, Any]]:
  """Loads the Flax variables of the FID Inception from a weights file."""
  return state_dict_to_variables(load_state_dict(path), source=path)


def fingerprint(variables: dict[str, dict[str, Any]]) -> str:
  """A short hash of the weights, to tell cached statistics apart."""
  h = hashlib.sha256()
  for leaf in jax.tree.leaves(variables['params']['Mixed_7c']):
    h.update(np.asarray(leaf, np.float32).tobytes())
  return h.hexdigest()[:16]


def random_state_dict(seed: int) -> dict[str, np.ndarray]:
  """Deterministic random weights in the pytorch-fid state-dict layout.

  Shared by `scripts/make_inception_golden.py` (which loads them into its own
  PyTorch module) and the tests (which load them into the Flax module), so
  that only the PyTorch outputs need to be stored. He-normal convolutions and
  BatchNorm statistics near (0, 1) keep activations of order one through the
  whole depth.

  Args:
    seed: numpy seed.

  Returns:
    {key: float32 array} for every key of `state_dict_shapes()`.
  """
  rng = np.random.default_rng(seed)
  out = collections.OrderedDict()
  for key, shape in state_dict_shapes().items():
    if key.endswith('conv.weight'):
      fan_in = int(np.prod(shape[1:]))
      v = rng.standard_normal(shape, np.float32) * np.float32(
          np.sqrt(2.0 / fan_in))
    elif key.endswith('bn.weight') or key.endswith('bn.running_var'):
      v = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    else:  # bn.bias, bn.running_mean
      v = (0.1 * rng.standard_normal(shape)).astype(np.float32)
    out[key] = v
  return out


def save_npz(path: str, state_dict: dict[str, np.ndarray]) -> None:
  """Writes the arrays the features need as float32 (the .npz layout)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  arrays = {k: np.asarray(state_dict[k], np.float32)
            for k in state_dict_shapes()}
  tmp = path + '.tmp.npz'
  np.savez(tmp, **arrays)
  os.replace(tmp, path)
