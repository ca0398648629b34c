"""Tests of the sources that need no files: digits and toy2d.

dual_mcmc_jax/data/digits.py (scikit-learn's bundled digits) and
dual_mcmc_jax/data/toy2d.py (points of dual_mcmc_jax/toy2d.py's densities).
"""

import numpy as np
import pytest
import tensorflow as tf

from dual_mcmc_jax import data
from dual_mcmc_jax import toy2d
from tests import data_helpers as h


# --- digits ----------------------------------------------------------------


def _digits_config(**overrides):
  return h.config(**{
      'dataset': 'digits', 'image_size': 16, 'num_channels': 1, **overrides
  })


def test_digits_shapes_range_and_split():
  config = _digits_config()
  info = data.get_dataset_info(config)
  assert info == data.DatasetInfo(
      num_train_examples=1500, shape=(16, 16, 1)
  )
  batch = next(data.create_train_iterator(config))
  assert batch.shape == (100, 16, 16, 1)
  assert batch.dtype == np.float32
  assert batch.min() >= -1.0 and batch.max() <= 1.0
  train = np.concatenate(list(
      data.create_eval_iterator(config, 'train', batch_size=256)))
  test = np.concatenate(list(
      data.create_eval_iterator(config, 'test', batch_size=256)))
  assert train.shape == (1500, 16, 16, 1)
  assert test.shape == (297, 16, 16, 1)
  # Held out: every training batch comes from the first 1500 images only.
  train_keys = set(h.row_keys(train))
  for batch in h.take(data.create_train_iterator(config), 15):
    assert set(h.row_keys(batch)) <= train_keys
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
    data.create_train_iterator(_digits_config(num_channels=3))


def test_digits_unknown_split():
  with pytest.raises(ValueError, match='validation'):
    data.create_eval_iterator(
        _digits_config(), 'validation', batch_size=10
    )


# --- toy2d -------------------------------------------------------------------


def _toy_config(**overrides):
  return h.config(dataset='toy2d', toy2d_num_points=1000, **overrides)


def test_toy2d_shape_determinism_and_resume():
  config = _toy_config(toy2d_name='2spirals')
  assert data.get_dataset_info(config) == (
      data.DatasetInfo(num_train_examples=1000, shape=(2,))
  )
  reference = h.take(data.create_train_iterator(config), 25)
  assert all(b.shape == (100, 2) and b.dtype == np.float32 for b in reference)
  again = h.take(data.create_train_iterator(config), 25)
  for a, b in zip(reference, again):
    np.testing.assert_array_equal(a, b)
  # 10 steps per epoch: resume inside the first epoch and across two.
  for start_step in (7, 10, 23):
    resumed = h.take(
        data.create_train_iterator(config, start_step=start_step),
        25 - start_step,
    )
    for a, b in zip(reference[start_step:], resumed):
      np.testing.assert_array_equal(a, b)
  config.training.seed = 1
  other = next(data.create_train_iterator(config))
  assert not np.array_equal(reference[0], other)


def test_toy2d_epoch_covers_the_fixed_point_set():
  config = _toy_config()
  train = np.concatenate(list(
      data.create_eval_iterator(config, 'train', batch_size=300)))
  epoch = np.concatenate(h.take(data.create_train_iterator(config),
                               10))
  assert train.shape == (1000, 2)
  assert sorted(h.row_keys(train)) == sorted(h.row_keys(epoch))
  test = np.concatenate(list(
      data.create_eval_iterator(config, 'test', batch_size=300)))
  assert test.shape == (1000, 2)
  assert not set(h.row_keys(test)) & set(h.row_keys(train))
  # The points come from the named density.
  centres = toy2d.modes('8gaussians')
  distances = np.linalg.norm(train[:, None] - centres, axis=-1).min(axis=1)
  assert np.all(distances < 1.0)


def test_toy2d_rejects_random_flip():
  with pytest.raises(ValueError, match=r'config\.data\.random_flip'):
    data.create_train_iterator(_toy_config(random_flip=True))


@pytest.mark.parametrize(
    'call',
    [data.get_dataset_info, data.create_train_iterator],
)
def test_unknown_toy2d_name(call):
  with pytest.raises(ValueError, match=r'config\.data\.toy2d_name') as info:
    call(_toy_config(toy2d_name='spiral'))
  assert '8gaussians' in str(info.value)
