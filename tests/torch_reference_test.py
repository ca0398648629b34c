"""The PyTorch oracle's Table 1 nets match the JAX simple nets (needs torch).

`tests/torch_reference.py` is the PyTorch side of the speed comparison; its
simple nets must be the same networks as `networks/simple.py`, layer for
layer, or the time ratio compares different work.
"""

from clu import parameter_overview
import jax
import numpy as np
import pytest

from configs import cifar10_simple
from dual_mcmc_jax import train_state as ts

torch = pytest.importorskip('torch')
tr = pytest.importorskip('tests.torch_reference')


def _jax_counts(config) -> dict[str, int]:
  models = ts.create_models(config)
  optimizers = ts.create_optimizers(config.optim, 1)
  state = jax.eval_shape(lambda: ts.create_train_state(models, optimizers, 0))
  return {k: int(parameter_overview.count_parameters(
                getattr(state, k).params))
          for k in ('gen', 'ebm', 'inf')}


@pytest.mark.parametrize('widths', [(100, 112, 128), (8, 8, 4)])
def test_simple_nets_have_the_jax_parameter_counts(widths):
  config = cifar10_simple.get_config()
  config.model.ngf, config.model.nef, config.model.nif = widths
  if widths[0] < 50:
    config.model.nz = 8
  nets = tr.build_nets(int(config.model.nz), *widths, arch='simple')
  counts = [sum(p.numel() for p in net.parameters()) for net in nets]
  expected = _jax_counts(config)
  assert counts == [expected['gen'], expected['ebm'], expected['inf']]


def test_one_simple_reference_iteration_runs_and_is_healthy():
  torch.manual_seed(0)
  nets = tr.build_nets(8, 8, 8, 4, arch='simple')
  args = tr.ReferenceArgs(nz=8, x_steps=2, z_steps=2)
  optimizers = tr.make_optimizers(*nets, args)
  x = torch.rand(4, 3, 32, 32) * 2 - 1
  metrics = tr.reference_train_step(*nets, optimizers, x, args)
  assert metrics['healthy']
  assert np.isfinite(metrics['energy_diff'])
