"""2-D densities with a replay buffer: the EBM right, the generator not.

  python main.py --config=configs/toy2d_buffer.py --workdir=runs/toy2d_buffer

configs/toy2d.py with three remedies in place of its generator jumps and
z-chain: random-walk Metropolis jumps (langevin_x.jump_std), a replay
buffer from which 95% of the negative chains continue
(training.replay_buffer_size) and an energy penalty (loss.energy_l2). Its
EBM learns the densities (TV 0.12 to 0.29 over 3 seeds), but its
generator's samples are poor (energy distance 0.2 to 1.5): the buffer's
chains teach the EBM, not dual-MCMC teaching (docs/results.md). The earlier
results of docs/results.md and docs/toy2d/ were measured with it.
"""

from configs import toy2d


def get_config():
  """Returns the 2-D configuration with a replay buffer."""
  config = toy2d.get_config()
  # Not configs/toy2d.py's generator jumps, noise starts and posterior chain.
  config.langevin_x.generator_jumps = False
  config.training.negative_noise_fraction = 0.0
  config.langevin_z.rule = 'reference'
  # The MLP generator's Jacobian is larger than the image nets'; a smaller
  # z-step keeps the posterior chain stable (0.1 diverged within 50 steps).
  config.langevin_z.step_size = 0.05
  config.langevin_z.noise = 0.1
  config.loss.sigma = 0.3
  # The x-teaching weight: at the image configs' 50 the generator's samples
  # collapsed onto one moon in a 1,500-iteration 2moons run.
  config.loss.s_factor = 5.0
  # The reference's schedule: the rate multiplied by 0.998 once per epoch.
  config.optim.lr_schedule = 'exponential'
  config.training.num_train_steps = 3000
  # Its remedies: random-walk Metropolis jumps, an energy penalty, and ten
  # batches of earlier negatives from which 95% of the negative chains
  # continue (5% start afresh at generator samples).
  config.langevin_x.jump_std = 1.5
  config.loss.energy_l2 = 0.1
  config.training.replay_buffer_size = 2560
  config.training.replay_fraction = 0.95
  return config
