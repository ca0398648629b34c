"""End-to-end tests of `main.py --mode=eval|sample` on a tiny trained model.

The model is the test config trained for its 4 steps on digits. `--mode=eval`
runs every evaluator of the config: OOD, inpainting and cost run, FID is
skipped with its reason (no Inception weights offline). FID is then run on
its own with deterministic random Inception weights written by the test.
"""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from configs import test as test_config
from dual_mcmc_jax import evaluate
from dual_mcmc_jax import train
from dual_mcmc_jax.evaluators import inception
from dual_mcmc_jax.evaluators import inpainting

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  path = tmp_path_factory.mktemp('trained')
  train.train_and_evaluate(test_config.get_config(), str(path))
  return path


def _main(*args):
  return subprocess.run(
      [sys.executable, os.path.join(REPO, 'main.py'), *args],
      cwd=REPO, capture_output=True, text=True, timeout=600, check=False)


def _tensorboard_tags(workdir) -> set[str]:
  tags = set()
  for path in glob.glob(os.path.join(workdir, 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      tags.update(v.tag for v in event.summary.value)
  return tags


def test_eval_mode_writes_json_and_tensorboard_for_every_evaluator(workdir):
  proc = _main('--mode=eval', '--config=configs/test.py',
               f'--workdir={workdir}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  last = [l for l in proc.stderr.splitlines() if 'Evaluation of step' in l]
  assert last and 'skipped: fid (' in last[-1], proc.stderr[-2000:]

  with open(workdir / 'eval_000004.json') as f:
    data = json.load(f)
  assert data['step'] == 4
  results = data['results']
  assert 'inception_weights' in data['skipped']['fid']
  for name in ('uniform', 'constant'):
    assert 0.0 <= results['ood'][f'auroc/{name}'] <= 1.0
  for mask in ('M20', 'M30', 'M40', 'R20', 'R30', 'R40'):
    for p in inpainting.PIPELINES:
      assert np.isfinite(results['inpainting'][f'{mask}/{p}/psnr'])
      assert np.isfinite(results['inpainting'][f'{mask}/{p}/ssim'])
  cost = results['cost']
  assert cost['seconds_per_iteration'] > 0
  assert cost['params/generator'] > 0 and cost['params/ebm'] > 0
  assert cost['langevin_steps_x'] == 3 and cost['langevin_steps_z'] == 2
  for tag in ('inpainting/grid', 'inpainting/table', 'ood/table',
              'cost/table'):
    assert os.path.exists(data['files'][tag]), tag

  tags = _tensorboard_tags(workdir)
  for tag in ('ood/auroc/uniform', 'ood/energy_mean/in_distribution',
              'inpainting/M20/inf_tz_gen_tx/psnr',
              'inpainting/R40/inf_gen/ssim', 'inpainting/grid',
              'inpainting/table', 'cost/seconds_per_iteration',
              'cost/params/inference', 'cost/table', 'fid/skipped'):
    assert tag in tags, (tag, sorted(tags))


def test_fid_end_to_end_with_random_inception_weights(workdir, tmp_path):
  weights = str(tmp_path / 'random_inception.npz')
  inception.save_npz(weights, inception.random_state_dict(0))
  config = test_config.get_config()
  config.eval.evaluators = 'fid'
  config.eval.inception_weights = weights
  config.eval.stats_dir = str(tmp_path / 'stats')
  # Two rounds of 4 samples; 299x299 Inception passes are the cost here.
  config.eval.batch_size = 4
  config.eval.fid_num_reference_images = 4
  data = evaluate.evaluate(config, str(workdir))
  fid = data['results']['fid']
  assert 'fid' not in data['skipped']
  assert fid['num_samples'] == 8
  for kind in ('generator', 'ebm_revised'):
    assert np.isfinite(fid[kind]) and fid[kind] > 0, fid
  # The reference statistics are cached; the sample features were reduced
  # to their statistics once complete.
  assert len(os.listdir(tmp_path / 'stats')) == 1
  features = workdir / 'fid_features' / 'step_4'
  assert sorted(os.listdir(features)) == ['meta.json', 'stats.npz']
  assert 'fid/generator' in _tensorboard_tags(workdir)


def test_strict_mode_makes_a_skip_an_error(workdir):
  config = test_config.get_config()
  config.eval.evaluators = 'fid'
  config.eval.strict = True
  with pytest.raises(evaluate.EvaluatorUnavailable, match='strict'):
    evaluate.evaluate(config, str(workdir))
  config.eval.evaluators = 'fid,bogus'
  with pytest.raises(ValueError, match='allowed: fid, ood, inpainting, cost'):
    evaluate.evaluate(config, str(workdir))


def test_sample_mode_writes_npz_and_png_grids(workdir):
  path = evaluate.sample(test_config.get_config(), str(workdir))
  with np.load(path) as f:
    for kind in ('generator', 'ebm_revised'):
      assert f[kind].shape == (8, 16, 16, 1) and f[kind].dtype == np.uint8
      assert os.path.exists(workdir / f'samples_000004_{kind}.png')


def test_a_bad_mode_is_a_one_line_error(tmp_path):
  import main  # pylint: disable=g-import-not-at-top
  main.FLAGS(['main.py', '--mode=bogus',
              f'--config={os.path.join(REPO, "configs", "test.py")}',
              f'--workdir={tmp_path}'])
  try:
    with pytest.raises(SystemExit) as exit_info:
      main.main(['main.py'])
  finally:
    main.FLAGS.unparse_flags()
  assert str(exit_info.value) == (
      "error: --mode='bogus' is unknown; allowed: train, eval, sample")
  assert not os.listdir(tmp_path)  # Nothing ran.
