"""The reference iteration in PyTorch, timed beside the JAX step.

`benchmarks/train_step.py --baseline=torch` builds a `TorchBaseline` at the
config's sizes and calls it after each timed JAX iteration. PyTorch is an
optional dependency; nothing in the package imports it.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import ml_collections


class TorchBaseline:
  """The reference iteration in PyTorch at the sizes of a config.

  Uses the reference-architecture modules of `torch_reference` (written for
  the agreement tests), on the GPU when PyTorch sees one. Like the authors'
  loop it reads the losses back every iteration. Calling the object runs
  and times one iteration; `benchmark(..., between=baseline)` interleaves
  them with the JAX iterations, so that both sides see the same machine
  (this shared CPU's speed drifts by tens of percent within minutes).
  """

  def __init__(self, config: ml_collections.ConfigDict, warmup: int = 1):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise SystemExit('--baseline=torch needs PyTorch: pip install torch'
                      ) from e
    from tests import torch_reference as ref  # pylint: disable=g-import-not-at-top
    if config.model.arch not in ('resnet', 'simple'):
      raise ValueError('--baseline=torch supports config.model.arch=resnet '
                       f'or simple, not {config.model.arch!r}')
    self.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    self.torch_version, self.times = torch.__version__, []
    torch.manual_seed(int(config.training.seed))
    m, d = config.model, config.data
    nets = ref.build_nets(int(m.nz), int(m.ngf), int(m.nef), int(m.nif),
                          int(d.image_size), m.resnet_style,
                          int(d.num_channels), arch=m.arch)
    for net in nets:
      net.apply(ref.reference_init_)
    nets = tuple(net.to(self.device) for net in nets)
    args = ref.ReferenceArgs.from_config(config)
    optimizers = ref.make_optimizers(*nets, args)
    b, size = int(config.training.batch_size), int(d.image_size)
    x = torch.rand(b, int(d.num_channels), size, size,
                   device=self.device) * 2 - 1
    self._sync = (torch.cuda.synchronize if self.device == 'cuda'
                  else (lambda: None))
    self._step = lambda: ref.reference_train_step(*nets, optimizers, x, args)
    for _ in range(warmup):
      self._step()

  def __call__(self) -> float:
    self._sync()
    t0 = time.perf_counter()
    self._step()
    self._sync()
    self.times.append(time.perf_counter() - t0)
    return self.times[-1]

  def summary(self) -> dict[str, Any]:
    return {'sec_per_iter_median': statistics.median(self.times),
            'sec_per_iter_min': min(self.times), 'device': self.device,
            'torch_version': self.torch_version}
