"""A whole authors' checkpoint -> a Flax train state -> an orbax checkpoint.

`map_networks` and `map_optimizers` map netG / netE / netI and their Adam
states onto the models the config builds; `build_train_state` puts them into
a train state made by `train_state.train_state_from_variables`;
`import_checkpoint` validates everything before it writes the orbax
checkpoint, and `import_file` does it all for a `.pth` file.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from clu import parameter_overview
import jax
import jax.numpy as jnp
import optax
import orbax.checkpoint as ocp

from dual_mcmc_jax import checkpointing
from dual_mcmc_jax import networks
from dual_mcmc_jax import settings as settings_lib
from dual_mcmc_jax import train_state as ts
from dual_mcmc_jax.import_torch import adam
from dual_mcmc_jax.import_torch import checks
from dual_mcmc_jax.import_torch import pth
from dual_mcmc_jax.import_torch.names import CheckpointMismatchError
from dual_mcmc_jax.import_torch.names import NETS

# A ConfigDict, or the `Settings` read from one.
Config = Any


def abstract_variables(models: networks.Models) -> dict[str, Any]:
  """Shapes of the three nets' variables, without allocating them.

  Args:
    models: the three modules.

  Returns:
    {'ebm' | 'gen' | 'inf': variables as `jax.ShapeDtypeStruct`s}.
  """
  return jax.eval_shape(lambda k: networks.init_models(models, k),
                        jax.random.key(0))


def _check_config(config: Config) -> None:
  if config.model.arch != 'resnet':
    raise CheckpointMismatchError(
        f'config.model.arch={config.model.arch!r}: only the reference '
        "implementation's residual nets ('resnet') can be imported")


def _net_entry(checkpoint: Mapping[str, Any], name: str) -> Mapping[str, Any]:
  entry = checkpoint.get(name)
  if not isinstance(entry, Mapping):
    raise CheckpointMismatchError(
        f'the checkpoint has no {name!r} state dict (entries: '
        f'{", ".join(sorted(map(str, checkpoint)))})')
  return entry


def map_networks(config: Config,
                 checkpoint: Mapping[str, Any]
                 ) -> tuple[networks.Models, dict[str, dict[str, Any]]]:
  """Validates and maps netG / netE / netI of a checkpoint.

  Args:
    config: the experiment config describing the checkpoint's nets.
    checkpoint: {'netG': state dict, 'netE': ..., 'netI': ..., ...} with
      numpy arrays (see `pth.read_torch_checkpoint`).

  Returns:
    (models, {'gen' | 'ebm' | 'inf': Flax variables as numpy arrays}).

  Raises:
    CheckpointMismatchError: naming the first tensor that does not fit.
  """
  config = settings_lib.from_config(config)
  _check_config(config)
  models = ts.create_models(config)
  shapes = abstract_variables(models)
  variables = {}
  for net, name, _ in NETS:
    variables[name] = checks.map_state_dict(
        net, _net_entry(checkpoint, net), shapes[name], config)
  return models, variables


def map_optimizers(config: Config,
                   checkpoint: Mapping[str, Any],
                   variables: Mapping[str, Mapping[str, Any]]
                   ) -> dict[str, adam.AdamMoments | None]:
  """Maps the Adam states optG / optE / optI of a checkpoint.

  Args:
    config: the experiment config (its `optim` is compared, as warnings).
    checkpoint: the checkpoint with numpy arrays.
    variables: the mapped variables per net (`map_networks`).

  Returns:
    Adam moments per net ('gen' / 'ebm' / 'inf'), None where the checkpoint
    has no optimiser state for it.

  Raises:
    CheckpointMismatchError: an optimiser does not fit its net.
  """
  config = settings_lib.from_config(config)
  out = {}
  for net, name, opt in NETS:
    entry = checkpoint.get(opt)
    out[name] = None if not isinstance(entry, Mapping) else (
        adam.map_adam_state(net, opt, entry, checkpoint[net],
                            variables[name], config.optim))
  return out


def _set_adam(opt_state: Any, moments: adam.AdamMoments | None,
              step: int) -> Any:
  """Fills optax's chain state: Adam moments, and the schedule's count."""

  def fill(s):
    if isinstance(s, optax.ScaleByAdamState) and moments is not None:
      return s._replace(
          count=jnp.asarray(moments.count, jnp.int32),
          mu=jax.tree.map(jnp.asarray, moments.mu),
          nu=jax.tree.map(jnp.asarray, moments.nu))
    if isinstance(s, optax.ScaleByScheduleState):
      # The learning-rate schedule is a function of this count.
      return s._replace(count=jnp.asarray(step, jnp.int32))
    return s

  return jax.tree.map(fill, opt_state, is_leaf=lambda s: isinstance(
      s, (optax.ScaleByAdamState, optax.ScaleByScheduleState)))


def build_train_state(config: Config,
                      variables: Mapping[str, Mapping[str, Any]],
                      moments: Mapping[str, adam.AdamMoments | None],
                      step: int) -> ts.TrainState:
  """A TrainState holding the imported variables and optimiser states.

  Args:
    config: the experiment config.
    variables: mapped Flax variables per net ('gen' / 'ebm' / 'inf').
    moments: imported Adam moments per net, None for a fresh Adam state.
    step: the train step to record.

  Returns:
    The state, with the structure `checkpointing.restore_or_create_state`
    expects and the base key of a fresh run with `config.training.seed`.
  """
  config = settings_lib.from_config(config)
  # The optimiser state's structure does not depend on the schedule length.
  optimizers = ts.create_optimizers(config.optim, steps_per_epoch=1,
                                    total_steps=1)
  state = ts.train_state_from_variables(
      jax.tree.map(jnp.asarray, {n: dict(v) for n, v in variables.items()}),
      optimizers, int(config.training.seed), step)
  nets = {}
  for _, name, _ in NETS:
    net = getattr(state, name)
    nets[name] = net.replace(
        opt_state=_set_adam(net.opt_state, moments[name], step))
  return state.replace(**nets)


def check_workdir_free(workdir: str) -> None:
  """Refuses a workdir that already holds checkpoints.

  Args:
    workdir: the new run's workdir.

  Raises:
    FileExistsError: `workdir/checkpoints` holds a finished checkpoint.
  """
  directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
  # Finished checkpoints only: an unfinished one (an interrupted import's
  # temporary directory) is never loaded.
  steps = sorted(n for n in (os.listdir(directory) if os.path.isdir(
      directory) else []) if n.isdigit())
  if steps:
    raise FileExistsError(
        f'{directory} already holds checkpoints (steps {", ".join(steps)}); '
        'refusing to overwrite them: choose a new --workdir')


def import_checkpoint(config: Config,
                      checkpoint: Mapping[str, Any], workdir: str,
                      step: int | None = None) -> ts.TrainState:
  """Validates, maps and writes a reference checkpoint as an orbax one.

  Args:
    config: the experiment config describing the checkpoint's nets.
    checkpoint: the reference checkpoint with numpy arrays
      (`pth.read_torch_checkpoint`).
    workdir: the new run's workdir; the checkpoint goes to
      `workdir/checkpoints/<step>`.
    step: the train step to record, or None to choose it as
      `adam.choose_step` does.

  Returns:
    The train state that was written.

  Raises:
    CheckpointMismatchError: the checkpoint does not fit the config (nothing
      is written).
    FileExistsError: the workdir already holds checkpoints.
  """
  config = settings_lib.from_config(config)
  check_workdir_free(workdir)
  _, variables = map_networks(config, checkpoint)
  moments = map_optimizers(config, checkpoint, variables)
  step = adam.choose_step(moments, step)
  state = build_train_state(config, variables, moments, step)
  # Everything is validated: only now does the checkpoint directory appear.
  manager = checkpointing.create_checkpoint_manager(
      workdir, int(config.training.max_checkpoints_to_keep))
  manager.save(step, args=ocp.args.StandardSave(state))
  manager.wait_until_finished()
  manager.close()
  return state


def import_file(config: Config, path: str, workdir: str,
                step: int | None = None) -> str:
  """Reads a `.pth` file, imports it into `workdir`; returns a summary line.

  Args:
    config: the experiment config describing the checkpoint's nets.
    path: the authors' checkpoint (`torch.save` of a dict with netG, netE,
      netI and optionally optG, optE, optI, epoch).
    workdir: the new run's workdir.
    step: the train step to record, or None (see `adam.choose_step`).

  Returns:
    One line saying what was imported and where.

  Raises:
    CheckpointMismatchError, FileExistsError, FileNotFoundError, ValueError:
      nothing was written.
  """
  config = settings_lib.from_config(config)
  check_workdir_free(workdir)  # Before reading a possibly large file.
  checkpoint = pth.read_torch_checkpoint(path)
  state = import_checkpoint(config, checkpoint, workdir, step)
  counts = {n: int(parameter_overview.count_parameters(
                getattr(state, n).params))
            for _, n, _ in NETS}
  imported_adam = any(
      isinstance(checkpoint.get(opt), Mapping) and checkpoint[opt].get('state')
      for _, _, opt in NETS)
  epoch = checkpoint.get('epoch')
  where = os.path.join(os.path.abspath(workdir), 'checkpoints')
  return (f'Imported netG ({counts["gen"]:,} parameters), netE '
          f'({counts["ebm"]:,}), netI ({counts["inf"]:,}) '
          f'{"with" if imported_adam else "without"} their Adam states'
          f'{f", epoch {epoch}" if epoch is not None else ""}, as step '
          f'{int(state.step)} in {where}')
