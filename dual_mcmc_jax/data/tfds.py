"""The TFDS datasets: the paper's training sets and the OOD evaluation sets.

The paper's (Cui & Han, NeurIPS 2023): `cifar10` (TFDS `cifar10`), `celeba64`
(`celeb_a`), `lsun_church64` (`lsun/church_outdoor`) and `celebahq256`
(`celeb_a_hq/256`, which TFDS builds from a manual download). For the OOD
evaluation: `svhn` (`svhn_cropped`), `cifar100` (`cifar100`) and `celeba32`
(`celeb_a` with the CelebA-64 crop, resized to `config.data.image_size`).
All of them can also be trained on.

Datasets are read from `config.data.data_dir`; a missing one is downloaded
only with `config.data.download=True`, because the training machines are
offline: otherwise the error is one line saying how to prepare it. A manual
dataset whose files are already in TFDS's manual directory is prepared here,
offline.

Preprocessing runs inside tf.data when a split is read, so what leaves this
module is already at `config.data.image_size`:

* celeba64, celeba32: the face box (left 15, top 40, right 163, bottom 188)
  of the aligned 178x218 image, 148x148, then a resize: the `CropCelebA64`
  crop of `get_dataset` in the authors' dataset.py (github.com/jcui1224/
  dual-MCMC).
* lsun_church64: the central square (side = the shorter side), then a resize.
* celebahq256, svhn, cifar100: a resize only when `image_size` is not the
  native size (256, 32, 32), e.g. to score a 64x64 model against SVHN.
* cifar10 is the paper's 32x32 set and accepts only 32.
* Resizing is bilinear with antialiasing, which widens the filter when
  downsampling like torchvision's Resize on PIL images; the result is rounded
  back to uint8 as a PIL pipeline's would be.

A training split is read once into a uint8 host array (CIFAR-10's 50,000
images take 154 MB, CelebA-64's 162,770 take 2 GB, CelebA-HQ-256's 30,000
take 5.9 GB) that the grain pipeline shuffles and batches; evaluation passes
stream through tf.data instead and never hold the split. TensorFlow and TFDS
are imported only here and only when called, so the other sources work on
machines without them.
"""

from collections.abc import Callable, Iterator
import dataclasses
import functools
import pathlib
import time
from typing import Any

from absl import logging
import numpy as np

from dual_mcmc_jax.data import common

# Examples per tf.data batch while a split is read into memory.
_LOAD_BATCH = 1024


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


@dataclasses.dataclass(frozen=True)
class TfdsSpec:
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


SPECS = {
    'cifar10': TfdsSpec('cifar10', preprocess_cifar10, fixed_size=32),
    'celeba64': TfdsSpec('celeb_a', preprocess_celeba),
    'lsun_church64': TfdsSpec(
        'lsun/church_outdoor',
        preprocess_lsun,
        build_note=(
            'building it reads the LSUN LMDB files with tensorflow-io: pip'
            ' install tensorflow-io'
        ),
    ),
    'celebahq256': TfdsSpec(
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
    'svhn': TfdsSpec('svhn_cropped', preprocess_resize),
    'cifar100': TfdsSpec('cifar100', preprocess_resize),
    'celeba32': TfdsSpec('celeb_a', preprocess_celeba),
}


@functools.cache
def import_tf():
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


def _spec(config: common.Config) -> TfdsSpec:
  spec = SPECS[config.data.dataset]
  common.check_image_config(config, num_channels=3, fixed_size=spec.fixed_size)
  return spec


def _manual_dir(config: common.Config, root: pathlib.Path) -> pathlib.Path:
  """The directory TFDS builds manual datasets from."""
  # TFDS's default when no DownloadConfig.manual_dir is given.
  return pathlib.Path(
      config.data.manual_dir or root / 'downloads' / 'manual'
  )


def _open_split(config: common.Config, builder, split: str):
  try:
    return builder.as_dataset(split=split, shuffle_files=False)
  except ValueError as e:  # E.g. "Unknown split 'test'. Should be one of..."
    raise ValueError(
        f'config.data.dataset={config.data.dataset!r} (TFDS'
        f' {SPECS[config.data.dataset].tfds_name!r}), split={split!r}: {e}'
    ) from e


def _tfds_dataset(config: common.Config, split: str):
  """Opens a prepared TFDS split, or prepares it, or explains how to.

  A manual dataset whose files are in place is prepared here (no network
  needed); other missing datasets are downloaded only when
  `config.data.download` is set.

  Args:
    config: the experiment config.
    split: a TFDS split string.

  Returns:
    The tf.data.Dataset of raw examples, in file order.
  """
  _, tfds = import_tf()
  spec = _spec(config)
  builder = tfds.builder(spec.tfds_name, data_dir=config.data.data_dir)
  try:
    return _open_split(config, builder, split)
  except AssertionError as e:
    # TFDS asserts when the prepared files are missing from data_dir.
    not_prepared = e
  root = pathlib.Path(builder.data_dir_root)
  if spec.manual_files:
    manual_dir = _manual_dir(config, root)
    if all((manual_dir / f).exists() for f in spec.manual_files):
      logging.info('Preparing TFDS %s from %s into %s.', spec.tfds_name,
                   manual_dir, root)
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
      )
      return _open_split(config, builder, split)
  elif config.data.download:
    _download(config, builder, root)
    return _open_split(config, builder, split)
  raise _not_prepared_error(config, builder, root) from not_prepared


def _download(config: common.Config, builder, root: pathlib.Path) -> None:
  spec = SPECS[config.data.dataset]
  try:
    builder.download_and_prepare()
  except Exception as download_error:  # pylint: disable=broad-except
    reason = f'{type(download_error).__name__}: {download_error}'
    note = f' ({spec.build_note})' if spec.build_note else ''
    raise FileNotFoundError(
        f'config.data.dataset={config.data.dataset!r}: downloading TFDS'
        f' dataset {spec.tfds_name!r} into {root} failed'
        f' ({reason.splitlines()[0]}); check the'
        f' network{note}, or prepare it elsewhere with `tfds build`.'
    ) from download_error


def _not_prepared_error(
    config: common.Config, builder, root: pathlib.Path
) -> FileNotFoundError:
  """The one-line error for a dataset missing from `config.data.data_dir`."""
  spec = SPECS[config.data.dataset]
  where = (
      f'config.data.dataset={config.data.dataset!r}: TFDS dataset'
      f' {spec.tfds_name!r} is not prepared in config.data.data_dir='
      f'{config.data.data_dir!r} (looked in {builder.data_dir})'
  )
  if spec.manual_files:
    manual_dir = _manual_dir(config, root)
    return FileNotFoundError(
        f'{where}, and TFDS builds it only from a manual download: place'
        f' {", ".join(spec.manual_files)} ({spec.build_note}) in'
        f' {manual_dir} (TFDS\'s manual_dir; set config.data.manual_dir to'
        ' use another) and rerun, which prepares it offline (or run'
        f' `tfds build {spec.tfds_name} --data_dir={root}'
        f' --manual_dir={manual_dir}`); or train on a folder of the images'
        ' with --config.data.dataset=image_folder'
        ' --config.data.image_folder=DIR.'
    )
  note = f' ({spec.build_note})' if spec.build_note else ''
  return FileNotFoundError(
      f'{where}; rerun with --config.data.download=True on a machine with'
      f' internet, or run `tfds build {spec.tfds_name} --data_dir=<dir>`'
      f' there{note} and copy its contents into {root}.'
  )


def _train_split(config: common.Config) -> str:
  # Optional field: e.g. 'train+validation+test' trains on all of CelebA.
  return config.data.train_split


def _info(config: common.Config) -> common.DatasetInfo:
  """Size of the training split from TFDS's metadata (no image is read)."""
  ds = _tfds_dataset(config, _train_split(config))
  num_examples = int(ds.cardinality())
  if num_examples < 0:
    # Prepared TFDS splits know their size; other sources may not: count.
    num_examples = int(ds.reduce(0, lambda count, _: count + 1))
  return common.DatasetInfo(
      num_train_examples=num_examples, shape=common.image_shape(config)
  )


def _preprocessed(config: common.Config, split: str):
  """A split as a tf.data.Dataset of preprocessed uint8 images, in order."""
  tf, _ = import_tf()
  spec = _spec(config)
  image_size = int(config.data.image_size)
  return _tfds_dataset(config, split).map(
      lambda example: spec.preprocess(example['image'], image_size),
      num_parallel_calls=tf.data.AUTOTUNE,
      deterministic=True,
  )


def _load(config: common.Config, split: str) -> np.ndarray:
  """Preprocesses a whole split into a uint8 [N, S, S, 3] host array."""
  tf, tfds = import_tf()
  start_time = time.time()
  ds = _preprocessed(config, split)
  num_examples = int(ds.cardinality())
  ds = ds.batch(_LOAD_BATCH).prefetch(tf.data.AUTOTUNE)
  if num_examples < 0:  # Unknown cardinality: collect, then stack.
    return np.concatenate(list(tfds.as_numpy(ds)), axis=0)
  out = np.empty((num_examples, *common.image_shape(config)), dtype=np.uint8)
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


def _stream(
    config: common.Config, split: str, batch_size: int
) -> Iterator[np.ndarray]:
  """One ordered pass through tf.data; the split is opened before returning."""
  tf, tfds = import_tf()
  ds = _preprocessed(config, split).batch(batch_size).prefetch(tf.data.AUTOTUNE)

  def batches() -> Iterator[np.ndarray]:
    for chunk in tfds.as_numpy(ds):
      yield common.to_float(chunk)

  return batches()


SOURCES = {
    name: common.Source(
        load=_load, info=_info, stream=_stream, train_split=_train_split
    )
    for name in SPECS
}
