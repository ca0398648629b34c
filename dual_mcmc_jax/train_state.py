"""What a run is made of, and how its settings create it.

`create_models(settings)` maps the model and data settings onto the three
networks (the only place that does, as flax's imagenet example keeps
`create_model` outside its models), `create_optimizers` builds their optax
optimisers from `settings.optim`, and `create_train_state` the initial
state.

`TrainState` is a plain pytree (checkpointed whole by orbax): per network its
parameters, its mutable collections (`batch_stats`: BatchNorm statistics in
the generator, spectral-norm vectors in the EBM) and its optimiser state, plus
the step and the run's base PRNG key (raw key data, so that it serialises),
and, only when `training.replay_buffer_size > 0`, the replay buffer of the
EBM's negatives (`ReplayTrainState`, `ReplaySpec`). Per-step randomness is
derived from (key, step), never stored.

Optimisers follow the reference: Adam with betas (0, 0.9), PyTorch-style
*coupled* weight decay (`wd * param` added to the gradient before the Adam
moments, i.e. `add_decayed_weights` placed before `scale_by_adam`, not AdamW)
and a learning rate multiplied by 0.998 once per epoch.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from dual_mcmc_jax import cpu
from dual_mcmc_jax import networks
from dual_mcmc_jax import settings as settings_lib

Array = jax.Array
Dtype = Any

COMPUTE_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def create_models(settings: settings_lib.Settings | Any,
                  dtype: Dtype | None = None) -> networks.Models:
  """Maps the model and data settings onto the three modules.

  Args:
    settings: the experiment's settings (or the config they are read from,
      `settings.from_config`).
    dtype: compute dtype of the networks (parameters stay float32); defaults
      to `settings.training.compute_dtype`.

  Returns:
    A `Models` holding the EBM, generator and inference modules, their
    convolutions those of the backend `training.cpu_plugin` chooses.
  """
  settings = settings_lib.from_config(settings)
  if dtype is None:
    dtype = COMPUTE_DTYPES[settings.training.compute_dtype]
  m, d = settings.model, settings.data
  sn = dict(spectral_norm=m.ebm_spectral_norm, sn_steps=m.sn_power_iterations)
  if m.arch == 'mlp':
    dim = d.point_dim
    return networks.Models(
        ebm=networks.MlpEBM(m.mlp_hidden, m.mlp_layers, dtype=dtype, **sn),
        gen=networks.MlpGenerator(dim, m.mlp_hidden, m.mlp_layers, dtype),
        inf=networks.MlpInference(m.nz, m.mlp_hidden, m.mlp_layers, dtype),
        data_shape=(dim,), nz=m.nz)
  size, channels = d.image_size, d.num_channels
  conv = dict(ops=cpu.compute_for(settings.training.cpu_plugin).conv_ops,
              dtype=dtype)
  shape = (size, size, channels)
  if m.arch == 'simple':
    return networks.Models(
        ebm=networks.SimpleEBM(m.nef, size, **sn, **conv),
        gen=networks.SimpleGenerator(m.nz, m.ngf, size, channels, **conv),
        inf=networks.SimpleInference(m.nz, m.nif, size, **conv),
        data_shape=shape, nz=m.nz)
  style = m.resnet_style
  return networks.Models(
      ebm=networks.ResEBM(m.nef, size, style, **sn, **conv),
      gen=networks.ResGenerator(m.nz, m.ngf, size, channels, style, **conv),
      inf=networks.ResInference(m.nz, m.nif, size, style, **conv),
      data_shape=shape, nz=m.nz)


@flax.struct.dataclass
class NetState:
  params: Any
  state: dict[str, Any]  # {'batch_stats': ...} or {}
  opt_state: optax.OptState


@flax.struct.dataclass
class TrainState:
  step: Array  # int32 scalar
  ebm: NetState
  gen: NetState
  inf: NetState
  rng: Array  # uint32 key data of the run's base key


@flax.struct.dataclass
class ReplayTrainState(TrainState):
  """The state of a run with a replay buffer (`ReplaySpec`).

  A subclass, so that a run without a buffer keeps exactly the state, and
  the checkpoint layout, of the code before buffers existed.
  """
  replay: Array  # [replay_buffer_size, *data_shape] past negatives


@dataclasses.dataclass(frozen=True)
class ReplaySpec:
  """The replay buffer of `settings.training` (`replay_spec`)."""
  size: int
  fraction: float  # Share of negative chains continued from the buffer.
  low: float  # The buffer starts uniform in [low, high) per coordinate.
  high: float


def replay_spec(training: settings_lib.TrainingSettings) -> ReplaySpec | None:
  """The replay buffer of `settings.training`, or None when it has none."""
  if training.replay_buffer_size <= 0:
    return None
  return ReplaySpec(size=training.replay_buffer_size,
                    fraction=training.replay_fraction,
                    low=training.x_noise_low, high=training.x_noise_high)


@dataclasses.dataclass(frozen=True)
class Optimizers:
  ebm: optax.GradientTransformation
  gen: optax.GradientTransformation
  inf: optax.GradientTransformation
  lr_ebm: optax.Schedule
  lr_gen: optax.Schedule
  lr_inf: optax.Schedule


def create_learning_rate_fn(base_lr: float, decay: float,
                            steps_per_epoch: int, schedule: str = 'exponential',
                            total_steps: int | None = None) -> optax.Schedule:
  """A net's learning rate by step, as `config.optim.lr_schedule` names.

  'exponential' (the reference): base_lr * decay ** floor(step /
  steps_per_epoch). 'cosine': base_lr * (1 + cos(pi * step / total_steps)) /
  2, from base_lr to 0 over the run (SGDR's annealing, Loshchilov & Hutter,
  2017, without restarts), `decay` unused: the rate stays near base_lr while
  the models learn and is small when the run ends, so that the batch's noise
  no longer moves them.
  """
  if schedule == 'cosine':
    if total_steps is None:
      # A default length would silently end the rate at that step.
      raise ValueError("optim.lr_schedule='cosine' needs the run's total_steps "
                       '(create_optimizers(..., total_steps=N))')
    return optax.cosine_decay_schedule(base_lr, max(total_steps, 1))
  return optax.exponential_decay(base_lr, transition_steps=max(steps_per_epoch, 1),
                                 decay_rate=decay, staircase=True)


def create_optimizer(schedule: optax.Schedule, weight_decay: float, beta1: float,
                     beta2: float, eps: float) -> optax.GradientTransformation:
  """Adam with PyTorch-style coupled L2 weight decay."""
  parts = []
  if weight_decay:
    parts.append(optax.add_decayed_weights(weight_decay))
  parts += [optax.scale_by_adam(b1=beta1, b2=beta2, eps=eps),
            optax.scale_by_learning_rate(schedule)]
  return optax.chain(*parts)


def create_optimizers(o: settings_lib.OptimSettings, steps_per_epoch: int,
                      total_steps: int | None = None) -> Optimizers:
  """Builds the three optimisers from `settings.optim`.

  The schedules need `steps_per_epoch` ('exponential') or the run's
  `total_steps` ('cosine', which refuses to guess it); neither changes the
  optimiser state's shape, so code that only restores or imports a state
  may pass 1 for both.
  """
  lrs = {name: create_learning_rate_fn(lr, o.lr_decay, steps_per_epoch,
                                       o.lr_schedule, total_steps)
         for name, lr in (('e', o.lr_e), ('g', o.lr_g), ('i', o.lr_i))}
  make = lambda name, wd: create_optimizer(lrs[name], wd, o.beta1, o.beta2,
                                           o.eps)
  return Optimizers(ebm=make('e', o.wd_e), gen=make('g', o.wd_g),
                    inf=make('i', o.wd_i), lr_ebm=lrs['e'], lr_gen=lrs['g'],
                    lr_inf=lrs['i'])


def _net_state(variables: dict[str, Any],
               tx: optax.GradientTransformation) -> NetState:
  params = variables['params']
  state = {k: v for k, v in variables.items() if k != 'params'}
  return NetState(params=params, state=state, opt_state=tx.init(params))


def create_train_state(models: networks.Models, optimizers: Optimizers,
                       seed: int, replay: ReplaySpec | None = None
                       ) -> TrainState:
  """Initialises networks and optimiser states from `seed`.

  Args:
    models: the three modules.
    optimizers: their optimisers.
    seed: the run's seed; network init and the base key both derive from it.
    replay: the replay buffer (`replay_spec(settings.training)`), or None.

  Returns:
    A fresh TrainState at step 0.
  """
  init_key, _ = _seed_keys(seed)
  state = train_state_from_variables(
      networks.init_models(models, init_key), optimizers, seed)
  if replay is None:
    return state
  return ReplayTrainState(**vars(state), replay=jax.random.uniform(
      jax.random.fold_in(init_key, 1), (replay.size, *models.data_shape),
      jnp.float32, replay.low, replay.high))


def _seed_keys(seed: int) -> tuple[Array, Array]:
  """(network init key, run base key), both derived from `seed`."""
  init_key, run_key = jax.random.split(jax.random.key(seed))
  return init_key, run_key


def rng_stream(seed: int, stream: int) -> Array:
  """Base key data of random stream `stream` of a run seeded with `seed`.

  Stream 0 is the key `create_train_state` stores; stream k > 0 is the fresh
  stream a divergence rollback switches to (the k-th), so that the replayed
  steps draw different Langevin noise from the ones that diverged while the
  network initialisation stays that of `seed`.

  Args:
    seed: the run's seed.
    stream: 0 for the original stream, k for the k-th fresh one.

  Returns:
    Raw uint32 key data, the form `TrainState.rng` holds.
  """
  _, run_key = _seed_keys(seed)
  if stream:
    run_key = jax.random.fold_in(run_key, stream)
  return jax.random.key_data(run_key)


def step_key(state: TrainState) -> Array:
  """The PRNG key of the current step: fold_in(base key, step)."""
  return jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)


def train_state_from_variables(variables: dict[str, dict[str, Any]],
                               optimizers: Optimizers, seed: int,
                               step: int = 0) -> TrainState:
  """A TrainState holding given network variables instead of fresh ones.

  What `create_train_state` builds, minus the network initialisation: fresh
  optimiser states and the base key a run with `seed` uses. For variables
  that come from elsewhere (an imported checkpoint).

  Args:
    variables: {'ebm' | 'gen' | 'inf': {'params': ..., 'batch_stats'?: ...}}.
    optimizers: the three optimisers.
    seed: the run's seed (gives the base key).
    step: the train step to record.

  Returns:
    A TrainState (without replay buffer) at `step`.
  """
  _, run_key = _seed_keys(seed)
  return TrainState(
      step=jnp.asarray(step, jnp.int32),
      ebm=_net_state(variables['ebm'], optimizers.ebm),
      gen=_net_state(variables['gen'], optimizers.gen),
      inf=_net_state(variables['inf'], optimizers.inf),
      rng=jax.random.key_data(run_key))
