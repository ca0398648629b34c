"""Imports a checkpoint of the authors' PyTorch code as an orbax checkpoint.

  python scripts/import_torch.py --config=configs/cifar10.py \
      --torch_checkpoint=PATH.pth --workdir=runs/cifar10_imported
  python main.py --config=configs/cifar10.py --workdir=runs/cifar10_imported

The config (with `--config.<group>.<field>=value` overrides, as for main.py)
must describe the checkpoint's nets. Mapping, checks and writing are
`dual_mcmc_jax.import_torch.import_file`; the package docstring lists the key
names and tensor layouts. PyTorch is not needed: the .pth file is read by
`dual_mcmc_jax.import_torch.pth`, which refuses anything but tensors and
plain containers. Bad input exits with status 1 and one `error:` line.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from dual_mcmc_jax import runtime  # First: quiets TensorFlow.
runtime.quiet_ctrl_c()  # Ctrl-C is one line from here.
from absl import app
from absl import flags
from ml_collections import config_flags


from dual_mcmc_jax import import_torch
from dual_mcmc_jax import settings as settings_lib
# pylint: enable=g-import-not-at-top,wrong-import-position

flags.DEFINE_string('torch_checkpoint', None,
                    "The authors' .pth checkpoint (torch.save of a dict with "
                    'netG, netE, netI, optG, optE, optI).')
flags.DEFINE_string('workdir', None,
                    'New workdir; the orbax checkpoint goes to '
                    'WORKDIR/checkpoints.')
flags.DEFINE_integer('step', None,
                     'Train step to record; default: the Adam step count of '
                     'the checkpoint, else 0.')
config_flags.DEFINE_config_file(
    'config', None, 'Configuration describing the checkpoint.',
    lock_config=True)
flags.mark_flags_as_required(['config', 'torch_checkpoint', 'workdir'])
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError('Too many command-line arguments.')
  settings = settings_lib.from_config(FLAGS.config)
  print(import_torch.import_file(settings, FLAGS.torch_checkpoint,
                                 FLAGS.workdir, FLAGS.step))


if __name__ == '__main__':
  runtime.run_main(main)
