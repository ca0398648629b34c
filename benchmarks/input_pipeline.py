"""Throughput of the input pipeline alone, against what the train step eats.

  python benchmarks/input_pipeline.py --config=configs/cifar10.py --mock \
      --batches=200
  python benchmarks/input_pipeline.py --config=configs/digits.py --batches=500
  python benchmarks/input_pipeline.py --config=configs/toy2d.py
  python benchmarks/input_pipeline.py --config=configs/celeba64.py --mock
  python benchmarks/input_pipeline.py --config=configs/cifar10.py \
      --config.data.dataset=image_folder --config.data.image_folder=DIR

Stages, each timed on its own:

* load: `get_dataset_info` and `create_train_iterator` (sharing one
  `data.Store`), which decode and preprocess the training split into memory
  (with --mock, tfds.testing.mock_data's random images: no decoding, so this
  is the preprocessing alone).
* host batches: `next()` on that grain iterator (shuffled indices, gather,
  flip, uint8 -> float32), the per-step cost that remains once the split is
  loaded.
* device batches: the same stream through `prefetch_to_device` (grain's
  prefetch thread) and `sharding.shard_batch` onto every local device
  (--device_prefetch > 0).
* eval pass: one `create_eval_iterator` pass over --eval_split, if given.

The step's demand is batch_size / --step_seconds images per second; the
default 1.594 s is the paper's CIFAR-10 step (batch 100, A100), about 63
images/s. Prints a table, then one JSON line with images_per_sec,
batches_per_sec, batch_size and dataset (host batches), the other stages'
rates and the headroom (images_per_sec / demand).
"""

import contextlib
import itertools
import json
import os
import sys
import time
from typing import Any

from absl import flags
import jax
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from dual_mcmc_jax import runtime  # First: Ctrl-C is one line from here.
runtime.quiet_ctrl_c()
from dual_mcmc_jax import data
from dual_mcmc_jax import settings as settings_lib
from dual_mcmc_jax import sharding

FLAGS = flags.FLAGS
flags.DEFINE_integer('batches', 200, 'Batches timed per stage.')
flags.DEFINE_integer('warmup', 5, 'Batches pulled before timing a stage.')
flags.DEFINE_bool(
    'mock', False, 'Replace TFDS datasets by tfds.testing.mock_data.'
)
flags.DEFINE_integer(
    'mock_examples', 5000, 'Examples in each mocked TFDS split.'
)
flags.DEFINE_float(
    'step_seconds', 1.594,
    'Seconds per train step to compare with (default: the paper\'s CIFAR-10'
    ' step, batch 100 on an A100).',
)
flags.DEFINE_integer(
    'device_prefetch', -1,
    'Queue size of the device stage; -1: config.data.prefetch_to_device;'
    ' 0: skip the stage.',
)
flags.DEFINE_string(
    'eval_split', '', 'Also time one eval pass over this split (e.g. test).'
)
config_flags.DEFINE_config_file('config', None, 'Experiment config.')
flags.mark_flags_as_required(['config'])


def _time_batches(iterator, num_batches: int, warmup: int) -> tuple[float, int]:
  """Seconds for `num_batches` batches after `warmup`, and images seen."""
  for _ in itertools.islice(iterator, warmup):
    pass
  images = 0
  start = time.perf_counter()
  for batch in itertools.islice(iterator, num_batches):
    images += batch.shape[0]
  if images and hasattr(batch, 'block_until_ready'):
    batch.block_until_ready()  # Device arrays: wait for the last transfer.
  return time.perf_counter() - start, images


def _row(stage: str, seconds: float, images: int, batches: int) -> dict:
  return {
      'stage': stage,
      'seconds': seconds,
      'images': images,
      'images_per_sec': images / max(seconds, 1e-9),
      'batches_per_sec': batches / max(seconds, 1e-9),
  }


def _device_stage(config, store) -> dict[str, Any] | None:
  """Batches through `data.prefetch_to_device` onto every local device."""
  queue_size = FLAGS.device_prefetch
  if queue_size < 0:
    queue_size = int(config.data.prefetch_to_device)
  if queue_size <= 0:
    return None
  mesh = sharding.data_mesh()
  device_iterator = data.prefetch_to_device(
      data.create_train_iterator(config, store=store),
      size=queue_size,
      sharding_fn=lambda batch: sharding.shard_batch(batch, mesh),
  )
  seconds, images = _time_batches(device_iterator, FLAGS.batches,
                                  FLAGS.warmup)
  device_iterator.close()
  return _row(
      f'device batches ({jax.local_device_count()} x'
      f' {jax.devices()[0].platform}, queue {queue_size})',
      seconds, images, FLAGS.batches,
  )


def _eval_stage(config, store) -> dict[str, Any]:
  """One ordered pass over `--eval_split`."""
  start = time.perf_counter()
  images = num_batches = 0
  for batch in data.create_eval_iterator(
      config, FLAGS.eval_split, batch_size=int(config.training.batch_size),
      store=store):
    images += batch.shape[0]
    num_batches += 1
  return _row(f'eval pass ({FLAGS.eval_split})', time.perf_counter() - start,
              images, num_batches)


def _measure(config) -> list[dict[str, Any]]:
  """Rows: load, host batches, device batches, eval pass (as asked)."""
  rows = []
  start = time.perf_counter()
  store = data.Store()  # The split is loaded once for every stage.
  num_examples = data.get_dataset_info(config, store=store).num_train_examples
  iterator = data.create_train_iterator(config, store=store)
  rows.append(
      _row('load (into memory)', time.perf_counter() - start, num_examples, 0))
  seconds, images = _time_batches(iterator, FLAGS.batches, FLAGS.warmup)
  rows.append(_row('host batches', seconds, images, FLAGS.batches))
  device = _device_stage(config, store)
  if device is not None:
    rows.append(device)
  if FLAGS.eval_split:
    rows.append(_eval_stage(config, store))
  return rows


def _report(config, rows: list[dict[str, Any]]) -> None:
  """Prints the table and, last, one JSON line."""
  batch_size = int(config.training.batch_size)
  host = rows[1]
  device = next((r for r in rows if r['stage'].startswith('device')), None)
  demand = batch_size / FLAGS.step_seconds
  dataset = config.data.dataset + (' (mock)' if FLAGS.mock else '')
  print(f'\ninput pipeline: {dataset}, per-host batch'
        f' {batch_size // jax.process_count()}')
  print(f'{"stage":<40} {"seconds":>9} {"images":>9} {"images/s":>11}'
        f' {"batches/s":>10}')
  for row in rows:
    print(f'{row["stage"]:<40} {row["seconds"]:>9.3f} {row["images"]:>9d}'
          f' {row["images_per_sec"]:>11.0f} {row["batches_per_sec"]:>10.1f}')
  print(f'{"train step demand":<40} {FLAGS.step_seconds:>9.3f}'
        f' {batch_size:>9d} {demand:>11.1f} {1 / FLAGS.step_seconds:>10.3f}')
  print(json.dumps({
      'dataset': dataset,
      'batch_size': batch_size,
      'batches': FLAGS.batches,
      'images_per_sec': round(host['images_per_sec'], 1),
      'batches_per_sec': round(host['batches_per_sec'], 2),
      'load_seconds': round(rows[0]['seconds'], 3),
      'load_images_per_sec': round(rows[0]['images_per_sec'], 1),
      'device_images_per_sec': (
          round(device['images_per_sec'], 1) if device else None),
      'step_seconds': FLAGS.step_seconds,
      'step_images_per_sec': round(demand, 1),
      'headroom': round(host['images_per_sec'] / demand, 1),
  }))


def main(_):
  config = settings_lib.from_config(FLAGS.config)
  mock = contextlib.nullcontext()
  if FLAGS.mock:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    mock = tfds.testing.mock_data(num_examples=FLAGS.mock_examples)
  if config.data.dataset in data.TFDS_DATASETS:
    # Imported before the clock starts: the import is no part of loading.
    import tensorflow  # pylint: disable=g-import-not-at-top,unused-import,import-outside-toplevel  # noqa: F401
  with mock:
    rows = _measure(config)
  _report(config, rows)


if __name__ == '__main__':
  runtime.run_main(main)
