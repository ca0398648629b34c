"""How the iteration is computed, as opposed to what it computes.

A backend plug-in changes only how (never what) the networks, the chains
and the step compute; `Compute` holds the hooks it may fill, and the
defaults are XLA's own, which is what GPUs and TPUs run:

* `conv_ops`: how every convolution of the nets computes
  (`networks.ConvOps`: `lax.conv_general_dilated`);
* `chain_loop`: how a Langevin chain's steps run (`langevin.fori_chain`);
* `order`: what the step's stages wait for (`Stages -> Stages`; unchanged by
  default, so XLA schedules them as it likes).

`cpu.compute_for(config.training.cpu_plugin)` chooses the hooks when the
models and the step are built: XLA's, or those of `dual_mcmc_jax/cpu/`
(on for the CPU backend with 'auto').
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from dual_mcmc_jax import langevin
from dual_mcmc_jax import networks


def unchanged(stages: Any) -> Any:
  """The default `order`: the stages as they are."""
  return stages


@dataclasses.dataclass(frozen=True)
class Compute:
  """The hooks of one backend.

  Attributes:
    name: 'xla' or the plug-in's name (logged, and in benchmark records).
    conv_ops: the nets' convolutions.
    chain_loop: runs the steps of every training chain.
    order: wraps the train step's stages (`train_step.Stages`).
  """
  name: str = 'xla'
  conv_ops: networks.ConvOps = networks.ConvOps()
  chain_loop: langevin.ChainLoop = langevin.fori_chain
  order: Callable[[Any], Any] = unchanged


XLA = Compute()
