"""Evaluation and sampling of a trained workdir (`main.py --mode=eval|sample`).

`evaluate(config, workdir)` loads the latest checkpoint and runs the
evaluators named in `config.eval.evaluators` (see `evaluators/`). Every
number goes to TensorBoard (the workdir's clu writer, tags
`<evaluator>/<name>`) and to `<workdir>/eval_<step>.json`; tables (Markdown)
and pictures (PNG) go to `<workdir>/eval_<step>/` and to TensorBoard as text
and images. An evaluator that cannot run here (FID without the Inception
weights, an OOD dataset that is not prepared) is skipped with a warning and
its reason is recorded in the JSON (`"skipped"`) and repeated in the final
log line; with `config.eval.strict=True` it is an error instead. The JSON is
rewritten after each evaluator and merged with an existing file of the same
step, so evaluators can be run one at a time.

`sample(config, workdir)` writes `config.eval.num_samples_to_write`
generator and EBM-revised samples (evaluation sampler) to
`<workdir>/samples_<step>.npz` (uint8 images, or float points for 2-D data)
and PNG grids `<workdir>/samples_<step>_<kind>.png`.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

from absl import logging
from clu import metric_writers
import jax
import ml_collections
import numpy as np

from dual_mcmc_jax import checkpointing
from dual_mcmc_jax import evaluators
from dual_mcmc_jax import settings as settings_lib
from dual_mcmc_jax import sharding
from dual_mcmc_jax import visualize
from dual_mcmc_jax.evaluators import common

EvaluatorUnavailable = common.EvaluatorUnavailable


def evaluator_names(config: settings_lib.Settings) -> list[str]:
  """config.eval.evaluators as a checked list."""
  names = common.parse_list(config.eval.evaluators)
  if not names:
    raise ValueError('config.eval.evaluators is empty; allowed: '
                     f'{", ".join(evaluators.NAMES)}')
  for name in names:
    evaluators.get_evaluator_class(name)  # Raises on unknown names.
  return names


def _write_text(path: str, text: str) -> None:
  with open(path, 'w') as f:
    f.write(text)


def _write_json(path: str, data: dict[str, Any]) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(data, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


class _Recorder:
  """Routes evaluator outputs to the writer, the JSON and files."""

  def __init__(self, workdir: str, step: int, strict: bool):
    self.step = step
    self.strict = strict
    self.is_writer = jax.process_index() == 0
    self.writer = metric_writers.create_default_writer(
        workdir, just_logging=not self.is_writer)
    self.json_path = os.path.join(workdir, f'eval_{step:06d}.json')
    self.files_dir = os.path.join(workdir, f'eval_{step:06d}')
    self.data: dict[str, Any] = {'step': step, 'results': {}, 'skipped': {},
                                 'files': {}}
    self.skipped_now: dict[str, str] = {}  # This run's skips, for the log.
    if os.path.exists(self.json_path):
      with open(self.json_path) as f:
        old = json.load(f)
      for k in ('results', 'skipped', 'files'):
        self.data[k].update(old.get(k, {}))

  def start(self, name: str) -> None:
    self.data['results'][name] = {}
    for group in ('skipped', 'files'):
      for k in [k for k in self.data[group]
                if k == name or k.startswith(name + '/')]:
        del self.data[group][k]

  def skip(self, tag: str, reason: str) -> None:
    if self.strict:
      raise EvaluatorUnavailable(f'{tag}: {reason}')
    logging.warning('Skipping %s: %s', tag, reason)
    self.data['skipped'][tag] = reason
    self.skipped_now[tag] = reason
    self.writer.write_texts(self.step, {f'{tag}/skipped': reason})

  def _save(self, tag: str, filename: str, write) -> None:
    if not self.is_writer:
      return
    os.makedirs(self.files_dir, exist_ok=True)
    path = os.path.join(self.files_dir, filename)
    write(path)
    self.data['files'][tag] = path

  def record(self, name: str, key: str, value: Any) -> None:
    tag = f'{name}/{key}'
    results = self.data['results'][name]
    if isinstance(value, common.Skipped):
      results[key] = {'skipped': value.reason}
      self.skip(tag, value.reason)
    elif isinstance(value, str):
      results[key] = value
      self.writer.write_texts(self.step, {tag: value})
      self._save(tag, f'{tag.replace("/", "_")}.md',
                 lambda p: _write_text(p, value))
      logging.info('%s:\n%s', tag, value)
    elif isinstance(value, np.ndarray) and value.ndim == 3:
      self.writer.write_images(self.step, {tag: value[None]})
      self._save(tag, f'{tag.replace("/", "_")}.png',
                 lambda p: visualize.save_png(p, value))
    else:
      value = float(value) if not isinstance(value, int) else value
      results[key] = value
      self.writer.write_scalars(self.step, {tag: value})
      logging.info('%s = %s', tag, value)

  def flush(self) -> None:
    self.writer.flush()
    if self.is_writer:
      _write_json(self.json_path, self.data)


def evaluate(config: ml_collections.ConfigDict | settings_lib.Settings,
             workdir: str) -> dict[str, Any]:
  """Runs the configured evaluators on the latest checkpoint of `workdir`.

  Args:
    config: the configuration the workdir was trained with (plus any eval
      overrides), a ConfigDict or its `Settings`.
    workdir: a training workdir with checkpoints.

  Returns:
    The contents of `<workdir>/eval_<step>.json`: {'step', 'results':
    {evaluator: {name: value}}, 'skipped': {tag: reason}, 'files': {tag:
    path}}.

  Raises:
    EvaluatorUnavailable: something could not run and config.eval.strict.
  """
  config = settings_lib.from_config(config)
  names = evaluator_names(config)
  workdir = os.path.abspath(workdir)
  models, state = checkpointing.load_state(config, workdir)
  step = int(jax.device_get(state.step))
  mesh = sharding.data_mesh()
  strict = config.eval.strict
  recorder = _Recorder(workdir, step, strict)
  logging.info('Evaluating step %d of %s: %s', step, workdir, ', '.join(names))
  for name in names:
    start = time.time()
    recorder.start(name)
    try:
      evaluator = evaluators.get_evaluator_class(name)(config, workdir, models,
                                                       mesh)
      for key, value in evaluator.run(state):
        recorder.record(name, key, value)
    except EvaluatorUnavailable as e:
      if strict:
        recorder.flush()
        message = str(e) if str(e).startswith(name + '/') else f'{name}: {e}'
        raise EvaluatorUnavailable(
            f'{message} (config.eval.strict=True)') from e
      recorder.skip(name, str(e))
    recorder.data['results'][name]['seconds'] = round(time.time() - start, 2)
    recorder.flush()
    logging.info('Evaluator %s finished in %.1f s', name, time.time() - start)
  recorder.writer.close()
  skipped = recorder.skipped_now
  note = ('; skipped: ' + '; '.join(f'{k} ({v})' for k, v in skipped.items())
          if skipped else '')
  logging.info('Evaluation of step %d written to %s%s', step,
               recorder.json_path, note)
  return recorder.data


def sample(config: ml_collections.ConfigDict | settings_lib.Settings,
           workdir: str, num_samples: int | None = None) -> str:
  """Writes generator and EBM-revised samples of the latest checkpoint.

  Args:
    config: the workdir's configuration.
    workdir: a training workdir with checkpoints.
    num_samples: how many (default `config.eval.num_samples_to_write`).

  Returns:
    The path of the .npz (arrays 'generator' and 'ebm_revised').
  """
  config = settings_lib.from_config(config)
  workdir = os.path.abspath(workdir)
  n = int(num_samples or config.eval.num_samples_to_write)
  if n <= 0:
    raise ValueError(f'number of samples must be > 0; got {n}')
  models, state = checkpointing.load_state(config, workdir)
  step = int(jax.device_get(state.step))
  mesh = sharding.data_mesh()
  batch_size = common.eval_batch_size(config)
  sampler = common.make_sampler(config, models, mesh, batch_size)
  state = sharding.replicate(state, mesh)
  key = jax.random.key(config.eval.seed)
  outs: dict[str, list[np.ndarray]] = {'generator': [], 'ebm_revised': []}
  for r in range(math.ceil(n / batch_size)):
    x0, x1 = sampler(state, jax.random.fold_in(key, r))
    outs['generator'].append(common.to_host(x0))
    outs['ebm_revised'].append(common.to_host(x1))
    logging.info('Sampled %d / %d', min((r + 1) * batch_size, n), n)
  arrays = {k: np.concatenate(v)[:n] for k, v in outs.items()}
  is_image = len(models.data_shape) == 3
  path = os.path.join(workdir, f'samples_{step:06d}.npz')
  if jax.process_index() == 0:
    np.savez(path, **{k: common.to_uint8(v) if is_image else v
                      for k, v in arrays.items()})
    n_grid = min(n, 100)
    for k, v in arrays.items():
      grid = (visualize.image_grid(v[:n_grid]) if is_image else
              visualize.scatter_image({k: v}))
      visualize.save_png(os.path.join(workdir, f'samples_{step:06d}_{k}.png'),
                         grid)
  logging.info('Wrote %d samples of step %d to %s (+ PNG grids)', n, step,
               path)
  return path
