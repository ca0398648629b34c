"""Default configuration: the reference implementation's CIFAR-10 settings.

Every number that the paper or the reference implementation fixes lives here
as a field; experiment configs import `get_config()` and override what
differs. Groups: data, model, langevin_x, langevin_z, loss, optim, training,
recovery, eval.

Run (CIFAR-10, needs the dataset in the tfds data dir):
  python main.py --config=configs/default.py --workdir=runs/cifar10
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """Returns the reference CIFAR-10 configuration."""
  config = ml_collections.ConfigDict()

  # --- Data -------------------------------------------------------------
  config.data = data = ml_collections.ConfigDict()
  # Paper (tfds): cifar10, celeba64, lsun_church64, celebahq256. OOD sets
  # (tfds, also trainable): svhn, cifar100, celeba32. Offline: digits, toy2d.
  # Your own data: npz, image_folder.
  data.dataset = 'cifar10'
  data.image_size = 32
  data.num_channels = 3  # 3 (RGB) or 1 (greyscale: digits, npz, image_folder).
  data.data_dir = ml_collections.config_dict.placeholder(str)  # tfds data dir.
  # Let tfds download and prepare a missing dataset. Off by default so that an
  # offline machine fails at once with instructions instead of retrying.
  data.download = False
  # Where tfds looks for manually downloaded files (celebahq256 needs
  # data256x256.tar); unset: tfds's default <data_dir>/downloads/manual.
  data.manual_dir = ml_collections.config_dict.placeholder(str)
  data.random_flip = False  # The reference uses no augmentation on CIFAR-10.
  data.train_split = 'train'  # tfds split(s) to train on.
  # toy2d: density name, and the number of points that make one "epoch".
  data.toy2d_name = '8gaussians'
  data.toy2d_num_points = 50_000
  # Dimension of the points the 'mlp' nets learn (toy2d; npz of points).
  data.point_dim = 2
  # npz: path to a .npz whose first array (or `npz_key`) holds the data.
  data.npz_path = ml_collections.config_dict.placeholder(str)
  data.npz_key = ml_collections.config_dict.placeholder(str)
  # image_folder: a directory searched recursively for .png/.jpg/.jpeg files
  # (hidden ones skipped), decoded into memory by each run (nothing is cached
  # between runs): shorter side resized to image_size, centre square kept,
  # converted to num_channels.
  data.image_folder = ml_collections.config_dict.placeholder(str)
  # Skip image files that cannot be decoded (counted in a warning) instead of
  # stopping at the first one; it is an error when none can be read.
  data.skip_unreadable = True
  data.num_load_workers = 0  # Threads decoding an image folder; 0: all CPUs.
  # Batches that data.prefetch_to_device keeps queued on the devices, so
  # host-to-device copies overlap the train step; 0: off.
  data.prefetch_to_device = 2

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
  # Std of a Metropolis random-walk jump after every step of the EBM's
  # negative chain (langevin.metropolis_jump); it lets a chain change mode.
  # 0: no jumps (the reference).
  lx.jump_std = 0.0
  # A Metropolis jump by the difference of two generator samples after every
  # step of the negative chain (remedies.generator_jump): it proposes the
  # generator's other modes. False: none (the reference).
  lx.generator_jumps = False
  # The share of the negative chains (the first ones) that take generator
  # jumps; the rest keep the generator's share of each mode (docs/configs.md).
  lx.generator_jump_fraction = 1.0

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
  # Energy-magnitude penalty weight: energy_l2 * (mean E(x)^2 + mean
  # E(x_neg)^2) joins the EBM loss (Du & Mordatch 2019). 0: the reference.
  loss.energy_l2 = 0.0
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
  # 'exponential': the per-epoch decay above (the reference); 'cosine': each
  # rate falls along a half cosine to 0 over the run (lr_decay unused).
  optim.lr_schedule = 'exponential'

  # --- Training loop ----------------------------------------------------------
  config.training = training = ml_collections.ConfigDict()
  training.batch_size = 100
  training.num_epochs = 301
  training.num_train_steps = 0  # Overrides num_epochs when > 0; 0: use it.
  training.seed = 1
  # Network compute dtype: 'float32' or 'bfloat16' (mixed precision: params,
  # optimiser states, Langevin iterates and energies stay float32).
  training.compute_dtype = 'float32'
  # The CPU plug-in (dual_mcmc_jax/cpu/): faster convolutions and chains on
  # XLA's CPU backend, the same numbers to float32 rounding. 'auto': on for
  # the CPU backend only; GPUs and TPUs run XLA's own. 'on', 'off'.
  training.cpu_plugin = 'auto'
  # Run a second x-chain from the updated generator for the EBM update (the
  # reference's "fine_tune"); False is the paper's Algorithm 1.
  training.second_x_chain = True
  # Ablations of the teaching signals (benchmarks/toy2d.py compares them);
  # the defaults are the reference method.
  # Run the z-chain; False uses the inference model's draw z0 directly as the
  # latent the generator and the inference model learn from (z1 = z0).
  training.z_revision = True
  # The generator's Sfactor term ||G(z) - x1||^2: it learns from the EBM's
  # x-revision. False drops the term (the x-chain still feeds the inference
  # model's Ifactor term, so chain lengths are unchanged).
  training.generator_x_teaching = True
  # The generator's Gfactor reconstruction term and the inference model's
  # update. False is cooperative learning: the generator learns only from the
  # x-revised samples; no z-chain runs and the inference model stays put.
  training.generator_data_teaching = True
  # Start of the EBM's negative chain. 'generator': G(z) (dual-MCMC).
  # 'noise': uniform in [x_noise_low, x_noise_high] per coordinate, a single
  # x-chain, and only the EBM is trained (short-run MCMC, no generator).
  training.x_chain_init = 'generator'
  # Start of the chain that makes the EBM's negatives (second x-chain):
  # 'generator' (G(z), the reference) or 'data' (the data batch:
  # contrastive divergence).
  training.negative_chain_init = 'generator'
  # The first `long_chains` of the EBM's negatives run `long_chain_steps`
  # more Langevin steps (a few long chains mixed into the batch); 0: none.
  training.long_chains = 0
  training.long_chain_steps = 0
  # Replay buffer (Du & Mordatch 2019): a `replay_fraction` of the EBM's
  # negative chains continue from past negatives kept in a buffer of
  # `replay_buffer_size` (started uniform in [x_noise_low, x_noise_high]),
  # the rest start as above; the chains' ends go back into the buffer, which
  # is part of the checkpoint. 0: no buffer (the reference).
  training.replay_buffer_size = 0
  training.replay_fraction = 0.95
  # A share of the EBM's negative chains that start uniform in
  # [x_noise_low, x_noise_high] instead (the last ones of the batch), so
  # that some negatives reach where neither data nor generator go. 0: none.
  training.negative_noise_fraction = 0.0
  training.x_noise_low = -1.0  # The image range; configs/toy2d.py widens it.
  training.x_noise_high = 1.0
  training.log_every_steps = 100
  training.image_every_steps = 1000
  training.checkpoint_every_steps = 1000
  # Steps between health checks (NaN loss, exploding energy difference). A
  # check fetches metrics to the host; between checks the device runs ahead.
  # Checks also run at every log step and before every checkpoint, so a
  # checkpoint never holds a diverged state.
  training.health_every_steps = 20
  training.max_checkpoints_to_keep = 3
  training.num_image_samples = 64  # Images in each TensorBoard grid.

  # --- Recovery: divergence rollbacks and resuming -----------------------
  # On a NaN loss or |energy_diff| > loss.energy_diff_limit the run rolls back
  # to its last checkpoint (or the initial state) and continues with these
  # remedies, recorded in <workdir>/recovery.json so that a restart keeps
  # them (see dual_mcmc_jax/recovery.py).
  config.recovery = recovery = ml_collections.ConfigDict()
  # Rollbacks per run before a divergence stops it; 0: stop at the first
  # divergence, as the reference does.
  recovery.max_retries = 3
  # Switch to a fresh random stream on each rollback, so that the replayed
  # steps do not redraw the Langevin noise that diverged.
  recovery.fresh_rng = True
  # Multiplied into lr_e, lr_g and lr_i on each rollback; 1: unchanged.
  recovery.lr_factor = 1.0
  # Multiplied into langevin_x.step_size on each rollback; 1: unchanged.
  recovery.langevin_x_step_factor = 1.0
  # Resume a workdir whose config.json differs in a run-defining field
  # (checkpointing.RUN_DEFINING_FIELDS: nets, data, seed, batch size);
  # False refuses, so that a typo in --workdir cannot mix two runs.
  recovery.allow_config_change = False

  # --- Evaluation ------------------------------------------------------------
  # `python main.py --mode=eval` runs these on the latest checkpoint and writes
  # <workdir>/eval_<step>.json and TensorBoard entries (see evaluate.py).
  config.eval = ev = ml_collections.ConfigDict()
  # Comma-separated, any of: fid, ood, inpainting, cost, classifier.
  ev.evaluators = 'fid,ood,inpainting,cost'
  # False: an evaluator (or dataset) that cannot run here is skipped with a
  # warning and its reason in the JSON. True: that is an error.
  ev.strict = False
  ev.seed = 0  # Seeds every evaluation sampler, mask and synthetic set.
  # Global batch of evaluation sampling and of Inception / energy passes; a
  # multiple of the device count.
  ev.batch_size = 250
  # The reference's evaluation x-sampler (task_fid.py), started at G(z).
  ev.langevin_steps = 70
  ev.langevin_step_size = 0.4
  ev.langevin_noise = 0.001
  # --mode=sample: how many generator and EBM-revised samples to write.
  ev.num_samples_to_write = 100

  # FID (evaluators/fid.py).
  ev.num_samples = 50_000  # Samples per FID (30,000 for CelebA-HQ-256).
  # pytorch-fid's pt_inception-2015-12-05-6726825d.pth, or the .npz of
  # scripts/convert_inception_weights.py. If unset, `inception_url` is
  # downloaded into `inception_cache_dir` (machines with internet only).
  ev.inception_weights = ml_collections.config_dict.placeholder(str)
  ev.inception_url = (
      'https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/'
      'pt_inception-2015-12-05-6726825d.pth')
  ev.inception_cache_dir = '~/.cache/dual_mcmc_jax'
  # Cache of the dataset's reference statistics (default <workdir>/fid_stats).
  ev.stats_dir = ml_collections.config_dict.placeholder(str)
  ev.fid_reference_split = 'train'  # The reference scores against train.
  ev.fid_num_reference_images = -1  # <= 0: the whole split.
  # Precomputed reference statistics (.npz with mu, sigma) to use instead.
  ev.fid_reference_stats = ml_collections.config_dict.placeholder(str)
  # tr sqrt(sigma1 sigma2): 'sqrtm' (scipy, as pytorch-fid) or 'eigh' (a
  # symmetric eigenproblem: the same value, faster, never complex).
  ev.fid_matrix_sqrt = 'sqrtm'

  # Out-of-distribution detection (evaluators/ood.py): the energy's AUROC of
  # the in-distribution `ood_split` against each set. Entries: a dataset name
  # of the input pipeline, npz:/path.npz, folder:/path, uniform, constant.
  ev.ood_datasets = 'svhn,cifar100,celeba32'
  ev.ood_split = 'test'
  ev.ood_num_images = -1  # Per set; <= 0: all.

  # Inpainting (evaluators/inpainting.py).
  ev.inpainting_masks = 'M20,M30,M40,R20,R30,R40'
  ev.inpainting_split = 'test'
  ev.inpainting_num_images = -1  # <= 0: the whole split.
  # M sides and R block sizes are pixels at this image size (the paper's
  # 64x64 faces) and scale with config.data.image_size.
  ev.inpainting_mask_reference_size = 64
  ev.inpainting_block_size = 8  # Side of the blocks of the R masks.
  # Value of the hidden pixels in the inference model's input.
  ev.inpainting_fill_value = 0.0
  # Paste the observed pixels into the Inf+Gen and Inf+Tz+Gen recoveries too.
  ev.inpainting_paste_observed = True
  # Chain lengths; <= 0: those of config.langevin_z / config.langevin_x.
  ev.inpainting_z_steps = -1
  ev.inpainting_x_steps = -1
  ev.inpainting_grid_images = 4  # Images per mask in the picture.

  # Classifier-based sample quality (evaluators/classifier.py, digits only):
  # an MLP classifier trained on the real training digits scores samples.
  ev.classifier_hidden = 64  # Hidden units; its features give the Fréchet d.
  ev.classifier_max_iter = 300  # Adam epochs at most.
  ev.classifier_num_samples = 2000  # Generator and EBM-revised samples each.

  # Cost (evaluators/cost.py): seconds per training iteration.
  ev.cost_warmup_steps = 2  # Untimed; the first compiles.
  ev.cost_steps = 10

  return config
