"""The three networks: EBM E(x), generator G(z) and inference model q(z|x).

Three families, built from explicit fields (never from a config; the mapping
from a config lives in `train_state.create_models`):

* `resnet.py`: the reference implementation's residual nets (CIFAR-10 and
  CelebA layouts, any power-of-two image size).
* `simple.py`: the plain convolutional nets of the paper's Table 1.
* `mlp.py`: small fully connected nets for 2-D densities.

`layers.py` holds what they share: PyTorch-compatible convolutions (one thin
wrapper whose arithmetic, a `ConvOps`, is given when the models are built),
dense layers, BatchNorm and spectral norm.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# pylint: disable=g-importing-member,unused-import
from dual_mcmc_jax.networks.layers import batch_norm
from dual_mcmc_jax.networks.layers import Conv
from dual_mcmc_jax.networks.layers import ConvOps
from dual_mcmc_jax.networks.layers import gaussian_conv_heads
from dual_mcmc_jax.networks.layers import log2_int
from dual_mcmc_jax.networks.layers import SNConv
from dual_mcmc_jax.networks.layers import SNDense
from dual_mcmc_jax.networks.layers import spectral_normalize
from dual_mcmc_jax.networks.layers import TorchConv
from dual_mcmc_jax.networks.layers import TorchDense
from dual_mcmc_jax.networks.layers import upsample2x
from dual_mcmc_jax.networks.layers import xavier_normal
from dual_mcmc_jax.networks.mlp import MlpEBM
from dual_mcmc_jax.networks.mlp import MlpGenerator
from dual_mcmc_jax.networks.mlp import MlpInference
from dual_mcmc_jax.networks.resnet import EbmBlock
from dual_mcmc_jax.networks.resnet import GenUpBlock
from dual_mcmc_jax.networks.resnet import ResEBM
from dual_mcmc_jax.networks.resnet import ResGenerator
from dual_mcmc_jax.networks.resnet import ResInference
from dual_mcmc_jax.networks.simple import SimpleEBM
from dual_mcmc_jax.networks.simple import SimpleGenerator
from dual_mcmc_jax.networks.simple import SimpleInference
# pylint: enable=g-importing-member,unused-import

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Models:
  """The three modules of one experiment."""
  ebm: nn.Module
  gen: nn.Module
  inf: nn.Module
  data_shape: tuple[int, ...]  # per-example shape of x
  nz: int


def init_models(models: Models, key: Array,
                batch_size: int = 2) -> dict[str, dict[str, Any]]:
  """Initialises the three networks.

  Args:
    models: the modules.
    key: PRNG key.
    batch_size: dummy batch size for shape inference (BatchNorm needs > 1).

  Returns:
    {'ebm'|'gen'|'inf': {'params': ..., 'batch_stats': ... (may be absent)}}.
  """
  ke, kg, ki = jax.random.split(key, 3)
  x = jnp.zeros((batch_size,) + models.data_shape, jnp.float32)
  z = jnp.zeros((batch_size, models.nz), jnp.float32)
  return {
      'ebm': dict(models.ebm.init(ke, x, update_stats=False)),
      'gen': dict(models.gen.init(kg, z)),
      'inf': dict(models.inf.init(ki, x)),
  }
