"""Config files written by earlier versions, brought to this version's form.

A workdir's `config.json` is read back by resumed runs, `--mode=eval` /
`sample`, the config guard and the notebook. Fields added since a file was
written get the value that reproduces how that version ran; renamed fields
get their new names and values. `checkpointing.load_config` and the config
guard read every stored config through `migrate_config`.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

# Fields added since the first release, with the value that reproduces how a
# config written without them ran.
ADDED_FIELDS: dict[str, Any] = {
    'data.point_dim': 2,
    'data.prefetch_to_device': 2,
    'training.compute_dtype': 'float32',
    'training.cpu_plugin': 'auto',
    'training.health_every_steps': 1,
    'training.negative_chain_init': 'generator',
    'training.long_chains': 0,
    'training.long_chain_steps': 0,
    'training.replay_buffer_size': 0,
    'training.replay_fraction': 0.95,
    'training.negative_noise_fraction': 0.0,
    'langevin_x.jump_std': 0.0,
    'langevin_x.generator_jumps': False,
    'langevin_x.generator_jump_fraction': 1.0,
    'loss.energy_l2': 0.0,
    'optim.lr_schedule': 'exponential',
}
# Old name -> (new name, {old value: new value}).
RENAMED_FIELDS: dict[str, tuple[str, dict[Any, Any]]] = {
    # The convolution rule became the CPU plug-in's switch.
    'model.conv_input_grad': ('training.cpu_plugin', {
        'auto': 'auto', 'xla': 'off', 'forward_conv': 'on'}),
}


def migrate_config(raw: Mapping[str, Any]) -> dict[str, Any]:
  """A config dict written by an earlier version, in this version's form.

  Renamed fields get their new names (and values); fields added since get
  the value that reproduces how the old config ran. A current config comes
  back unchanged.

  Args:
    raw: {group: {field: value}} as read from a `config.json`.

  Returns:
    A new dict of the current form.
  """
  out = copy.deepcopy({k: dict(v) if isinstance(v, Mapping) else v
                       for k, v in raw.items()})
  for old, (new, values) in RENAMED_FIELDS.items():
    group, name = old.split('.')
    if name in out.get(group, {}):
      value = out[group].pop(name)
      new_group, new_name = new.split('.')
      out.setdefault(new_group, {}).setdefault(new_name,
                                               values.get(value, value))
  for dotted, value in ADDED_FIELDS.items():
    group, name = dotted.split('.')
    if group in out:
      out[group].setdefault(name, value)
  return out

