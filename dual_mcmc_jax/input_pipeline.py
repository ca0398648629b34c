"""Input pipeline: one entry point for every dataset the experiments use.

`create_train_iterator` yields an infinite stream of per-host float32 numpy
batches, images in [-1, 1] as [B, H, W, C] or points as [B, D];
`create_eval_iterator` makes one ordered pass over a split;
`get_dataset_info` gives the training-set size and the per-example shape.
`config.data.dataset` picks the source:

* `cifar10`, `celeba64`, `lsun_church64`, `celebahq256`: TFDS datasets
  (`cifar10`, `celeb_a`, `lsun/church_outdoor`, `celeb_a_hq/256`), read from
  `config.data.data_dir` and never downloaded here: the training machines have
  no internet, so a missing dataset is an error that says how to prepare it.
* `digits`: scikit-learn's bundled 8x8 digits, no download.
* `toy2d`: points from `toy2d.sample` (see toy2d.py).
* `npz`: an array from a user-supplied .npz file.

Design: every training split is preprocessed once per run into a host-memory
array (uint8 for images, so CelebA-64's 162,770 training images take 2 GB,
CelebA-HQ-256's 30,000 take 5.9 GB), and batches are gathered from it with a
numpy permutation. Epoch e uses the permutation and the flip bits drawn from
`np.random.SeedSequence([config.training.seed, _SHUFFLE_STREAM, e])`, so the
batch of global step s is a pure function of (seed, s): resuming at step k is
O(1), with no tf.data skip to replay. Each epoch drops its remainder (steps per
epoch = num_train_examples // global batch size). On multiple hosts every
process holds the whole split, draws the same global batch and keeps its own
contiguous slice of it (`jax.process_index()`). A full permutation replaces a
shuffle buffer.

Preprocessing (done through tf.data when the split is loaded, so the stored
images are already at `config.data.image_size`):

* celeba64: crop box (left 15, top 40, right 163, bottom 188) of the 178x218
  aligned image, i.e. 148x148, then resize.
* lsun_church64: central square crop (side = the shorter side), then resize.
* celebahq256: resize only when `image_size` is not 256.
* Resizing is bilinear with antialiasing (`tf.image.resize(...,
  antialias=True)`), which, like PIL's bilinear resize (what torchvision's
  Resize does to PIL images), widens the filter when downsampling; the result
  is rounded back to uint8, as a PIL pipeline's would be.
* Random horizontal flips (`config.data.random_flip`) are applied when a batch
  is gathered, from the per-epoch flip bits above, so they are deterministic in
  (seed, step) too.

TensorFlow and TFDS are imported lazily in the functions that need them, so
the digits, toy2d and npz sources work on machines without TensorFlow.
"""

from collections.abc import Callable, Iterator
import dataclasses
import functools
import os
import pathlib
import time

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
    'digits',
    'toy2d',
    'npz',
)

# Distinct SeedSequence words keep the shuffling stream independent of the
# stream that generates the toy2d points from the same seed.
_SHUFFLE_STREAM = 0
_TOY2D_STREAM = 1
# Digits: the last this many images are the held-out 'test' split.
_DIGITS_NUM_TEST = 297
# Batch size used while preprocessing a TFDS split into memory.
_LOAD_BATCH = 1024


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
    manual: whether TFDS needs manually downloaded files to build it.
  """

  tfds_name: str
  preprocess: Callable[..., object]
  fixed_size: int | None = None
  manual: bool = False


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


def preprocess_celeba64(image, image_size: int):
  """Crops the face box of an aligned CelebA image and resizes it.

  Args:
    image: uint8 [218, 178, 3] tensor.
    image_size: output side length.

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


def preprocess_celebahq(image, image_size: int):
  """Resizes a 256x256 CelebA-HQ image when another size is asked for.

  Args:
    image: uint8 [256, 256, 3] tensor.
    image_size: output side length.

  Returns:
    uint8 [image_size, image_size, 3] tensor.
  """
  if image_size == 256:
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
    'celeba64': _TfdsSource('celeb_a', preprocess_celeba64),
    'lsun_church64': _TfdsSource('lsun/church_outdoor', preprocess_lsun),
    'celebahq256': _TfdsSource(
        'celeb_a_hq/256', preprocess_celebahq, manual=True
    ),
}


def get_dataset_info(config: ml_collections.ConfigDict) -> DatasetInfo:
  """Returns the training-set size and per-example shape.

  For TFDS datasets this reads only the split's metadata, not the images.

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
    jax.process_count().
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

  Splits: TFDS datasets accept any TFDS split string ('test', 'train',
  'train[:10%]', ...); digits has 'train' (the first 1500 images) and 'test'
  (the last 297); toy2d has 'train' (the training points) and 'test' (as many
  fresh points from an independent stream); npz has only 'train' (the whole
  array).

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
    config: ml_collections.ConfigDict, num_channels: int
) -> None:
  """Checks the image size and channel fields against the dataset."""
  dataset = config.data.dataset
  if config.data.num_channels != num_channels:
    raise ValueError(
        f'config.data.num_channels must be {num_channels} for'
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
  if split != 'train':
    raise ValueError(
        f'config.data.dataset=\'npz\' has the single split \'train\'; got'
        f' split={split!r}.'
    )
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


def _tfds_dataset(config: ml_collections.ConfigDict, split: str):
  """Opens a prepared TFDS split, or explains how to prepare it.

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
  try:
    return builder.as_dataset(split=split, shuffle_files=False)
  except AssertionError as e:
    if config.data.get('download', False) and not source.manual:
      try:
        builder.download_and_prepare()
      except Exception as download_error:  # pylint: disable=broad-except
        raise FileNotFoundError(
            f'config.data.dataset={config.data.dataset!r}: downloading TFDS'
            f' dataset {source.tfds_name!r} into {builder.data_dir} failed'
            f' ({type(download_error).__name__}: {download_error}); check the'
            ' network, or prepare it elsewhere with `tfds build`.'
        ) from download_error
      return builder.as_dataset(split=split, shuffle_files=False)
    # TFDS asserts when the prepared files are missing from data_dir.
    # builder.data_dir is <root>/<name>[/<config>]/<version>.
    depth = len(source.tfds_name.split('/')) + 1
    root = pathlib.Path(builder.data_dir).parents[depth - 1]
    if source.manual:
      how = (
          'TFDS builds it only from manually downloaded files: put them in'
          f' {root / "downloads" / "manual"} (TFDS\'s default manual_dir) and'
          f' run `tfds build {source.tfds_name} --data_dir={root}`'
      )
    else:
      how = (
          'rerun with --config.data.download=True on a machine with internet,'
          f' or run `tfds build {source.tfds_name} --data_dir=<dir>` there and'
          f' copy its contents into {root}'
      )
    raise FileNotFoundError(
        f'config.data.dataset={config.data.dataset!r}: TFDS dataset'
        f' {source.tfds_name!r} is not prepared in config.data.data_dir='
        f'{data_dir!r} (looked in {builder.data_dir}); {how}.'
    ) from e


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


def _digits_split(config: ml_collections.ConfigDict, split: str) -> np.ndarray:
  _check_image_config(config, num_channels=1)
  images = _load_digits_images(int(config.data.image_size))
  if split == 'train':
    return images[:-_DIGITS_NUM_TEST]
  if split == 'test':
    return images[-_DIGITS_NUM_TEST:]
  raise ValueError(
      'config.data.dataset=\'digits\' has splits \'train\' and \'test\'; got'
      f' split={split!r}.'
  )


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
  with np.load(path) as archive:
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
