"""Command line entry point: trains, evaluates or samples a dual-MCMC model.

  python main.py --config=configs/cifar10.py --workdir=runs/cifar10
  python main.py --config=configs/digits.py --workdir=runs/digits \
      --config.training.batch_size=32
  python main.py --mode=eval --config=configs/cifar10.py --workdir=runs/cifar10
  python main.py --mode=sample --config=configs/digits.py --workdir=runs/digits

--mode=train (default) trains; --mode=eval runs the evaluators of
config.eval.evaluators on the latest checkpoint (dual_mcmc_jax/evaluate.py);
--mode=sample writes config.eval.num_samples_to_write samples.

Any config field can be overridden with --config.<group>.<field>=value.
Restarting the same command on the same workdir resumes from its latest
checkpoint. Bad input (flags, config, workdir, data) exits with status 1 and
one line `error: <problem>; <fix>` (README "Long runs").
"""

import logging as std_logging
import os
import sys

# pylint: disable=g-bad-import-order
from dual_mcmc_jax import runtime  # First: quiets TensorFlow before any import of it.
runtime.quiet_ctrl_c()  # Before the slow imports: Ctrl-C is one line.
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from dual_mcmc_jax import checkpointing
from dual_mcmc_jax import evaluate
from dual_mcmc_jax import settings as settings_lib
from dual_mcmc_jax import sharding
from dual_mcmc_jax import train

FLAGS = flags.FLAGS

MODES = ('train', 'eval', 'sample')
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs, samples.')
flags.DEFINE_string('mode', 'train', f'What to do: {", ".join(MODES)}.')
flags.DEFINE_bool('distributed', False,
                  'Join a multi-host run with jax.distributed.initialize() '
                  '(cluster auto-detected unless the three flags below are '
                  'given).')
flags.DEFINE_string('coordinator_address', None,
                    'host:port of process 0 (with --distributed).')
flags.DEFINE_integer('num_processes', None, 'Processes in the run.')
flags.DEFINE_integer('process_id', None, 'This process\'s index.')
config_flags.DEFINE_config_file(
    'config', None, 'Training configuration file.', lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])


class _QuietCheckpointLogs(std_logging.Filter):
  """Drops orbax's per-save INFO chatter; its warnings and errors still show.

  As one line each: orbax logs a failed background save with the traceback
  of its thread, and the run then stops with its own line saying what
  failed (`checkpointing.save`), so the traceback is left out.
  """

  def filter(self, record: std_logging.LogRecord) -> bool:
    if '/orbax/' not in record.pathname.replace('\\', '/'):
      return True
    record.exc_info, record.exc_text = None, None
    return record.levelno >= std_logging.WARNING


def _unknown_field_message(argv: list[str], e: Exception) -> str:
  """One line for ml_collections' KeyError / AttributeError on an override."""
  lines = str(e.args[0] if e.args else e).strip('\'"').splitlines()
  key = lines[0].strip('\'"') if lines else ''
  hint = f' ({lines[-1].strip()})' if len(lines) > 1 else ''
  for arg in argv:
    name = arg.split('=', 1)[0].lstrip('-')
    if name.startswith('config.') and key in name.split('.'):
      return (f'--{name}: {key!r} is not a config field{hint}; check the '
              'spelling against configs/default.py')
  return f'a --config override names an unknown field {key!r}{hint}'


def _config_path(argv: list[str]) -> str | None:
  """The value of --config on the command line, if given."""
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      return arg.split('=', 1)[1]
    if arg == '--config' and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _config_load_error(path: str | None, e: BaseException) -> str:
  detail = ' '.join(str(e).split())
  return (f'error: --config={path} cannot be loaded ({type(e).__name__}: '
          f'{detail}); it must be a Python file with a get_config() function, '
          'e.g. configs/digits.py')


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing with every failure turned into one line."""
  path = _config_path(argv)
  if path is not None and not os.path.isfile(path.split(':', 1)[0]):
    sys.exit(f'error: --config={path}: no such file; the configs are in '
             'configs/ (e.g. --config=configs/digits.py)')
  try:
    rest = FLAGS(argv)
  except flags.Error as e:
    sys.exit(f'error: {e}')
  except (KeyError, AttributeError) as e:
    if 'get_config' in str(e):
      sys.exit(_config_load_error(path, e))
    # ml_collections raises these, as tracebacks, on an unknown field.
    sys.exit(f'error: {_unknown_field_message(argv, e)}')
  except Exception as e:  # pylint: disable=broad-except
    # The config file itself failed (a syntax error, an exception in it).
    sys.exit(_config_load_error(path, e))
  try:
    FLAGS.config.get('training')
  except Exception as e:  # pylint: disable=broad-except
    sys.exit(_config_load_error(path, e.__cause__ or e))
  return rest


def run(mode: str, config, workdir: str) -> None:
  """Runs `mode`; a problem with the input exits with one line.

  Args:
    mode: one of MODES.
    config: the experiment ConfigDict.
    workdir: the run's directory.

  Raises:
    SystemExit: with 'error: <one line>' (exit status 1) on bad input, a
      workdir that cannot be used, a full disk, or a run that diverged with
      no rollbacks left; with status 130 and one line after Ctrl-C
      (training saves the step it was on first).
  """
  try:
    # Every mode reads the config into its settings first
    # (settings.from_config), which checks every field before anything is
    # compiled, loaded or written.
    config = settings_lib.from_config(config)
    if mode == 'eval':
      evaluate.evaluate(config, workdir)
    elif mode == 'sample':
      evaluate.sample(config, workdir)
    else:
      train.train_and_evaluate(config, workdir)
  except (ValueError, FileNotFoundError, OSError, train.TrainingDivergedError,
          checkpointing.CheckpointError, evaluate.EvaluatorUnavailable) as e:
    # One clear line and a non-zero exit instead of a traceback.
    message = ' '.join(str(e).split())
    sys.exit(f'error: {message}')
  except train.Interrupted as e:
    sys.stderr.write(f'{e}\n')
    sys.exit(train.INTERRUPTED_STATUS)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError('Too many command-line arguments.')
  if FLAGS.mode not in MODES:
    sys.exit(f'error: --mode={FLAGS.mode!r} is unknown; allowed: '
             f'{", ".join(MODES)}')
  logging.get_absl_handler().addFilter(_QuietCheckpointLogs())
  runtime.configure()
  if FLAGS.distributed:
    sharding.initialize_distributed(FLAGS.coordinator_address,
                                    FLAGS.num_processes, FLAGS.process_id)
  # Keep TensorFlow (used only by the input pipeline) off the accelerators.
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.experimental.set_visible_devices([], 'GPU')
  except ImportError:
    pass
  logging.info('%s', runtime.device_summary())
  run(FLAGS.mode, FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
