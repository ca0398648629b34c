"""scikit-learn's bundled 8x8 digits: a real image set that needs no download.

The 1,797 images (values 0..16) are upsampled to `config.data.image_size`
with a half-pixel-centred bilinear resize (what `tf.image.resize` does when
upsampling; no antialiasing is involved) and scaled to [-1, 1], one channel.
The split is by position: the first 1,500 images are 'train', the last 297
'test', and `digits_labels` gives the class labels in the same order for the
classifier-based sample-quality evaluator (evaluators/classifier.py).
"""

import numpy as np

from dual_mcmc_jax.data import common

# The last this many images are the held-out 'test' split.
_NUM_TEST = 297
_SPLITS = ('train', 'test')


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


def _all_images(image_size: int) -> np.ndarray:
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


def _select(rows: np.ndarray, split: str) -> np.ndarray:
  """The rows of `split`: the last _NUM_TEST are the test split."""
  common.check_split('digits', split, _SPLITS)
  return rows[:-_NUM_TEST] if split == 'train' else rows[-_NUM_TEST:]


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
  return _select(labels, split)


def _load(config: common.Config, split: str) -> np.ndarray:
  common.check_image_config(config, num_channels=1)
  return _select(_all_images(int(config.data.image_size)), split)


SOURCE = common.Source(load=_load)
