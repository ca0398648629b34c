"""Tests for dual_mcmc_jax/input_pipeline.py.

TFDS datasets are replaced by `tfds.testing.mock_data` (random uint8 images of
each dataset's declared shape; LSUN's variable-size images get random sizes),
so nothing is downloaded; CelebA-HQ is also built for real by TFDS from a
three-image manual tar. Image folders and npz files are generated here.
"""

import importlib
import itertools
import logging
import os
import subprocess
import sys
import tarfile
import threading
import time

import jax
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from configs import default
from dual_mcmc_jax import input_pipeline
from dual_mcmc_jax import sharding
from dual_mcmc_jax import toy2d

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(**data_overrides):
  """The default config with a small batch and `config.data` overrides."""
  config = default.get_config()
  config.training.batch_size = 100
  config.training.seed = 0
  for key, value in data_overrides.items():
    setattr(config.data, key, value)
  return config


def _take(iterator, num_batches: int) -> list[np.ndarray]:
  return list(itertools.islice(iterator, num_batches))


def _row_keys(batch: np.ndarray) -> list[bytes]:
  """Identifies examples by their bytes (mock images are random, so unique)."""
  return [example.tobytes() for example in batch]


# --- cifar10 ---------------------------------------------------------------


@pytest.fixture
def mock_250():
  with tfds.testing.mock_data(num_examples=250):
    yield


def test_cifar10_batches_shape_dtype_range(mock_250):
  config = _config()
  info = input_pipeline.get_dataset_info(config)
  assert info == input_pipeline.DatasetInfo(
      num_train_examples=250, shape=(32, 32, 3)
  )
  for batch in _take(input_pipeline.create_train_iterator(config), 3):
    assert batch.shape == (100, 32, 32, 3)
    assert batch.dtype == np.float32
    assert batch.min() >= -1.0 and batch.max() <= 1.0
    # uint8 0..255 maps onto the 256 levels -1 + k / 127.5.
    np.testing.assert_allclose((batch + 1.0) * 127.5, np.round(
        (batch + 1.0) * 127.5), atol=1e-3)


def test_cifar10_same_seed_same_batches(mock_250):
  config = _config()
  first = _take(input_pipeline.create_train_iterator(config), 5)
  again = _take(input_pipeline.create_train_iterator(config), 5)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)
  config.training.seed = 1
  other = _take(input_pipeline.create_train_iterator(config), 5)
  assert not all(np.array_equal(a, b) for a, b in zip(first, other))


def test_cifar10_resume_matches_skipping(mock_250):
  # 250 examples, batch 100: 2 steps per epoch, so these start steps resume
  # inside an epoch and exactly on an epoch boundary.
  config = _config()
  reference = _take(input_pipeline.create_train_iterator(config), 7)
  for start_step in (1, 2, 3, 5):
    resumed = _take(
        input_pipeline.create_train_iterator(config, start_step=start_step),
        7 - start_step,
    )
    for a, b in zip(reference[start_step:], resumed):
      np.testing.assert_array_equal(a, b)


def test_cifar10_epochs_are_permutations(mock_250):
  config = _config()
  batches = _take(input_pipeline.create_train_iterator(config), 6)
  epochs = [
      _row_keys(np.concatenate(batches[i:i + 2])) for i in range(0, 6, 2)
  ]
  for keys in epochs:
    # 200 distinct examples per epoch: no repeats, remainder of 50 dropped.
    assert len(set(keys)) == 200
  assert epochs[0] != epochs[1]


def test_cifar10_eval_covers_split_once_in_order(mock_250):
  config = _config()
  batches = list(
      input_pipeline.create_eval_iterator(config, 'test', batch_size=100)
  )
  assert [len(b) for b in batches] == [100, 100, 50]
  evaluated = np.concatenate(batches)
  assert evaluated.dtype == np.float32
  assert evaluated.min() >= -1.0 and evaluated.max() <= 1.0
  assert len(set(_row_keys(evaluated))) == 250
  # In order: a second pass is identical.
  again = np.concatenate(
      list(input_pipeline.create_eval_iterator(config, 'test', batch_size=64))
  )
  np.testing.assert_array_equal(evaluated, again)
  # The mocked train and test splits hold the same examples, so every
  # training example must be one of the evaluated ones.
  train = next(input_pipeline.create_train_iterator(config))
  assert set(_row_keys(train)) <= set(_row_keys(evaluated))


def _host_slices(config, monkeypatch, num_hosts, num_batches):
  """Each simulated host's first batches: slices[host][step]."""
  monkeypatch.setattr(jax, 'process_count', lambda: num_hosts)
  slices = []
  for process in range(num_hosts):
    monkeypatch.setattr(jax, 'process_index', lambda p=process: p)
    slices.append(
        _take(input_pipeline.create_train_iterator(config), num_batches)
    )
  monkeypatch.undo()
  return slices


def _check_host_slices(global_batches, slices):
  for step, global_batch in enumerate(global_batches):
    parts = [host[step] for host in slices]
    assert all(len(part) == len(global_batch) // len(slices) for part in parts)
    # Disjoint: no example is read by two hosts.
    keys = [set(_row_keys(part)) for part in parts]
    assert not set.intersection(*keys)
    # Together, in host order, they are the global batch.
    np.testing.assert_array_equal(np.concatenate(parts), global_batch)


def test_hosts_take_their_slice_of_the_global_batch(mock_250, monkeypatch):
  config = _config()
  global_batches = _take(input_pipeline.create_train_iterator(config), 3)
  _check_host_slices(global_batches, _host_slices(config, monkeypatch, 2, 3))


def test_hosts_slice_user_data_with_flips(tmp_path, monkeypatch):
  # npz, with flips and an epoch boundary: 40 images, global batch 10.
  images = np.random.default_rng(3).integers(
      0, 256, size=(40, 8, 8, 3), dtype=np.uint8)
  path = tmp_path / 'images.npz'
  np.savez(path, images)
  config = _npz_config(path, image_size=8, random_flip=True)
  global_batches = _take(input_pipeline.create_train_iterator(config), 6)
  for num_hosts in (2, 5):
    _check_host_slices(
        global_batches, _host_slices(config, monkeypatch, num_hosts, 6)
    )


def test_batch_size_must_divide_over_hosts(mock_250, monkeypatch):
  monkeypatch.setattr(jax, 'process_count', lambda: 3)
  with pytest.raises(ValueError, match=r'config\.training\.batch_size'):
    input_pipeline.create_train_iterator(_config())


def test_batch_larger_than_dataset(mock_250):
  config = _config()
  config.training.batch_size = 300
  with pytest.raises(ValueError, match=r'config\.training\.batch_size'):
    input_pipeline.create_train_iterator(config)


def test_cifar10_wrong_image_size(mock_250):
  with pytest.raises(ValueError, match=r'config\.data\.image_size'):
    input_pipeline.create_train_iterator(_config(image_size=64))


def test_cifar10_speed():
  # Measured, not asserted: building the iterator (which loads the split)
  # and pulling 100 batches of 100.
  with tfds.testing.mock_data(num_examples=10_000):
    start = time.perf_counter()
    iterator = input_pipeline.create_train_iterator(_config())
    built = time.perf_counter()
    for _ in range(100):
      next(iterator)
    done = time.perf_counter()
  print(
      f'\ncifar10 mock (10k examples): build {built - start:.2f} s, 100'
      f' batches of 100 {done - built:.3f} s'
  )


# --- celeba64, lsun_church64, celebahq256 ------------------------------------


def test_celeba64_shape_range_and_deterministic_flips():
  config = _config(dataset='celeba64', image_size=64, random_flip=True)
  with tfds.testing.mock_data(num_examples=250):
    assert input_pipeline.get_dataset_info(config).shape == (64, 64, 3)
    flipped = _take(input_pipeline.create_train_iterator(config), 3)
    again = _take(input_pipeline.create_train_iterator(config), 3)
    resumed = _take(input_pipeline.create_train_iterator(config,
                                                         start_step=1), 2)
    config.data.random_flip = False
    plain = _take(input_pipeline.create_train_iterator(config), 3)
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
  config = _config(dataset=dataset, image_size=image_size)
  config.training.batch_size = 4
  expected = (image_size, image_size, 3)
  with tfds.testing.mock_data(num_examples=6):
    assert input_pipeline.get_dataset_info(config) == (
        input_pipeline.DatasetInfo(num_train_examples=6, shape=expected)
    )
    batch = next(input_pipeline.create_train_iterator(config))
    evaluated = list(
        input_pipeline.create_eval_iterator(config, eval_split, batch_size=4)
    )
  for images in (batch, *evaluated):
    assert images.shape[1:] == expected
    assert images.dtype == np.float32
    assert images.min() >= -1.0 and images.max() <= 1.0
  assert batch.shape[0] == 4
  assert [len(b) for b in evaluated] == [4, 2]


def _tfds_source(name):
  return input_pipeline._TFDS_SOURCES[name]  # pylint: disable=protected-access


def test_tfds_dataset_names():
  assert set(input_pipeline.TFDS_DATASETS) == {
      'cifar10', 'celeba64', 'lsun_church64', 'celebahq256', 'svhn',
      'cifar100', 'celeba32',
  }
  names = {name: _tfds_source(name).tfds_name
           for name in input_pipeline.TFDS_DATASETS}
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
    info = input_pipeline.get_dataset_info(config)
  assert info.shape == (image_size, image_size, 3)


def test_resize_keeps_native_size_and_resizes_otherwise():
  image = tf.constant(np.random.default_rng(0).integers(
      0, 256, size=(32, 32, 3), dtype=np.uint8))
  same = input_pipeline.preprocess_resize(image, 32)
  np.testing.assert_array_equal(same.numpy(), image.numpy())
  assert input_pipeline.preprocess_resize(image, 64).shape == (64, 64, 3)


def _position_image(height: int, width: int) -> tf.Tensor:
  """uint8 [H, W, 3] whose channels encode row and column (mod 256)."""
  rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing='ij')
  image = np.stack([rows, cols, rows + cols], axis=-1) % 256
  return tf.constant(image.astype(np.uint8))


def test_celeba_crop_box():
  image = _position_image(218, 178)
  # At the crop's own size the resize is the identity, so the crop is visible.
  cropped = input_pipeline.preprocess_celeba(image, 148).numpy()
  np.testing.assert_array_equal(cropped, image.numpy()[40:188, 15:163])
  assert input_pipeline.preprocess_celeba(image, 64).shape == (64, 64, 3)


def test_lsun_central_square_crop():
  wide = _position_image(100, 160)
  np.testing.assert_array_equal(
      input_pipeline.preprocess_lsun(wide, 100).numpy(),
      wide.numpy()[:, 30:130],
  )
  tall = _position_image(161, 100)
  np.testing.assert_array_equal(
      input_pipeline.preprocess_lsun(tall, 100).numpy(),
      tall.numpy()[30:130],
  )


def test_resize_is_antialiased():
  # A 1-pixel checkerboard averages to mid-grey when downsampled with
  # antialiasing; plain bilinear sampling would alias it to extremes.
  board = (np.indices((256, 256)).sum(axis=0) % 2 * 255).astype(np.uint8)
  image = tf.constant(np.repeat(board[..., None], 3, axis=-1))
  small = input_pipeline.preprocess_resize(image, 64).numpy()
  assert small.dtype == np.uint8
  assert np.all(np.abs(small.astype(int) - 128) <= 2)


def test_unprepared_tfds_dataset_error(tmp_path):
  config = _config(data_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError) as info:
    input_pipeline.create_train_iterator(config)
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
  config = _config(
      dataset='celebahq256', image_size=256, data_dir=str(tmp_path)
  )
  with pytest.raises(FileNotFoundError) as info:
    input_pipeline.get_dataset_info(config)
  message = str(info.value)
  manual_dir = os.path.join(str(tmp_path), 'downloads', 'manual')
  assert '\n' not in message
  assert f'place data256x256.tar (' in message
  assert f' in {manual_dir} ' in message
  assert 'celeb_a_hq/256' in message and '256x256 PNG' in message
  assert f'--manual_dir={manual_dir}' in message
  assert 'progressive_growing_of_gans' in message
  assert 'config.data.dataset=image_folder' in message
  # config.data.manual_dir moves the place to put it.
  config.data.manual_dir = str(tmp_path / 'elsewhere')
  with pytest.raises(FileNotFoundError, match='elsewhere'):
    input_pipeline.create_train_iterator(config)


def _write_png(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path)


def test_celebahq_is_built_from_the_manual_tar(tmp_path):
  # The real TFDS builder, not a mock: data256x256.tar in the default
  # manual_dir is enough for the next run to prepare and read the dataset.
  rng = np.random.default_rng(0)
  manual_dir = tmp_path / 'data' / 'downloads' / 'manual'
  manual_dir.mkdir(parents=True)
  with tarfile.open(manual_dir / 'data256x256.tar', 'w') as tar:
    for i in range(3):
      png = str(tmp_path / 'png' / f'{i:05d}.png')
      _write_png(png, rng.integers(0, 256, (256, 256, 3), dtype=np.uint8))
      tar.add(png, arcname=f'imgHQ{i:05d}.png')
  config = _config(dataset='celebahq256', image_size=256,
                   data_dir=str(tmp_path / 'data'))
  config.training.batch_size = 2
  assert input_pipeline.get_dataset_info(config) == (
      input_pipeline.DatasetInfo(num_train_examples=3, shape=(256, 256, 3))
  )
  batch = next(input_pipeline.create_train_iterator(config))
  assert batch.shape == (2, 256, 256, 3)
  assert batch.min() >= -1.0 and batch.max() <= 1.0
  # CelebA-HQ has only a train split; asking for another is one clear line.
  with pytest.raises(ValueError, match=r"celebahq256.*Unknown split 'test'"):
    input_pipeline.create_eval_iterator(config, 'test', batch_size=2)


# --- digits ----------------------------------------------------------------


def _digits_config(**overrides):
  return _config(**{
      'dataset': 'digits', 'image_size': 16, 'num_channels': 1, **overrides
  })


def test_digits_shapes_range_and_split():
  config = _digits_config()
  info = input_pipeline.get_dataset_info(config)
  assert info == input_pipeline.DatasetInfo(
      num_train_examples=1500, shape=(16, 16, 1)
  )
  batch = next(input_pipeline.create_train_iterator(config))
  assert batch.shape == (100, 16, 16, 1)
  assert batch.dtype == np.float32
  assert batch.min() >= -1.0 and batch.max() <= 1.0
  train = np.concatenate(list(
      input_pipeline.create_eval_iterator(config, 'train', batch_size=256)))
  test = np.concatenate(list(
      input_pipeline.create_eval_iterator(config, 'test', batch_size=256)))
  assert train.shape == (1500, 16, 16, 1)
  assert test.shape == (297, 16, 16, 1)
  # Held out: every training batch comes from the first 1500 images only.
  train_keys = set(_row_keys(train))
  for batch in _take(input_pipeline.create_train_iterator(config), 15):
    assert set(_row_keys(batch)) <= train_keys
  # The split is by position: train + test are all the images, in order,
  # upsampled like TensorFlow's half-pixel bilinear resize (no antialiasing
  # is involved when upsampling).
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  raw = datasets.load_digits().images[..., None] / 8.0 - 1.0  # [1797, 8, 8, 1]
  expected = tf.image.resize(raw, [16, 16], method='bilinear').numpy()
  np.testing.assert_allclose(
      np.concatenate([train, test]), expected, atol=1e-5
  )


def test_digits_needs_one_channel():
  with pytest.raises(ValueError, match=r'config\.data\.num_channels'):
    input_pipeline.create_train_iterator(_digits_config(num_channels=3))


def test_digits_unknown_split():
  with pytest.raises(ValueError, match='validation'):
    input_pipeline.create_eval_iterator(
        _digits_config(), 'validation', batch_size=10
    )


# --- toy2d -------------------------------------------------------------------


def _toy_config(**overrides):
  return _config(dataset='toy2d', toy2d_num_points=1000, **overrides)


def test_toy2d_shape_determinism_and_resume():
  config = _toy_config(toy2d_name='2spirals')
  assert input_pipeline.get_dataset_info(config) == (
      input_pipeline.DatasetInfo(num_train_examples=1000, shape=(2,))
  )
  reference = _take(input_pipeline.create_train_iterator(config), 25)
  assert all(b.shape == (100, 2) and b.dtype == np.float32 for b in reference)
  again = _take(input_pipeline.create_train_iterator(config), 25)
  for a, b in zip(reference, again):
    np.testing.assert_array_equal(a, b)
  # 10 steps per epoch: resume inside the first epoch and across two.
  for start_step in (7, 10, 23):
    resumed = _take(
        input_pipeline.create_train_iterator(config, start_step=start_step),
        25 - start_step,
    )
    for a, b in zip(reference[start_step:], resumed):
      np.testing.assert_array_equal(a, b)
  config.training.seed = 1
  other = next(input_pipeline.create_train_iterator(config))
  assert not np.array_equal(reference[0], other)


def test_toy2d_epoch_covers_the_fixed_point_set():
  config = _toy_config()
  train = np.concatenate(list(
      input_pipeline.create_eval_iterator(config, 'train', batch_size=300)))
  epoch = np.concatenate(_take(input_pipeline.create_train_iterator(config),
                               10))
  assert train.shape == (1000, 2)
  assert sorted(_row_keys(train)) == sorted(_row_keys(epoch))
  test = np.concatenate(list(
      input_pipeline.create_eval_iterator(config, 'test', batch_size=300)))
  assert test.shape == (1000, 2)
  assert not set(_row_keys(test)) & set(_row_keys(train))
  # The points come from the named density.
  centres = toy2d.modes('8gaussians')
  distances = np.linalg.norm(train[:, None] - centres, axis=-1).min(axis=1)
  assert np.all(distances < 1.0)


def test_toy2d_rejects_random_flip():
  with pytest.raises(ValueError, match=r'config\.data\.random_flip'):
    input_pipeline.create_train_iterator(_toy_config(random_flip=True))


@pytest.mark.parametrize(
    'call',
    [input_pipeline.get_dataset_info, input_pipeline.create_train_iterator],
)
def test_unknown_toy2d_name(call):
  with pytest.raises(ValueError, match=r'config\.data\.toy2d_name') as info:
    call(_toy_config(toy2d_name='spiral'))
  assert '8gaussians' in str(info.value)


# --- npz ---------------------------------------------------------------------


def _npz_config(path, **overrides):
  config = _config(dataset='npz', npz_path=str(path), **overrides)
  config.training.batch_size = 10
  return config


def test_npz_uint8_images(tmp_path):
  images = np.random.default_rng(0).integers(
      0, 256, size=(30, 32, 32, 3), dtype=np.uint8)
  path = tmp_path / 'images.npz'
  np.savez(path, other=np.zeros(3), images=images)
  config = _npz_config(path, npz_key='images')
  assert input_pipeline.get_dataset_info(config) == (
      input_pipeline.DatasetInfo(num_train_examples=30, shape=(32, 32, 3))
  )
  batch = next(input_pipeline.create_train_iterator(config))
  assert batch.shape == (10, 32, 32, 3) and batch.dtype == np.float32
  evaluated = np.concatenate(list(
      input_pipeline.create_eval_iterator(config, 'train', batch_size=7)))
  np.testing.assert_allclose(evaluated, images / 127.5 - 1.0, atol=1e-6)


def test_npz_grayscale_without_channel_axis(tmp_path):
  images = np.full((20, 16, 16), 255, dtype=np.uint8)
  path = tmp_path / 'gray.npz'
  np.savez(path, images)
  config = _npz_config(path, image_size=16, num_channels=1)
  batch = next(input_pipeline.create_train_iterator(config))
  assert batch.shape == (10, 16, 16, 1)
  np.testing.assert_array_equal(batch, 1.0)


def test_npz_float_images(tmp_path):
  images = np.random.default_rng(1).uniform(-1, 1, (20, 32, 32, 3))
  path = tmp_path / 'float.npz'
  np.savez(path, images)
  batch = next(input_pipeline.create_train_iterator(_npz_config(path)))
  assert batch.dtype == np.float32 and batch.shape == (10, 32, 32, 3)
  np.savez(path, images * 2.0)
  with pytest.raises(ValueError, match=r'\[-1, 1\]'):
    input_pipeline.create_train_iterator(_npz_config(path))


def test_npz_float_points(tmp_path):
  points = np.random.default_rng(2).normal(size=(50, 2))
  path = tmp_path / 'points.npz'
  np.savez(path, points=points)
  config = _npz_config(path)
  config.model.arch = 'mlp'
  assert input_pipeline.get_dataset_info(config) == (
      input_pipeline.DatasetInfo(num_train_examples=50, shape=(2,))
  )
  batch = next(input_pipeline.create_train_iterator(config))
  assert batch.shape == (10, 2) and batch.dtype == np.float32
  # Points with an image network are a shape error that names the fields.
  config.model.arch = 'resnet'
  with pytest.raises(ValueError, match=r'config\.data\.image_size'):
    input_pipeline.create_train_iterator(config)


@pytest.mark.parametrize(
    'array, overrides, field',
    [
        (np.zeros((5, 16, 16, 3), np.uint8), {}, r'config\.data\.image_size'),
        (np.zeros((5, 32, 32, 1), np.uint8), {}, r'config\.data\.num_channels'),
        (np.zeros((0, 32, 32, 3), np.uint8), {}, 'empty'),
        (np.zeros((5, 32, 32, 3), np.int32), {}, 'uint8'),
        (np.zeros((5, 32, 32, 3), np.uint8), {'npz_key': 'nope'},
         r'config\.data\.npz_key'),
    ],
)
def test_npz_errors(tmp_path, array, overrides, field):
  path = tmp_path / 'bad.npz'
  np.savez(path, data=array)
  with pytest.raises(ValueError, match=field) as info:
    input_pipeline.create_train_iterator(_npz_config(path, **overrides))
  assert 'config.data.npz' in str(info.value)
  assert '\n' not in str(info.value)


def test_npz_eval_is_the_whole_array_in_order(tmp_path):
  images = np.random.default_rng(4).integers(
      0, 256, size=(13, 8, 8, 3), dtype=np.uint8)
  path = tmp_path / 'ood.npz'
  np.savez(path, images)
  config = _npz_config(path, image_size=8)
  for split in ('test', 'train'):
    evaluated = list(
        input_pipeline.create_eval_iterator(config, split, batch_size=5))
    assert [len(b) for b in evaluated] == [5, 5, 3]
    np.testing.assert_allclose(np.concatenate(evaluated),
                               images / 127.5 - 1.0, atol=1e-6)
  with pytest.raises(ValueError, match=r"'train' or 'test'") as info:
    input_pipeline.create_eval_iterator(config, 'validation', batch_size=5)
  assert '\n' not in str(info.value)


def test_npz_not_an_npz_file(tmp_path):
  garbage = tmp_path / 'garbage.npz'
  garbage.write_bytes(b'PK\x03\x04 definitely not a zip')
  npy = tmp_path / 'single.npy'
  np.save(npy, np.zeros((4, 32, 32, 3), np.uint8))
  for path, match in ((garbage, 'not a readable .npz'), (npy, 'np.savez')):
    with pytest.raises(ValueError, match=match) as info:
      input_pipeline.get_dataset_info(_npz_config(path))
    assert '\n' not in str(info.value)


def test_npz_missing_file(tmp_path):
  path = tmp_path / 'missing.npz'
  with pytest.raises(FileNotFoundError, match=r'config\.data\.npz_path'):
    input_pipeline.get_dataset_info(_npz_config(path))
  config = _npz_config(path)
  config.data.npz_path = None
  with pytest.raises(ValueError, match=r'config\.data\.npz_path'):
    input_pipeline.create_train_iterator(config)


# --- image_folder -----------------------------------------------------------


def _folder_config(folder, **overrides):
  config = _config(**{'dataset': 'image_folder', 'image_folder': str(folder),
                      'image_size': 16, **overrides})
  config.training.batch_size = 4
  return config


def _smooth_image(height, width, channels=3, seed=0):
  """uint8 [H, W, C] of low frequencies, so JPEG keeps it close."""
  rng = np.random.default_rng(seed)
  rows, cols = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width),
                           indexing='ij')
  planes = [127.5 + 120 * np.sin(rng.uniform(1, 4) * rows
                                 + rng.uniform(1, 4) * cols + rng.uniform(0, 6))
            for _ in range(channels)]
  return np.stack(planes, axis=-1).astype(np.uint8).squeeze()


@pytest.fixture
def image_folder(tmp_path):
  """Nested PNG and JPEG files of different sizes and modes, plus clutter.

  Readable, in sorted order: a/b/deep.jpeg, a/wide.png, grey.png,
  photo.JPG, rgba.png, tall.jpg. Unreadable: broken.png (not an image) and
  cut.jpg (truncated).
  """
  folder = tmp_path / 'images'
  _write_png(str(folder / 'a' / 'wide.png'), _smooth_image(20, 60, seed=1))
  _write_png(str(folder / 'grey.png'), _smooth_image(30, 30, 1, seed=2))
  Image.fromarray(_smooth_image(50, 24, seed=3)).save(folder / 'tall.jpg')
  Image.fromarray(_smooth_image(40, 40, seed=4)).save(folder / 'photo.JPG')
  os.makedirs(folder / 'a' / 'b')
  Image.fromarray(_smooth_image(17, 23, seed=5)).save(
      folder / 'a' / 'b' / 'deep.jpeg')
  rgba = np.concatenate(
      [_smooth_image(16, 16, seed=6), np.full((16, 16, 1), 7, np.uint8)], -1)
  _write_png(str(folder / 'rgba.png'), rgba)
  # Unreadable: random bytes, and a JPEG cut in half.
  (folder / 'broken.png').write_bytes(b'not an image' * 10)
  Image.fromarray(_smooth_image(64, 64, seed=7)).save(tmp_path / 'full.jpg')
  data = (tmp_path / 'full.jpg').read_bytes()
  (folder / 'cut.jpg').write_bytes(data[:len(data) // 2])
  # Ignored: other extensions, hidden files and directories.
  (folder / 'notes.txt').write_text('not an image')
  _write_png(str(folder / '.hidden.png'), _smooth_image(8, 8, seed=8))
  _write_png(str(folder / '.cache' / 'x.png'), _smooth_image(8, 8, seed=9))
  return folder


_READABLE = ('a/b/deep.jpeg', 'a/wide.png', 'grey.png', 'photo.JPG',
             'rgba.png', 'tall.jpg')


def test_image_folder_lists_nested_png_and_jpeg_sorted(image_folder):
  assert input_pipeline.list_image_files(str(image_folder)) == sorted(
      _READABLE + ('broken.png', 'cut.jpg'))


@pytest.mark.parametrize('num_channels', [3, 1])
def test_image_folder_train_and_eval(image_folder, num_channels, caplog):
  config = _folder_config(image_folder, num_channels=num_channels)
  with caplog.at_level(logging.WARNING):
    info = input_pipeline.get_dataset_info(config)
  assert info == input_pipeline.DatasetInfo(
      num_train_examples=6, shape=(16, 16, num_channels))
  # The skipped files are counted in one warning naming the first of them.
  warnings = [r.getMessage() for r in caplog.records
              if r.levelno == logging.WARNING]
  assert any('skipped 2 of 8' in w and 'broken.png' in w for w in warnings)
  batches = _take(input_pipeline.create_train_iterator(config), 3)
  for batch in batches:
    assert batch.shape == (4, 16, 16, num_channels)
    assert batch.dtype == np.float32
    assert batch.min() >= -1.0 and batch.max() <= 1.0
  resumed = next(input_pipeline.create_train_iterator(config, start_step=2))
  np.testing.assert_array_equal(resumed, batches[2])
  # Eval: every readable file once, in path order, as load_image_file reads it.
  for split in ('test', 'train'):
    evaluated = list(
        input_pipeline.create_eval_iterator(config, split, batch_size=4))
    assert [len(b) for b in evaluated] == [4, 2]
    expected = np.stack([
        input_pipeline.load_image_file(str(image_folder / path), 16,
                                       num_channels)
        for path in _READABLE])
    np.testing.assert_allclose(
        np.concatenate(evaluated), expected / 127.5 - 1.0, atol=1e-6)
  with pytest.raises(ValueError, match='validation'):
    input_pipeline.create_eval_iterator(config, 'validation', batch_size=4)


def test_image_folder_reports_what_it_skipped(image_folder):
  loaded = input_pipeline.load_image_folder(str(image_folder), 16, 3)
  assert loaded.paths == _READABLE
  assert [path for path, _ in loaded.skipped] == ['broken.png', 'cut.jpg']
  assert 'truncated' in dict(loaded.skipped)['cut.jpg'].lower()
  assert loaded.images.shape == (6, 16, 16, 3)
  assert not loaded.images.flags.writeable


def test_image_folder_refuses_unreadable_files_when_asked(image_folder):
  config = _folder_config(image_folder, skip_unreadable=False)
  with pytest.raises(ValueError) as info:
    input_pipeline.create_train_iterator(config)
  message = str(info.value)
  assert '\n' not in message
  assert "cannot read 'broken.png'" in message
  assert 'config.data.skip_unreadable=True' in message


def test_image_folder_all_unreadable(tmp_path):
  (tmp_path / 'a.png').write_bytes(b'x')
  (tmp_path / 'b.jpg').write_bytes(b'y')
  with pytest.raises(ValueError, match=r'none of its 2 image files') as info:
    input_pipeline.get_dataset_info(_folder_config(tmp_path))
  assert '\n' not in str(info.value)


def test_image_folder_empty_missing_or_unset(tmp_path):
  (tmp_path / 'empty' / 'sub').mkdir(parents=True)
  (tmp_path / 'empty' / 'sub' / 'readme.txt').write_text('no images')
  with pytest.raises(ValueError, match=r'holds no image files.*\.png'):
    input_pipeline.create_train_iterator(_folder_config(tmp_path / 'empty'))
  with pytest.raises(FileNotFoundError, match=r'config\.data\.image_folder'):
    input_pipeline.get_dataset_info(_folder_config(tmp_path / 'missing'))
  config = _folder_config(tmp_path)
  config.data.image_folder = None
  with pytest.raises(ValueError, match=r'config\.data\.image_folder'):
    input_pipeline.get_dataset_info(config)
  with pytest.raises(ValueError, match=r'config\.data\.num_channels'):
    input_pipeline.get_dataset_info(_folder_config(tmp_path, num_channels=2))


def test_image_folder_sees_changed_files(tmp_path):
  # Loads are cached between get_dataset_info and create_train_iterator; a
  # changed folder must not be served from that cache.
  for i in range(3):
    _write_png(str(tmp_path / f'{i}.png'), _smooth_image(8, 8, seed=i))
  config = _folder_config(tmp_path, image_size=8)
  assert input_pipeline.get_dataset_info(config).num_train_examples == 3
  _write_png(str(tmp_path / '3.png'), _smooth_image(8, 8, seed=3))
  assert input_pipeline.get_dataset_info(config).num_train_examples == 4


def test_load_image_file_centre_crop(tmp_path):
  # At the shorter side's own size the resize is the identity, so the crop
  # is visible exactly: the middle of a wide and of a tall image.
  wide = np.random.default_rng(0).integers(0, 256, (20, 60, 3), np.uint8)
  _write_png(str(tmp_path / 'wide.png'), wide)
  np.testing.assert_array_equal(
      input_pipeline.load_image_file(str(tmp_path / 'wide.png'), 20, 3),
      wide[:, 20:40])
  tall = np.random.default_rng(1).integers(0, 256, (61, 20), np.uint8)
  _write_png(str(tmp_path / 'tall.png'), tall)
  got = input_pipeline.load_image_file(str(tmp_path / 'tall.png'), 20, 1)
  assert got.shape == (20, 20, 1)
  # (61 - 20) / 2 = 20.5 rows off: half-pixel boxes blend rows 20 and 21.
  np.testing.assert_allclose(got[..., 0], (tall[20:40].astype(float)
                                           + tall[21:41]) / 2, atol=1)


def test_load_image_file_downscales_with_antialiasing(tmp_path):
  board = (np.indices((64, 96)).sum(axis=0) % 2 * 255).astype(np.uint8)
  _write_png(str(tmp_path / 'board.png'), board)
  small = input_pipeline.load_image_file(str(tmp_path / 'board.png'), 16, 1)
  assert np.all(np.abs(small.astype(int) - 128) <= 2)


def test_load_image_file_channels(tmp_path):
  _write_png(str(tmp_path / 'grey.png'), np.full((8, 8), 200, np.uint8))
  rgb = input_pipeline.load_image_file(str(tmp_path / 'grey.png'), 8, 3)
  assert rgb.shape == (8, 8, 3) and np.all(rgb == 200)
  red = np.zeros((8, 8, 3), np.uint8)
  red[..., 0] = 255
  _write_png(str(tmp_path / 'red.png'), red)
  grey = input_pipeline.load_image_file(str(tmp_path / 'red.png'), 8, 1)
  # ITU-R 601-2 luma, as PIL's convert('L'): 255 * 299 / 1000.
  assert grey.shape == (8, 8, 1) and np.all(grey == 76)
  # 16-bit greyscale keeps its high byte instead of clipping to white.
  deep = np.full((8, 8), 40_000, np.uint16)
  Image.fromarray(deep).save(tmp_path / 'deep.png')
  assert np.all(
      input_pipeline.load_image_file(str(tmp_path / 'deep.png'), 8, 1)
      == 40_000 >> 8)


def test_load_image_file_applies_exif_orientation(tmp_path):
  # 40 wide, 20 tall: left half white. Orientation 6 (rotate 90 degrees
  # clockwise to display) puts the white half on top.
  image = np.zeros((20, 40), np.uint8)
  image[:, :20] = 255
  exif = Image.Exif()
  exif[0x0112] = 6
  Image.fromarray(image).save(tmp_path / 'rotated.png', exif=exif)
  got = input_pipeline.load_image_file(str(tmp_path / 'rotated.png'), 20, 1)
  assert np.all(got[:9] == 255) and np.all(got[11:] == 0)


def test_load_image_file_large_jpeg_matches_full_decode(tmp_path):
  # JPEGs are decoded at a reduced scale (draft); the result stays close to
  # decoding in full and then resizing.
  Image.fromarray(_smooth_image(600, 800, seed=3)).save(
      tmp_path / 'big.jpg', quality=95)
  got = input_pipeline.load_image_file(str(tmp_path / 'big.jpg'), 32, 3)
  with Image.open(tmp_path / 'big.jpg') as full:
    reference = np.asarray(full.convert('RGB').resize(
        (32, 32), Image.Resampling.BILINEAR, box=(100, 0, 700, 600)))
  assert np.abs(got.astype(int) - reference).max() <= 4


# --- prefetch_to_device -------------------------------------------------------


def test_prefetch_to_device_preserves_order_and_values():
  rng = np.random.default_rng(0)
  batches = [rng.normal(size=(4, 3)).astype(np.float32) for _ in range(20)]
  mesh = sharding.data_mesh()
  prefetched = list(input_pipeline.prefetch_to_device(
      iter(batches), size=3,
      sharding_fn=lambda b: sharding.shard_batch(b, mesh)))
  assert len(prefetched) == 20
  for host, device in zip(batches, prefetched):
    assert isinstance(device, jax.Array)
    assert device.sharding == sharding.batch_sharding(mesh)
    np.testing.assert_array_equal(np.asarray(device), host)


@pytest.mark.parametrize('size', [2, 0])
def test_prefetch_to_device_of_the_train_iterator_resumes_like_it(size):
  config = _toy_config()
  direct = _take(input_pipeline.create_train_iterator(config, start_step=3),
                 12)
  before = len(_prefetch_threads())
  prefetcher = input_pipeline.prefetch_to_device(
      input_pipeline.create_train_iterator(config, start_step=3), size=size,
      sharding_fn=lambda b: (b, jax.device_put(b)))
  # Size 0 is prefetching off: no thread, the same stream.
  assert len(_prefetch_threads()) == before + (size > 0)
  for a, (host, device) in zip(direct, _take(prefetcher, 12)):
    np.testing.assert_array_equal(a, host)
    np.testing.assert_array_equal(a, np.asarray(device))
  prefetcher.close()


def test_prefetch_to_device_raises_errors_in_place():
  def failing():
    yield 1
    yield 2
    raise RuntimeError('source failed')

  prefetcher = input_pipeline.prefetch_to_device(failing(), size=4,
                                                 sharding_fn=lambda x: x)
  assert [next(prefetcher), next(prefetcher)] == [1, 2]
  with pytest.raises(RuntimeError, match='source failed'):
    next(prefetcher)
  with pytest.raises(StopIteration):
    next(prefetcher)
  with pytest.raises(ValueError, match='size'):
    input_pipeline.prefetch_to_device(iter([]), size=-1)


def _prefetch_threads():
  return [t for t in threading.enumerate() if t.name == 'prefetch_to_device']


def test_prefetch_to_device_is_bounded_and_stops():
  pulled = []

  def counting():
    for i in itertools.count():
      pulled.append(i)
      yield i

  before = len(_prefetch_threads())
  prefetcher = input_pipeline.prefetch_to_device(counting(), size=2,
                                                 sharding_fn=lambda x: x)
  deadline = time.monotonic() + 10
  while len(pulled) < 3 and time.monotonic() < deadline:
    time.sleep(0.01)
  time.sleep(0.2)
  # Two batches queued and one waiting for room: never the whole stream.
  assert len(pulled) == 3
  assert [next(prefetcher) for _ in range(5)] == list(range(5))
  prefetcher.close()
  assert len(_prefetch_threads()) == before
  with pytest.raises(StopIteration):
    next(prefetcher)
  # Dropping an unclosed prefetcher stops its thread too.
  prefetcher = input_pipeline.prefetch_to_device(counting(), size=2)
  next(prefetcher)
  del prefetcher
  assert len(_prefetch_threads()) == before


# --- errors and environment --------------------------------------------------


@pytest.mark.parametrize(
    'call',
    [
        input_pipeline.get_dataset_info,
        input_pipeline.create_train_iterator,
        lambda c: input_pipeline.create_eval_iterator(c, 'test', batch_size=8),
    ],
)
def test_unknown_dataset(call):
  with pytest.raises(ValueError, match=r'config\.data\.dataset') as info:
    call(_config(dataset='imagenet'))
  message = str(info.value)
  assert '\n' not in message
  for name in input_pipeline.DATASETS:
    assert name in message


def test_works_without_tensorflow():
  # Imports that fail for tensorflow and tensorflow_datasets, as on a machine
  # without them: the digits, toy2d, npz and image_folder sources must not
  # need them.
  script = """
import sys
sys.modules['tensorflow'] = None
sys.modules['tensorflow_datasets'] = None
from configs import default
from dual_mcmc_jax import input_pipeline
config = default.get_config()
config.data.dataset = 'digits'
config.data.image_size = 16
config.data.num_channels = 1
batch = next(input_pipeline.create_train_iterator(config))
assert batch.shape == (100, 16, 16, 1)
config.data.dataset = 'toy2d'
assert next(input_pipeline.create_train_iterator(config)).shape == (100, 2)
import os, tempfile
import numpy as np
from PIL import Image
folder = tempfile.mkdtemp()
png = os.path.join(folder, 'a.png')
Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(png)
config.data.dataset = 'image_folder'
config.data.image_folder = folder
config.training.batch_size = 1
batch = next(input_pipeline.create_train_iterator(config))
assert batch.shape == (1, 16, 16, 1)
np.savez(os.path.join(folder, 'a.npz'), np.zeros((2, 16, 16, 1), np.uint8))
config.data.dataset = 'npz'
config.data.npz_path = os.path.join(folder, 'a.npz')
batch = next(input_pipeline.create_train_iterator(config))
assert batch.shape == (1, 16, 16, 1)
config.data.dataset = 'cifar10'
try:
  input_pipeline.create_train_iterator(config)
except ImportError as e:
  assert 'tensorflow' in str(e)
else:
  raise AssertionError('cifar10 without TensorFlow should fail')
"""
  result = subprocess.run(
      [sys.executable, '-c', script], cwd=_REPO_ROOT, capture_output=True,
      text=True, check=False,
  )
  assert result.returncode == 0, result.stderr
