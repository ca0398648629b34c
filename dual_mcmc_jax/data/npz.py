"""The user's own array: one entry of the .npz file `config.data.npz_path`.

`config.data.npz_key` names the entry (default: the first one). It may hold

* uint8 images [N, H, W, C] in 0..255, or [N, H, W] for greyscale,
* float images [N, H, W, C] in [-1, 1] (a little slack for round-off),
* float points [N, D] with `config.model.arch='mlp'`.

Images must match `config.data.image_size` and `num_channels`. A float array
is checked for NaN and Inf before anything else, so that bad data is a
one-line error naming the file, the entry and the first bad index rather than
a range error or, for points, a silent NaN loss. The array has no held-out
part: splits 'train' and 'test' are both the whole array, in order.
"""

import os
import zipfile

import numpy as np

from dual_mcmc_jax.data import common


def _read(path: str | None, key: str | None) -> tuple[np.ndarray, str]:
  """The chosen entry of the archive and its key."""
  if not path:
    raise ValueError(
        'config.data.npz_path must be set for config.data.dataset=\'npz\'.'
    )
  if not os.path.exists(path):
    raise FileNotFoundError(f'config.data.npz_path={path!r} does not exist.')
  try:
    archive = np.load(path)
  except (OSError, ValueError, zipfile.BadZipFile) as e:
    raise ValueError(
        f'config.data.npz_path={path!r} is not a readable .npz file'
        f' ({type(e).__name__}: {e}).'.replace('\n', ' ')
    ) from e
  if not isinstance(archive, np.lib.npyio.NpzFile):
    raise ValueError(
        f'config.data.npz_path={path!r} is a single .npy array, not an .npz'
        ' archive; save it with np.savez.'
    )
  with archive:
    if not archive.files:
      raise ValueError(f'config.data.npz_path={path!r} holds no arrays.')
    if key is None:
      key = archive.files[0]
    elif key not in archive.files:
      raise ValueError(
          f'config.data.npz_key={key!r} is not in config.data.npz_path='
          f'{path!r}; it holds {", ".join(archive.files)}.'
      )
    return archive[key], key


def _images(data: np.ndarray, config: common.Config, where: str) -> np.ndarray:
  """Checks an image array's shape, dtype and range."""
  if data.ndim == 3:
    data = data[..., None]  # [N, H, W] -> [N, H, W, 1]
  expected = common.image_shape(config)
  if data.ndim != 4 or data.shape[1:] != expected:
    raise ValueError(
        f'{where} must hold images [N, {expected[0]}, {expected[1]},'
        f' {expected[2]}] (config.data.image_size, config.data.num_channels);'
        f' got shape {data.shape}.'
    )
  if data.dtype == np.uint8:
    return data
  if not np.issubdtype(data.dtype, np.floating):
    raise ValueError(
        f'{where} must be uint8 images in 0..255 or float images in [-1, 1];'
        f' got dtype {data.dtype}.'
    )
  low, high = float(data.min()), float(data.max())
  # A little slack for float round-off in files written by other code.
  if low < -1.0 - 1e-4 or high > 1.0 + 1e-4:
    raise ValueError(
        f'{where}: float images must lie in [-1, 1]; got [{low}, {high}].'
    )
  return data.astype(np.float32)


def load_npz(config: common.Config) -> np.ndarray:
  """Loads and checks the array of an npz dataset.

  Args:
    config: the experiment config (reads `config.data.npz_path`,
      `config.data.npz_key`, `config.data.image_size`,
      `config.data.num_channels` and `config.model.arch`).

  Returns:
    uint8 [N, H, W, C] images, float32 [N, H, W, C] images in [-1, 1], or
    float32 [N, D] points.
  """
  path = config.data.npz_path
  data, key = _read(path, config.data.npz_key)
  where = f'array {key!r} of config.data.npz_path={path!r}'
  if data.size == 0:
    raise ValueError(f'{where} is empty (shape {data.shape}).')
  common.check_finite(data, f'config.data.npz_path={path}: array {key!r}')
  arch = config.model.arch
  if arch != 'mlp':
    return _images(data, config, where)
  if data.ndim != 2 or not np.issubdtype(data.dtype, np.floating):
    raise ValueError(
        f'{where} must be float points [N, D] for config.model.arch='
        f'\'mlp\'; got {data.dtype} {data.shape}.'
    )
  return data.astype(np.float32)


def _load(config: common.Config, split: str) -> np.ndarray:
  common.check_whole_set_split('npz', split)
  return load_npz(config)


SOURCE = common.Source(load=_load, whole_set=True)
