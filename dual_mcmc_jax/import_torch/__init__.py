"""Imports a checkpoint of the authors' PyTorch implementation.

  python scripts/import_torch.py --config=configs/cifar10.py \
      --torch_checkpoint=PATH.pth --workdir=runs/cifar10_imported
  python main.py --config=configs/cifar10.py --workdir=runs/cifar10_imported

The config (with the same `--config.<group>.<field>=value` overrides as
`main.py`) must describe the checkpoint's architecture (`config.model.arch =
'resnet'`, style, image size and widths). The checkpoint is a dict saved with
`torch.save` holding {'epoch', 'netG', 'netE', 'netI', 'optG', 'optE',
'optI'}; every tensor is mapped onto the Flax train state built from the
config and written as an ordinary orbax checkpoint into `WORKDIR/checkpoints`,
which `main.py` resumes from and `checkpointing.load_state` loads. Everything
is validated before anything is written; a workdir that already holds a
checkpoint is refused. PyTorch is not needed: the `.pth` file is read by
`pth`, which accepts only tensors and plain containers.

Key names: for CIFAR-10 those of the authors' `_Cifar10_netG`,
`_Cifar10_netE` and `_Cifar10_netI`; the authors' code has no CelebA-64 nets,
and other layouts extend the same scheme (a checkpoint whose names differ is
refused with an error naming the tensor). With n generator up-blocks and m
EBM blocks (CIFAR-10: n = 3, m = 4), Flax module -> PyTorch key prefix:

* netG: `fc` -> `lin_1`; `block{i}` -> `block{i+2}`, inside it `bn1`, `bn2`,
  `shortcut` -> `bn_1`, `bn_2`, `sc`; `bn_out` -> `bn_{n+2}`; `conv_out` ->
  `conv{n+2}`.
* netE: `block0` -> `conv_1` (the start block); `block{i}` -> `block{i+1}`,
  inside them `shortcut` -> `sc`; `fc` -> `lin_{m+1}`.
* netI: `conv{i}` -> `main.{2i}` (an `nn.Sequential` with LeakyReLUs at the
  odd indices); `mu` -> `conv51`; `logvar` -> `conv52`.

`tests/torch_reference.py` builds PyTorch nets with exactly these keys. A
`module.` prefix left by `nn.DataParallel` is stripped.

Tensor mapping:

* conv weights [out, in, kh, kw] -> kernels [kh, kw, in, out]; linear
  weights [out, in] -> [in, out] (the generator's first linear layer too: its
  output is viewed channel-major on both sides); biases as they are.
* BatchNorm `weight`, `bias`, `running_mean`, `running_var` -> `scale`,
  `bias`, batch_stats `mean`, `var`. `num_batches_tracked` is ignored (only
  used by PyTorch for momentum=None).
* spectral norm `weight_orig` -> `kernel` (the raw weight), `weight_u` ->
  batch_stats `u`. `weight_v` is shape-checked and then ignored: in train
  mode PyTorch recomputes v from u before using it, and so does
  `networks.spectral_normalize`.

Optimiser states: the Adam moments are imported where the checkpoint holds
them (`exp_avg` -> `mu`, `exp_avg_sq` -> `nu`, laid out like the parameter;
`step` -> the Adam count, which drives the bias correction). PyTorch keys the
state by the index of the parameter in `net.parameters()`, which is the order
of the parameter (non-buffer) entries of the state dict. Without optimiser
states, fresh (zero) Adam states are used.

Train step of the written checkpoint: `--step` if given; otherwise the Adam
step count of the checkpoint (the exact number of iterations the reference
ran, equal for the three nets), so that the learning-rate decay and the data
stream continue where they were; otherwise 0 (a warning says to pass
`--step=EPOCH*STEPS_PER_EPOCH`). The run's base PRNG key is the one a fresh
run with `config.training.seed` would use.

Modules, from the bottom up:

* `names`: Flax paths <-> PyTorch keys, tensor layouts (`tensor_slots`,
  `to_torch_state_dict`), `NETS`, `CheckpointMismatchError`;
* `checks`: one net's state dict checked against the model and mapped
  (`map_state_dict`);
* `adam`: Adam state dicts -> optax moments, the step (`choose_step`);
* `pth`: the PyTorch-free `.pth` reader (also reads the FID Inception
  weights);
* `state`: the whole checkpoint -> train state -> orbax (`import_file`).
"""

from dual_mcmc_jax.import_torch import pth
from dual_mcmc_jax.import_torch.adam import AdamMoments
from dual_mcmc_jax.import_torch.adam import choose_step
from dual_mcmc_jax.import_torch.adam import map_adam_state
from dual_mcmc_jax.import_torch.adam import parameter_order
from dual_mcmc_jax.import_torch.checks import map_state_dict
from dual_mcmc_jax.import_torch.names import CheckpointMismatchError
from dual_mcmc_jax.import_torch.names import NETS
from dual_mcmc_jax.import_torch.names import NumpyStateDict
from dual_mcmc_jax.import_torch.names import Slot
from dual_mcmc_jax.import_torch.names import tensor_slots
from dual_mcmc_jax.import_torch.names import to_flax_layout
from dual_mcmc_jax.import_torch.names import to_torch_layout
from dual_mcmc_jax.import_torch.names import to_torch_state_dict
from dual_mcmc_jax.import_torch.names import torch_module_names
from dual_mcmc_jax.import_torch.names import torch_name
from dual_mcmc_jax.import_torch.pth import read_torch_checkpoint
from dual_mcmc_jax.import_torch.state import abstract_variables
from dual_mcmc_jax.import_torch.state import build_train_state
from dual_mcmc_jax.import_torch.state import check_workdir_free
from dual_mcmc_jax.import_torch.state import import_checkpoint
from dual_mcmc_jax.import_torch.state import import_file
from dual_mcmc_jax.import_torch.state import map_networks
from dual_mcmc_jax.import_torch.state import map_optimizers
