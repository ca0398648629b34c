"""Input pipeline: one entry point for every dataset the experiments use.

`create_train_iterator` yields an infinite stream of per-host float32 numpy
batches, images in [-1, 1] as [B, H, W, C] or points as [B, D];
`create_eval_iterator` makes one ordered pass over a split;
`get_dataset_info` gives the training-set size and the per-example shape;
`prefetch_to_device` moves batches onto the accelerators ahead of the step.
`config.data.dataset` picks the source:

* The paper's training sets, through TFDS: `cifar10` (`cifar10`), `celeba64`
  (`celeb_a`), `lsun_church64` (`lsun/church_outdoor`), `celebahq256`
  (`celeb_a_hq/256`, built from a manual download).
* Out-of-distribution sets, through TFDS, meant for evaluation
  (`create_eval_iterator(config, 'test', ...)`) but usable for training:
  `svhn` (`svhn_cropped`), `cifar100` (`cifar100`), `celeba32` (`celeb_a`
  with the CelebA-64 crop, resized to `config.data.image_size`, default 32).
* TFDS datasets are read from `config.data.data_dir` and downloaded only with
  `config.data.download=True`: the training machines have no internet, so a
  missing dataset is a one-line error that says how to prepare it.
* `digits`: scikit-learn's bundled 8x8 digits, no download.
* `toy2d`: points from `toy2d.sample` (see toy2d.py).
* `npz`: an array from a user-supplied .npz file (`config.data.npz_path`).
* `image_folder`: the user's own PNG / JPEG files, found recursively under
  `config.data.image_folder`.

Design: every training split is preprocessed once per run into a host-memory
array (uint8 for images: CIFAR-10's 50,000 take 154 MB, CelebA-64's 162,770
take 2 GB, LSUN church_outdoor's 126,227 at 64 take 1.6 GB, CelebA-HQ-256's
30,000 take 5.9 GB), and batches are gathered from it with a numpy
permutation. Epoch e uses the permutation and the flip bits drawn from
`np.random.SeedSequence([config.training.seed, _SHUFFLE_STREAM, e])`, so the
batch of global step s is a pure function of (seed, s): resuming at step k is
O(1), with no tf.data skip to replay. Each epoch drops its remainder (steps per
epoch = num_train_examples // global batch size). On multiple hosts every
process holds the whole split, draws the same global batch and keeps its own
contiguous slice of it (`jax.process_index()`), so the hosts' slices are
disjoint and together make the global batch. A full permutation replaces a
shuffle buffer. Evaluation passes stream TFDS splits through tf.data instead
of holding them, and are not divided between hosts.

Preprocessing (done when the split is loaded, so the stored images are
already at `config.data.image_size`):

* celeba64, celeba32: crop box (left 15, top 40, right 163, bottom 188) of the
  178x218 aligned image, i.e. 148x148, then resize.
* lsun_church64: central square crop (side = the shorter side), then resize.
* celebahq256, svhn, cifar100: resize only when `image_size` is not the
  native size (256, 32, 32), e.g. to compare a 64x64 model with SVHN.
  cifar10 is the paper's 32x32 training set and accepts only 32.
* image_folder: EXIF orientation applied, converted to RGB or L
  (`config.data.num_channels` 3 or 1; an alpha channel is dropped), the
  shorter side resized to `image_size` and the centre square kept.
* Resizing is bilinear with antialiasing (`tf.image.resize(...,
  antialias=True)` for TFDS, PIL's bilinear resize for image folders), which
  widens the filter when downsampling like torchvision's Resize on PIL
  images; the result is rounded back to uint8, as a PIL pipeline's would be.
* Random horizontal flips (`config.data.random_flip`) are applied when a batch
  is gathered, from the per-epoch flip bits above, so they are deterministic in
  (seed, step) too.

TensorFlow and TFDS are imported lazily in the functions that need them, so
the digits, toy2d, npz and image_folder sources work on machines without
TensorFlow (image_folder needs Pillow).
"""

from collections.abc import Callable, Iterator
import concurrent.futures
import dataclasses
import functools
import os
import pathlib
import queue
import threading
import time
from typing import Any, Generic, TypeVar
import zipfile

from absl import logging
import jax
import ml_collections
import numpy as np

from dual_mcmc_jax import toy2d

DATASETS = (
    'cifar10',
    'celeba64',
    'lsun_church64',
    'celebahq256',
    'svhn',
    'cifar100',
    'celeba32',
    'digits',
    'toy2d',
    'npz',
    'image_folder',
)

# Distinct SeedSequence words keep the shuffling stream independent of the
# stream that generates the toy2d points from the same seed.
_SHUFFLE_STREAM = 0
_TOY2D_STREAM = 1
# Digits: the last this many images are the held-out 'test' split.
_DIGITS_NUM_TEST = 297
# Batch size used while preprocessing a TFDS split into memory.
_LOAD_BATCH = 1024
# File name endings (lower-cased) that image_folder reads.
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg')
# npz and image_folder have no held-out data: both names mean every example.
_WHOLE_SET_SPLITS = ('train', 'test')

_T = TypeVar('_T')
_U = TypeVar('_U')


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


@dataclasses.dataclass(frozen=True)
class _TfdsSource:
  """How one dataset name maps onto TFDS.

  Attributes:
    tfds_name: the TFDS name (with config).
    preprocess: maps one uint8 [H, W, 3] image tensor and the target size to a
      uint8 [size, size, 3] tensor.
    fixed_size: the only allowed `config.data.image_size`, or None when any
      size is allowed (the preprocessing resizes).
    manual_files: the files TFDS builds the dataset from, which must be
      downloaded by hand into its manual directory; empty when TFDS downloads
      the dataset itself.
    build_note: what else preparing the dataset needs (for manual datasets:
      what the manual files are), for error messages.
  """

  tfds_name: str
  preprocess: Callable[..., Any]
  fixed_size: int | None = None
  manual_files: tuple[str, ...] = ()
  build_note: str = ''


def preprocess_cifar10(image, image_size: int):
  """CIFAR-10 needs no preprocessing; `image_size` is checked to be 32.

  Args:
    image: uint8 [32, 32, 3] tensor.
    image_size: the target size (32).

  Returns:
    The image unchanged.
  """
  del image_size  # Checked against `fixed_size` before loading.
  return image


def preprocess_celeba(image, image_size: int):
  """Crops the face box of an aligned CelebA image and resizes it.

  Args:
    image: uint8 [218, 178, 3] tensor.
    image_size: output side length (64 for celeba64, 32 for celeba32).

  Returns:
    uint8 [image_size, image_size, 3] tensor.
  """
  # Box (left 15, top 40, right 163, bottom 188): rows 40:188, columns 15:163.
  crop = image[40:188, 15:163, :]  # [148, 148, 3]
  return _resize_uint8(crop, image_size)


def preprocess_lsun(image, image_size: int):
  """Crops the central square of an LSUN image and resizes it.

  Args:
    image: uint8 [H, W, 3] tensor of any size.
    image_size: output side length.

  Returns:
    uint8 [image_size, image_size, 3] tensor.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  shape = tf.shape(image)
  height, width = shape[0], shape[1]
  side = tf.minimum(height, width)
  top = (height - side) // 2
  left = (width - side) // 2
  crop = image[top:top + side, left:left + side, :]  # [side, side, 3]
  return _resize_uint8(crop, image_size)


def preprocess_resize(image, image_size: int):
  """Resizes a square image of fixed size when another size is asked for.

  Args:
    image: uint8 [S, S, 3] tensor with a static S (CelebA-HQ 256, SVHN and
      CIFAR-100 32).
    image_size: output side length.

  Returns:
    uint8 [image_size, image_size, 3] tensor; the image itself when
    image_size == S, so native-size data passes through untouched.
  """
  if image.shape[0] == image_size and image.shape[1] == image_size:
    return image
  return _resize_uint8(image, image_size)


def _resize_uint8(image, image_size: int):
  """Antialiased bilinear resize of a uint8 image, rounded back to uint8."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  resized = tf.image.resize(
      image, [image_size, image_size], method='bilinear', antialias=True
  )
  return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


_TFDS_SOURCES = {
    'cifar10': _TfdsSource('cifar10', preprocess_cifar10, fixed_size=32),
    'celeba64': _TfdsSource('celeb_a', preprocess_celeba),
    'lsun_church64': _TfdsSource(
        'lsun/church_outdoor',
        preprocess_lsun,
        build_note=(
            'building it reads the LSUN LMDB files with tensorflow-io: pip'
            ' install tensorflow-io'
        ),
    ),
    'celebahq256': _TfdsSource(
        'celeb_a_hq/256',
        preprocess_resize,
        # tfds celeb_a_hq/256 (version 2.0.0) reads exactly this tar from its
        # manual_dir; every member is one 256x256 image (PNG).
        manual_files=('data256x256.tar',),
        build_note=(
            'a tar of the 30,000 CelebA-HQ images as 256x256 PNG files; see'
            ' https://github.com/tkarras/progressive_growing_of_gans#preparing-datasets-for-training'
        ),
    ),
    'svhn': _TfdsSource('svhn_cropped', preprocess_resize),
    'cifar100': _TfdsSource('cifar100', preprocess_resize),
    'celeba32': _TfdsSource('celeb_a', preprocess_celeba),
}
# The `config.data.dataset` values read through TFDS.
TFDS_DATASETS = tuple(_TFDS_SOURCES)


def get_dataset_info(config: ml_collections.ConfigDict) -> DatasetInfo:
  """Returns the training-set size and per-example shape.

  For TFDS datasets this reads only the split's metadata, not the images. An
  image folder is decoded here (unreadable files do not count), and the
  result is kept for the `create_train_iterator` call that follows.

  Args:
    config: the experiment config (reads `config.data`).

  Returns:
    The DatasetInfo of the training split.
  """
  dataset = _check_dataset(config)
  if dataset in _TFDS_SOURCES:
    _check_image_config(config, num_channels=3)
    return DatasetInfo(
        num_train_examples=_tfds_num_examples(config, _train_split(config)),
        shape=_image_shape(config),
    )
  if dataset == 'digits':
    _check_image_config(config, num_channels=1)
    num_images = _load_digits_images(config.data.image_size).shape[0]
    return DatasetInfo(
        num_train_examples=num_images - _DIGITS_NUM_TEST,
        shape=_image_shape(config),
    )
  if dataset == 'toy2d':
    toy2d.check_name(config.data.toy2d_name)
    return DatasetInfo(
        num_train_examples=int(config.data.toy2d_num_points), shape=(2,)
    )
  if dataset == 'image_folder':
    images = _image_folder_array(config)
    return DatasetInfo(num_train_examples=len(images), shape=images.shape[1:])
  data = _load_npz(config)
  return DatasetInfo(num_train_examples=len(data), shape=tuple(data.shape[1:]))


def create_train_iterator(
    config: ml_collections.ConfigDict, *, start_step: int = 0
) -> Iterator[np.ndarray]:
  """Creates the infinite, deterministic stream of training batches.

  The data is loaded (and any error raised) when this is called; batches are
  then gathered lazily.

  Args:
    config: the experiment config (reads `config.data`,
      `config.training.batch_size` and `config.training.seed`).
    start_step: the global step of the first batch. The iterator yields
      exactly what the iterator from step 0 yields after `start_step` batches.

  Returns:
    An iterator of float32 per-host batches, [B, H, W, C] images in [-1, 1]
    or [B, D] points, with B = config.training.batch_size /
    jax.process_count(). Host p gets rows [p * B, (p + 1) * B) of each global
    batch.
  """
  global_batch, local_batch = _batch_sizes(config)
  seed = _check_seed(config)
  if start_step < 0:
    raise ValueError(f'start_step must be >= 0; got {start_step}.')
  data = _load_train_array(config)  # [N, ...]
  flip = bool(config.data.random_flip)
  if flip and data.ndim != 4:
    raise ValueError(
        'config.data.random_flip=True needs image data; '
        f'config.data.dataset={config.data.dataset!r} gives points.'
    )
  num_examples = len(data)
  steps_per_epoch = num_examples // global_batch
  if steps_per_epoch == 0:
    raise ValueError(
        f'config.training.batch_size={global_batch} is larger than the'
        f' {num_examples} training examples of'
        f' config.data.dataset={config.data.dataset!r}.'
    )
  # The host's slice inside each global batch.
  offset = jax.process_index() * local_batch

  def batches() -> Iterator[np.ndarray]:
    epoch = -1
    step = start_step
    while True:
      step_epoch, step_in_epoch = divmod(step, steps_per_epoch)
      if step_epoch != epoch:
        epoch = step_epoch
        perm, flips = _epoch_order(seed, epoch, num_examples)
      start = step_in_epoch * global_batch + offset
      indices = perm[start:start + local_batch]  # [B]
      batch = _to_float(data[indices])  # [B, ...]
      if flip:
        mirror = flips[start:start + local_batch]  # [B]
        batch[mirror] = batch[mirror, :, ::-1, :]
      yield batch
      step += 1

  return batches()


def create_eval_iterator(
    config: ml_collections.ConfigDict, split: str, *, batch_size: int
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

  Returns:
    An iterator of float32 batches, preprocessed like the training batches.
  """
  if batch_size <= 0:
    raise ValueError(f'batch_size must be positive; got {batch_size}.')
  dataset = _check_dataset(config)
  if dataset in _TFDS_SOURCES:
    return _tfds_eval_batches(config, split, batch_size)
  data = _load_array(config, split)  # [N, ...]

  def batches() -> Iterator[np.ndarray]:
    for start in range(0, len(data), batch_size):
      yield _to_float(data[start:start + batch_size])

  return batches()


def prefetch_to_device(
    iterator: Iterator[_T],
    size: int = 2,
    sharding_fn: Callable[[_T], _U] = jax.device_put,
) -> Iterator[_U]:
  """Runs `sharding_fn` on the next batches in a background thread.

  Host-to-device copies then overlap the train step instead of following it:
  while the device computes step s, the thread has already gathered and
  transferred the batches of steps s + 1 ... s + size. A single thread and a
  FIFO queue keep the order, so the output is `map(sharding_fn, iterator)`
  exactly, and resuming stays a matter of the iterator's `start_step`.

  Usage in the train loop (the host batch rides along for code that needs
  it on the host, such as a fixed sample batch):

    train_iter = input_pipeline.prefetch_to_device(
        input_pipeline.create_train_iterator(config, start_step=start_step),
        size=config.data.prefetch_to_device,
        sharding_fn=lambda b: (b, sharding.shard_batch(b, mesh)))
    local_batch, batch = next(train_iter)

  Args:
    iterator: the host batches, consumed only by the background thread from
      now on.
    size: how many transformed batches may wait in the queue. Up to size + 1
      batches live on the device besides the one in use. 0 turns prefetching
      off: `sharding_fn` then runs in the caller's thread, on demand.
    sharding_fn: places one host batch on the devices, e.g.
      `lambda b: sharding.shard_batch(b, mesh)`; it runs in the thread, so it
      must not start collectives (`shard_batch` does not: every host builds its
      own shards).

  Returns:
    An iterator over `sharding_fn(batch)` in the input's order (a
    DevicePrefetcher when size > 0). An exception raised by `iterator` or
    `sharding_fn` is raised by `next()` after the batches before it.
    `close()` (or dropping the iterator) stops the thread.
  """
  if size < 0:
    raise ValueError(f'prefetch_to_device needs size >= 0; got {size}.')
  if size == 0:
    return (sharding_fn(batch) for batch in iterator)
  return DevicePrefetcher(iterator, size, sharding_fn)


class DevicePrefetcher(Iterator[_U], Generic[_U]):
  """The iterator `prefetch_to_device` returns; see there."""

  def __init__(
      self,
      iterator: Iterator[_T],
      size: int,
      sharding_fn: Callable[[_T], _U],
  ):
    self._queue = queue.Queue(maxsize=size)
    self._stop = threading.Event()
    self._done = False
    # The thread must not hold `self`, or dropping the prefetcher would never
    # reach __del__ and stop it.
    self._thread = threading.Thread(
        target=_prefetch_worker,
        args=(iterator, sharding_fn, self._queue, self._stop),
        name='prefetch_to_device',
        daemon=True,
    )
    self._thread.start()

  def __next__(self) -> _U:
    if self._done:
      raise StopIteration
    kind, value = self._queue.get()
    if kind == 'item':
      return value
    self._done = True
    self.close()
    if kind == 'error':
      raise value
    raise StopIteration

  def close(self) -> None:
    """Stops the thread; returns once it has finished its current batch."""
    self._done = True
    self._stop.set()
    # Joined, not abandoned: a daemon thread still inside an XLA transfer when
    # the interpreter exits aborts the process.
    thread = self._thread
    if thread.is_alive() and thread is not threading.current_thread():
      thread.join()

  def __del__(self):
    if hasattr(self, '_thread'):  # __init__ may have failed before it.
      self.close()


def _prefetch_worker(
    iterator: Iterator[Any],
    sharding_fn: Callable[[Any], Any],
    buffer: queue.Queue,
    stop: threading.Event,
) -> None:
  """Fills `buffer` with ('item', x), then ('end' | 'error', ...) at the end."""

  def put(kind: str, value: Any) -> bool:
    """Blocks until there is room; False when the consumer has stopped."""
    while not stop.is_set():
      try:
        # A timeout, so that a closed consumer never leaves this thread
        # blocked on a full queue.
        buffer.put((kind, value), timeout=0.05)
        return True
      except queue.Full:
        continue
    return False

  try:
    for batch in iterator:
      if stop.is_set() or not put('item', sharding_fn(batch)):
        return
  except Exception as e:  # pylint: disable=broad-except
    # Whatever fails belongs to the consumer, raised at the same position.
    put('error', e)
  else:
    put('end', None)


def _check_dataset(config: ml_collections.ConfigDict) -> str:
  dataset = config.data.dataset
  if dataset not in DATASETS:
    raise ValueError(
        f'Unknown config.data.dataset={dataset!r}; allowed values:'
        f' {", ".join(DATASETS)}.'
    )
  return dataset


def _check_seed(config: ml_collections.ConfigDict) -> int:
  seed = int(config.training.seed)
  if seed < 0:
    # SeedSequence only takes non-negative entropy.
    raise ValueError(f'config.training.seed must be >= 0; got {seed}.')
  return seed


def _batch_sizes(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """Returns the (global, per-host) batch sizes."""
  global_batch = int(config.training.batch_size)
  num_processes = jax.process_count()
  if global_batch <= 0 or global_batch % num_processes:
    raise ValueError(
        f'config.training.batch_size={global_batch} must be a positive'
        f' multiple of the number of processes ({num_processes}).'
    )
  return global_batch, global_batch // num_processes


def _epoch_order(
    seed: int, epoch: int, num_examples: int
) -> tuple[np.ndarray, np.ndarray]:
  """Returns epoch `epoch`'s example order and per-position flip bits.

  Args:
    seed: the training seed.
    epoch: the epoch index.
    num_examples: size of the training split.

  Returns:
    int [N] permutation and bool [N] flips (flip the example at that position
    of the permutation). The permutation is drawn first, so it does not depend
    on whether flips are used.
  """
  rng = np.random.default_rng(
      np.random.SeedSequence([seed, _SHUFFLE_STREAM, epoch])
  )
  perm = rng.permutation(num_examples)
  flips = rng.random(num_examples) < 0.5
  return perm, flips


def _to_float(batch: np.ndarray) -> np.ndarray:
  """uint8 images -> float32 in [-1, 1]; float data -> float32 unchanged."""
  if batch.dtype == np.uint8:
    return batch.astype(np.float32) / 127.5 - 1.0
  return batch.astype(np.float32)


def _image_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
  size = int(config.data.image_size)
  return (size, size, int(config.data.num_channels))


def _check_image_config(
    config: ml_collections.ConfigDict, num_channels: int | tuple[int, ...]
) -> None:
  """Checks the image size and channel fields against the dataset.

  Args:
    config: the experiment config.
    num_channels: the allowed `config.data.num_channels` value(s).
  """
  dataset = config.data.dataset
  allowed = (num_channels,) if isinstance(num_channels, int) else num_channels
  if config.data.num_channels not in allowed:
    raise ValueError(
        f'config.data.num_channels must be'
        f' {" or ".join(str(c) for c in allowed)} for'
        f' config.data.dataset={dataset!r}; got {config.data.num_channels}.'
    )
  source = _TFDS_SOURCES.get(dataset)
  fixed_size = source.fixed_size if source else None
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


def _train_split(config: ml_collections.ConfigDict) -> str:
  # Optional field: e.g. 'train+validation+test' trains on all of CelebA.
  return config.data.get('train_split', 'train')


def _load_train_array(config: ml_collections.ConfigDict) -> np.ndarray:
  dataset = _check_dataset(config)
  split = _train_split(config) if dataset in _TFDS_SOURCES else 'train'
  return _load_array(config, split)


def _load_array(config: ml_collections.ConfigDict, split: str) -> np.ndarray:
  """Loads one split into memory.

  Args:
    config: the experiment config.
    split: the split name.

  Returns:
    uint8 [N, H, W, C] images, float32 [N, H, W, C] images in [-1, 1], or
    float32 [N, D] points.
  """
  dataset = _check_dataset(config)
  if dataset in _TFDS_SOURCES:
    return _load_tfds_split(config, split)
  if dataset == 'digits':
    return _digits_split(config, split)
  if dataset == 'toy2d':
    return _toy2d_split(config, split)
  if split not in _WHOLE_SET_SPLITS:
    raise ValueError(
        f'config.data.dataset={dataset!r} has no held-out data: split'
        f' \'train\' or \'test\' is every example; got split={split!r}.'
    )
  if dataset == 'image_folder':
    return _image_folder_array(config)
  return _load_npz(config)


# --- TFDS -------------------------------------------------------------------


@functools.cache
def _import_tf():
  """Imports TensorFlow and TFDS, keeping TensorFlow off the accelerators.

  Cached so that the GPUs are hidden (or the failure to hide them is logged)
  once per process.

  Returns:
    The `tensorflow` and `tensorflow_datasets` modules.
  """
  try:
    # pylint: disable=g-import-not-at-top
    import tensorflow as tf
    import tensorflow_datasets as tfds
    # pylint: enable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        'TFDS datasets need tensorflow and tensorflow_datasets installed'
        ' (pip install tensorflow-cpu tensorflow-datasets).'
    ) from e
  try:
    # TensorFlow would otherwise reserve GPU memory that JAX needs.
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:
    # TensorFlow's runtime is already initialised (by the caller), so its
    # device list is fixed; that caller is responsible for hiding GPUs.
    logging.warning('Could not hide GPUs from TensorFlow: already initialised.')
  return tf, tfds


def _manual_dir(
    config: ml_collections.ConfigDict, root: pathlib.Path
) -> pathlib.Path:
  """The directory TFDS builds manual datasets from."""
  # TFDS's default when no DownloadConfig.manual_dir is given.
  return pathlib.Path(
      config.data.get('manual_dir') or root / 'downloads' / 'manual'
  )


def _tfds_dataset(config: ml_collections.ConfigDict, split: str):
  """Opens a prepared TFDS split, or explains how to prepare it.

  A manual dataset whose files are in place is prepared here (no network
  needed); other missing datasets are downloaded only when
  `config.data.download` is set.

  Args:
    config: the experiment config.
    split: a TFDS split string.

  Returns:
    The tf.data.Dataset of raw examples, in file order.
  """
  _, tfds = _import_tf()
  source = _TFDS_SOURCES[config.data.dataset]
  data_dir = config.data.data_dir
  builder = tfds.builder(source.tfds_name, data_dir=data_dir)

  def open_split():
    try:
      return builder.as_dataset(split=split, shuffle_files=False)
    except ValueError as e:  # E.g. "Unknown split 'test'. Should be one of..."
      raise ValueError(
          f'config.data.dataset={config.data.dataset!r} (TFDS'
          f' {source.tfds_name!r}), split={split!r}: {e}'
      ) from e

  try:
    return open_split()
  except AssertionError as e:
    # TFDS asserts when the prepared files are missing from data_dir.
    not_prepared = e
  root = pathlib.Path(builder.data_dir_root)
  where = (
      f'config.data.dataset={config.data.dataset!r}: TFDS dataset'
      f' {source.tfds_name!r} is not prepared in config.data.data_dir='
      f'{data_dir!r} (looked in {builder.data_dir})'
  )
  if source.manual_files:
    manual_dir = _manual_dir(config, root)
    missing = [f for f in source.manual_files if not (manual_dir / f).exists()]
    if missing:
      files = ', '.join(source.manual_files)
      raise FileNotFoundError(
          f'{where}, and TFDS builds it only from a manual download: place'
          f' {files} ({source.build_note}) in {manual_dir} (TFDS\'s'
          ' manual_dir; set config.data.manual_dir to use another) and'
          ' rerun, which prepares it offline (or run'
          f' `tfds build {source.tfds_name} --data_dir={root}'
          f' --manual_dir={manual_dir}`); or train on a folder of the images'
          ' with --config.data.dataset=image_folder'
          ' --config.data.image_folder=DIR.'
      ) from not_prepared
    logging.info(
        'Preparing TFDS %s from %s into %s.',
        source.tfds_name, manual_dir, root,
    )
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
    )
    return open_split()
  note = f' ({source.build_note})' if source.build_note else ''
  if config.data.get('download', False):
    try:
      builder.download_and_prepare()
    except Exception as download_error:  # pylint: disable=broad-except
      reason = f'{type(download_error).__name__}: {download_error}'
      raise FileNotFoundError(
          f'config.data.dataset={config.data.dataset!r}: downloading TFDS'
          f' dataset {source.tfds_name!r} into {root} failed'
          f' ({reason.splitlines()[0]}); check the'
          f' network{note}, or prepare it elsewhere with `tfds build`.'
      ) from download_error
    return open_split()
  raise FileNotFoundError(
      f'{where}; rerun with --config.data.download=True on a machine with'
      f' internet, or run `tfds build {source.tfds_name} --data_dir=<dir>`'
      f' there{note} and copy its contents into {root}.'
  ) from not_prepared


def _tfds_num_examples(config: ml_collections.ConfigDict, split: str) -> int:
  """Size of a TFDS split, from metadata (no images are read)."""
  ds = _tfds_dataset(config, split)
  num_examples = int(ds.cardinality())
  if num_examples < 0:
    # Prepared TFDS splits know their size; other sources may not: count.
    num_examples = int(ds.reduce(0, lambda count, _: count + 1))
  return num_examples


def _preprocessed_tfds(config: ml_collections.ConfigDict, split: str):
  """A split as a tf.data.Dataset of preprocessed uint8 images, in order."""
  tf, _ = _import_tf()
  _check_image_config(config, num_channels=3)
  source = _TFDS_SOURCES[config.data.dataset]
  image_size = int(config.data.image_size)
  ds = _tfds_dataset(config, split)
  return ds.map(
      lambda example: source.preprocess(example['image'], image_size),
      num_parallel_calls=tf.data.AUTOTUNE,
      deterministic=True,
  )


def _load_tfds_split(
    config: ml_collections.ConfigDict, split: str
) -> np.ndarray:
  """Preprocesses a whole TFDS split into a uint8 [N, S, S, 3] array."""
  tf, tfds = _import_tf()
  start_time = time.time()
  ds = _preprocessed_tfds(config, split)
  num_examples = int(ds.cardinality())
  ds = ds.batch(_LOAD_BATCH).prefetch(tf.data.AUTOTUNE)
  if num_examples < 0:  # Unknown cardinality: collect, then stack.
    return np.concatenate(list(tfds.as_numpy(ds)), axis=0)
  out = np.empty((num_examples, *_image_shape(config)), dtype=np.uint8)
  filled = 0
  for chunk in tfds.as_numpy(ds):
    out[filled:filled + len(chunk)] = chunk
    filled += len(chunk)
  if filled != num_examples:
    raise RuntimeError(
        f'TFDS split {split!r} promised {num_examples} examples but gave'
        f' {filled}.'
    )
  logging.info(
      'Loaded %d %s images (split %r) into memory in %.1f s.',
      num_examples, config.data.dataset, split, time.time() - start_time,
  )
  return out


def _tfds_eval_batches(
    config: ml_collections.ConfigDict, split: str, batch_size: int
) -> Iterator[np.ndarray]:
  """Streams a TFDS split in order; the dataset is opened eagerly."""
  tf, tfds = _import_tf()
  ds = _preprocessed_tfds(config, split)
  ds = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)

  def batches() -> Iterator[np.ndarray]:
    for chunk in tfds.as_numpy(ds):
      yield _to_float(chunk)

  return batches()


# --- image folders ----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ImageFolder:
  """The decoded contents of an image folder.

  Attributes:
    images: uint8 [N, S, S, C], one row per readable file, in `paths` order.
    paths: the N files read, relative to the folder, sorted.
    skipped: (relative path, reason) of every file that could not be read.
  """

  images: np.ndarray
  paths: tuple[str, ...]
  skipped: tuple[tuple[str, str], ...]


def list_image_files(folder: str) -> list[str]:
  """Lists the PNG / JPEG files under `folder`, recursively.

  Hidden files and directories (names starting with '.', e.g. macOS's
  '._x.jpg' resource forks) are left out; symbolic links to directories are
  not followed.

  Args:
    folder: the directory to search.

  Returns:
    Paths relative to `folder`, sorted, so the order does not depend on the
    file system.
  """
  found = []
  for root, dirs, files in os.walk(folder):
    dirs[:] = [d for d in dirs if not d.startswith('.')]
    for name in files:
      if not name.startswith('.') and name.lower().endswith(IMAGE_EXTENSIONS):
        found.append(os.path.relpath(os.path.join(root, name), folder))
  return sorted(found)


def load_image_file(
    path: str, image_size: int, num_channels: int
) -> np.ndarray:
  """Decodes one image file into a square uint8 array.

  The EXIF orientation is applied, the image converted to L (1 channel) or
  RGB (3; an alpha channel is dropped, as torchvision's loader does), the
  shorter side resized to `image_size` with PIL's antialiased bilinear
  filter and the centre square kept (torchvision's `Resize(S)` then
  `CenterCrop(S)`, without rounding the crop to whole pixels).

  Args:
    path: a PNG or JPEG file.
    image_size: output side length S.
    num_channels: 1 or 3.

  Returns:
    uint8 [S, S, num_channels].

  Raises:
    Whatever Pillow raises for a file it cannot decode.
  """
  # pylint: disable=g-import-not-at-top
  from PIL import Image
  from PIL import ImageOps
  # pylint: enable=g-import-not-at-top

  mode = 'L' if num_channels == 1 else 'RGB'
  with Image.open(path) as image:
    width, height = image.size
    shorter = min(width, height)
    # JPEG only: decode at 1/2, 1/4 or 1/8 scale when the image stays at
    # least as large as the resize target; big photos decode several times
    # faster.
    image.draft(mode, (
        -(-width * image_size // shorter), -(-height * image_size // shorter)
    ))
    image = ImageOps.exif_transpose(image)
    if image.mode in ('I', 'I;16', 'I;16B', 'I;16L'):
      # 16-bit greyscale: convert() would clip everything above 255 to white.
      image = Image.fromarray(
          (np.asarray(image, dtype=np.uint32) >> 8).astype(np.uint8)
      )
    image = image.convert(mode)
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    image = image.resize(
        (image_size, image_size),
        resample=Image.Resampling.BILINEAR,
        box=(left, top, left + side, top + side),
    )
    array = np.asarray(image, dtype=np.uint8)
  return array.reshape(image_size, image_size, num_channels)


def load_image_folder(
    folder: str,
    image_size: int,
    num_channels: int,
    *,
    skip_unreadable: bool = True,
    num_workers: int | None = None,
) -> ImageFolder:
  """Decodes every PNG / JPEG under `folder` into one uint8 array.

  Files are decoded by `load_image_file` in a thread pool (Pillow releases the
  GIL while decoding and resizing) straight into a preallocated array.

  Args:
    folder: the directory (searched recursively, see `list_image_files`).
    image_size: output side length S.
    num_channels: 1 (L) or 3 (RGB).
    skip_unreadable: skip files Pillow cannot decode, with a warning that
      counts them; False raises on the first one.
    num_workers: decoding threads; None or 0 uses every CPU.

  Returns:
    The ImageFolder: images [N, S, S, C] (read-only), the files read and the
    files skipped.
  """
  if image_size <= 0 or num_channels not in (1, 3):
    raise ValueError(
        'load_image_folder needs image_size > 0 and num_channels 1 or 3; got'
        f' {image_size} and {num_channels}.'
    )
  if not os.path.isdir(folder):
    raise FileNotFoundError(
        f'config.data.image_folder={folder!r} is not a directory.'
    )
  paths = list_image_files(folder)
  if not paths:
    raise ValueError(
        f'config.data.image_folder={folder!r} holds no image files (searched'
        f' recursively for {", ".join(IMAGE_EXTENSIONS)}).'
    )
  start_time = time.time()
  out = np.empty((len(paths), image_size, image_size, num_channels), np.uint8)

  def decode(index: int) -> str | None:
    """Fills out[index]; returns why the file is unreadable, or None."""
    try:
      out[index] = load_image_file(
          os.path.join(folder, paths[index]), image_size, num_channels
      )
    except Exception as e:  # pylint: disable=broad-except
      # Decoders raise many types on corrupt data (OSError, SyntaxError,
      # ValueError, zlib.error, DecompressionBombError...): for one file, any
      # of them means "unreadable".
      return f'{type(e).__name__}: {e}'.replace('\n', ' ')
    return None

  workers = num_workers or os.cpu_count() or 1
  skipped = {}  # index -> reason
  with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
    # map() yields in file order, so the first failure is deterministic.
    for index, reason in enumerate(pool.map(decode, range(len(paths)))):
      if reason is None:
        continue
      if not skip_unreadable:
        pool.shutdown(wait=False, cancel_futures=True)  # Drop queued decodes.
        raise ValueError(
            f'config.data.image_folder={folder!r}: cannot read'
            f' {paths[index]!r} ({reason}); remove it or set'
            ' config.data.skip_unreadable=True.'
        )
      skipped[index] = reason
  if len(skipped) == len(paths):
    raise ValueError(
        f'config.data.image_folder={folder!r}: none of its {len(paths)} image'
        f' files could be read (first: {paths[0]!r}, {skipped[0]}).'
    )
  kept = [i for i in range(len(paths)) if i not in skipped]
  if skipped:
    first = min(skipped)
    logging.warning(
        'config.data.image_folder=%r: skipped %d of %d image files that could'
        ' not be read (first: %r, %s).',
        folder, len(skipped), len(paths), paths[first], skipped[first],
    )
    # Compact in place: the kept rows move down, keeping their order.
    for target, source in enumerate(kept):
      if target != source:
        out[target] = out[source]
    out = out[:len(kept)]
  out.flags.writeable = False  # Shared by the cache below.
  logging.info(
      'Loaded %d images from %s (%dx%dx%d) in %.1f s.',
      len(out), folder, image_size, image_size, num_channels,
      time.time() - start_time,
  )
  return ImageFolder(
      images=out,
      paths=tuple(paths[i] for i in kept),
      skipped=tuple((paths[i], why) for i, why in sorted(skipped.items())),
  )


def _folder_listing(folder: str) -> tuple[tuple[str, int, int], ...]:
  """(path, size, mtime) of the folder's images: changes when a file does."""
  listing = []
  for path in list_image_files(folder):
    stat = os.stat(os.path.join(folder, path))
    listing.append((path, stat.st_size, stat.st_mtime_ns))
  return tuple(listing)


@functools.lru_cache(maxsize=1)
def _cached_image_folder(
    folder: str,
    listing: tuple[tuple[str, int, int], ...],
    image_size: int,
    num_channels: int,
    skip_unreadable: bool,
    num_workers: int | None,
) -> ImageFolder:
  """`load_image_folder`, kept for the next call with the same arguments.

  get_dataset_info and create_train_iterator both need the decoded folder;
  the listing in the key makes a changed folder load afresh.

  Args:
    folder: the directory.
    listing: `_folder_listing(folder)`, only part of the cache key.
    image_size: output side length.
    num_channels: 1 or 3.
    skip_unreadable: see `load_image_folder`.
    num_workers: see `load_image_folder`.

  Returns:
    The ImageFolder.
  """
  del listing  # Only a cache key.
  return load_image_folder(
      folder, image_size, num_channels, skip_unreadable=skip_unreadable,
      num_workers=num_workers,
  )


def _image_folder_array(config: ml_collections.ConfigDict) -> np.ndarray:
  """The config's image folder as uint8 [N, S, S, C]."""
  folder = config.data.get('image_folder')
  if not folder:
    raise ValueError(
        'config.data.image_folder must be set for'
        ' config.data.dataset=\'image_folder\'.'
    )
  _check_image_config(config, num_channels=(1, 3))
  folder = os.path.abspath(os.path.expanduser(folder))
  if not os.path.isdir(folder):
    raise FileNotFoundError(
        f'config.data.image_folder={folder!r} is not a directory.'
    )
  return _cached_image_folder(
      folder,
      _folder_listing(folder),
      int(config.data.image_size),
      int(config.data.num_channels),
      bool(config.data.get('skip_unreadable', True)),
      config.data.get('num_load_workers') or None,
  ).images


# --- digits -------------------------------------------------------------------


def _bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
  """Row-interpolation matrix of a half-pixel-centred bilinear resize.

  Args:
    in_size: input length.
    out_size: output length (>= in_size: upsampling, so no antialiasing).

  Returns:
    float64 [out_size, in_size]; row i holds the weights of output pixel i.
  """
  # Output pixel centres in input coordinates, clamped at the borders like
  # tf.image.resize / PIL.
  centres = (np.arange(out_size) + 0.5) * in_size / out_size - 0.5
  centres = np.clip(centres, 0.0, in_size - 1)
  lower = np.floor(centres).astype(np.int64)
  upper = np.minimum(lower + 1, in_size - 1)
  frac = centres - lower
  weights = np.zeros((out_size, in_size))
  np.add.at(weights, (np.arange(out_size), lower), 1.0 - frac)
  np.add.at(weights, (np.arange(out_size), upper), frac)
  return weights


def _load_digits_images(image_size: int) -> np.ndarray:
  """All 1797 digits as float32 [1797, S, S, 1] in [-1, 1]."""
  # pylint: disable=g-import-not-at-top
  from sklearn import datasets as sklearn_datasets
  # pylint: enable=g-import-not-at-top

  images = sklearn_datasets.load_digits().images  # [1797, 8, 8], 0..16
  if image_size < images.shape[1]:
    raise ValueError(
        'config.data.image_size must be >= 8 for config.data.dataset='
        f'\'digits\'; got {image_size}.'
    )
  rows = _bilinear_matrix(images.shape[1], image_size)  # [S, 8]
  # Separable bilinear upsampling; weights are convex, so values stay in
  # [0, 16].
  resized = np.einsum('ij,njk,lk->nil', rows, images, rows)  # [1797, S, S]
  return (resized / 8.0 - 1.0).astype(np.float32)[..., None]


def _select_digits_split(rows: np.ndarray, split: str) -> np.ndarray:
  """The rows of `split` (the last _DIGITS_NUM_TEST are the test split)."""
  if split == 'train':
    return rows[:-_DIGITS_NUM_TEST]
  if split == 'test':
    return rows[-_DIGITS_NUM_TEST:]
  raise ValueError(
      'config.data.dataset=\'digits\' has splits \'train\' and \'test\'; got'
      f' split={split!r}.'
  )


def _digits_split(config: ml_collections.ConfigDict, split: str) -> np.ndarray:
  _check_image_config(config, num_channels=1)
  return _select_digits_split(
      _load_digits_images(int(config.data.image_size)), split)


def digits_labels(split: str) -> np.ndarray:
  """Class labels (0-9) of a digits split, in the split's image order.

  The input pipeline yields images only; the classifier-based sample-quality
  evaluator (evaluators/classifier.py) needs the labels to train on.

  Args:
    split: 'train' or 'test'.

  Returns:
    int64 [N] labels aligned with the images of that split.
  """
  # pylint: disable=g-import-not-at-top
  from sklearn import datasets as sklearn_datasets
  # pylint: enable=g-import-not-at-top
  labels = sklearn_datasets.load_digits().target.astype(np.int64)
  return _select_digits_split(labels, split)


# --- toy2d --------------------------------------------------------------------


def _toy2d_split(config: ml_collections.ConfigDict, split: str) -> np.ndarray:
  """A fixed set of toy2d points: float32 [toy2d_num_points, 2]."""
  splits = ('train', 'test')
  if split not in splits:
    raise ValueError(
        'config.data.dataset=\'toy2d\' has splits \'train\' and \'test\'; got'
        f' split={split!r}.'
    )
  num_points = int(config.data.toy2d_num_points)
  if num_points <= 0:
    raise ValueError(
        f'config.data.toy2d_num_points must be positive; got {num_points}.'
    )
  rng = np.random.default_rng(
      np.random.SeedSequence(
          [_check_seed(config), _TOY2D_STREAM, splits.index(split)]
      )
  )
  return toy2d.sample(config.data.toy2d_name, num_points, rng)


# --- npz ----------------------------------------------------------------------


def _load_npz(config: ml_collections.ConfigDict) -> np.ndarray:
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
  if not path:
    raise ValueError(
        'config.data.npz_path must be set for config.data.dataset=\'npz\'.'
    )
  if not os.path.exists(path):
    raise FileNotFoundError(f'config.data.npz_path={path!r} does not exist.')
  key = config.data.npz_key
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
    data = archive[key]
  where = f'array {key!r} of config.data.npz_path={path!r}'
  if data.size == 0:
    raise ValueError(f'{where} is empty (shape {data.shape}).')

  arch = config.model.get('arch') if 'model' in config else None
  if arch == 'mlp':
    if data.ndim != 2 or not np.issubdtype(data.dtype, np.floating):
      raise ValueError(
          f'{where} must be float points [N, D] for config.model.arch='
          f'\'mlp\'; got {data.dtype} {data.shape}.'
      )
    return data.astype(np.float32)

  if data.ndim == 3:
    data = data[..., None]  # [N, H, W] -> [N, H, W, 1]
  expected = _image_shape(config)
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
