"""The grain pipeline: one table of sources, the train stream, eval passes.

`SOURCES` maps every `config.data.dataset` name to its `common.Source`; the
three entry points look the name up there once and never branch on it again:
`get_dataset_info` (size and example shape of the training split),
`create_train_iterator` (the infinite training stream) and
`create_eval_iterator` (one ordered pass over a split).

The training stream is a grain `MapDataset` over example indices, so every
batch is addressed by its global step instead of being produced by running a
sampler forward:

  range(N).shuffle(s)        epoch e is a permutation of its own (grain
                             reseeds its shuffle with s + e; s is drawn from
                             config.training.seed)
  [:S * G]                   each epoch drops its remainder: S = N // G steps
                             of the global batch G (left out when G divides N)
  .repeat()                  epochs without end
  .batch(G / P)              local batches of the P processes, in host order
  [p::P]                     process p keeps its own contiguous slice of
                             every global batch: element k is its part of
                             step k's global batch (left out when P = 1)
  .map_with_index(gather)    rows gathered from the host array, uint8 ->
                             float32 in [-1, 1], and horizontal flips drawn
                             from (seed, step) for the whole global batch

The batch of step k is therefore a pure function of (config.training.seed,
k): the same on every restart, and on P hosts the slices are disjoint and
together make the global batch that one host would see. The grain iterator's
state is `{'next_index': k}` with k the number of steps already taken, so
`create_train_iterator(config, start_step=k)` sets that state and yields
exactly the batches an uninterrupted run yields from step k + 1 on, in O(1),
without replaying k batches. The training loop resumes from the step stored
in its checkpoint (`state.step`) and needs no data-iterator checkpoint of its
own; after a `kill -9` that step is all there is, and it is enough.

Host memory holds the training split as one array (see the sources), and a
batch is gathered when it is asked for. `prefetch_to_device` runs that gather
and the host-to-device copy ahead of the train step in grain's prefetch
thread (`grain.experimental.ThreadPrefetchDatasetIterator`). Evaluation
passes are ordered, keep the last partial batch, and are not divided between
hosts; TFDS splits stream through tf.data instead of being held.

Nothing decoded is cached in the process. A caller that needs the same split
more than once (the training split for its size, then for the stream; an
evaluator that reads 'train' and 'test' twice) passes a `Store` it owns to
the calls, and the data lives as long as that object.
"""

from collections.abc import Callable, Iterator
import hashlib
import json
import os
from typing import Any

import grain
import jax
import numpy as np

from dual_mcmc_jax.data import common
from dual_mcmc_jax.data import digits
from dual_mcmc_jax.data import image_folder
from dual_mcmc_jax.data import npz
from dual_mcmc_jax.data import tfds
from dual_mcmc_jax.data import toy2d

SOURCES: dict[str, common.Source] = {
    **tfds.SOURCES,
    'digits': digits.SOURCE,
    'toy2d': toy2d.SOURCE,
    'npz': npz.SOURCE,
    'image_folder': image_folder.SOURCE,
}
# Every `config.data.dataset` value, and those read through TFDS.
DATASETS = tuple(SOURCES)
TFDS_DATASETS = tuple(tfds.SOURCES)

# SeedSequence words of the random streams drawn from config.training.seed
# (word 1 is toy2d's point stream).
_SHUFFLE_STREAM = 0
_FLIP_STREAM = 2
# Batches are gathered in the thread that asks for them: the arrays are in
# memory, where grain advises against read threads (they only contend for the
# GIL: 20% fewer batches per second here). Prefetching is the thread of
# `prefetch_to_device`, which runs the gather and the transfer ahead.
_READ_OPTIONS = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)


class Store:
  """Host arrays loaded for one owner, so that a split is decoded once.

  Pass the same Store to `get_dataset_info`, `create_train_iterator` and
  `create_eval_iterator` to share their loads; the arrays are freed with the
  Store. A split is keyed by the config fields that shape it, so a changed
  config loads afresh, but files that change on disk are not looked at again
  while the Store is kept.
  """

  def __init__(self):
    self._arrays: dict[tuple[str, str], np.ndarray] = {}

  def get(self, config: common.Config, split: str,
          load: Callable[[], np.ndarray]) -> np.ndarray:
    key = (split, json.dumps([common.group_dict(config.data),
                              config.model.arch, config.training.seed],
                             sort_keys=True,
                             default=repr))
    if key not in self._arrays:
      self._arrays[key] = load()
    return self._arrays[key]

  def clear(self) -> None:
    self._arrays.clear()


def _source(config: common.Config) -> common.Source:
  dataset = config.data.dataset
  if dataset not in SOURCES:
    raise ValueError(
        f'Unknown config.data.dataset={dataset!r}; allowed values:'
        f' {", ".join(DATASETS)}.'
    )
  return SOURCES[dataset]


def _load(config: common.Config, split: str,
          store: Store | None) -> np.ndarray:
  source = _source(config)
  if store is None:
    return source.load(config, split)
  # Other split names reach `load` unchanged, which rejects them.
  whole = source.whole_set and split in common.WHOLE_SET_SPLITS
  key = 'all' if whole else split
  return store.get(config, key, lambda: source.load(config, split))


def get_dataset_info(
    config: common.Config, *, store: Store | None = None
) -> common.DatasetInfo:
  """Returns the training-set size and per-example shape.

  TFDS datasets read only the split's metadata and toy2d only the config;
  the other sources load the training split (an image folder is decoded, and
  unreadable files do not count), kept in `store` if one is given.

  Args:
    config: the experiment config (reads `config.data`).
    store: where to keep a loaded split for the calls that follow.

  Returns:
    The DatasetInfo of the training split.
  """
  source = _source(config)
  if source.info is not None:
    return source.info(config)
  data = _load(config, source.train_split(config), store)
  return common.DatasetInfo(
      num_train_examples=len(data), shape=tuple(data.shape[1:])
  )


def source_fingerprint(config: common.Config) -> dict[str, Any] | None:
  """What the files a run's data are read from look like now.

  For the sources read from the user's files (`image_folder`: each image's
  relative path and size; `npz`: the file's size and sha256), so that a
  workdir can tell when its data changed between two runs
  (`checkpointing.check_data`). None for the other sources, whose
  data are fixed by the config.

  Args:
    config: the experiment config (reads `config.data`).

  Returns:
    {'dataset', 'files', 'digest'} or None.
  """
  d = config.data
  digest = hashlib.sha256()
  if d.dataset == 'image_folder' and d.image_folder:
    folder = os.path.abspath(os.path.expanduser(d.image_folder))
    files = image_folder.list_image_files(folder)
    for name in files:
      size = os.path.getsize(os.path.join(folder, name))
      digest.update(f'{name}\t{size}\n'.encode())
  elif d.dataset == 'npz' and d.npz_path:
    files = [d.npz_path]
    with open(os.path.expanduser(d.npz_path), 'rb') as f:
      for chunk in iter(lambda: f.read(1 << 24), b''):
        digest.update(chunk)
  else:
    return None
  return {'dataset': d.dataset, 'files': len(files),
          'digest': digest.hexdigest()}


def _batch_sizes(config: common.Config) -> tuple[int, int]:
  """Returns the (global, per-process) batch sizes."""
  global_batch = int(config.training.batch_size)
  num_processes = jax.process_count()
  if global_batch <= 0 or global_batch % num_processes:
    raise ValueError(
        f'config.training.batch_size={global_batch} must be a positive'
        f' multiple of the number of processes ({num_processes}).'
    )
  return global_batch, global_batch // num_processes


def check_batch_fits(config: common.Config, num_train_examples: int) -> None:
  """Raises ValueError when one global batch needs more than the data holds."""
  global_batch = int(config.training.batch_size)
  if num_train_examples < global_batch:
    raise ValueError(
        f'config.training.batch_size={global_batch} is larger than the'
        f' {num_train_examples} training examples of'
        f' config.data.dataset={config.data.dataset!r}.'
    )


class _Gather:
  """Turns step k's index batch into float32 rows, flipped from (seed, k)."""

  def __init__(self, data: np.ndarray, seed: int, global_batch: int,
               offset: int, random_flip: bool):
    self._data = data
    self._seed = seed
    self._global_batch = global_batch
    self._offset = offset
    self._random_flip = random_flip

  def __call__(self, step: int, indices: np.ndarray) -> np.ndarray:
    batch = common.to_float(self._data[indices])  # [B, ...]
    if self._random_flip:
      # Drawn for the whole global batch, so a host's flips do not depend on
      # how many hosts share it.
      rng = np.random.default_rng([self._seed, _FLIP_STREAM, step])
      mirror = rng.random(self._global_batch) < 0.5
      mirror = mirror[self._offset:self._offset + len(indices)]  # [B]
      batch[mirror] = batch[mirror, :, ::-1, :]
    return batch


def train_dataset(
    data: np.ndarray,
    *,
    seed: int,
    global_batch: int,
    process_index: int = 0,
    process_count: int = 1,
    random_flip: bool = False,
) -> grain.MapDataset:
  """The training stream of one process as an infinite grain MapDataset.

  Args:
    data: the training split, [N, ...].
    seed: the training seed (>= 0).
    global_batch: examples per step over all processes.
    process_index: this process, in [0, process_count).
    process_count: processes sharing each global batch.
    random_flip: mirror images left-right, each with probability 1/2.

  Returns:
    A MapDataset whose element k is this process's float32 slice, of
    global_batch / process_count rows, of step k's global batch.
  """
  local_batch = global_batch // process_count
  steps_per_epoch = len(data) // global_batch
  shuffle_seed = np.random.SeedSequence([seed, _SHUFFLE_STREAM]).generate_state(
      1)[0]
  ds = grain.MapDataset.range(len(data)).shuffle(seed=int(shuffle_seed))
  if len(data) % global_batch:  # Slices that change nothing cost time.
    ds = ds[:steps_per_epoch * global_batch]
  ds = ds.repeat().batch(local_batch, drop_remainder=True)
  if process_count > 1:
    ds = ds[process_index::process_count]
  return ds.map_with_index(_Gather(
      data, seed, global_batch, process_index * local_batch, random_flip))


def create_train_iterator(
    config: common.Config,
    *,
    start_step: int = 0,
    store: Store | None = None,
) -> grain.DatasetIterator:
  """Creates the infinite, deterministic stream of training batches.

  The data is loaded (and any error raised) when this is called; batches are
  then gathered lazily.

  Args:
    config: the experiment config (reads `config.data`,
      `config.training.batch_size` and `config.training.seed`).
    start_step: the steps already taken. The iterator yields exactly what the
      iterator from step 0 yields after `start_step` batches.
    store: where to find (or keep) the loaded training split.

  Returns:
    A grain iterator of float32 per-process batches, [B, H, W, C] images in
    [-1, 1] or [B, D] points, with B = config.training.batch_size /
    jax.process_count(); process p gets rows [p * B, (p + 1) * B) of each
    global batch. `get_state()` is `{'next_index': steps taken}`.
  """
  global_batch, _ = _batch_sizes(config)
  seed = common.check_seed(config)
  if start_step < 0:
    raise ValueError(f'start_step must be >= 0; got {start_step}.')
  data = _load(config, _source(config).train_split(config), store)  # [N, ...]
  random_flip = bool(config.data.random_flip)
  if random_flip and data.ndim != 4:
    raise ValueError(
        'config.data.random_flip=True needs image data; '
        f'config.data.dataset={config.data.dataset!r} gives points.'
    )
  check_batch_fits(config, len(data))
  ds = train_dataset(
      data, seed=seed, global_batch=global_batch,
      process_index=jax.process_index(), process_count=jax.process_count(),
      random_flip=random_flip,
  )
  iterator = iter(ds.to_iter_dataset(_READ_OPTIONS))
  iterator.set_state({'next_index': start_step})
  return iterator


def create_eval_iterator(
    config: common.Config,
    split: str,
    *,
    batch_size: int,
    store: Store | None = None,
) -> Iterator[np.ndarray]:
  """Creates one ordered pass over a split.

  No shuffling, no flips, the last partial batch is kept, and the pass is not
  divided between hosts: every process sees the whole split.

  Splits: TFDS datasets accept any TFDS split string of their dataset
  ('test', 'train', 'train[:10%]', ...; lsun_church64 has 'train' and
  'validation', celebahq256 only 'train'); digits has 'train' (the first
  1500 images) and 'test' (the last 297); toy2d has 'train' (the training
  points) and 'test' (as many fresh points from an independent stream); npz
  and image_folder take 'train' or 'test', both meaning every example (the
  array in order, or the files sorted by path).

  Args:
    config: the experiment config (reads `config.data`).
    split: the split name.
    batch_size: examples per batch.
    store: where to find (or keep) the loaded split; TFDS splits stream and
      are never kept.

  Returns:
    An iterator of float32 batches, preprocessed like the training batches.
  """
  if batch_size <= 0:
    raise ValueError(f'batch_size must be positive; got {batch_size}.')
  source = _source(config)
  if source.stream is not None:
    return source.stream(config, split, batch_size)
  data = _load(config, split, store)
  ds = grain.MapDataset.range(len(data)).batch(batch_size)
  ds = ds.map(lambda indices: common.to_float(data[indices]))
  return iter(ds.to_iter_dataset(_READ_OPTIONS))


class _Placed:
  """Host batches through `sharding_fn`, as the iterator grain prefetches.

  Its state is the host iterator's (`{'next_index': step}` for the train
  stream), or the number of batches taken from any other iterator.
  """

  def __init__(self, iterator: Iterator[Any],
               sharding_fn: Callable[[Any], Any]):
    self._iterator = iterator
    self._sharding_fn = sharding_fn
    self._taken = 0

  def __next__(self) -> Any:
    batch = next(self._iterator)
    self._taken += 1
    return self._sharding_fn(batch)

  def get_state(self) -> dict[str, Any]:
    if hasattr(self._iterator, 'get_state'):
      return self._iterator.get_state()
    return {'batches_taken': self._taken}


class DevicePrefetcher(Iterator[Any]):
  """The iterator `prefetch_to_device` returns; see there."""

  def __init__(self, iterator: Iterator[Any], size: int,
               sharding_fn: Callable[[Any], Any]):
    self._host = iterator
    self._done = False
    self._closed = False
    self._prefetch = grain.experimental.ThreadPrefetchDatasetIterator(
        _Placed(iterator, sharding_fn), size)
    if size:
      # Transfers begin now, not at the first next().
      self._prefetch.start_prefetch()

  def __next__(self) -> Any:
    if self._done:
      raise StopIteration
    try:
      return next(self._prefetch)
    except BaseException:
      # The end of the stream, or an error raised in its place: either way
      # there is nothing after it.
      self.close()
      raise

  def get_state(self) -> dict[str, Any]:
    """The host iterator's state after the last batch returned."""
    return self._prefetch.get_state()

  def close(self) -> None:
    """Stops the thread (after its current batch), then the host iterator."""
    if self._closed:
      return
    self._done = self._closed = True
    self._prefetch.close()
    close = getattr(self._host, 'close', None)
    if close is not None:
      close()

  def __del__(self):
    if hasattr(self, '_prefetch'):  # __init__ may have failed before it.
      self.close()


def prefetch_to_device(
    iterator: Iterator[Any],
    size: int = 2,
    sharding_fn: Callable[[Any], Any] = jax.device_put,
) -> DevicePrefetcher:
  """Runs `sharding_fn` on the next batches in grain's prefetch thread.

  Host-to-device copies then overlap the train step instead of following it:
  while the device computes step s, the thread has already gathered and
  transferred the batches of steps s + 1 ... s + size. One thread and a FIFO
  queue keep the order, so the output is `map(sharding_fn, iterator)`
  exactly, and resuming stays a matter of the iterator's `start_step`.

  Usage in the train loop (the host batch rides along for code that needs
  it on the host, such as a fixed sample batch):

    train_iter = data.prefetch_to_device(
        data.create_train_iterator(config, start_step=start_step),
        size=config.data.prefetch_to_device,
        sharding_fn=lambda b: (b, sharding.shard_batch(b, mesh)))
    with contextlib.closing(train_iter):
      local_batch, batch = next(train_iter)

  Args:
    iterator: the host batches, consumed only by the prefetch thread from now
      on, and closed (if it can be) with the prefetcher.
    size: how many transformed batches may wait in the queue; up to size + 1
      live on the device besides the one in use. 0 turns prefetching off:
      `sharding_fn` then runs in the caller's thread, on demand.
    sharding_fn: places one host batch on the devices, e.g.
      `lambda b: sharding.shard_batch(b, mesh)`; it runs in the thread, so it
      must not start collectives (`shard_batch` does not: every host builds
      its own shards).

  Returns:
    An iterator over `sharding_fn(batch)` in the input's order. An exception
    raised by `iterator` or `sharding_fn` is raised by `next()` after the
    batches before it, and the stream ends there. `close()` (or dropping the
    iterator) stops the thread.
  """
  if size < 0:
    raise ValueError(f'prefetch_to_device needs size >= 0; got {size}.')
  return DevicePrefetcher(iterator, size, sharding_fn)
