"""Reads a PyTorch state dict (.pth) into numpy arrays without PyTorch.

Lets the FID evaluator use pytorch-fid's `pt_inception-2015-12-05` weights
(downloaded or copied by hand) on machines without torch. Both of PyTorch's
serialisation formats are read:

* the zip format (`torch.save` since PyTorch 1.6): `<name>/data.pkl` plus one
  raw little-endian file per storage under `<name>/data/`;
* the legacy format (`_use_new_zipfile_serialization=False`, and every file
  written before 1.6, such as the pytorch-fid weights): a stream of pickles
  (magic number, protocol version, system info, the object, the storage keys)
  followed by each storage as an int64 element count and its raw bytes.

Only what state dicts hold is understood: tensors rebuilt by
`torch._utils._rebuild_tensor[_v2]` or `_rebuild_parameter`, typed storages,
`collections.OrderedDict`. Any other global in the pickle is refused, so a
file cannot run code when it is read.
"""

from __future__ import annotations

import collections
import dataclasses
import pickle
import struct
from typing import Any, BinaryIO
import zipfile

import numpy as np

_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c

_STORAGE_DTYPES = {
    'DoubleStorage': np.float64,
    'FloatStorage': np.float32,
    'HalfStorage': np.float16,
    'LongStorage': np.int64,
    'IntStorage': np.int32,
    'ShortStorage': np.int16,
    'CharStorage': np.int8,
    'ByteStorage': np.uint8,
    'BoolStorage': np.bool_,
}


@dataclasses.dataclass
class _Storage:
  """A storage referenced by the pickle; `data` is filled once it is read."""
  key: str
  dtype: np.dtype
  numel: int
  data: np.ndarray | None = None


@dataclasses.dataclass
class _LazyTensor:
  storage: _Storage
  offset: int
  size: tuple[int, ...]
  stride: tuple[int, ...]

  def materialize(self) -> np.ndarray:
    if self.storage.data is None:
      raise ValueError(f'storage {self.storage.key!r} was never read')
    flat = self.storage.data
    item = flat.itemsize
    if not self.size:
      return flat[self.offset].copy()
    view = np.lib.stride_tricks.as_strided(
        flat[self.offset:], shape=self.size,
        strides=tuple(s * item for s in self.stride))
    return np.array(view)


class _StorageType:
  """Stands for `torch.<X>Storage` in the pickle."""

  def __init__(self, name: str):
    self.dtype = np.dtype(_STORAGE_DTYPES[name])


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
  del unused  # requires_grad, backward hooks, metadata.
  return _LazyTensor(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, *unused):
  del unused
  return data


class _Unpickler(pickle.Unpickler):
  """Unpickles a state dict; storages come from `self.storages`."""

  def __init__(self, file: BinaryIO, storages: dict[str, _Storage]):
    super().__init__(file)
    self.storages = storages

  def find_class(self, module: str, name: str) -> Any:
    if module == 'collections' and name == 'OrderedDict':
      return collections.OrderedDict
    if module == 'torch._utils' and name in ('_rebuild_tensor',
                                             '_rebuild_tensor_v2'):
      return _rebuild_tensor
    if module == 'torch._utils' and name == '_rebuild_parameter':
      return _rebuild_parameter
    if module == 'torch' and name in _STORAGE_DTYPES:
      return _StorageType(name)
    raise pickle.UnpicklingError(
        f'unsupported global {module}.{name} in a PyTorch state dict')

  def persistent_load(self, pid: Any) -> _Storage:
    if not isinstance(pid, tuple) or pid[0] != 'storage':
      raise pickle.UnpicklingError(f'unsupported persistent id {pid!r}')
    # zip: (tag, type, key, location, numel); legacy adds view_metadata.
    storage_type, key, numel = pid[1], str(pid[2]), int(pid[4])
    if len(pid) > 5 and pid[5] is not None:
      raise pickle.UnpicklingError('storage views are not supported')
    if key not in self.storages:
      self.storages[key] = _Storage(key, storage_type.dtype, numel)
    return self.storages[key]


def _materialize(obj: Any) -> Any:
  if isinstance(obj, _LazyTensor):
    return obj.materialize()
  if isinstance(obj, dict):
    return collections.OrderedDict((k, _materialize(v)) for k, v in obj.items())
  if isinstance(obj, (list, tuple)):
    return type(obj)(_materialize(v) for v in obj)
  return obj


def _load_zip(path: str) -> Any:
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
    pkl = [n for n in names if n.endswith('/data.pkl') or n == 'data.pkl']
    if not pkl:
      raise ValueError(f'{path}: zip file without data.pkl; not a PyTorch file')
    prefix = pkl[0][:-len('data.pkl')]
    byteorder = prefix + 'byteorder'
    if byteorder in names and archive.read(byteorder).strip() != b'little':
      raise ValueError(f'{path}: big-endian PyTorch files are not supported')
    storages: dict[str, _Storage] = {}
    with archive.open(pkl[0]) as f:
      obj = _Unpickler(f, storages).load()
    for key, storage in storages.items():
      raw = archive.read(f'{prefix}data/{key}')
      storage.data = np.frombuffer(raw, storage.dtype, count=storage.numel)
  return _materialize(obj)


def _load_legacy(path: str) -> Any:
  with open(path, 'rb') as f:
    magic = pickle.load(f)
    if magic != _LEGACY_MAGIC:
      raise ValueError(f'{path}: not a PyTorch file (bad magic number)')
    pickle.load(f)  # protocol version
    pickle.load(f)  # system info
    storages: dict[str, _Storage] = {}
    obj = _Unpickler(f, storages).load()
    keys = pickle.load(f)
    for key in keys:
      storage = storages[str(key)]
      (numel,) = struct.unpack('<q', f.read(8))
      nbytes = numel * storage.dtype.itemsize
      raw = f.read(nbytes)
      if len(raw) != nbytes:
        raise ValueError(f'{path}: truncated storage {key!r}')
      storage.data = np.frombuffer(raw, storage.dtype)
  return _materialize(obj)


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads a PyTorch state dict file into {name: numpy array}.

  Args:
    path: a `.pth` / `.pt` file written by `torch.save(state_dict, path)`.

  Returns:
    An ordered dict of numpy arrays, in the file's order.

  Raises:
    ValueError: the file is not a PyTorch state dict this reader understands.
  """
  try:
    if zipfile.is_zipfile(path):
      obj = _load_zip(path)
    else:
      obj = _load_legacy(path)
  except (pickle.UnpicklingError, EOFError, struct.error, KeyError) as e:
    raise ValueError(
        f'{path}: cannot read as a PyTorch state dict ({e})') from e
  if not isinstance(obj, dict):
    raise ValueError(f'{path}: holds a {type(obj).__name__}, not a state dict')
  return obj
