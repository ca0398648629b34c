"""Times the real train step on synthetic batches (no TensorFlow, no dataset).

  python benchmarks/train_step.py --config=configs/cifar10.py --iters=10
  python benchmarks/train_step.py --config=configs/cifar10.py \
      --config.model.ngf=64 --config.model.nef=64 --config.model.nif=32 \
      --config.training.batch_size=16 --iters=5 --sweep
  python benchmarks/train_step.py --config=configs/cifar10.py --baseline=torch

Builds the step exactly as training does (same models, optimisers, sharding
over all local devices, donated state), compiles it once, then times `--iters`
iterations, each blocked until the device is done. Prints a table and, as the
last line, one JSON object: sec_per_iter_median / _min, compile_sec,
flops_per_iter (XLA cost analysis, chain loops multiplied out: see
`count_flops`), achieved_tflops,
peak_memory_bytes (device memory statistics where the backend has them,
process peak RSS on the CPU), the compiled program's temporary buffer size,
devices, dtype and the config fields that matter; with `--peak` (default)
also the device's measured matmul peak (`peak_tflops_measured`) and the
step's `fraction_of_peak`. `--profile_dir=DIR` traces the timed iterations
and prints where their time went (`profile_trace.py`).

`--sweep` rebuilds the step for several batch sizes, x-chain lengths
(10 / 30 / 60 / 120) and widths and prints how time and memory grow; XLA's
memory analysis of each compiled program shows that the chain's memory does
not grow with its length (the chains are fori_loops that keep no trajectory).

`--baseline=torch` also times the reference iteration written in PyTorch
(tests/torch_reference.py; PyTorch is optional) at the same sizes on
the same machine and prints the JAX / PyTorch time ratio, then a Markdown
table of that ratio across sizes (`RATIO_ROWS`: the residual nets at
(ngf = nef, nif, batch) = (32, 16, 8), (64, 32, 32), (128, 32, 32), and the
Table 1 simple nets at their widths, batch 32; `--noratio_table` skips it).
The PyTorch side is the whole reference iteration: E, G and I in train
mode, the two x-chains, the z-chain and three Adam steps, losses read back
every iteration as the authors' loop does. JAX and PyTorch iterations run
in turn (one of each, `--iters` times), so both see the machine in the same
state.

`--memory` only compiles the config's step with 30 and 120 x-steps and
prints XLA's temporary bytes, e.g. at the paper's size:

  python benchmarks/train_step.py --config=configs/cifar10.py --memory
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import statistics
import sys
import time
from typing import Any, Callable

from absl import flags
from clu import parameter_overview
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from dual_mcmc_jax import runtime  # First: Ctrl-C is one line from here.
runtime.quiet_ctrl_c()
from dual_mcmc_jax import cpu
from dual_mcmc_jax import experiment
from dual_mcmc_jax import settings as settings_lib
from dual_mcmc_jax import sharding
from dual_mcmc_jax import train_state as ts
import profile_trace
import torch_baseline

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Experiment config.')
flags.DEFINE_integer('iters', 10, 'Timed iterations after compilation.')
flags.DEFINE_integer('warmup', 1, 'Untimed iterations after compilation.')
flags.DEFINE_bool('loop', True, 'Also time the training loop around the step '
                  '(a host batch copied in every step), with the health '
                  'check fetching metrics every step and every '
                  'config.training.health_every_steps.')
flags.DEFINE_bool('ratio_table', True, 'With --baseline=torch: also the '
                  'JAX / PyTorch table over RATIO_ROWS (widths and batch).')
flags.DEFINE_bool('memory', False, 'Only compile the config\'s step with 30 '
                  'and 120 x-steps and print XLA\'s temporary bytes '
                  '(nothing runs; the paper size fits any machine).')
flags.DEFINE_bool('sweep', False, 'Also sweep batch, chain length, width.')
flags.DEFINE_enum('baseline', 'none', ['none', 'torch'],
                  'Also time the PyTorch reference iteration.')
flags.DEFINE_bool('peak', True, 'Also measure the device\'s matmul peak and '
                  'report the step\'s fraction of it.')
flags.DEFINE_string('profile_dir', None,
                    'Write a jax.profiler trace of the timed iterations here '
                    'and print where their time went (profile_trace.py).')
flags.mark_flags_as_required(['config'])


def _cost_flops(cost: Any) -> float:
  if isinstance(cost, (list, tuple)):  # older jax: one dict per program
    cost = cost[0] if cost else {}
  return float((cost or {}).get('flops', float('nan')))


def _lowered_flops(config: ml_collections.ConfigDict, x_steps: int,
                   z_steps: int) -> float:
  """XLA's flop estimate of the step with the given chain lengths."""
  s = settings_lib.from_config(config)
  # Chains of 0 steps are no valid config, so the settings are changed after
  # they are read; this variant is only lowered. XLA's own convolutions
  # count the model's arithmetic: the CPU plug-in's forms do other work
  # for the same numbers (dual_mcmc_jax/cpu/conv.py).
  s = s.replace(
      langevin_x=dataclasses.replace(s.langevin_x, steps=x_steps),
      langevin_z=dataclasses.replace(s.langevin_z, steps=z_steps),
      training=dataclasses.replace(s.training, cpu_plugin='off'))
  exp = experiment.build(s, steps_per_epoch=500)
  batch = jax.ShapeDtypeStruct(
      (s.training.batch_size,) + exp.models.data_shape, jnp.float32)
  return _cost_flops(
      exp.train_step.lower(exp.abstract_state(), batch).cost_analysis())


def count_flops(config: ml_collections.ConfigDict) -> dict[str, float]:
  """Flops of one iteration, chain loops included.

  XLA's cost analysis counts a while loop's body once, whatever its trip
  count, so the step is analysed with chains of 0 and 1 steps and the
  per-step costs are multiplied out:
  total = C(0, 0) + n_x * (C(1, 0) - C(0, 0)) + n_z * (C(0, 1) - C(0, 0)).

  Args:
    config: experiment config.

  Returns:
    {'flops_per_iter', 'flops_outside_chains', 'flops_per_x_step' (summed
    over the x-chains of one iteration), 'flops_per_z_step'}.
  """
  base = _lowered_flops(config, 0, 0)
  per_x = _lowered_flops(config, 1, 0) - base
  per_z = _lowered_flops(config, 0, 1) - base
  total = (base + int(config.langevin_x.steps) * per_x +
           int(config.langevin_z.steps) * per_z)
  return {'flops_per_iter': total, 'flops_outside_chains': base,
          'flops_per_x_step': per_x, 'flops_per_z_step': per_z}


def _temp_bytes(compiled: Any) -> int | None:
  try:
    mem = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  return None if mem is None else int(mem.temp_size_in_bytes)


def peak_memory_bytes() -> tuple[int, str]:
  """Peak device memory if the backend reports it, else process peak RSS."""
  stats = jax.local_devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    return int(stats['peak_bytes_in_use']), 'device_peak_bytes_in_use'
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  scale = 1 if sys.platform == 'darwin' else 1024  # Linux reports KiB.
  return int(rss * scale), 'process_peak_rss'


def measure_peak_tflops(dtype: Any = jnp.float32, n: int = 4096,
                        iters: int = 5) -> float:
  """Best measured TFLOP/s of an n x n matmul on the first device.

  The reference point for `fraction_of_peak`: what this device sustains on
  the densest kernel it has, in the step's compute dtype, measured rather
  than taken from a datasheet.
  """
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
  matmul = jax.jit(jnp.dot)
  matmul(a, a).block_until_ready()
  best = float('inf')
  for _ in range(iters):
    t0 = time.perf_counter()
    matmul(a, a).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2 * n**3 / best / 1e12


def _time_compiled(compiled: Any, state: Any, batch: jax.Array, iters: int,
                   warmup: int, between: Callable[[], Any] | None = None
                   ) -> tuple[list[float], Any]:
  """Seconds of each of `iters` iterations after `warmup` untimed ones.

  `between`, if given, runs after each timed iteration, outside the timing
  (the PyTorch baseline's iterations, interleaved with these).
  """
  metrics = None
  for _ in range(warmup):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(state)
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - t0)
    if between is not None:
      between()
  return times, (state, metrics)


def benchmark(config: ml_collections.ConfigDict, iters: int, warmup: int = 1,
              profile_dir: str | None = None, flops: bool = True,
              between: Callable[[], Any] | None = None) -> dict[str, Any]:
  """Compiles and times the train step of `config`.

  Args:
    config: experiment config (its data fields only give the batch shape).
    iters: timed iterations.
    warmup: untimed iterations after compilation.
    profile_dir: optional jax.profiler trace directory.
    flops: also count the flops (three more compilations).
    between: run after each timed iteration, untimed (see `_time_compiled`).

  Returns:
    A dict of measurements and config fields.
  """
  exp = experiment.build(config, steps_per_epoch=500)
  state, batch = exp.init_state(), exp.synthetic_batch(0)
  t0 = time.perf_counter()
  compiled = exp.train_step.lower(state, batch).compile()
  compile_sec = time.perf_counter() - t0
  if profile_dir:
    _, (state, _) = _time_compiled(compiled, state, batch, 0, warmup)
    warmup = 0
    jax.profiler.start_trace(profile_dir, create_perfetto_trace=True)
  times, (state, metrics) = _time_compiled(compiled, state, batch, iters,
                                           warmup, between)
  profile = None
  if profile_dir:
    jax.profiler.stop_trace()
    profile = profile_trace.summarize(
        profile_dir, compiled.as_text(), iters, int(config.langevin_x.steps),
        int(config.langevin_z.steps), bool(config.training.second_x_chain))
  flop_counts = count_flops(config) if flops else {
      'flops_per_iter': float('nan')}
  median = statistics.median(times)
  peak, peak_kind = peak_memory_bytes()
  return {
      'sec_per_iter_median': median,
      'sec_per_iter_min': min(times),
      'compile_sec': compile_sec,
      **flop_counts,
      'achieved_tflops': flop_counts['flops_per_iter'] / median / 1e12,
      'peak_memory_bytes': peak,
      'peak_memory_kind': peak_kind,
      'compiled_temp_bytes': _temp_bytes(compiled),
      **_describe(config, state),
      'iters': iters,
      'healthy': bool(metrics['healthy']),
      **({'profile': profile} if profile else {}),
  }


def _timed_loop(exp: experiment.Experiment, state: Any, host_batch: Any,
                iters: int, health_every: int) -> tuple[float, Any]:
  """Seconds per iteration of the loop around the step, as train.py runs it.

  Every iteration copies a host batch to the devices and dispatches the
  step; the `healthy` flags are fetched to the host every `health_every`
  steps (1: after every step, which keeps the device from running ahead).
  """
  unchecked = []
  start = time.perf_counter()
  for i in range(1, iters + 1):
    state, metrics = exp.train_step(
        state, sharding.shard_batch(host_batch, exp.mesh))
    unchecked.append(metrics['healthy'])
    if i % health_every == 0 or i == iters:
      if not jax.device_get(jnp.stack(unchecked)).all():
        raise ValueError(f'the benchmark step diverged by step {i}')
      unchecked = []
  jax.block_until_ready(state)
  return (time.perf_counter() - start) / iters, state


def benchmark_loop(config: ml_collections.ConfigDict, iters: int
                   ) -> dict[str, Any]:
  """The whole loop per iteration, fetching metrics every step or every N."""
  exp = experiment.build(config, steps_per_epoch=500)
  every = int(config.training.health_every_steps)
  host_batch = exp.synthetic_host_batch(0)
  state = exp.init_state()
  _, state = _timed_loop(exp, state, host_batch, 2, 1)  # Compiles.
  per_step, state = _timed_loop(exp, state, host_batch, iters, 1)
  per_n, _ = _timed_loop(exp, state, host_batch, iters, every)
  return {'loop_sec_per_iter_fetch_every_step': per_step,
          'loop_sec_per_iter_fetch_every_n': per_n,
          'health_every_steps': every}


def _describe(config: ml_collections.ConfigDict, state: Any
              ) -> dict[str, Any]:
  """The devices and the config fields a timing depends on."""
  n_params = {k: int(parameter_overview.count_parameters(
      getattr(state, k).params))
              for k in ('ebm', 'gen', 'inf')}
  return {
      'devices': jax.device_count(),
      'device_kind': jax.devices()[0].device_kind,
      'platform': jax.devices()[0].platform,
      'dtype': str(config.training.compute_dtype),
      'compute': cpu.compute_for(config.training.cpu_plugin).name,
      'arch': config.model.arch,
      'image_size': int(config.data.image_size),
      'ngf': int(config.model.ngf),
      'nef': int(config.model.nef),
      'nif': int(config.model.nif),
      'nz': int(config.model.nz),
      'batch_size': int(config.training.batch_size),
      'langevin_x_steps': int(config.langevin_x.steps),
      'langevin_z_steps': int(config.langevin_z.steps),
      'second_x_chain': bool(config.training.second_x_chain),
      'params_ebm': n_params['ebm'],
      'params_gen': n_params['gen'],
      'params_inf': n_params['inf'],
  }


# (nets, ngf = nef, nif, batch) of the ratio table: the residual CIFAR-10
# nets at three widths, and the paper's Table 1 simple nets at their widths
# (configs/cifar10_simple.py: ngf 100, nef 112, nif 128).
RATIO_ROWS = (('resnet', 32, 32, 16, 8), ('resnet', 64, 64, 32, 32),
              ('resnet', 128, 128, 32, 32), ('simple', 100, 112, 128, 32))


def ratio_table(config: ml_collections.ConfigDict, iters: int, warmup: int
                ) -> tuple[list[dict[str, Any]], str]:
  """JAX / PyTorch seconds per iteration at the sizes of `RATIO_ROWS`.

  Each row changes only the nets, widths and batch of `config` (the
  CIFAR-10 config); both sides run the full iteration: 30 + 30 x-steps, 10
  z-steps, three Adam updates, float32, one JAX and one PyTorch iteration
  in turn.
  """
  rows = []
  lines = ['| nets | ngf | nef | nif | batch | JAX s/iter | PyTorch s/iter | '
           'JAX / PyTorch |', '| --- | --- | --- | --- | --- | --- | --- | --- |']
  for arch, ngf, nef, nif, batch in RATIO_ROWS:
    c = ml_collections.ConfigDict(config.to_dict())
    c.model.arch, c.model.ngf, c.model.nef, c.model.nif = arch, ngf, nef, nif
    c.training.batch_size = batch
    baseline = torch_baseline.TorchBaseline(c, warmup)
    jax_s = benchmark(c, iters, warmup, flops=False,
                      between=baseline)['sec_per_iter_median']
    torch_s = baseline.summary()['sec_per_iter_median']
    rows.append({'arch': arch, 'ngf': ngf, 'nef': nef, 'nif': nif,
                 'batch_size': batch, 'jax_sec_per_iter': jax_s,
                 'torch_sec_per_iter': torch_s, 'ratio': jax_s / torch_s})
    lines.append(f'| {arch} | {ngf} | {nef} | {nif} | {batch} | {jax_s:.3f} '
                 f'| {torch_s:.3f} | {jax_s / torch_s:.2f} |')
    print(lines[-1], flush=True)
  return rows, '\n'.join(lines)


def compiled_memory(config: ml_collections.ConfigDict,
                    x_steps: tuple[int, ...] = (30, 120)
                    ) -> dict[int, dict[str, int]]:
  """XLA's memory analysis of the compiled step per x-chain length.

  Compiles only (nothing runs), so the paper's sizes fit any machine.
  `temp` is what the step needs beyond its arguments (the train state,
  donated and updated in place, and the batch); temp + arguments is the
  device memory one training step needs, before allocator overhead.
  """
  out = {}
  for steps in x_steps:
    c = ml_collections.ConfigDict(config.to_dict())
    c.langevin_x.steps = steps
    exp = experiment.build(c, steps_per_epoch=500)
    batch = jax.ShapeDtypeStruct(
        (int(c.training.batch_size),) + exp.models.data_shape, jnp.float32,
        sharding=sharding.batch_sharding(exp.mesh))
    mem = exp.train_step.lower(exp.abstract_state(),
                               batch).compile().memory_analysis()
    out[steps] = {'temp_bytes': int(mem.temp_size_in_bytes),
                  'argument_bytes': int(mem.argument_size_in_bytes)}
    print(f'x-steps {steps}: temporaries {mem.temp_size_in_bytes / 2**30:.2f} '
          f'GiB + arguments (state, batch) '
          f'{mem.argument_size_in_bytes / 2**30:.2f} GiB on '
          f'{jax.devices()[0].platform}', flush=True)
  return out


def _row(label: str, r: dict[str, Any]) -> str:
  temp = r['compiled_temp_bytes']
  temp_mb = f'{temp / 2**20:10.1f}' if temp is not None else '       n/a'
  return (f'{label:<28} {r["sec_per_iter_median"]:10.4f} '
          f'{r["sec_per_iter_min"]:10.4f} {r["flops_per_iter"] / 1e9:12.1f} '
          f'{r["achieved_tflops"]:9.3f} {temp_mb} {r["compile_sec"]:9.1f}')


HEADER = (f'{"setting":<28} {"median s":>10} {"min s":>10} {"GFLOP/iter":>12} '
          f'{"TFLOP/s":>9} {"temp MiB":>10} {"compile s":>9}')


def sweep(config: ml_collections.ConfigDict, iters: int) -> list[dict[str, Any]]:
  """Batch size, x-chain length and width sweeps around `config`."""
  rows = []
  print('\nSweep (each row recompiles; temp MiB = XLA temporary buffers of the '
        'compiled step)')
  print(HEADER)
  b = int(config.training.batch_size)
  n_dev = jax.device_count()
  variants = []
  for bs in sorted({max(n_dev, (b // 4) // n_dev * n_dev),
                    max(n_dev, (b // 2) // n_dev * n_dev), b}):
    variants.append((f'batch_size={bs}', {'training.batch_size': bs}))
  for steps in (10, 30, 60, 120):
    variants.append((f'langevin_x.steps={steps}', {'langevin_x.steps': steps}))
  for scale in (0.5, 1.0, 2.0):
    w = {k: max(1, int(getattr(config.model, k) * scale)) for k in ('ngf', 'nef')}
    variants.append((f'ngf=nef={w["nef"]}',
                     {'model.ngf': w['ngf'], 'model.nef': w['nef']}))
  for label, overrides in variants:
    c = ml_collections.ConfigDict(config.to_dict())
    for key, value in overrides.items():
      group, field = key.split('.')
      c[group][field] = value
    r = benchmark(c, iters, warmup=1)
    r['setting'] = label
    rows.append(r)
    print(_row(label, r), flush=True)
  return rows


def _report_baseline(baseline: torch_baseline.TorchBaseline,
                     config: ml_collections.ConfigDict,
                     result: dict[str, Any]) -> None:
  """PyTorch's time at the config's size, then (by default) the table."""
  torch_result = baseline.summary()
  result['torch_sec_per_iter_median'] = torch_result['sec_per_iter_median']
  result['torch_sec_per_iter_min'] = torch_result['sec_per_iter_min']
  result['torch_device'] = torch_result['device']
  result['torch_version'] = torch_result['torch_version']
  result['jax_over_torch_time_ratio'] = (
      result['sec_per_iter_median'] / torch_result['sec_per_iter_median'])
  print(f'{"torch (reference iteration)":<28} '
        f'{torch_result["sec_per_iter_median"]:10.4f} '
        f'{torch_result["sec_per_iter_min"]:10.4f}')
  print(f'JAX / PyTorch time ratio: {result["jax_over_torch_time_ratio"]:.3f}')
  if FLAGS.ratio_table:
    print('\nJAX / PyTorch across sizes (float32, median of '
          f'{FLAGS.iters} iterations each):')
    result['ratio_table'], table = ratio_table(config, FLAGS.iters,
                                               FLAGS.warmup)
    print('\n' + table)


def main(argv):
  del argv
  config = FLAGS.config
  if FLAGS.memory:
    print(json.dumps({'compiled_memory_by_x_steps': compiled_memory(config)}))
    return
  baseline = (torch_baseline.TorchBaseline(config, FLAGS.warmup)
              if FLAGS.baseline == 'torch' else None)
  result = benchmark(config, FLAGS.iters, FLAGS.warmup, FLAGS.profile_dir,
                     between=baseline)
  if FLAGS.peak:
    peak = measure_peak_tflops(
        ts.COMPUTE_DTYPES[config.training.compute_dtype])
    result['peak_tflops_measured'] = peak
    result['fraction_of_peak'] = result['achieved_tflops'] / peak
  print(f'devices: {result["devices"]} x {result["device_kind"]} '
        f'({result["platform"]}), dtype {result["dtype"]}, params E '
        f'{result["params_ebm"]:,} G {result["params_gen"]:,} I '
        f'{result["params_inf"]:,}')
  print(HEADER)
  print(_row('jax', result))
  if FLAGS.peak:
    print(f'measured peak (4096^2 {result["dtype"]} matmul): '
          f'{result["peak_tflops_measured"]:.3f} TFLOP/s; the step reaches '
          f'{100 * result["fraction_of_peak"]:.1f}% of it')
  if 'profile' in result:
    print(profile_trace.format_summary(result['profile']))
  if FLAGS.loop:
    result.update(benchmark_loop(config, FLAGS.iters))
    print(f'loop, metrics fetched every step: '
          f'{result["loop_sec_per_iter_fetch_every_step"]:.4f} s/iter; every '
          f'{result["health_every_steps"]} steps: '
          f'{result["loop_sec_per_iter_fetch_every_n"]:.4f} s/iter')
  if baseline is not None:
    _report_baseline(baseline, config, result)
  if FLAGS.sweep:
    result['sweep'] = sweep(config, max(1, min(FLAGS.iters, 3)))
  print(json.dumps(result))


if __name__ == '__main__':
  runtime.run_main(main)
