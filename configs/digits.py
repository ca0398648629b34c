"""Offline image config: scikit-learn's bundled 8x8 digits upsampled to 16x16.

No download, finishes on a laptop CPU in minutes:
  python main.py --config=configs/digits.py --workdir=runs/digits
  python main.py --mode=eval --config=configs/digits.py --workdir=runs/digits
"""

from configs import default


def get_config():
  """Returns the digits configuration (reference hyper-parameters, small nets)."""
  config = default.get_config()
  config.data.dataset = 'digits'
  config.data.image_size = 16
  config.data.num_channels = 1
  # The plain conv nets keep a step well under a second on a laptop CPU;
  # the residual nets at these sizes are about 40x more expensive.
  config.model.arch = 'simple'
  config.model.nz = 32
  config.model.ngf = 32
  config.model.nef = 32
  config.model.nif = 32
  config.training.batch_size = 64
  config.training.num_epochs = 100
  config.training.num_train_steps = 1500
  config.training.log_every_steps = 50
  config.training.image_every_steps = 250
  config.training.checkpoint_every_steps = 250
  # Offline evaluation: synthetic OOD sets, FID against all 1,500 training
  # digits (needs the Inception weights), inpainting on the 297 test digits
  # (mask sides scale to 5 / 8 / 10 pixels, R blocks to 2 pixels).
  config.eval.ood_datasets = 'uniform,constant'
  # A classifier trained on the real digits scores the samples, the offline
  # stand-in for FID (evaluators/classifier.py).
  config.eval.evaluators = 'fid,ood,inpainting,cost,classifier'
  config.eval.num_samples = 2000
  return config
