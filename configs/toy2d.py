"""Synthetic 2-D densities with small MLP nets: runs on a laptop in minutes.

  python main.py --config=configs/toy2d.py --workdir=runs/toy2d_8gaussians
  python main.py --config=configs/toy2d.py --workdir=runs/toy2d_rings \
      --config.data.toy2d_name=rings

Densities: 8gaussians, 25gaussians, rings, checkerboard, 2spirals, 2moons,
pinwheel (dual_mcmc_jax/toy2d.py). The EBM has no spectral norm here: a
1-Lipschitz energy cannot express modes of standard deviation 0.1. The chain
settings are scaled to the data (the image step sizes would overshoot the
sharp 2-D modes).
"""

from configs import default


def get_config():
  """Returns the 2-D toy configuration."""
  config = default.get_config()
  config.data.dataset = 'toy2d'
  config.data.toy2d_name = '8gaussians'
  config.data.toy2d_num_points = 50_000
  config.model.arch = 'mlp'
  config.model.nz = 2
  config.model.mlp_hidden = 128
  config.model.mlp_layers = 3
  config.model.ebm_spectral_norm = False
  config.langevin_x.step_size = 0.1
  config.langevin_x.noise = 0.01
  # The MLP generator's Jacobian is larger than the image nets'; a smaller
  # z-step keeps the posterior chain stable (0.1 diverged within 50 steps).
  config.langevin_z.step_size = 0.05
  config.langevin_z.noise = 0.1
  config.optim.lr_e = 1e-3
  config.optim.lr_g = 1e-3
  config.optim.lr_i = 1e-3
  config.training.batch_size = 256
  config.training.num_train_steps = 3000
  config.training.log_every_steps = 100
  config.training.image_every_steps = 500
  config.training.checkpoint_every_steps = 1000
  config.training.num_image_samples = 1000
  # Noise-initialised chains (training.x_chain_init='noise') start uniform
  # in the box the densities live in.
  config.training.x_noise_low = -4.0
  config.training.x_noise_high = 4.0
  # FID, OOD and inpainting need images; densities, sample distances and
  # mode coverage are benchmarks/toy2d.py (--workdir scores a run of this
  # config). --mode=sample draws scatter plots.
  config.eval.evaluators = 'cost'
  config.eval.num_samples_to_write = 5000
  return config
