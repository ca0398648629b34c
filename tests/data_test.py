"""Tests of the grain pipeline (dual_mcmc_jax/data/pipeline.py).

The training stream's contract: every batch a pure function of (seed, step),
a fresh permutation per epoch with the remainder dropped, exact O(1) resume
(also after the process is killed), per-process slices that are disjoint and
make the global batch; ordered evaluation passes; device prefetch. CIFAR-10
comes from `tfds.testing.mock_data`; npz files and toy2d points stand in for
sources that need no TensorFlow. The sources' own tests are in
data_tfds_test.py, data_files_test.py and data_builtin_test.py.
"""

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from dual_mcmc_jax import data
from dual_mcmc_jax import sharding
from dual_mcmc_jax.data import common
from tests import data_helpers as h

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def mock_250():
  with tfds.testing.mock_data(num_examples=250):
    yield


def _images_npz(tmp_path, num=40, size=8, seed=3):
  images = np.random.default_rng(seed).integers(
      0, 256, size=(num, size, size, 3), dtype=np.uint8)
  path = tmp_path / 'images.npz'
  np.savez(path, images)
  return images, path


# --- the training stream ------------------------------------------------------


def test_cifar10_batches_shape_dtype_range(mock_250):
  config = h.config()
  info = data.get_dataset_info(config)
  assert info == data.DatasetInfo(num_train_examples=250, shape=(32, 32, 3))
  for batch in h.take(data.create_train_iterator(config), 3):
    assert batch.shape == (100, 32, 32, 3)
    assert batch.dtype == np.float32
    assert batch.min() >= -1.0 and batch.max() <= 1.0
    # uint8 0..255 maps onto the 256 levels -1 + k / 127.5.
    np.testing.assert_allclose((batch + 1.0) * 127.5, np.round(
        (batch + 1.0) * 127.5), atol=1e-3)


def test_cifar10_same_seed_same_batches(mock_250):
  config = h.config()
  first = h.take(data.create_train_iterator(config), 5)
  h.assert_same_batches(first, h.take(data.create_train_iterator(config), 5))
  config.training.seed = 1
  other = h.take(data.create_train_iterator(config), 5)
  assert not all(np.array_equal(a, b) for a, b in zip(first, other))


def test_cifar10_resume_matches_skipping(mock_250):
  # 250 examples, batch 100: 2 steps per epoch, so these start steps resume
  # inside an epoch and exactly on an epoch boundary.
  config = h.config()
  reference = h.take(data.create_train_iterator(config), 7)
  for start_step in (1, 2, 3, 5):
    resumed = h.take(
        data.create_train_iterator(config, start_step=start_step),
        7 - start_step)
    h.assert_same_batches(reference[start_step:], resumed)


@pytest.mark.parametrize('random_flip', [False, True])
def test_resume_at_any_step_is_the_tail_of_the_stream(tmp_path, random_flip):
  # 40 examples, global batch 10 (4 steps per epoch): the uninterrupted
  # stream over 6 epochs against a restart at every step of it.
  _, path = _images_npz(tmp_path)
  config = h.npz_config(path, image_size=8, random_flip=random_flip)
  iterator = data.create_train_iterator(config)
  reference = h.take(iterator, 24)
  assert iterator.get_state() == {'next_index': 24}
  for start_step in range(24):
    resumed = data.create_train_iterator(config, start_step=start_step)
    # The iterator's own state is the step count, as in the checkpoint.
    assert resumed.get_state() == {'next_index': start_step}
    h.assert_same_batches(reference[start_step:start_step + 3],
                          h.take(resumed, min(3, 24 - start_step)))


def test_resume_far_ahead_gathers_one_batch(tmp_path, monkeypatch):
  # O(1): resuming at step 10^9 gathers only what it yields (plus the read
  # thread's two batches ahead), and the batch is the one step 10^9 + 1 sees
  # on the reference stream addressed directly.
  _, path = _images_npz(tmp_path)
  config = h.npz_config(path, image_size=8, random_flip=True)
  calls = []
  real = common.to_float
  monkeypatch.setattr(common, 'to_float',
                      lambda batch: calls.append(1) or real(batch))
  start = time.perf_counter()
  batch = next(data.create_train_iterator(config, start_step=10**9))
  assert time.perf_counter() - start < 5
  assert len(calls) <= 3
  images, _ = _images_npz(tmp_path)
  direct = data.train_dataset(images, seed=0, global_batch=10,
                              random_flip=True)[10**9]
  np.testing.assert_array_equal(batch, direct)


def test_epochs_are_fresh_permutations_without_the_remainder(tmp_path):
  # 43 examples, batch 10: 4 steps per epoch, 3 examples left out of each.
  images, path = _images_npz(tmp_path, num=43)
  config = h.npz_config(path, image_size=8)
  batches = h.take(data.create_train_iterator(config), 4 * 6)
  all_keys = set(h.row_keys(images.astype(np.float32) / 127.5 - 1.0))
  epochs = [h.row_keys(np.concatenate(batches[i:i + 4]))
            for i in range(0, 24, 4)]
  for keys in epochs:
    assert len(set(keys)) == 40  # No example twice within an epoch.
    assert set(keys) <= all_keys
  # Every epoch has an order of its own, and the dropped examples change.
  assert len({tuple(keys) for keys in epochs}) == 6
  assert len({frozenset(all_keys - set(keys)) for keys in epochs}) > 1


def test_cifar10_epochs_are_permutations(mock_250):
  config = h.config()
  batches = h.take(data.create_train_iterator(config), 6)
  epochs = [
      h.row_keys(np.concatenate(batches[i:i + 2])) for i in range(0, 6, 2)
  ]
  for keys in epochs:
    # 200 distinct examples per epoch: no repeats, remainder of 50 dropped.
    assert len(set(keys)) == 200
  assert epochs[0] != epochs[1] != epochs[2]


def test_flips_are_a_function_of_seed_and_step(tmp_path):
  images, path = _images_npz(tmp_path)
  config = h.npz_config(path, image_size=8, random_flip=True)
  flipped = h.take(data.create_train_iterator(config), 8)
  config.data.random_flip = False
  plain = h.take(data.create_train_iterator(config), 8)
  num_mirrored = 0
  for with_flip, without in zip(flipped, plain):
    same = np.all(with_flip == without, axis=(1, 2, 3))
    mirrored = np.all(with_flip == without[:, :, ::-1], axis=(1, 2, 3))
    assert np.all(same | mirrored)  # Flips never change the order.
    num_mirrored += int(np.sum(mirrored & ~same))
  assert 20 < num_mirrored < 60
  config.data.random_flip = True
  config.training.seed = 1
  other = h.take(data.create_train_iterator(config), 8)
  assert not all(np.array_equal(a, b) for a, b in zip(flipped, other))


def test_hosts_take_their_slice_of_the_global_batch(mock_250, monkeypatch):
  config = h.config()
  global_batches = h.take(data.create_train_iterator(config), 3)
  h.check_host_slices(global_batches,
                      h.host_slices(config, monkeypatch, 2, 3))


def test_hosts_slice_user_data_with_flips(tmp_path, monkeypatch):
  # npz, with flips and epoch boundaries: 40 images, global batch 10.
  _, path = _images_npz(tmp_path)
  config = h.npz_config(path, image_size=8, random_flip=True)
  global_batches = h.take(data.create_train_iterator(config), 10)
  for num_hosts in (2, 5):
    h.check_host_slices(
        global_batches, h.host_slices(config, monkeypatch, num_hosts, 10))
    # Resumed hosts still split the same global batches.
    h.check_host_slices(
        global_batches[6:],
        h.host_slices(config, monkeypatch, num_hosts, 4, start_step=6))


def test_host_slices_of_the_grain_dataset_cover_the_global_batch():
  # The same property without monkeypatching, on the dataset itself.
  points = np.random.default_rng(0).normal(size=(30, 2)).astype(np.float32)
  whole = data.train_dataset(points, seed=5, global_batch=12)
  parts = [data.train_dataset(points, seed=5, global_batch=12,
                              process_index=p, process_count=3)
           for p in range(3)]
  for step in (0, 1, 2, 7, 1000):
    h.check_host_slices([whole[step]], [[part[step]] for part in parts])


def test_batch_size_must_divide_over_hosts(mock_250, monkeypatch):
  monkeypatch.setattr(jax, 'process_count', lambda: 3)
  with pytest.raises(ValueError, match=r'config\.training\.batch_size'):
    data.create_train_iterator(h.config())


def test_batch_larger_than_dataset(mock_250):
  config = h.config()
  config.training.batch_size = 300
  with pytest.raises(ValueError, match=r'config\.training\.batch_size'):
    data.create_train_iterator(config)


def test_bad_seed_and_start_step(tmp_path):
  _, path = _images_npz(tmp_path)
  config = h.npz_config(path, image_size=8)
  with pytest.raises(ValueError, match='start_step'):
    data.create_train_iterator(config, start_step=-1)
  config.training.seed = -1
  with pytest.raises(ValueError, match=r'config\.training\.seed'):
    data.create_train_iterator(config)


_KILLED_RUN = """
import hashlib, sys
from tests import data_helpers as h
from dual_mcmc_jax import data
config = h.npz_config(sys.argv[1], image_size=8, random_flip=True)
with open(sys.argv[2], 'w') as log:
  for step, batch in enumerate(data.create_train_iterator(config), 1):
    log.write(f'{step} {hashlib.sha256(batch.tobytes()).hexdigest()}\\n')
    log.flush()
"""


def test_resume_after_kill_9_is_exact(tmp_path):
  # A run that records (step, batch) is killed with SIGKILL mid-stream; the
  # last step it logged is all a checkpoint would hold, and resuming from it
  # continues the uninterrupted stream.
  _, path = _images_npz(tmp_path)
  log = tmp_path / 'steps.log'
  run = subprocess.Popen([sys.executable, '-c', _KILLED_RUN, str(path),
                          str(log)], cwd=_REPO_ROOT)
  deadline = time.monotonic() + 120
  while time.monotonic() < deadline and (
      not log.exists() or len(log.read_text().splitlines()) < 50):
    time.sleep(0.05)
  run.send_signal(signal.SIGKILL)
  run.wait()
  lines = [line.split() for line in log.read_text().splitlines()]
  lines = [line for line in lines if len(line) == 2]  # A cut last line.
  assert len(lines) >= 50
  logged = {int(step): digest for step, digest in lines
            if len(digest) == 64}  # A cut last line.
  last = max(logged)
  config = h.npz_config(path, image_size=8, random_flip=True)
  resumed = h.take(data.create_train_iterator(config, start_step=last), 5)
  reference = h.take(data.create_train_iterator(config), last + 5)
  for step, digest in logged.items():
    assert hashlib.sha256(reference[step - 1].tobytes()).hexdigest() == digest
  h.assert_same_batches(reference[last:], resumed)


# --- evaluation passes --------------------------------------------------------


def test_cifar10_eval_covers_split_once_in_order(mock_250):
  config = h.config()
  batches = list(data.create_eval_iterator(config, 'test', batch_size=100))
  assert [len(b) for b in batches] == [100, 100, 50]
  evaluated = np.concatenate(batches)
  assert evaluated.dtype == np.float32
  assert evaluated.min() >= -1.0 and evaluated.max() <= 1.0
  assert len(set(h.row_keys(evaluated))) == 250
  # In order: a second pass is identical.
  again = np.concatenate(
      list(data.create_eval_iterator(config, 'test', batch_size=64)))
  np.testing.assert_array_equal(evaluated, again)
  # The mocked train and test splits hold the same examples, so every
  # training example must be one of the evaluated ones.
  train = next(data.create_train_iterator(config))
  assert set(h.row_keys(train)) <= set(h.row_keys(evaluated))


def test_eval_of_an_array_is_not_split_between_hosts(tmp_path, monkeypatch):
  images, path = _images_npz(tmp_path, num=13)
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  monkeypatch.setattr(jax, 'process_index', lambda: 1)
  evaluated = list(data.create_eval_iterator(
      h.npz_config(path, image_size=8), 'test', batch_size=5))
  assert [len(b) for b in evaluated] == [5, 5, 3]
  np.testing.assert_allclose(np.concatenate(evaluated), images / 127.5 - 1.0,
                             atol=1e-6)


@pytest.mark.parametrize(
    'call',
    [
        data.get_dataset_info,
        data.create_train_iterator,
        lambda c: data.create_eval_iterator(c, 'test', batch_size=8),
    ],
)
def test_unknown_dataset(call):
  with pytest.raises(ValueError, match=r'config\.data\.dataset') as info:
    call(h.config(dataset='imagenet'))
  message = str(info.value)
  assert '\n' not in message
  for name in data.DATASETS:
    assert name in message


def test_one_table_of_sources():
  assert data.DATASETS == (
      'cifar10', 'celeba64', 'lsun_church64', 'celebahq256', 'svhn',
      'cifar100', 'celeba32', 'digits', 'toy2d', 'npz', 'image_folder')
  assert set(data.SOURCES) == set(data.DATASETS)
  assert set(data.TFDS_DATASETS) < set(data.DATASETS)
  with pytest.raises(ValueError, match='positive'):
    data.create_eval_iterator(h.config(), 'test', batch_size=0)


# --- no process-wide cache: a Store is the caller's --------------------------


def _folder(tmp_path, count, seed=0):
  for i in range(count):
    h.write_png(str(tmp_path / f'{i}.png'),
                h.smooth_image(8, 8, seed=seed + i))
  config = h.config(dataset='image_folder', image_folder=str(tmp_path),
                    image_size=8)
  config.training.batch_size = 2
  return config


def test_changed_folder_is_read_afresh(tmp_path):
  config = _folder(tmp_path, 3)
  assert data.get_dataset_info(config).num_train_examples == 3
  before = np.concatenate(list(data.create_eval_iterator(config, 'test',
                                                         batch_size=8)))
  h.write_png(str(tmp_path / '3.png'), h.smooth_image(8, 8, seed=3))
  assert data.get_dataset_info(config).num_train_examples == 4
  # Same file names, new pixels: nothing keyed on the listing either.
  _folder(tmp_path, 4, seed=10)
  after = np.concatenate(list(data.create_eval_iterator(config, 'test',
                                                        batch_size=8)))
  assert after.shape == (4, 8, 8, 3)
  assert not np.array_equal(before, after[:3])
  assert set(h.row_keys(next(data.create_train_iterator(config)))) <= set(
      h.row_keys(after))


def test_store_shares_one_decode_between_calls(tmp_path, monkeypatch):
  config = _folder(tmp_path, 4)
  decoded = []
  real = data.image_folder.load_image_file
  monkeypatch.setattr(data.image_folder, 'load_image_file',
                      lambda *a: decoded.append(a[0]) or real(*a))
  store = data.Store()
  assert data.get_dataset_info(config, store=store).num_train_examples == 4
  next(data.create_train_iterator(config, store=store))
  list(data.create_eval_iterator(config, 'test', batch_size=3, store=store))
  assert len(decoded) == 4  # The folder once, for all three calls.
  # Without the store every call decodes again.
  data.get_dataset_info(config)
  assert len(decoded) == 8
  # A config that shapes the data differently is not served the old array.
  config.data.image_size = 4
  assert data.get_dataset_info(config, store=store).shape == (4, 4, 3)
  store.clear()


# --- prefetch_to_device ------------------------------------------------------


def _prefetch_threads():
  return [t for t in threading.enumerate()
          if t.name.startswith('grain-thread-prefetch')]


def test_prefetch_to_device_preserves_order_and_values():
  rng = np.random.default_rng(0)
  batches = [rng.normal(size=(4, 3)).astype(np.float32) for _ in range(20)]
  mesh = sharding.data_mesh()
  prefetched = list(data.prefetch_to_device(
      iter(batches), size=3,
      sharding_fn=lambda b: sharding.shard_batch(b, mesh)))
  assert len(prefetched) == 20
  for host, device in zip(batches, prefetched):
    assert isinstance(device, jax.Array)
    assert device.sharding == sharding.batch_sharding(mesh)
    np.testing.assert_array_equal(np.asarray(device), host)


@pytest.mark.parametrize('size', [2, 0])
def test_prefetch_to_device_of_the_train_iterator_resumes_like_it(size):
  config = h.config(dataset='toy2d', toy2d_num_points=1000)
  direct = h.take(data.create_train_iterator(config, start_step=3), 12)
  before = len(_prefetch_threads())
  prefetcher = data.prefetch_to_device(
      data.create_train_iterator(config, start_step=3), size=size,
      sharding_fn=lambda b: (b, jax.device_put(b)))
  # Size 0 is prefetching off: no thread, the same stream.
  assert len(_prefetch_threads()) == before + (size > 0)
  for a, (host, device) in zip(direct, h.take(prefetcher, 12)):
    np.testing.assert_array_equal(a, host)
    np.testing.assert_array_equal(a, np.asarray(device))
  # The state after the last batch returned is the train stream's step.
  assert prefetcher.get_state() == {'next_index': 15}
  prefetcher.close()
  assert len(_prefetch_threads()) == before


def test_prefetch_to_device_raises_errors_in_place():
  def failing():
    yield 1
    yield 2
    raise RuntimeError('source failed')

  prefetcher = data.prefetch_to_device(failing(), size=4,
                                       sharding_fn=lambda x: x)
  assert [next(prefetcher), next(prefetcher)] == [1, 2]
  with pytest.raises(RuntimeError, match='source failed'):
    next(prefetcher)
  with pytest.raises(StopIteration):
    next(prefetcher)
  with pytest.raises(ValueError, match='size'):
    data.prefetch_to_device(iter([]), size=-1)


def test_prefetch_to_device_is_bounded_and_stops():
  pulled = []

  def counting():
    for i in range(10**9):
      pulled.append(i)
      yield i

  before = len(_prefetch_threads())
  prefetcher = data.prefetch_to_device(counting(), size=2,
                                       sharding_fn=lambda x: x)
  deadline = time.monotonic() + 10
  while len(pulled) < 3 and time.monotonic() < deadline:
    time.sleep(0.01)
  time.sleep(0.2)
  # Started before the first next(); two batches queued and one waiting for
  # room: never the whole stream.
  assert len(pulled) == 3
  assert [next(prefetcher) for _ in range(5)] == list(range(5))
  prefetcher.close()
  assert len(_prefetch_threads()) == before
  with pytest.raises(StopIteration):
    next(prefetcher)
  # Dropping an unclosed prefetcher stops its thread too.
  prefetcher = data.prefetch_to_device(counting(), size=2)
  next(prefetcher)
  del prefetcher
  assert len(_prefetch_threads()) == before


# --- environment --------------------------------------------------------------


_WITHOUT_TENSORFLOW = """
import sys
sys.modules['tensorflow'] = None
sys.modules['tensorflow_datasets'] = None
from configs import default
from dual_mcmc_jax import data
config = default.get_config()
config.data.dataset = 'digits'
config.data.image_size = 16
config.data.num_channels = 1
batch = next(data.create_train_iterator(config))
assert batch.shape == (100, 16, 16, 1)
config.data.dataset = 'toy2d'
assert next(data.create_train_iterator(config)).shape == (100, 2)
import os, tempfile
import numpy as np
from PIL import Image
folder = tempfile.mkdtemp()
png = os.path.join(folder, 'a.png')
Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(png)
config.data.dataset = 'image_folder'
config.data.image_folder = folder
config.training.batch_size = 1
batch = next(data.create_train_iterator(config))
assert batch.shape == (1, 16, 16, 1)
np.savez(os.path.join(folder, 'a.npz'), np.zeros((2, 16, 16, 1), np.uint8))
config.data.dataset = 'npz'
config.data.npz_path = os.path.join(folder, 'a.npz')
batch = next(data.create_train_iterator(config))
assert batch.shape == (1, 16, 16, 1)
config.data.dataset = 'cifar10'
try:
  data.create_train_iterator(config)
except ImportError as e:
  assert 'tensorflow' in str(e)
else:
  raise AssertionError('cifar10 without TensorFlow should fail')
"""


def test_works_without_tensorflow():
  # Imports that fail for tensorflow and tensorflow_datasets, as on a machine
  # without them: the digits, toy2d, npz and image_folder sources must not
  # need them.
  result = subprocess.run(
      [sys.executable, '-c', _WITHOUT_TENSORFLOW], cwd=_REPO_ROOT,
      capture_output=True, text=True, check=False,
  )
  assert result.returncode == 0, result.stderr
