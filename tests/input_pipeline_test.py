"""Tests for dual_mcmc_jax/input_pipeline.py.

TFDS datasets are replaced by `tfds.testing.mock_data` (random uint8 images of
each dataset's declared shape; LSUN's variable-size images get random sizes),
so nothing is downloaded.
"""

import itertools
import os
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from configs import default
from dual_mcmc_jax import input_pipeline
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


def test_hosts_take_their_slice_of_the_global_batch(mock_250, monkeypatch):
  config = _config()
  global_batches = _take(input_pipeline.create_train_iterator(config), 3)
  slices = []
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  for process in range(2):
    monkeypatch.setattr(jax, 'process_index', lambda p=process: p)
    slices.append(_take(input_pipeline.create_train_iterator(config), 3))
  for step, global_batch in enumerate(global_batches):
    assert slices[0][step].shape == (50, 32, 32, 3)
    np.testing.assert_array_equal(
        np.concatenate([slices[0][step], slices[1][step]]), global_batch
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


@pytest.mark.parametrize(
    'dataset, image_size', [('lsun_church64', 64), ('celebahq256', 256)]
)
def test_other_tfds_image_datasets_shape(dataset, image_size):
  # mock_data handles both: LSUN's images get random sizes, which also
  # exercises the square crop on non-square inputs.
  config = _config(dataset=dataset, image_size=image_size)
  config.training.batch_size = 4
  with tfds.testing.mock_data(num_examples=6):
    batch = next(input_pipeline.create_train_iterator(config))
  assert batch.shape == (4, image_size, image_size, 3)
  assert batch.dtype == np.float32
  assert batch.min() >= -1.0 and batch.max() <= 1.0


def _position_image(height: int, width: int) -> tf.Tensor:
  """uint8 [H, W, 3] whose channels encode row and column (mod 256)."""
  rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing='ij')
  image = np.stack([rows, cols, rows + cols], axis=-1) % 256
  return tf.constant(image.astype(np.uint8))


def test_celeba_crop_box():
  image = _position_image(218, 178)
  # At the crop's own size the resize is the identity, so the crop is visible.
  cropped = input_pipeline.preprocess_celeba64(image, 148).numpy()
  np.testing.assert_array_equal(cropped, image.numpy()[40:188, 15:163])
  assert input_pipeline.preprocess_celeba64(image, 64).shape == (64, 64, 3)


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
  small = input_pipeline.preprocess_celebahq(image, 64).numpy()
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


def test_celebahq_error_mentions_the_manual_dir(tmp_path):
  config = _config(
      dataset='celebahq256', image_size=256, data_dir=str(tmp_path)
  )
  with pytest.raises(FileNotFoundError) as info:
    input_pipeline.get_dataset_info(config)
  message = str(info.value)
  assert 'celeb_a_hq/256' in message and 'manual' in message
  assert os.path.join(str(tmp_path), 'downloads', 'manual') in message


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


def test_npz_missing_file(tmp_path):
  path = tmp_path / 'missing.npz'
  with pytest.raises(FileNotFoundError, match=r'config\.data\.npz_path'):
    input_pipeline.get_dataset_info(_npz_config(path))
  config = _npz_config(path)
  config.data.npz_path = None
  with pytest.raises(ValueError, match=r'config\.data\.npz_path'):
    input_pipeline.create_train_iterator(config)


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
  # without them: the digits, toy2d and npz sources must not need them.
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
