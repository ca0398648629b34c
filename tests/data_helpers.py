"""Helpers shared by the data tests (tests/data_*_test.py)."""

import itertools
import os

import jax
import numpy as np
from PIL import Image

from configs import default
from dual_mcmc_jax import data


def config(**data_overrides):
  """The default config with a small batch and `config.data` overrides."""
  cfg = default.get_config()
  cfg.training.batch_size = 100
  cfg.training.seed = 0
  for key, value in data_overrides.items():
    setattr(cfg.data, key, value)
  return cfg


def take(iterator, num_batches: int) -> list[np.ndarray]:
  return list(itertools.islice(iterator, num_batches))


def row_keys(batch: np.ndarray) -> list[bytes]:
  """Identifies examples by their bytes (random data, so unique)."""
  return [example.tobytes() for example in batch]


def assert_same_batches(expected, got):
  assert len(expected) == len(got)
  for a, b in zip(expected, got):
    np.testing.assert_array_equal(a, b)


def host_slices(cfg, monkeypatch, num_hosts, num_batches, start_step=0):
  """Each simulated process's first batches: slices[process][step]."""
  monkeypatch.setattr(jax, 'process_count', lambda: num_hosts)
  slices = []
  for process in range(num_hosts):
    monkeypatch.setattr(jax, 'process_index', lambda p=process: p)
    slices.append(take(
        data.create_train_iterator(cfg, start_step=start_step), num_batches))
  monkeypatch.undo()
  return slices


def check_host_slices(global_batches, slices):
  """Per step: equal, disjoint slices that concatenate to the global batch."""
  for step, global_batch in enumerate(global_batches):
    parts = [host[step] for host in slices]
    assert all(len(part) == len(global_batch) // len(slices) for part in parts)
    keys = [set(row_keys(part)) for part in parts]
    assert sum(len(k) for k in keys) == len(global_batch)  # No repeats.
    for i, a in enumerate(keys):
      for b in keys[i + 1:]:
        assert not a & b  # No example is read by two processes.
    np.testing.assert_array_equal(np.concatenate(parts), global_batch)


def npz_config(path, **overrides):
  cfg = config(dataset='npz', npz_path=str(path), **overrides)
  cfg.training.batch_size = 10
  return cfg


def write_png(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path)


def smooth_image(height, width, channels=3, seed=0):
  """uint8 [H, W, C] of low frequencies, so JPEG keeps it close."""
  rng = np.random.default_rng(seed)
  rows, cols = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width),
                           indexing='ij')
  planes = [127.5 + 120 * np.sin(rng.uniform(1, 4) * rows
                                 + rng.uniform(1, 4) * cols + rng.uniform(0, 6))
            for _ in range(channels)]
  return np.stack(planes, axis=-1).astype(np.uint8).squeeze()
