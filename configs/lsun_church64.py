"""LSUN church_outdoor 64x64 with the CelebA-64 nets and settings.

Center crop, resize to 64:
  python main.py --config=configs/lsun_church64.py --workdir=runs/church64
"""

from configs import celeba64


def get_config():
  """Returns the LSUN-Church-64 configuration."""
  config = celeba64.get_config()
  config.data.dataset = 'lsun_church64'
  config.data.random_flip = True
  return config
