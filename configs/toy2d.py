"""Synthetic 2-D densities with small MLP nets: runs on a laptop in minutes.

  python main.py --config=configs/toy2d.py --workdir=runs/toy2d_8gaussians
  python main.py --config=configs/toy2d.py --workdir=runs/toy2d_rings \
      --config.data.toy2d_name=rings

Densities: 8gaussians, 25gaussians, rings, checkerboard, 2spirals, 2moons,
pinwheel (dual_mcmc_jax/toy2d.py). The EBM has no spectral norm here: a
1-Lipschitz energy cannot express modes of standard deviation 0.1.

The dual-MCMC iteration of the image configs (both x-chains started at
generator samples, the z-chain, all three updates, no replay buffer), with
settings chosen so that both the EBM's exp(-E) and the generator's samples
are right (docs/results.md, "Both models right"):

* The x-chains follow the paper's Langevin rule (supplementary Eq. 5-6)
  with a small step, so that they sample exp(-E) at temperature 1 and the
  EBM is a density in its own right (benchmarks/toy2d.py scores it).
* Generator jumps in the EBM's negative chain (langevin_x.generator_jumps):
  Metropolis moves by the difference of two generator samples, which carry
  the chains between separated modes. Without them the EBM learns the
  generator's share of each mode only relative to the data's, and its mode
  weights wander.
* A tenth of the negative chains start uniform in the data's box
  (training.negative_noise_fraction), so that some negatives reach the
  places neither the data nor the generator visit: without them the energy
  there drifts down and a one-piece density such as the held-out banana
  loses a quarter of its mass off the data.
* The z-chain also follows the paper's rule, which samples the generator's
  posterior with its prior term; with the wider likelihood below, the
  generator then learns each mode's share from the data.
* A wider generator likelihood in that posterior (loss.sigma 0.45; 0.3
  in the image configs). At 0.3 the share of samples the generator gives
  each mode is fixed in its first few hundred iterations, often a few
  points off the data's (8gaussians: mode-share TV 0.095); at 0.45 they
  stay within 0.038 of the data's on 3 seeds of both mixtures; at 0.6
  unequal3's light mode took too many (0.25).
* A small x-teaching weight (loss.s_factor): the generator's regression
  onto the end of a Langevin chain in a sharp, right EBM pulls each mode
  towards its centre and moves samples between modes towards the heaviest
  one.
* Learning rates that fall along a half cosine to 0 (optim.lr_schedule)
  over 4,500 iterations: under a constant rate each batch's noise keeps
  moving the EBM's mode weights and the generator's shares, and the run
  ends wherever they are; over 3,000 the falling rate stopped the rings'
  EBM before it had emptied the space between the rings.

configs/toy2d_buffer.py is the earlier setting: a replay buffer, random-walk
jumps and an energy penalty; its EBM is right and its generator is not.
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
  config.langevin_x.rule = 'paper'
  config.langevin_x.step_size = 0.002
  config.langevin_x.generator_jumps = True
  # The paper's rule samples exp(-E) itself: no temperature to divide by.
  config.loss.ebm_temperature_scaling = False
  # The posterior chain with its prior term; the MLP generator's Jacobian
  # needs a small step (0.05 with the reference rule, whose noise 0.1
  # ignores the step).
  config.langevin_z.rule = 'paper'
  config.langevin_z.step_size = 0.01
  config.loss.sigma = 0.45
  config.loss.s_factor = 0.02
  config.optim.lr_e = 1e-3
  config.optim.lr_g = 1e-3
  config.optim.lr_i = 1e-3
  config.optim.lr_schedule = 'cosine'
  config.training.batch_size = 256
  config.training.num_train_steps = 4500
  config.training.log_every_steps = 100
  config.training.image_every_steps = 500
  config.training.checkpoint_every_steps = 1000
  config.training.num_image_samples = 1000
  # Noise-started chains (negative_noise_fraction here, or the EBM alone of
  # training.x_chain_init='noise') start uniform in the densities' box.
  config.training.negative_noise_fraction = 0.1
  config.training.x_noise_low = -4.0
  config.training.x_noise_high = 4.0
  # FID, OOD and inpainting need images; densities, sample distances and
  # mode coverage are benchmarks/toy2d.py (--workdir scores a run of this
  # config). --mode=sample draws scatter plots.
  config.eval.evaluators = 'cost'
  config.eval.num_samples_to_write = 5000
  return config
