"""CIFAR-10 32x32, residual nets at the paper's widths (ngf = nef = 512, nif = 128).

The reference implementation's settings (the authors' config.py,
github.com/jcui1224/dual-MCMC):
  python main.py --config=configs/cifar10.py --workdir=runs/cifar10
Width sweep of the paper's supplementary Table 2: --config.model.nef=256 / 1024.
"""

from configs import default


def get_config():
  """Returns the CIFAR-10 configuration."""
  return default.get_config()
