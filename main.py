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
checkpoint.
"""

import logging as std_logging
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from dual_mcmc_jax import evaluate
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
  """Drops orbax's per-save INFO chatter; its warnings and errors still show."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return (record.levelno >= std_logging.WARNING or
            '/orbax/' not in record.pathname.replace('\\', '/'))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError('Too many command-line arguments.')
  if FLAGS.mode not in MODES:
    sys.exit(f'error: --mode={FLAGS.mode!r} is unknown; allowed: '
             f'{", ".join(MODES)}')
  logging.get_absl_handler().addFilter(_QuietCheckpointLogs())
  if FLAGS.distributed:
    sharding.initialize_distributed(FLAGS.coordinator_address,
                                    FLAGS.num_processes, FLAGS.process_id)
  # Keep TensorFlow (used only by the input pipeline) off the accelerators.
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.experimental.set_visible_devices([], 'GPU')
  except ImportError:
    pass
  logging.info('JAX process %d / %d, local devices: %s', jax.process_index(),
               jax.process_count(), jax.local_devices())
  try:
    if FLAGS.mode == 'eval':
      evaluate.evaluate(FLAGS.config, FLAGS.workdir)
    elif FLAGS.mode == 'sample':
      evaluate.sample(FLAGS.config, FLAGS.workdir)
    else:
      train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (ValueError, FileNotFoundError, train.TrainingDivergedError,
          evaluate.EvaluatorUnavailable) as e:
    # One clear line and a non-zero exit instead of a traceback.
    logging.error('%s', e)
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  app.run(main)
