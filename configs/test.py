"""Tiny CPU config for tests: 16x16 grayscale digits, narrow nets, short chains.

Runs in seconds on a laptop CPU, no download:
  python main.py --config=configs/test.py --workdir=/tmp/dual_mcmc_test
"""

from configs import digits


def get_config():
  """Returns the tiny test configuration."""
  config = digits.get_config()
  config.model.arch = 'resnet'  # The paper's main architecture, tiny.
  config.model.ngf = 16
  config.model.nef = 16
  config.model.nif = 8
  config.model.nz = 8
  config.langevin_x.steps = 3
  config.langevin_z.steps = 2
  config.training.batch_size = 8
  config.training.num_train_steps = 4
  config.training.log_every_steps = 2
  config.training.image_every_steps = 4
  config.training.checkpoint_every_steps = 2
  config.training.num_image_samples = 8
  # Every evaluator on a handful of images; nothing is downloaded.
  config.eval.batch_size = 8
  config.eval.langevin_steps = 3
  config.eval.num_samples_to_write = 8
  config.eval.num_samples = 8
  config.eval.fid_num_reference_images = 8
  config.eval.inception_url = ''
  config.eval.fid_matrix_sqrt = 'eigh'
  config.eval.ood_datasets = 'uniform,constant'
  config.eval.ood_num_images = 16
  config.eval.inpainting_num_images = 8
  config.eval.inpainting_grid_images = 2
  config.eval.classifier_num_samples = 16
  config.eval.classifier_max_iter = 50
  config.eval.cost_warmup_steps = 1
  config.eval.cost_steps = 2
  return config
