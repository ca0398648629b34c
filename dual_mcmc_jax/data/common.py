"""What every data source shares: the source record, the config checks, the
finiteness check and the conversion to float.

A source is a small record of functions (`Source`), not a class hierarchy:
most datasets are "load this split into a host array", and only the TFDS sets
add a streaming evaluation pass and a metadata-only size. Each source module
builds its records from the helpers here and the pipeline module puts them in
one table, so the name -> loader dispatch happens in exactly one place.

Arrays that leave a source are uint8 images [N, H, W, C] (0..255), float32
images in [-1, 1] or float32 points [N, D]; `to_float` maps all of them to the
float32 batches the model eats. Anything the user supplied (an npz array, the
pixels an image file decodes to) passes `check_finite` before it is used, so a
NaN in the data is a one-line error at load time instead of a diverged run
hours later.
"""

from collections.abc import Callable, Iterator
import dataclasses
from typing import Any

import numpy as np

# npz and image_folder have no held-out data: both names mean every example.
WHOLE_SET_SPLITS = ('train', 'test')


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Static facts about the training data.

  Attributes:
    num_train_examples: size of the training split (toy2d:
      `config.data.toy2d_num_points`).
    shape: per-example shape, (H, W, C) for images, (D,) for points.
  """

  num_train_examples: int
  shape: tuple[int, ...]


# An experiment config: the `Settings` read from it (settings.py), or the
# ConfigDict itself; the input pipeline reads its fields by name.
Config = Any


def group_dict(group: Any) -> dict[str, Any]:
  """A config group (a settings dataclass or a ConfigDict) as a dict."""
  if dataclasses.is_dataclass(group):
    return dataclasses.asdict(group)
  return group.to_dict()


@dataclasses.dataclass(frozen=True)
class Source:
  """How one `config.data.dataset` name is read.

  Attributes:
    load: (config, split) -> the whole split in host memory (uint8 or float32
      images [N, H, W, C], or float32 points [N, D]); raises ValueError for a
      split the source does not have.
    info: (config) -> the DatasetInfo of the training split without loading
      it; None: measured from `load(config, train_split(config))`.
    stream: (config, split, batch_size) -> float32 batches of one ordered
      pass, for sources whose evaluation splits are read without holding
      them in memory; None: evaluation batches are slices of `load`.
    train_split: (config) -> the split that training reads.
    whole_set: every split name means the whole data (npz, image_folder),
      so a `Store` keeps one copy for all of them.
  """

  load: Callable[[Config, str], np.ndarray]
  info: Callable[[Config], DatasetInfo] | None = None
  stream: Callable[[Config, str, int], Iterator[np.ndarray]] | None = None
  train_split: Callable[[Config], str] = lambda config: 'train'
  whole_set: bool = False


def image_shape(config: Config) -> tuple[int, int, int]:
  size = int(config.data.image_size)
  return (size, size, int(config.data.num_channels))


def check_image_config(
    config: Config,
    num_channels: int | tuple[int, ...],
    fixed_size: int | None = None,
) -> None:
  """Checks `config.data.image_size` and `num_channels` against the dataset.

  Args:
    config: the experiment config.
    num_channels: the allowed `config.data.num_channels` value(s).
    fixed_size: the only allowed image size, or None for any positive one.
  """
  dataset = config.data.dataset
  allowed = (num_channels,) if isinstance(num_channels, int) else num_channels
  if config.data.num_channels not in allowed:
    raise ValueError(
        f'config.data.num_channels must be'
        f' {" or ".join(str(c) for c in allowed)} for'
        f' config.data.dataset={dataset!r}; got {config.data.num_channels}.'
    )
  if fixed_size is not None and config.data.image_size != fixed_size:
    raise ValueError(
        f'config.data.image_size must be {fixed_size} for'
        f' config.data.dataset={dataset!r}; got {config.data.image_size}.'
    )
  if config.data.image_size <= 0:
    raise ValueError(
        f'config.data.image_size must be positive; got'
        f' {config.data.image_size}.'
    )


def check_seed(config: Config) -> int:
  seed = int(config.training.seed)
  if seed < 0:
    # SeedSequence only takes non-negative entropy.
    raise ValueError(f'config.training.seed must be >= 0; got {seed}.')
  return seed


def check_split(dataset: str, split: str, allowed: tuple[str, ...]) -> None:
  """Raises the one-line error for a split a source does not have."""
  if split in allowed:
    return
  names = ' and '.join(repr(s) for s in allowed)
  raise ValueError(
      f'config.data.dataset={dataset!r} has splits {names}; got'
      f' split={split!r}.'
  )


def check_whole_set_split(dataset: str, split: str) -> None:
  """The split check of user data, which has no held-out part."""
  if split not in WHOLE_SET_SPLITS:
    raise ValueError(
        f'config.data.dataset={dataset!r} has no held-out data: split'
        f' \'train\' or \'test\' is every example; got split={split!r}.'
    )


def check_finite(array: np.ndarray, where: str) -> None:
  """Raises ValueError naming the first NaN or Inf in a user-supplied array.

  Integer arrays cannot hold either, so for them this costs nothing.

  Args:
    array: the array as loaded or decoded.
    where: what it is, for the message, e.g. "config.data.npz_path=/x.npz:
      array 'arr_0'".
  """
  if not np.issubdtype(array.dtype, np.floating):
    return
  finite = np.isfinite(array)
  if finite.all():
    return
  # argmax of a bool array: the first bad element in C order.
  index = tuple(int(i) for i in np.unravel_index(
      int(np.argmax(~finite.ravel())), array.shape))
  value = array[index]
  kind = 'NaN' if np.isnan(value) else ('Inf' if value > 0 else '-Inf')
  raise ValueError(
      f'{where} holds {kind} at index {index if len(index) > 1 else index[0]};'
      ' clean the data first'
  )


def to_float(batch: np.ndarray) -> np.ndarray:
  """uint8 images -> float32 in [-1, 1]; float data -> float32 unchanged."""
  if batch.dtype == np.uint8:
    out = batch.astype(np.float32)
    # In place: the same rounding as `x / 127.5 - 1.0`, without temporaries.
    np.divide(out, 127.5, out=out)
    np.subtract(out, 1.0, out=out)
    return out
  return batch.astype(np.float32)
