"""Mode coverage of a trained 2-D model on a Gaussian-mixture density.

  python benchmarks/toy2d_coverage.py --config=configs/toy2d.py \
      --workdir=runs/toy2d [--num_samples=5000]

Loads the latest checkpoint, draws generator samples and their x-revision
under the EBM, and prints, as one JSON line, how many of the true modes each
set covers, the fraction of points within 3 standard deviations of a mode and
the balance between modes (`toy2d.mode_coverage`). Also writes a scatter plot
`toy2d_coverage.png` into the workdir.
"""

import json
import os
import sys

from absl import app
from absl import flags
import jax
import numpy as np
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from dual_mcmc_jax import toy2d
from dual_mcmc_jax import train
from dual_mcmc_jax import train_step
from dual_mcmc_jax import visualize

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Trained workdir.')
flags.DEFINE_integer('num_samples', 5000, 'Samples per set.')
config_flags.DEFINE_config_file('config', None, 'Config the workdir used.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(_):
  config = FLAGS.config
  name = config.data.toy2d_name
  models, state = train.load_state(config, FLAGS.workdir)
  sample = jax.jit(train_step.make_sample_fn(config, models))
  truth = toy2d.sample(name, FLAGS.num_samples, np.random.default_rng(0))
  out = jax.device_get(sample(state, jax.random.key(0), truth))
  result = {'density': name, 'step': int(state.step),
            'num_samples': FLAGS.num_samples}
  for key in ('generator_samples', 'ebm_revised_samples'):
    for k, v in toy2d.mode_coverage(name, out[key]).items():
      result[f'{key}/{k}'] = v
  for k, v in toy2d.mode_coverage(name, truth).items():
    result[f'true_samples/{k}'] = v
  path = os.path.join(FLAGS.workdir, 'toy2d_coverage.png')
  visualize.save_png(path, visualize.scatter_image({
      'true samples': truth, 'generator samples': out['generator_samples'],
      'EBM-revised samples': out['ebm_revised_samples']}))
  result['png'] = path
  print(json.dumps(result))


if __name__ == '__main__':
  app.run(main)
