"""CIFAR-10 with the plain conv nets of the paper's Table 1 ("Ours^1").

Widths chosen so the parameter counts match Table 4 (G 8M, I 5M, E 2M):
  python main.py --config=configs/cifar10_simple.py --workdir=runs/cifar10_simple
"""

from configs import default


def get_config():
  """Returns the simple-network CIFAR-10 configuration."""
  config = default.get_config()
  config.model.arch = 'simple'
  config.model.ngf = 100  # G: 8.05M parameters
  config.model.nef = 112  # E: 2.02M
  config.model.nif = 128  # I: 4.72M
  return config
