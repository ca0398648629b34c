"""The CPU plug-in: what makes the training step fast on XLA's CPU backend.

Users train on GPUs and TPUs, whose path runs XLA's own convolutions and
carries none of this. On the 2-core CPU machines this project is developed
and tested on, XLA's CPU backend runs some of the iteration's work far below
its matrix-product rate; the pieces here change how the same numbers are
computed (docs/performance.md measures each):

* `conv.py` (with Winograd's algorithms in `winograd.py`): the nets'
  convolutions and their input gradients as forward convolutions, matrix
  products and Winograd transforms, average pools folded into the convs
  before them, spectral norm dividing outputs instead of kernels;
* `schedule.py`: the step's stages (and so its Langevin chains) run in turn
  rather than sharing the cores;
* `chains.py`: each Langevin step's noise is drawn during the step before.

It is attached when the models and the step are built, under one switch,
`config.training.cpu_plugin`: 'on', 'off', or 'auto' (on for the CPU
backend). `compute_for` is the only place outside the start-up module that
reads the backend.
"""

from __future__ import annotations

import jax

from dual_mcmc_jax import compute
from dual_mcmc_jax.cpu import chains
from dual_mcmc_jax.cpu import conv
from dual_mcmc_jax.cpu import schedule

CPU = compute.Compute(name='cpu', conv_ops=conv.CpuConvOps(),
                      chain_loop=chains.noise_ahead_chain,
                      order=schedule.in_order)


def enabled(switch: str) -> bool:
  """Whether `config.training.cpu_plugin=switch` attaches the plug-in."""
  if switch == 'auto':
    return jax.default_backend() == 'cpu'
  if switch in ('on', 'off'):
    return switch == 'on'
  raise ValueError(f'config.training.cpu_plugin={switch!r} is unknown; '
                   'allowed: auto, on, off')


def compute_for(switch: str) -> compute.Compute:
  """The hooks `config.training.cpu_plugin=switch` chooses here."""
  return CPU if enabled(switch) else compute.XLA
