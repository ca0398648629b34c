"""Default configuration: the reference implementation's CIFAR-10 settings.

Every number that the paper or the reference implementation fixes lives here
as a field; experiment configs import `get_config()` and override what
differs. Groups: data, model, langevin_x, langevin_z, loss, optim, training,
eval.

Run (CIFAR-10, needs the dataset in the tfds data dir):
  python main.py --config=configs/default.py --workdir=runs/cifar10
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """Returns the reference CIFAR-10 configuration."""
  config = ml_collections.ConfigDict()

  # --- Data -------------------------------------------------------------
  config.data = data = ml_collections.ConfigDict()
  # One of: cifar10, celeba64, lsun_church64, celebahq256, digits, toy2d, npz.
  data.dataset = 'cifar10'
  data.image_size = 32
  data.num_channels = 3
  data.data_dir = ml_collections.config_dict.placeholder(str)  # tfds data dir.
  # Let tfds download and prepare a missing dataset. Off by default so that an
  # offline machine fails at once with instructions instead of retrying.
  data.download = False
  data.random_flip = False  # The reference uses no augmentation on CIFAR-10.
  data.train_split = 'train'  # tfds split(s) to train on.
  # toy2d: density name, and the number of points that make one "epoch".
  data.toy2d_name = '8gaussians'
  data.toy2d_num_points = 50_000
  # npz: path to a .npz whose first array (or `npz_key`) holds the data.
  data.npz_path = ml_collections.config_dict.placeholder(str)
  data.npz_key = ml_collections.config_dict.placeholder(str)

  # --- Networks ----------------------------------------------------------
  config.model = model = ml_collections.ConfigDict()
  # resnet: the reference residual nets. simple: the plain conv nets of the
  # paper's Table 1. mlp: small fully connected nets for 2-D data.
  model.arch = 'resnet'
  # cifar: constant width (ngf -> ngf), EBM with two downsampling blocks and
  # two plain ones. celeba: widths halve per generator block and double per
  # EBM block, every EBM block downsamples (the CelebA-64 nets).
  model.resnet_style = 'cifar'
  model.nz = 128
  model.ngf = 512
  model.nef = 512
  model.nif = 128
  model.mlp_hidden = 128  # Width of the 2-D MLP nets.
  model.mlp_layers = 3  # Hidden layers of the 2-D MLP nets.
  model.ebm_spectral_norm = True  # Spectral norm on every EBM layer.
  # Power iterations per EBM forward pass. PyTorch's spectral_norm runs one
  # per forward pass in train mode, including every Langevin step.
  model.sn_power_iterations = 1

  # --- x-revision: Langevin on x under the EBM ------------------------
  config.langevin_x = lx = ml_collections.ConfigDict()
  lx.steps = 30
  lx.step_size = 0.5  # s_x
  lx.noise = 0.001  # n_x (only used by the reference rule)
  # reference: x -= s^2/2 * dE/dx + n * eps.  paper: x -= s * dE/dx + sqrt(2s) eps.
  lx.rule = 'reference'

  # --- z-revision: Langevin on z under the generator posterior ----------
  config.langevin_z = lz = ml_collections.ConfigDict()
  lz.steps = 10
  lz.step_size = 0.1  # s_z
  lz.noise = 0.1  # n_z
  lz.rule = 'reference'

  # --- Losses --------------------------------------------------------------
  config.loss = loss = ml_collections.ConfigDict()
  loss.sigma = 0.3  # Generator observation noise.
  loss.prior_sigma = 1.0
  loss.g_factor = 1.0  # Gfactor
  loss.s_factor = 50.0  # Sfactor
  loss.i_factor = 0.1  # Ifactor
  # Divide the EBM loss by the Langevin temperature (n_x / s_x)^2.
  loss.ebm_temperature_scaling = True
  # Stop when |mean E(x) - mean E(x_revised)| exceeds this (reference: 1e4).
  loss.energy_diff_limit = 1e4

  # --- Optimisers ------------------------------------------------------------
  config.optim = optim = ml_collections.ConfigDict()
  optim.lr_e = 1e-4
  optim.lr_g = 3e-4
  optim.lr_i = 1e-4
  optim.beta1 = 0.0
  optim.beta2 = 0.9
  optim.eps = 1e-8
  # PyTorch-Adam style (coupled) L2: wd * param added to the gradient.
  optim.wd_e = 0.0
  optim.wd_g = 5e-4
  optim.wd_i = 5e-4
  optim.lr_decay = 0.998  # Multiplied into every learning rate once per epoch.

  # --- Training loop ----------------------------------------------------------
  config.training = training = ml_collections.ConfigDict()
  training.batch_size = 100
  training.num_epochs = 301
  training.num_train_steps = -1  # Overrides num_epochs when > 0.
  training.seed = 1
  # Network compute dtype: 'float32' or 'bfloat16' (mixed precision: params,
  # optimiser states, Langevin iterates and energies stay float32).
  training.compute_dtype = 'float32'
  # Run a second x-chain from the updated generator for the EBM update (the
  # reference's "fine_tune"); False is the paper's Algorithm 1.
  training.second_x_chain = True
  training.log_every_steps = 100
  training.image_every_steps = 1000
  training.checkpoint_every_steps = 1000
  training.max_checkpoints_to_keep = 3
  training.num_image_samples = 64  # Images in each TensorBoard grid.

  # --- Evaluation ------------------------------------------------------------
  config.eval = ev = ml_collections.ConfigDict()
  ev.langevin_steps = 70  # x-steps of the reference evaluation sampler.
  ev.langevin_step_size = 0.4
  ev.langevin_noise = 0.001
  ev.num_samples = 50_000

  return config
