"""Tests of the TFDS sources (dual_mcmc_jax/data/tfds.py).

TFDS datasets are replaced by `tfds.testing.mock_data` (random uint8 images of
each dataset's declared shape; LSUN's variable-size images get random sizes),
so nothing is downloaded; CelebA-HQ is also built for real by TFDS from a
three-image manual tar.
"""

import importlib
import os
import tarfile

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from dual_mcmc_jax import data
from tests import data_helpers as h


def test_celeba64_shape_range_and_deterministic_flips():
  config = h.config(dataset='celeba64', image_size=64, random_flip=True)
  with tfds.testing.mock_data(num_examples=250):
    assert data.get_dataset_info(config).shape == (64, 64, 3)
    flipped = h.take(data.create_train_iterator(config), 3)
    again = h.take(data.create_train_iterator(config), 3)
    resumed = h.take(data.create_train_iterator(config, start_step=1), 2)
    config.data.random_flip = False
    plain = h.take(data.create_train_iterator(config), 3)
  for batch in flipped:
    assert batch.shape == (100, 64, 64, 3)
    assert batch.dtype == np.float32
    assert batch.min() >= -1.0 and batch.max() <= 1.0
  for a, b in zip(flipped, again):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(flipped[1:], resumed):
    np.testing.assert_array_equal(a, b)
  # Flips do not change the order: each example is the unflipped one or its
  # mirror image, and both happen.
  num_mirrored = 0
  for with_flip, without in zip(flipped, plain):
    same = np.all(with_flip == without, axis=(1, 2, 3))
    mirrored = np.all(with_flip == without[:, :, ::-1], axis=(1, 2, 3))
    assert np.all(same | mirrored)
    num_mirrored += int(np.sum(mirrored & ~same))
  assert 100 < num_mirrored < 200


# (dataset, image_size, the split an evaluator reads). mock_data accepts any
# split name, so each dataset's own evaluation split is used.
_TFDS_CASES = [
    ('cifar10', 32, 'test'),
    ('celeba64', 64, 'test'),
    ('lsun_church64', 64, 'validation'),
    ('celebahq256', 256, 'train'),
    ('svhn', 32, 'test'),
    ('cifar100', 32, 'test'),
    ('celeba32', 32, 'test'),
    ('svhn', 64, 'test'),  # Resized for a 64x64 model.
]


@pytest.mark.parametrize('dataset, image_size, eval_split', _TFDS_CASES)
def test_tfds_datasets_on_mock_data(dataset, image_size, eval_split):
  # mock_data makes random images of each dataset's declared shape; LSUN's
  # get random sizes, which exercises the square crop on non-square inputs.
  config = h.config(dataset=dataset, image_size=image_size)
  config.training.batch_size = 4
  expected = (image_size, image_size, 3)
  with tfds.testing.mock_data(num_examples=6):
    assert data.get_dataset_info(config) == (
        data.DatasetInfo(num_train_examples=6, shape=expected)
    )
    batch = next(data.create_train_iterator(config))
    evaluated = list(
        data.create_eval_iterator(config, eval_split, batch_size=4)
    )
  for images in (batch, *evaluated):
    assert images.shape[1:] == expected
    assert images.dtype == np.float32
    assert images.min() >= -1.0 and images.max() <= 1.0
  assert batch.shape[0] == 4
  assert [len(b) for b in evaluated] == [4, 2]


def _tfds_source(name):
  return data.tfds.SPECS[name]


def test_cifar10_wrong_image_size():
  with tfds.testing.mock_data(num_examples=250):
    for call in (data.get_dataset_info, data.create_train_iterator,
                 lambda c: data.create_eval_iterator(c, 'test', batch_size=8)):
      with pytest.raises(ValueError, match=r'config\.data\.image_size'):
        call(h.config(image_size=64))


def test_tfds_dataset_names():
  assert set(data.TFDS_DATASETS) == {
      'cifar10', 'celeba64', 'lsun_church64', 'celebahq256', 'svhn',
      'cifar100', 'celeba32',
  }
  names = {name: _tfds_source(name).tfds_name
           for name in data.TFDS_DATASETS}
  assert names['svhn'] == 'svhn_cropped'
  assert names['celeba32'] == names['celeba64'] == 'celeb_a'
  assert names['lsun_church64'] == 'lsun/church_outdoor'
  # Every name is a TFDS builder of this TFDS version.
  for tfds_name in names.values():
    tfds.builder(tfds_name, data_dir='/nonexistent')


@pytest.mark.parametrize('name, dataset, image_size', [
    ('cifar10', 'cifar10', 32),
    ('celeba64', 'celeba64', 64),
    ('lsun_church64', 'lsun_church64', 64),
    ('celebahq256', 'celebahq256', 256),
])
def test_experiment_configs_read_their_dataset(name, dataset, image_size):
  config = importlib.import_module(f'configs.{name}').get_config()
  assert config.data.dataset == dataset
  with tfds.testing.mock_data(num_examples=3):
    info = data.get_dataset_info(config)
  assert info.shape == (image_size, image_size, 3)


def test_resize_keeps_native_size_and_resizes_otherwise():
  image = tf.constant(np.random.default_rng(0).integers(
      0, 256, size=(32, 32, 3), dtype=np.uint8))
  same = data.preprocess_resize(image, 32)
  np.testing.assert_array_equal(same.numpy(), image.numpy())
  assert data.preprocess_resize(image, 64).shape == (64, 64, 3)


def _position_image(height: int, width: int) -> tf.Tensor:
  """uint8 [H, W, 3] whose channels encode row and column (mod 256)."""
  rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing='ij')
  image = np.stack([rows, cols, rows + cols], axis=-1) % 256
  return tf.constant(image.astype(np.uint8))


def test_celeba_crop_box():
  image = _position_image(218, 178)
  # At the crop's own size the resize is the identity, so the crop is visible.
  cropped = data.preprocess_celeba(image, 148).numpy()
  np.testing.assert_array_equal(cropped, image.numpy()[40:188, 15:163])
  assert data.preprocess_celeba(image, 64).shape == (64, 64, 3)


def test_lsun_central_square_crop():
  wide = _position_image(100, 160)
  np.testing.assert_array_equal(
      data.preprocess_lsun(wide, 100).numpy(),
      wide.numpy()[:, 30:130],
  )
  tall = _position_image(161, 100)
  np.testing.assert_array_equal(
      data.preprocess_lsun(tall, 100).numpy(),
      tall.numpy()[30:130],
  )


def test_resize_is_antialiased():
  # A 1-pixel checkerboard averages to mid-grey when downsampled with
  # antialiasing; plain bilinear sampling would alias it to extremes.
  board = (np.indices((256, 256)).sum(axis=0) % 2 * 255).astype(np.uint8)
  image = tf.constant(np.repeat(board[..., None], 3, axis=-1))
  small = data.preprocess_resize(image, 64).numpy()
  assert small.dtype == np.uint8
  assert np.all(np.abs(small.astype(int) - 128) <= 2)


def test_unprepared_tfds_dataset_error(tmp_path):
  config = h.config(data_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError) as info:
    data.create_train_iterator(config)
  message = str(info.value)
  assert '\n' not in message
  assert 'cifar10' in message and str(tmp_path) in message
  assert 'tfds build cifar10' in message


def test_celebahq_manual_file_is_what_tfds_reads():
  builder = tfds.builder('celeb_a_hq/256', data_dir='/nonexistent')
  source = _tfds_source('celebahq256')
  assert source.manual_files == (builder.builder_config.file_name,)
  assert source.manual_files == ('data256x256.tar',)


def test_celebahq_error_names_the_manual_file_and_dir(tmp_path):
  config = h.config(
      dataset='celebahq256', image_size=256, data_dir=str(tmp_path)
  )
  with pytest.raises(FileNotFoundError) as info:
    data.get_dataset_info(config)
  message = str(info.value)
  manual_dir = os.path.join(str(tmp_path), 'downloads', 'manual')
  assert '\n' not in message
  assert 'place data256x256.tar (' in message
  assert f' in {manual_dir} ' in message
  assert 'celeb_a_hq/256' in message and '256x256 PNG' in message
  assert f'--manual_dir={manual_dir}' in message
  assert 'progressive_growing_of_gans' in message
  assert 'config.data.dataset=image_folder' in message
  # config.data.manual_dir moves the place to put it.
  config.data.manual_dir = str(tmp_path / 'elsewhere')
  with pytest.raises(FileNotFoundError, match='elsewhere'):
    data.create_train_iterator(config)


def test_celebahq_is_built_from_the_manual_tar(tmp_path):
  # The real TFDS builder, not a mock: data256x256.tar in the default
  # manual_dir is enough for the next run to prepare and read the dataset.
  rng = np.random.default_rng(0)
  manual_dir = tmp_path / 'data' / 'downloads' / 'manual'
  manual_dir.mkdir(parents=True)
  with tarfile.open(manual_dir / 'data256x256.tar', 'w') as tar:
    for i in range(3):
      png = str(tmp_path / 'png' / f'{i:05d}.png')
      h.write_png(png, rng.integers(0, 256, (256, 256, 3), dtype=np.uint8))
      tar.add(png, arcname=f'imgHQ{i:05d}.png')
  config = h.config(dataset='celebahq256', image_size=256,
                   data_dir=str(tmp_path / 'data'))
  config.training.batch_size = 2
  assert data.get_dataset_info(config) == (
      data.DatasetInfo(num_train_examples=3, shape=(256, 256, 3))
  )
  batch = next(data.create_train_iterator(config))
  assert batch.shape == (2, 256, 256, 3)
  assert batch.min() >= -1.0 and batch.max() <= 1.0
  # CelebA-HQ has only a train split; asking for another is one clear line.
  with pytest.raises(ValueError, match=r"celebahq256.*Unknown split 'test'"):
    data.create_eval_iterator(config, 'test', batch_size=2)
