"""Tests of the user-data sources: npz files and image folders.

dual_mcmc_jax/data/npz.py and dual_mcmc_jax/data/image_folder.py; the files
are generated here. Both reject NaN and Inf at load time with one line that
names the file, the array and the first bad index.
"""

import logging
import os

import numpy as np
from PIL import Image
import pytest

from dual_mcmc_jax import data
from tests import data_helpers as h


# --- npz ---------------------------------------------------------------------


def test_npz_uint8_images(tmp_path):
  images = np.random.default_rng(0).integers(
      0, 256, size=(30, 32, 32, 3), dtype=np.uint8)
  path = tmp_path / 'images.npz'
  np.savez(path, other=np.zeros(3), images=images)
  config = h.npz_config(path, npz_key='images')
  assert data.get_dataset_info(config) == (
      data.DatasetInfo(num_train_examples=30, shape=(32, 32, 3))
  )
  batch = next(data.create_train_iterator(config))
  assert batch.shape == (10, 32, 32, 3) and batch.dtype == np.float32
  evaluated = np.concatenate(list(
      data.create_eval_iterator(config, 'train', batch_size=7)))
  np.testing.assert_allclose(evaluated, images / 127.5 - 1.0, atol=1e-6)


def test_npz_grayscale_without_channel_axis(tmp_path):
  images = np.full((20, 16, 16), 255, dtype=np.uint8)
  path = tmp_path / 'gray.npz'
  np.savez(path, images)
  config = h.npz_config(path, image_size=16, num_channels=1)
  batch = next(data.create_train_iterator(config))
  assert batch.shape == (10, 16, 16, 1)
  np.testing.assert_array_equal(batch, 1.0)


def test_npz_float_images(tmp_path):
  images = np.random.default_rng(1).uniform(-1, 1, (20, 32, 32, 3))
  path = tmp_path / 'float.npz'
  np.savez(path, images)
  batch = next(data.create_train_iterator(h.npz_config(path)))
  assert batch.dtype == np.float32 and batch.shape == (10, 32, 32, 3)
  np.savez(path, images * 2.0)
  with pytest.raises(ValueError, match=r'\[-1, 1\]'):
    data.create_train_iterator(h.npz_config(path))


def test_npz_float_points(tmp_path):
  points = np.random.default_rng(2).normal(size=(50, 2))
  path = tmp_path / 'points.npz'
  np.savez(path, points=points)
  config = h.npz_config(path)
  config.model.arch = 'mlp'
  assert data.get_dataset_info(config) == (
      data.DatasetInfo(num_train_examples=50, shape=(2,))
  )
  batch = next(data.create_train_iterator(config))
  assert batch.shape == (10, 2) and batch.dtype == np.float32
  # Points with an image network are a shape error that names the fields.
  config.model.arch = 'resnet'
  with pytest.raises(ValueError, match=r'config\.data\.image_size'):
    data.create_train_iterator(config)


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
    data.create_train_iterator(h.npz_config(path, **overrides))
  assert 'config.data.npz' in str(info.value)
  assert '\n' not in str(info.value)


def test_npz_eval_is_the_whole_array_in_order(tmp_path):
  images = np.random.default_rng(4).integers(
      0, 256, size=(13, 8, 8, 3), dtype=np.uint8)
  path = tmp_path / 'ood.npz'
  np.savez(path, images)
  config = h.npz_config(path, image_size=8)
  for split in ('test', 'train'):
    evaluated = list(
        data.create_eval_iterator(config, split, batch_size=5))
    assert [len(b) for b in evaluated] == [5, 5, 3]
    np.testing.assert_allclose(np.concatenate(evaluated),
                               images / 127.5 - 1.0, atol=1e-6)
  with pytest.raises(ValueError, match=r"'train' or 'test'") as info:
    data.create_eval_iterator(config, 'validation', batch_size=5)
  assert '\n' not in str(info.value)


def test_npz_not_an_npz_file(tmp_path):
  garbage = tmp_path / 'garbage.npz'
  garbage.write_bytes(b'PK\x03\x04 definitely not a zip')
  npy = tmp_path / 'single.npy'
  np.save(npy, np.zeros((4, 32, 32, 3), np.uint8))
  for path, match in ((garbage, 'not a readable .npz'), (npy, 'np.savez')):
    with pytest.raises(ValueError, match=match) as info:
      data.get_dataset_info(h.npz_config(path))
    assert '\n' not in str(info.value)


def test_npz_missing_file(tmp_path):
  path = tmp_path / 'missing.npz'
  with pytest.raises(FileNotFoundError, match=r'config\.data\.npz_path'):
    data.get_dataset_info(h.npz_config(path))
  config = h.npz_config(path)
  config.data.npz_path = None
  with pytest.raises(ValueError, match=r'config\.data\.npz_path'):
    data.create_train_iterator(config)


# --- image_folder -----------------------------------------------------------


def _folder_config(folder, **overrides):
  config = h.config(**{'dataset': 'image_folder', 'image_folder': str(folder),
                      'image_size': 16, **overrides})
  config.training.batch_size = 4
  return config


@pytest.fixture
def image_folder(tmp_path):
  """Nested PNG and JPEG files of different sizes and modes, plus clutter.

  Readable, in sorted order: a/b/deep.jpeg, a/wide.png, grey.png,
  photo.JPG, rgba.png, tall.jpg. Unreadable: broken.png (not an image) and
  cut.jpg (truncated).
  """
  folder = tmp_path / 'images'
  h.write_png(str(folder / 'a' / 'wide.png'), h.smooth_image(20, 60, seed=1))
  h.write_png(str(folder / 'grey.png'), h.smooth_image(30, 30, 1, seed=2))
  Image.fromarray(h.smooth_image(50, 24, seed=3)).save(folder / 'tall.jpg')
  Image.fromarray(h.smooth_image(40, 40, seed=4)).save(folder / 'photo.JPG')
  os.makedirs(folder / 'a' / 'b')
  Image.fromarray(h.smooth_image(17, 23, seed=5)).save(
      folder / 'a' / 'b' / 'deep.jpeg')
  rgba = np.concatenate(
      [h.smooth_image(16, 16, seed=6), np.full((16, 16, 1), 7, np.uint8)], -1)
  h.write_png(str(folder / 'rgba.png'), rgba)
  # Unreadable: random bytes, and a JPEG cut in half.
  (folder / 'broken.png').write_bytes(b'not an image' * 10)
  Image.fromarray(h.smooth_image(64, 64, seed=7)).save(tmp_path / 'full.jpg')
  data = (tmp_path / 'full.jpg').read_bytes()
  (folder / 'cut.jpg').write_bytes(data[:len(data) // 2])
  # Ignored: other extensions, hidden files and directories.
  (folder / 'notes.txt').write_text('not an image')
  h.write_png(str(folder / '.hidden.png'), h.smooth_image(8, 8, seed=8))
  h.write_png(str(folder / '.cache' / 'x.png'), h.smooth_image(8, 8, seed=9))
  return folder


_READABLE = ('a/b/deep.jpeg', 'a/wide.png', 'grey.png', 'photo.JPG',
             'rgba.png', 'tall.jpg')


def test_image_folder_lists_nested_png_and_jpeg_sorted(image_folder):
  assert data.list_image_files(str(image_folder)) == sorted(
      _READABLE + ('broken.png', 'cut.jpg'))


@pytest.mark.parametrize('num_channels', [3, 1])
def test_image_folder_train_and_eval(image_folder, num_channels, caplog):
  config = _folder_config(image_folder, num_channels=num_channels)
  with caplog.at_level(logging.WARNING):
    info = data.get_dataset_info(config)
  assert info == data.DatasetInfo(
      num_train_examples=6, shape=(16, 16, num_channels))
  # The skipped files are counted in one warning naming the first of them.
  warnings = [r.getMessage() for r in caplog.records
              if r.levelno == logging.WARNING]
  assert any('skipped 2 of 8' in w and 'broken.png' in w for w in warnings)
  batches = h.take(data.create_train_iterator(config), 3)
  for batch in batches:
    assert batch.shape == (4, 16, 16, num_channels)
    assert batch.dtype == np.float32
    assert batch.min() >= -1.0 and batch.max() <= 1.0
  resumed = next(data.create_train_iterator(config, start_step=2))
  np.testing.assert_array_equal(resumed, batches[2])
  # Eval: every readable file once, in path order, as load_image_file reads it.
  for split in ('test', 'train'):
    evaluated = list(
        data.create_eval_iterator(config, split, batch_size=4))
    assert [len(b) for b in evaluated] == [4, 2]
    expected = np.stack([
        data.load_image_file(str(image_folder / path), 16,
                                       num_channels)
        for path in _READABLE])
    np.testing.assert_allclose(
        np.concatenate(evaluated), expected / 127.5 - 1.0, atol=1e-6)
  with pytest.raises(ValueError, match='validation'):
    data.create_eval_iterator(config, 'validation', batch_size=4)


def test_image_folder_reports_what_it_skipped(image_folder):
  loaded = data.load_image_folder(str(image_folder), 16, 3)
  assert loaded.paths == _READABLE
  assert [path for path, _ in loaded.skipped] == ['broken.png', 'cut.jpg']
  assert 'truncated' in dict(loaded.skipped)['cut.jpg'].lower()
  assert loaded.images.shape == (6, 16, 16, 3)
  assert not loaded.images.flags.writeable


def test_image_folder_refuses_unreadable_files_when_asked(image_folder):
  config = _folder_config(image_folder, skip_unreadable=False)
  with pytest.raises(ValueError) as info:
    data.create_train_iterator(config)
  message = str(info.value)
  assert '\n' not in message
  assert "cannot read 'broken.png'" in message
  assert 'config.data.skip_unreadable=True' in message


def test_image_folder_all_unreadable(tmp_path):
  (tmp_path / 'a.png').write_bytes(b'x')
  (tmp_path / 'b.jpg').write_bytes(b'y')
  with pytest.raises(ValueError, match=r'none of its 2 image files') as info:
    data.get_dataset_info(_folder_config(tmp_path))
  assert '\n' not in str(info.value)


def test_image_folder_empty_missing_or_unset(tmp_path):
  (tmp_path / 'empty' / 'sub').mkdir(parents=True)
  (tmp_path / 'empty' / 'sub' / 'readme.txt').write_text('no images')
  with pytest.raises(ValueError, match=r'holds no image files.*\.png'):
    data.create_train_iterator(_folder_config(tmp_path / 'empty'))
  with pytest.raises(FileNotFoundError, match=r'config\.data\.image_folder'):
    data.get_dataset_info(_folder_config(tmp_path / 'missing'))
  config = _folder_config(tmp_path)
  config.data.image_folder = None
  with pytest.raises(ValueError, match=r'config\.data\.image_folder'):
    data.get_dataset_info(config)
  with pytest.raises(ValueError, match=r'config\.data\.num_channels'):
    data.get_dataset_info(_folder_config(tmp_path, num_channels=2))


def test_image_folder_sees_changed_files(tmp_path):
  # Nothing is cached in the process: every call reads the folder as it is.
  for i in range(3):
    h.write_png(str(tmp_path / f'{i}.png'), h.smooth_image(8, 8, seed=i))
  config = _folder_config(tmp_path, image_size=8)
  assert data.get_dataset_info(config).num_train_examples == 3
  h.write_png(str(tmp_path / '3.png'), h.smooth_image(8, 8, seed=3))
  assert data.get_dataset_info(config).num_train_examples == 4


def test_load_image_file_centre_crop(tmp_path):
  # At the shorter side's own size the resize is the identity, so the crop
  # is visible exactly: the middle of a wide and of a tall image.
  wide = np.random.default_rng(0).integers(0, 256, (20, 60, 3), np.uint8)
  h.write_png(str(tmp_path / 'wide.png'), wide)
  np.testing.assert_array_equal(
      data.load_image_file(str(tmp_path / 'wide.png'), 20, 3),
      wide[:, 20:40])
  tall = np.random.default_rng(1).integers(0, 256, (61, 20), np.uint8)
  h.write_png(str(tmp_path / 'tall.png'), tall)
  got = data.load_image_file(str(tmp_path / 'tall.png'), 20, 1)
  assert got.shape == (20, 20, 1)
  # (61 - 20) / 2 = 20.5 rows off: half-pixel boxes blend rows 20 and 21.
  np.testing.assert_allclose(got[..., 0], (tall[20:40].astype(float)
                                           + tall[21:41]) / 2, atol=1)


def test_load_image_file_downscales_with_antialiasing(tmp_path):
  board = (np.indices((64, 96)).sum(axis=0) % 2 * 255).astype(np.uint8)
  h.write_png(str(tmp_path / 'board.png'), board)
  small = data.load_image_file(str(tmp_path / 'board.png'), 16, 1)
  assert np.all(np.abs(small.astype(int) - 128) <= 2)


def test_load_image_file_channels(tmp_path):
  h.write_png(str(tmp_path / 'grey.png'), np.full((8, 8), 200, np.uint8))
  rgb = data.load_image_file(str(tmp_path / 'grey.png'), 8, 3)
  assert rgb.shape == (8, 8, 3) and np.all(rgb == 200)
  red = np.zeros((8, 8, 3), np.uint8)
  red[..., 0] = 255
  h.write_png(str(tmp_path / 'red.png'), red)
  grey = data.load_image_file(str(tmp_path / 'red.png'), 8, 1)
  # ITU-R 601-2 luma, as PIL's convert('L'): 255 * 299 / 1000.
  assert grey.shape == (8, 8, 1) and np.all(grey == 76)
  # 16-bit greyscale keeps its high byte instead of clipping to white.
  deep = np.full((8, 8), 40_000, np.uint16)
  Image.fromarray(deep).save(tmp_path / 'deep.png')
  assert np.all(
      data.load_image_file(str(tmp_path / 'deep.png'), 8, 1)
      == 40_000 >> 8)


def test_load_image_file_applies_exif_orientation(tmp_path):
  # 40 wide, 20 tall: left half white. Orientation 6 (rotate 90 degrees
  # clockwise to display) puts the white half on top.
  image = np.zeros((20, 40), np.uint8)
  image[:, :20] = 255
  exif = Image.Exif()
  exif[0x0112] = 6
  Image.fromarray(image).save(tmp_path / 'rotated.png', exif=exif)
  got = data.load_image_file(str(tmp_path / 'rotated.png'), 20, 1)
  assert np.all(got[:9] == 255) and np.all(got[11:] == 0)


def test_load_image_file_large_jpeg_matches_full_decode(tmp_path):
  # JPEGs are decoded at a reduced scale (draft); the result stays close to
  # decoding in full and then resizing.
  Image.fromarray(h.smooth_image(600, 800, seed=3)).save(
      tmp_path / 'big.jpg', quality=95)
  got = data.load_image_file(str(tmp_path / 'big.jpg'), 32, 3)
  with Image.open(tmp_path / 'big.jpg') as full:
    reference = np.asarray(full.convert('RGB').resize(
        (32, 32), Image.Resampling.BILINEAR, box=(100, 0, 700, 600)))
  assert np.abs(got.astype(int) - reference).max() <= 4


# --- NaN and Inf -------------------------------------------------------------


def test_npz_points_with_nan_name_file_array_and_index(tmp_path):
  points = np.random.default_rng(0).normal(size=(10, 2))
  points[3, 1] = np.nan
  points[7, 0] = np.inf  # Later: the first bad index is the one reported.
  path = tmp_path / 'pts.npz'
  np.savez(path, points)
  config = h.npz_config(path)
  config.model.arch = 'mlp'
  for call in (data.get_dataset_info, data.create_train_iterator,
               lambda c: data.create_eval_iterator(c, 'test', batch_size=4)):
    with pytest.raises(ValueError) as info:
      call(config)
    assert str(info.value) == (
        f"config.data.npz_path={path}: array 'arr_0' holds NaN at index"
        ' (3, 1); clean the data first')


@pytest.mark.parametrize('value, kind', [(np.inf, 'Inf'), (-np.inf, '-Inf'),
                                         (np.nan, 'NaN')])
def test_npz_float_images_with_inf_or_nan(tmp_path, value, kind):
  images = np.random.default_rng(1).uniform(-1, 1, (6, 32, 32, 3))
  images[4, 2, 5, 1] = value
  path = tmp_path / 'float.npz'
  np.savez(path, other=np.zeros(2), images=images.astype(np.float32))
  with pytest.raises(ValueError) as info:
    data.create_train_iterator(h.npz_config(path, npz_key='images'))
  message = str(info.value)
  assert '\n' not in message
  assert message == (
      f"config.data.npz_path={path}: array 'images' holds {kind} at index"
      ' (4, 2, 5, 1); clean the data first')


def test_image_folder_pixels_are_checked_after_decoding(tmp_path, monkeypatch):
  for i in range(3):
    h.write_png(str(tmp_path / f'{i}.png'), h.smooth_image(8, 8, seed=i))
  real = data.image_folder.load_image_file

  def decoder_giving_nan(path, image_size, num_channels):
    pixels = real(path, image_size, num_channels).astype(np.float32)
    if path.endswith('1.png'):
      pixels[2, 3, 0] = np.nan
    return pixels

  monkeypatch.setattr(data.image_folder, 'load_image_file',
                      decoder_giving_nan)
  # Not an unreadable file to skip: bad pixels are an error.
  with pytest.raises(ValueError) as info:
    data.get_dataset_info(_folder_config(tmp_path, image_size=8))
  assert str(info.value) == (
      f"config.data.image_folder={tmp_path}: file '1.png' holds NaN at index"
      ' (2, 3, 0); clean the data first')
