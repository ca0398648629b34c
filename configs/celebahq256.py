"""CelebA-HQ 256x256: the CelebA residual layout generalised to 256.

tfds `celeb_a_hq/256` is built from a manual download: put data256x256.tar
(the 30,000 images as 256x256 PNGs) in <data_dir>/downloads/manual, then
  python main.py --config=configs/celebahq256.py --workdir=runs/celebahq256
prepares it on the first run.
The generator halves its width per block (1024 -> 16 channels at 256x256) and
the EBM doubles it per block; FID uses 30,000 samples as in the paper.
"""

from configs import celeba64


def get_config():
  """Returns the CelebA-HQ-256 configuration."""
  config = celeba64.get_config()
  config.data.dataset = 'celebahq256'
  config.data.image_size = 256
  config.training.batch_size = 32
  config.eval.num_samples = 30_000
  config.eval.batch_size = 64  # 256x256 chains with the widest EBM.
  return config
