"""The pinned whole iterations of tests/golden_iteration_test.py.

  python scripts/golden_iteration.py [--out_dir=tests/fixtures]   # needs torch

Each case is one iteration of the authors' training loop (the body of
`fit` in their `train.py`, jcui1224/dual-MCMC), re-expressed in PyTorch by
`tests/torch_reference.authors_iteration`, run from random weights on a
random batch with Gaussian draws from a seeded numpy generator. The script
writes what it computed, `golden_iteration_<case>.npz`, so that the test
compares the project's iteration with it without PyTorch (CI); where
PyTorch is installed the test also reruns the authors' loop and checks the
file against it.

Every array is in PyTorch's layout (images [B, C, H, W], conv weights
[out, in, kh, kw]): `init/<net>/<key>` the state dicts before the
iteration, `after/<net>/<key>` after it, `mu/<net>/<key>` Adam's first
moment (with beta1 = 0: the gradient plus the coupled weight decay; the
second moment is 0.1 times its square and not stored), `x` the batch, `out/x1`, `out/z1`, `out/x_neg` the revised samples and `loss/<name>`
the losses (nets 'G', 'E', 'I').

The case settings are the CIFAR-10 config's except for the widths and one
contractive z-step (tests/golden_iteration_test.py says why).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import cifar10 as cifar10_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from configs import cifar10_simple as simple_config  # pylint: disable=g-import-not-at-top,wrong-import-position

# The z-step of every case: contractive on these nets (the test explains).
Z_STEP = 0.002


@dataclasses.dataclass(frozen=True)
class Case:
  """One pinned iteration: nets, widths and the settings that differ."""
  arch: str
  ngf: int
  nef: int
  nif: int
  nz: int = 8
  batch: int = 4
  image_size: int = 32
  lr_g: float = 3e-4
  seed: int = 0


CASES = {
    # The residual nets of the CIFAR-10 layout at a small width.
    'resnet': Case('resnet', 8, 8, 4),
    # The generator barely moves, so the EBM's negatives start at the same
    # G'(z) on both sides whatever Adam makes of rounding-level gradients.
    'resnet_fixed_generator': Case('resnet', 8, 8, 4, lr_g=1e-12, seed=1),
    # The plain conv nets of the paper's Table 1, small.
    'simple': Case('simple', 4, 8, 4, seed=2),
}


def case_config(case: Case):
  """The experiment config of a case."""
  config = (simple_config if case.arch == 'simple' else
            cifar10_config).get_config()
  config.data.image_size = case.image_size
  m = config.model
  m.ngf, m.nef, m.nif, m.nz = case.ngf, case.nef, case.nif, case.nz
  config.langevin_z.step_size = Z_STEP
  config.optim.lr_g = case.lr_g
  config.training.batch_size = case.batch
  return config


def batch(case: Case) -> np.ndarray:
  """The data batch, [B, 3, H, W] in [-1, 1)."""
  rng = np.random.default_rng(1000 + case.seed)
  s = case.image_size
  return rng.uniform(-1, 1, (case.batch, 3, s, s)).astype(np.float32)


def draws(case: Case, config) -> dict[str, np.ndarray]:
  """The Gaussian draws, by `dual_mcmc_jax/noise.py`'s names (NCHW)."""
  rng = np.random.default_rng(case.seed)
  b, nz, s = case.batch, case.nz, case.image_size
  x_shape = (int(config.langevin_x.steps), b, 3, s, s)
  out = {'prior': rng.standard_normal((b, nz)),
         'reparam': rng.standard_normal((b, nz)),
         'z_chain': rng.standard_normal((int(config.langevin_z.steps), b, nz)),
         'x_chain': rng.standard_normal(x_shape),
         'x_chain_negative': rng.standard_normal(x_shape)}
  return {k: v.astype(np.float32) for k, v in out.items()}


def draws_checksum(table: dict[str, np.ndarray]) -> float:
  """A sum that changes if numpy ever draws a different stream."""
  return float(sum(np.sum(np.abs(v), dtype=np.float64)
                   for v in table.values()))


def run_authors(case: Case) -> dict[str, np.ndarray]:
  """One iteration of the authors' loop for `case` (needs PyTorch)."""
  import torch  # pylint: disable=g-import-not-at-top
  from tests import torch_reference as tr  # pylint: disable=g-import-not-at-top

  config = case_config(case)
  torch.manual_seed(case.seed)
  nets = dict(zip('GEI', tr.build_nets(case.nz, case.ngf, case.nef, case.nif,
                                       case.image_size, arch=case.arch)))
  out = {}
  for key, net in nets.items():
    for k, v in net.state_dict().items():
      out[f'init/{key}/{k}'] = v.detach().numpy().copy()
  args = tr.ReferenceArgs.from_config(config)
  optimizers = tr.make_optimizers(nets['G'], nets['E'], nets['I'], args)
  table = draws(case, config)
  x = batch(case)
  it = tr.authors_iteration(
      nets['G'], nets['E'], nets['I'], optimizers, torch.from_numpy(x), args,
      {k: torch.from_numpy(v) for k, v in table.items()})
  out.update({'x': x, 'out/x1': it.x1.numpy(), 'out/z1': it.z1.numpy(),
              'out/x_neg': it.x_neg.numpy()})
  out.update({f'loss/{k}': np.float64(v) for k, v in it.losses.items()})
  for key, net in nets.items():
    opt = optimizers[key]
    for k, p in net.named_parameters():
      out[f'mu/{key}/{k}'] = opt.state[p]['exp_avg'].numpy()
    for k, v in net.state_dict().items():
      out[f'after/{key}/{k}'] = v.detach().numpy().copy()
  out['meta'] = np.array(json.dumps({
      'case': dataclasses.asdict(case), 'draws_checksum':
          draws_checksum(table), 'torch': torch.__version__}))
  return out


def section(arrays: Any, prefix: str) -> dict[str, np.ndarray]:
  """{key: array} for the entries `prefix/key` of a fixture."""
  n = len(prefix) + 1
  return {k[n:]: np.asarray(arrays[k]) for k in arrays
          if k.startswith(prefix + '/')}


def fixture_path(out_dir: str, name: str) -> str:
  return os.path.join(out_dir, f'golden_iteration_{name}.npz')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out_dir', default=os.path.join(
      os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tests',
      'fixtures'))
  args = parser.parse_args()
  for name, case in CASES.items():
    path = fixture_path(args.out_dir, name)
    np.savez_compressed(path, **run_authors(case))
    print(f'wrote {path} ({os.path.getsize(path) / 1024:.0f} KiB)')


if __name__ == '__main__':
  main()
