"""CelebA 64x64: the reference's CelebA residual nets (ngf = nef = 1024).

Crop box (15, 40, 163, 188) of the aligned 178x218 images, resize to 64,
random horizontal flip:
  python main.py --config=configs/celeba64.py --workdir=runs/celeba64
"""

from configs import default


def get_config():
  """Returns the CelebA-64 configuration."""
  config = default.get_config()
  config.data.dataset = 'celeba64'
  config.data.image_size = 64
  config.data.random_flip = True
  config.model.resnet_style = 'celeba'
  config.model.ngf = 1024
  config.model.nef = 1024
  config.model.nif = 128
  config.langevin_x.step_size = 0.3
  config.loss.s_factor = 70.0
  # The paper's OOD protocol is for CIFAR-10 only.
  config.eval.evaluators = 'fid,inpainting,cost'
  config.eval.ood_datasets = ''
  return config
