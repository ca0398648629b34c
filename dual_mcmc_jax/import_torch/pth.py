"""Reads PyTorch `.pth` files into numpy arrays, without PyTorch.

The one reader of `.pth` files in the project: the authors' checkpoints
(`read_torch_checkpoint`) and pytorch-fid's Inception weights
(`load_state_dict`, used by `evaluators/inception.py`) both go through
`load`. Both of PyTorch's serialisation formats are read:

* the zip format (`torch.save` since PyTorch 1.6): `<name>/data.pkl` plus one
  raw little-endian file per storage under `<name>/data/`;
* the legacy format (`_use_new_zipfile_serialization=False`, and every file
  written before 1.6, such as the pytorch-fid weights): a stream of pickles
  (magic number, protocol version, system info, the object, the storage keys)
  followed by each storage as an int64 element count and its raw bytes.

The pickle may name only an allow-list of globals: `collections.OrderedDict`,
the tensor and parameter rebuild functions of `torch._utils` and the typed
storages `torch.<X>Storage`. That is all a module's `state_dict()` and a
`torch.optim.Adam` state dict of PyTorch 1.x and 2.x pickle (the rest is
plain dicts, lists, tuples, numbers, strings and None; `step` is a scalar
tensor since PyTorch 1.12). Any other global is refused with a ValueError
naming it, so reading a file never runs code from it. Tensors may not reach
outside their storage.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import pickle
import struct
from typing import Any, BinaryIO, Mapping
import zipfile

import ml_dtypes
import numpy as np

_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
_ZIP_MAGIC = b'PK\x03\x04'

_STORAGE_DTYPES = {
    'DoubleStorage': np.dtype('<f8'),
    'FloatStorage': np.dtype('<f4'),
    'HalfStorage': np.dtype('<f2'),
    'BFloat16Storage': np.dtype(ml_dtypes.bfloat16),
    'LongStorage': np.dtype('<i8'),
    'IntStorage': np.dtype('<i4'),
    'ShortStorage': np.dtype('<i2'),
    'CharStorage': np.dtype('i1'),
    'ByteStorage': np.dtype('u1'),
    'BoolStorage': np.dtype('?'),
}
_REBUILD_FUNCTIONS = ('_rebuild_tensor', '_rebuild_tensor_v2',
                      '_rebuild_parameter', '_rebuild_parameter_with_state')
# What a malformed file can make the unpickler or the storage reads raise.
_READ_ERRORS = (pickle.UnpicklingError, EOFError, struct.error, KeyError,
                IndexError, TypeError, AttributeError, ValueError,
                RecursionError, zipfile.BadZipFile)


@dataclasses.dataclass
class _Storage:
  """A storage referenced by the pickle; `data` is filled once it is read."""
  key: str
  dtype: np.dtype
  numel: int
  data: np.ndarray | None = None


@dataclasses.dataclass
class _LazyTensor:
  """A tensor whose storage is read after the pickle (both formats)."""
  storage: _Storage
  offset: int
  size: tuple[int, ...]
  stride: tuple[int, ...]

  def materialize(self) -> np.ndarray:
    flat = self.storage.data
    if flat is None:
      raise ValueError(f'storage {self.storage.key!r} was never read')
    if min((self.offset, *self.size, *self.stride), default=0) < 0:
      raise ValueError(f'a tensor on storage {self.storage.key!r} has a '
                       'negative offset, size or stride')
    if 0 in self.size:
      return np.zeros(self.size, flat.dtype)
    last = self.offset + sum((n - 1) * s for n, s in zip(self.size,
                                                         self.stride))
    if last >= flat.size:
      raise ValueError(f'a tensor reaches element {last} of storage '
                       f'{self.storage.key!r}, which has {flat.size}')
    view = np.lib.stride_tricks.as_strided(
        flat[self.offset:], shape=self.size,
        strides=tuple(s * flat.itemsize for s in self.stride))
    return np.array(view)


class _StorageType:
  """Stands for `torch.<X>Storage` in the pickle."""

  def __init__(self, name: str):
    self.dtype = _STORAGE_DTYPES[name]


def _rebuild_tensor(storage: Any, storage_offset: int, size: Any, stride: Any,
                    *unused: Any) -> _LazyTensor:
  del unused  # requires_grad, backward hooks, metadata.
  if not isinstance(storage, _Storage):
    raise pickle.UnpicklingError('a tensor without a storage')
  return _LazyTensor(storage, int(storage_offset),
                     tuple(int(n) for n in size), tuple(int(s) for s in stride))


def _rebuild_parameter(data: Any, *unused: Any) -> Any:
  del unused  # requires_grad, backward hooks, Python state.
  return data


class _Unpickler(pickle.Unpickler):
  """Unpickles tensors and containers only; storages go to `self.storages`."""

  def __init__(self, file: BinaryIO, storages: dict[str, _Storage]):
    super().__init__(file)
    self.storages = storages

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) == ('collections', 'OrderedDict'):
      return collections.OrderedDict
    if module == 'torch._utils' and name in _REBUILD_FUNCTIONS:
      return (_rebuild_parameter if name.startswith('_rebuild_parameter')
              else _rebuild_tensor)
    if module == 'torch' and name in _STORAGE_DTYPES:
      return _StorageType(name)
    raise pickle.UnpicklingError(
        f'refused the global {module}.{name} (only tensors, storages and '
        'plain containers are read)')

  def persistent_load(self, pid: Any) -> _Storage:
    # zip: (tag, type, key, location, numel); legacy adds view_metadata.
    if (not isinstance(pid, tuple) or len(pid) not in (5, 6) or
        pid[0] != 'storage' or not isinstance(pid[1], _StorageType)):
      raise pickle.UnpicklingError(f'unsupported persistent id {pid!r}')
    if len(pid) == 6 and pid[5] is not None:
      raise pickle.UnpicklingError('storage views are not supported')
    key = str(pid[2])
    if key not in self.storages:
      self.storages[key] = _Storage(key, pid[1].dtype, int(pid[4]))
    return self.storages[key]


def _materialize(obj: Any) -> Any:
  """Replaces every lazy tensor in nested containers by a numpy array."""
  if isinstance(obj, _LazyTensor):
    return obj.materialize()
  if isinstance(obj, _Storage):
    return _LazyTensor(obj, 0, (obj.numel,), (1,)).materialize()
  if isinstance(obj, dict):
    return type(obj)((k, _materialize(v)) for k, v in obj.items())
  if isinstance(obj, (list, tuple)):
    return type(obj)(_materialize(v) for v in obj)
  return obj


def _load_zip(path: str) -> Any:
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
    pkl = [n for n in names if n.endswith('/data.pkl') or n == 'data.pkl']
    if not pkl:
      raise ValueError('a zip file without data.pkl')
    prefix = pkl[0][:-len('data.pkl')]
    byteorder = prefix + 'byteorder'
    if byteorder in names and archive.read(byteorder).strip() != b'little':
      raise ValueError('big-endian PyTorch files are not supported')
    storages: dict[str, _Storage] = {}
    with archive.open(pkl[0]) as f:
      obj = _Unpickler(f, storages).load()
    for key, storage in storages.items():
      raw = archive.read(f'{prefix}data/{key}')
      storage.data = np.frombuffer(raw, storage.dtype, count=storage.numel)
    return _materialize(obj)


def _load_plain(f: BinaryIO) -> Any:
  """The next pickle of a legacy file's header, with the same allow-list."""
  return _Unpickler(f, {}).load()


def _load_legacy(path: str) -> Any:
  size = os.path.getsize(path)
  with open(path, 'rb') as f:
    storages: dict[str, _Storage] = {}
    if _load_plain(f) != _LEGACY_MAGIC:
      raise ValueError('not a PyTorch file (bad magic number)')
    _load_plain(f)  # protocol version
    info = _load_plain(f)
    if isinstance(info, Mapping) and not info.get('little_endian', True):
      raise ValueError('big-endian PyTorch files are not supported')
    obj = _Unpickler(f, storages).load()
    for key in _load_plain(f):
      storage = storages[str(key)]
      (numel,) = struct.unpack('<q', f.read(8))
      nbytes = numel * storage.dtype.itemsize
      if not 0 <= nbytes <= size - f.tell():
        raise ValueError(f'storage {key!r} is truncated')
      storage.data = np.frombuffer(f.read(nbytes), storage.dtype)
    return _materialize(obj)


def load(path: str) -> Any:
  """Reads a `torch.save`d object with every tensor as a numpy array.

  Args:
    path: a `.pth` / `.pt` file, in the zip or the legacy format.

  Returns:
    The saved object: dicts (`OrderedDict`s stay ordered dicts), lists,
    tuples and scalars as they were, tensors and parameters as numpy arrays
    of their dtype (bfloat16 as `ml_dtypes.bfloat16`).

  Raises:
    FileNotFoundError: no such file.
    ValueError: the file is not a PyTorch file this reader understands, or
      its pickle names a global outside the allow-list.
  """
  with open(path, 'rb') as f:
    is_zip = f.read(4) == _ZIP_MAGIC
  try:
    return _load_zip(path) if is_zip else _load_legacy(path)
  except _READ_ERRORS as e:
    message = ' '.join(str(e).split()) or type(e).__name__
    raise ValueError(f'{path}: cannot read as a PyTorch file: {message}'
                     ) from e


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads a PyTorch state dict file into {name: numpy array}.

  Args:
    path: a file written by `torch.save(module.state_dict(), path)`.

  Returns:
    An ordered dict of numpy arrays, in the file's order.

  Raises:
    FileNotFoundError: no such file.
    ValueError: the file does not hold a state dict this reader understands.
  """
  obj = load(path)
  if not isinstance(obj, dict) or not all(
      isinstance(v, np.ndarray) for v in obj.values()):
    raise ValueError(f'{path}: holds a {type(obj).__name__}, not a state '
                     'dict of tensors')
  return collections.OrderedDict(obj)


def read_torch_checkpoint(path: str) -> dict[str, Any]:
  """Reads an authors' checkpoint, every tensor as a numpy array.

  Args:
    path: the `.pth` file: `torch.save` of {'epoch', 'netG', 'netE', 'netI',
      'optG', 'optE', 'optI'} (state dicts of the nets and of their Adam
      optimisers), in either format, saved on any device.

  Returns:
    The checkpoint dict, tensors replaced by numpy arrays.

  Raises:
    FileNotFoundError: no such file.
    ValueError: the file is not a readable PyTorch file or holds no dict.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f'--torch_checkpoint={path}: no such file')
  obj = load(path)
  if not isinstance(obj, Mapping):
    raise ValueError(f'{path}: expected a dict with netG / netE / netI, got '
                     f'{type(obj).__name__}')
  return dict(obj)
