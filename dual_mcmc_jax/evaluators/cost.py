"""Computational cost: parameter counts and seconds per iteration (Table 4).

Counts the parameters of the three networks of the evaluated state and
times the config's jitted training iteration (both x-chains, the z-chain and
the three Adam updates, as `train.py` compiles it: data parallel over all
devices, the state donated) on synthetic batches of
`config.training.batch_size`, so no dataset or TensorFlow is needed (the
dataset's size, when it can be read, sets the learning-rate schedule as in
training). The
step runs `config.eval.cost_warmup_steps` times first (the first call
compiles), then `config.eval.cost_steps` timed iterations; the state is a
fresh one from the config's seed, so the evaluated state is left untouched.
The paper's numbers are on one A100 40GB: 0.201 s (simple nets) and 1.594 s
(residual nets, CIFAR-10) per iteration.
"""

from __future__ import annotations

import time
from typing import Any, Iterator

from clu import parameter_overview
import jax

from dual_mcmc_jax import experiment
from dual_mcmc_jax import data
from dual_mcmc_jax import networks
from dual_mcmc_jax import settings as settings_lib
from dual_mcmc_jax import train_state as ts


def _steps_per_epoch(config: settings_lib.Settings, batch_size: int) -> int:
  """Training's learning-rate schedule length, or 1 without the dataset.

  The schedule does not change the cost of a step; matching training's
  makes the compiled step identical, so a persistent compilation cache can
  serve it.
  """
  try:
    info = data.get_dataset_info(config)
  except (FileNotFoundError, ImportError, ValueError):
    return 1
  return max(info.num_train_examples // batch_size, 1)


def time_train_step(config: settings_lib.Settings,
                    mesh: jax.sharding.Mesh, warmup_steps: int,
                    steps: int) -> float:
  """Mean wall-clock seconds of one compiled training iteration.

  Args:
    config: experiment config (batch size, chains, optimisers).
    mesh: the data mesh.
    warmup_steps: untimed iterations first (>= 1: the first compiles).
    steps: timed iterations (>= 1).

  Returns:
    Seconds per iteration.
  """
  exp = experiment.build(
      config, mesh=mesh,
      steps_per_epoch=_steps_per_epoch(config,
                                       int(config.training.batch_size)))
  state = exp.init_state()
  batch = exp.synthetic_batch(int(config.eval.seed))
  for _ in range(warmup_steps):
    state, metrics = exp.train_step(state, batch)
  jax.block_until_ready((state, metrics))
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = exp.train_step(state, batch)
  jax.block_until_ready((state, metrics))
  return (time.perf_counter() - start) / steps


def _millions(n: int) -> str:
  return f'{n / 1e6:.2f}M'


class Evaluator:
  """Parameter counts and seconds per training iteration.

  Yields 'params/generator', 'params/inference', 'params/ebm',
  'seconds_per_iteration', 'langevin_steps_x', 'langevin_steps_z',
  'batch_size', 'num_devices' and a Markdown 'table' like the paper's Table 4.
  """

  def __init__(self, config: settings_lib.Settings, workdir: str,
               models: networks.Models, mesh: jax.sharding.Mesh):
    del workdir
    self.config = config = settings_lib.from_config(config)
    self.models = models
    self.mesh = mesh

  def run(self, state: ts.TrainState) -> Iterator[tuple[str, Any]]:
    cfg = self.config
    counts = {name: int(parameter_overview.count_parameters(
                  getattr(state, attr).params))
              for name, attr in (('generator', 'gen'), ('inference', 'inf'),
                                 ('ebm', 'ebm'))}
    for name, n in counts.items():
      yield f'params/{name}', n
    seconds = time_train_step(cfg, self.mesh,
                              int(cfg.eval.cost_warmup_steps),
                              int(cfg.eval.cost_steps))
    steps_x = int(cfg.langevin_x.steps)
    steps_z = int(cfg.langevin_z.steps)
    device = jax.devices()[0]
    yield 'seconds_per_iteration', seconds
    yield 'langevin_steps_x', steps_x
    yield 'langevin_steps_z', steps_z
    yield 'batch_size', int(cfg.training.batch_size)
    yield 'num_devices', jax.device_count()
    chains = 2 if cfg.training.second_x_chain else 1
    where = f'{jax.device_count()} x {device.device_kind} ({device.platform})'
    table = [
        f'| {cfg.model.arch} nets, batch {cfg.training.batch_size}, {where} '
        '| this run |',
        '| --- | --- |',
        f'| Time (s / iteration) | {seconds:.3f} |',
        f'| # Generator | {_millions(counts["generator"])} |',
        f'| # Inference | {_millions(counts["inference"])} |',
        f'| # EBM | {_millions(counts["ebm"])} |',
        f'| Langevin steps on x | {steps_x} (x {chains} chains) |',
        f'| Langevin steps on z | {steps_z} |',
    ]
    yield 'table', '\n'.join(table) + '\n'
