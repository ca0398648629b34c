"""Writes the golden fixtures of tests/agreement_test.py (needs PyTorch).

  pip install torch
  python scripts/make_golden_fixtures.py [--out_dir=tests/fixtures]

Run once; the .npz files are committed so that the agreement tests run in CI
without PyTorch. Every number in them comes from `tests/torch_reference.py` at
small widths with random weights:

* `golden_cifar10.npz`, `golden_celeba64.npz`: the initial state dicts
  (`init/netX/<key>`), fixed inputs (`in/...`) and PyTorch outputs: E(x) with
  the spectral-norm vectors after the pass; G(z) in train mode with the
  BatchNorm running statistics after it; I(x); z0 = mu + exp(logvar/2) eps;
  one x-Langevin and one z-Langevin step without noise (the gradients used;
  the step itself is `start - s^2/2 * grad`); the three losses with their
  parameter gradients on fixed chain outputs (z1, x1).
* `golden_adam_cifar10.npz`: two `torch.optim.Adam` steps with coupled
  weight decay on netG and netE of the CIFAR-10 fixture: parameters and
  optimiser state after step 1, parameters after step 2. The gradients are
  `first_gradient` (the loss gradients of `golden_cifar10.npz`, scaled to a
  largest entry of 1) and `second_gradient` of that. The hyper-parameters
  (`ADAM`) are not the reference's but chosen so that every part of the
  update shows in float32: a learning rate large enough for the parameter
  changes to be measured precisely, beta1 > 0 so that the first moment
  carries over to step 2, and a weight decay comparable to the gradients.

Every net starts from its initial state for every quantity, so each check
is independent. Data-like inputs (x, x1) are stored as uint8 pixels, mapped
to [-1, 1] by `pixels_to_float`, to keep the files small.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests import torch_reference as tr  # pylint: disable=g-import-not-at-top,wrong-import-position
from scripts.golden_recipe import first_gradient  # pylint: disable=g-import-not-at-top,wrong-import-position
from scripts.golden_recipe import pixels_to_float  # pylint: disable=g-import-not-at-top,wrong-import-position
from scripts.golden_recipe import second_gradient  # pylint: disable=g-import-not-at-top,wrong-import-position

# Small widths: each file stays well under 1 MB.
ARCHS = {
    'cifar10': dict(style='cifar', image_size=32, nz=8, ngf=16, nef=16, nif=4,
                    batch=2, seed=0,
                    args=tr.ReferenceArgs(nz=8)),
    'celeba64': dict(style='celeba', image_size=64, nz=8, ngf=32, nef=32,
                     nif=4, batch=2, seed=1,
                     args=tr.ReferenceArgs(nz=8, s_x=0.3, s_factor=70.0)),
}


ADAM = dict(lr=0.05, betas=(0.5, 0.9), eps=1e-3, weight_decay=0.37)


def _np(t: torch.Tensor) -> np.ndarray:
  return t.detach().cpu().numpy().copy()


def _state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
  return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _grads(net: torch.nn.Module) -> dict[str, np.ndarray]:
  return {k: _np(p.grad) for k, p in net.named_parameters()}


def _put(out: dict[str, np.ndarray], prefix: str,
         tensors: dict[str, torch.Tensor | np.ndarray]) -> None:
  for k, v in tensors.items():
    out[f'{prefix}/{k}'] = v if isinstance(v, np.ndarray) else _np(v)


def make_fixture(name: str) -> tuple[dict[str, np.ndarray], dict]:
  """Computes one architecture's fixture; returns (arrays, init states)."""
  spec = ARCHS[name]
  args = spec['args']
  torch.manual_seed(spec['seed'])
  rng = np.random.default_rng(spec['seed'])
  b, nz, size = spec['batch'], spec['nz'], spec['image_size']
  netG, netE, netI = tr.build_nets(nz, spec['ngf'], spec['nef'], spec['nif'],
                                   size, spec['style'])
  init = {'netG': _state(netG), 'netE': _state(netE), 'netI': _state(netI)}

  def reset():
    for net, key in ((netG, 'netG'), (netE, 'netE'), (netI, 'netI')):
      net.load_state_dict(init[key])
      net.zero_grad(set_to_none=True)

  out: dict[str, np.ndarray] = {}
  for key, sd in init.items():
    _put(out, f'init/{key}', sd)
  x_px = rng.integers(0, 256, (b, 3, size, size), dtype=np.uint8)
  x1_px = rng.integers(0, 256, (b, 3, size, size), dtype=np.uint8)
  z = rng.standard_normal((b, nz)).astype(np.float32)
  z1 = rng.standard_normal((b, nz)).astype(np.float32)
  eps = rng.standard_normal((b, nz)).astype(np.float32)
  out.update({'in/x_pixels': x_px, 'in/x1_pixels': x1_px, 'in/z': z,
              'in/z1': z1, 'in/eps': eps})
  x, x1 = (torch.from_numpy(pixels_to_float(p)) for p in (x_px, x1_px))
  zt, z1t, epst = (torch.from_numpy(a) for a in (z, z1, eps))

  # Forward passes.
  reset()
  out['out/energy'] = _np(netE(x))
  _put(out, 'out/energy_u',
       {k: v for k, v in netE.state_dict().items() if k.endswith('weight_u')})
  reset()
  out['out/gen'] = _np(netG(zt.view(b, nz, 1, 1)))
  _put(out, 'out/gen_stats',
       {k: v for k, v in netG.state_dict().items()
        if k.endswith(('running_mean', 'running_var'))})
  reset()
  mu, logvar = netI(x)
  out['out/mu'], out['out/logvar'] = _np(mu.view(b, nz)), _np(
      logvar.view(b, nz))
  out['out/z0'] = _np((mu + torch.exp(0.5 * logvar) * epst.view(b, nz, 1, 1))
                      .view(b, nz))

  # One noiseless Langevin step each: x from G(z), z from z0 given x.
  reset()
  x_start = torch.from_numpy(out['out/gen'])
  _, grad = tr.x_langevin_step(netE, x_start, args.s_x, args.n_x,
                               noise=torch.zeros_like(x_start))
  out['xstep/grad'] = _np(grad)
  _put(out, 'xstep/u',
       {k: v for k, v in netE.state_dict().items() if k.endswith('weight_u')})
  reset()
  z_start = torch.from_numpy(out['out/z0'])
  _, grad = tr.z_langevin_step(netG, z_start, x, args.s_z, args.n_z,
                               args.sigma, args.prior_sigma,
                               noise=torch.zeros_like(z_start))
  out['zstep/grad'] = _np(grad)

  # The three losses on fixed chain outputs, and their parameter gradients.
  reset()
  loss = tr.generator_loss(netG, x, zt, z1t, x1, args.g_factor,
                           args.s_factor)
  loss.backward()
  out['loss_g/value'] = _np(loss)
  _put(out, 'loss_g/grad', _grads(netG))
  reset()
  loss = tr.inference_loss(netI, x, z1t, x1, zt, args.g_factor,
                           args.i_factor)
  loss.backward()
  out['loss_i/value'] = _np(loss)
  _put(out, 'loss_i/grad', _grads(netI))
  reset()
  temperature = (args.n_x / args.s_x)**2
  loss, _ = tr.ebm_loss(netE, x, x1, temperature)
  loss.backward()
  out['loss_e/value'] = _np(loss)
  _put(out, 'loss_e/grad', _grads(netE))
  _put(out, 'loss_e/u',
       {k: v for k, v in netE.state_dict().items() if k.endswith('weight_u')})

  meta = {k: v for k, v in spec.items() if k != 'args'}
  meta.update(num_channels=3, torch_version=torch.__version__,
              sigma=args.sigma, prior_sigma=args.prior_sigma, s_x=args.s_x,
              n_x=args.n_x, s_z=args.s_z, n_z=args.n_z,
              g_factor=args.g_factor, s_factor=args.s_factor,
              i_factor=args.i_factor)
  out['meta'] = np.array(json.dumps(meta))
  return out, {'nets': (netG, netE, netI), 'init': init, 'args': args}


def make_adam_fixture(golden: dict[str, np.ndarray],
                      made: dict) -> dict[str, np.ndarray]:
  """Two Adam steps on netG and netE of a fixture (see module docstring)."""
  netG, netE, _ = made['nets']
  out: dict[str, np.ndarray] = {}
  groups = {}
  for net, key, loss in ((netG, 'netG', 'loss_g'), (netE, 'netE', 'loss_e')):
    net.load_state_dict(made['init'][key])
    opt = torch.optim.Adam(net.parameters(), **ADAM)
    g1 = first_gradient({k: golden[f'{loss}/grad/{k}']
                         for k, _ in net.named_parameters()})
    for step, grads in ((1, g1), (2, {k: second_gradient(g)
                                      for k, g in g1.items()})):
      for k, p in net.named_parameters():
        p.grad = torch.from_numpy(grads[k].copy())
      opt.step()
      _put(out, f'step{step}/{key}',
           {k: p for k, p in net.named_parameters()})
      if step == 1:
        sd = opt.state_dict()
        opt_key = 'opt' + key[-1]
        for index, entry in sd['state'].items():
          for name in ('exp_avg', 'exp_avg_sq', 'step'):
            out[f'{opt_key}/state/{index}/{name}'] = _np(entry[name])
        groups[opt_key] = [
            {k: v for k, v in g.items() if k in (
                'lr', 'betas', 'eps', 'weight_decay', 'params')}
            for g in sd['param_groups']]
  out['meta'] = np.array(json.dumps({'param_groups': groups,
                                     'torch_version': torch.__version__}))
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out_dir', default=os.path.join(
      os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tests',
      'fixtures'))
  out_dir = parser.parse_args().out_dir
  os.makedirs(out_dir, exist_ok=True)
  torch.use_deterministic_algorithms(True)
  for name in ARCHS:
    arrays, made = make_fixture(name)
    path = os.path.join(out_dir, f'golden_{name}.npz')
    np.savez_compressed(path, **arrays)
    print(f'{path}: {os.path.getsize(path) / 1e3:.0f} kB')
    if name == 'cifar10':
      path = os.path.join(out_dir, 'golden_adam_cifar10.npz')
      np.savez_compressed(path, **make_adam_fixture(arrays, made))
      print(f'{path}: {os.path.getsize(path) / 1e3:.0f} kB')


if __name__ == '__main__':
  main()
