"""Tests of the FID pieces: Fréchet distance, resumable rounds, Inception.

The Inception forward pass is checked against `inception_golden.npz`,
outputs of an independent PyTorch implementation of pytorch-fid's network
(`scripts/make_inception_golden.py`) on the same deterministic random
weights, which both sides regenerate from a seed. No network access, no
PyTorch needed (the test that reads the weights from a .pth runs only
where torch is installed).
"""

import os

import jax
import numpy as np
import pytest

from configs import test as test_config
from dual_mcmc_jax.evaluators import common
from dual_mcmc_jax.evaluators import fid
from dual_mcmc_jax.evaluators import inception

FIXTURE = os.path.join(os.path.dirname(__file__), 'fixtures',
                       'inception_golden.npz')


@pytest.mark.parametrize('method', fid.MATRIX_SQRT_METHODS)
def test_frechet_distance_of_diagonal_gaussians_is_closed_form(method):
  rng = np.random.default_rng(0)
  d = 16
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  s1, s2 = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
  expected = np.sum((mu1 - mu2)**2) + np.sum((np.sqrt(s1) - np.sqrt(s2))**2)
  got = fid.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2),
                             method=method)
  np.testing.assert_allclose(got, expected, rtol=1e-10)
  assert abs(fid.frechet_distance(mu1, np.diag(s1), mu1, np.diag(s1),
                                  method=method)) < 1e-9


def test_frechet_distance_methods_agree_on_full_and_singular_covariances():
  rng = np.random.default_rng(1)
  # Full rank, correlated.
  a = rng.normal(size=(200, 8)) @ rng.normal(size=(8, 8))
  b = rng.normal(size=(200, 8)) @ rng.normal(size=(8, 8)) + 0.5
  (m1, s1), (m2, s2) = fid.statistics(a), fid.statistics(b)
  np.testing.assert_allclose(
      fid.frechet_distance(m1, s1, m2, s2, method='sqrtm'),
      fid.frechet_distance(m1, s1, m2, s2, method='eigh'), rtol=1e-8)
  # Fewer samples than dimensions: singular covariances, as with small
  # sample counts against 2048-d features. Finite, and both forms agree.
  a, b = rng.normal(size=(6, 32)), rng.normal(size=(7, 32)) * 2.0
  (m1, s1), (m2, s2) = fid.statistics(a), fid.statistics(b)
  got = fid.frechet_distance(m1, s1, m2, s2, method='sqrtm')
  assert np.isfinite(got)
  np.testing.assert_allclose(
      got, fid.frechet_distance(m1, s1, m2, s2, method='eigh'), rtol=1e-4)
  with pytest.raises(ValueError, match='fid_matrix_sqrt'):
    fid.frechet_distance(m1, s1, m2, s2, method='bogus')


def test_feature_rounds_resume_after_an_interruption(tmp_path):
  calls = []

  def compute(r, fail_at=None):
    if r == fail_at:
      raise KeyboardInterrupt  # The job is killed during round `fail_at`.
    calls.append(r)
    return {'f': np.full((3, 2), r, np.float32), 'g': np.arange(3) + 10 * r}

  meta = {'num_samples': 12, 'seed': 0}
  straight = fid.compute_rounds(str(tmp_path / 'a'), 4, compute, meta)
  assert calls == [0, 1, 2, 3]

  calls.clear()
  directory = str(tmp_path / 'b')
  with pytest.raises(KeyboardInterrupt):
    fid.compute_rounds(directory, 4, lambda r: compute(r, fail_at=2), meta)
  assert calls == [0, 1]
  assert sorted(os.listdir(directory)) == ['meta.json', 'round_000000.npz',
                                           'round_000001.npz']
  calls.clear()
  resumed = fid.compute_rounds(directory, 4, compute, meta)
  assert calls == [2, 3]  # Only the missing rounds are computed.
  for k in straight:
    np.testing.assert_array_equal(resumed[k], straight[k])

  # Other settings: the saved rounds are stale and recomputed.
  calls.clear()
  fid.compute_rounds(directory, 4, compute, {**meta, 'seed': 1})
  assert calls == [0, 1, 2, 3]


def test_flax_inception_matches_the_pytorch_golden_outputs():
  golden = np.load(FIXTURE)
  variables = inception.state_dict_to_variables(
      inception.random_state_dict(int(golden['weights_seed'])))
  out = jax.jit(lambda v, x: inception.FidInceptionV3().apply(
      v, x, return_blocks=True))(variables, golden['images'])
  assert out['pool'].shape == (2, inception.FEATURE_DIM)
  for k in ('block0', 'block1', 'block2', 'pool'):
    want = golden[k]
    np.testing.assert_allclose(np.asarray(out[k]), want, rtol=1e-4,
                               atol=1e-5 * np.abs(want).max(), err_msg=k)
  resized = inception.resize_bilinear(golden['resize_in'],
                                      golden['resize_out'].shape[1:3])
  np.testing.assert_allclose(np.asarray(resized), golden['resize_out'],
                             atol=1e-6)


def test_state_dict_layout_is_pytorch_fids():
  shapes = inception.state_dict_shapes()
  assert shapes['Conv2d_1a_3x3.conv.weight'] == (32, 3, 3, 3)
  assert shapes['Mixed_6b.branch7x7_2.conv.weight'] == (128, 128, 1, 7)
  assert shapes['Mixed_7c.branch_pool.conv.weight'] == (192, 2048, 1, 1)
  assert shapes['Mixed_7c.branch_pool.bn.running_var'] == (192,)
  # 94 conv + BatchNorm layers, five arrays each.
  assert len(shapes) == 94 * 5


def test_weights_round_trip_through_npz_and_bad_files_are_explained(tmp_path):
  weights = inception.random_state_dict(3)
  weights['fc.weight'] = np.zeros((1008, 2048), np.float32)  # Ignored.
  path = str(tmp_path / 'w.npz')
  inception.save_npz(path, weights)
  variables = inception.load_variables(path)
  np.testing.assert_array_equal(
      variables['params']['Mixed_5b']['branch1x1']['conv']['kernel'],
      weights['Mixed_5b.branch1x1.conv.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(
      variables['batch_stats']['Conv2d_1a_3x3']['bn']['var'],
      weights['Conv2d_1a_3x3.bn.running_var'])
  del weights['Mixed_7c.branch_pool.bn.bias']
  with pytest.raises(ValueError, match='Mixed_7c.branch_pool.bn.bias'):
    inception.state_dict_to_variables(weights)


def test_missing_weights_give_one_clear_reason(tmp_path):
  config = test_config.get_config()
  config.eval.inception_weights = str(tmp_path / 'nowhere.npz')
  with pytest.raises(common.EvaluatorUnavailable, match='does not exist'):
    fid.resolve_weights(config)
  config.eval.inception_weights = None
  with pytest.raises(common.EvaluatorUnavailable, match='inception_url is '
                     'empty'):
    fid.resolve_weights(config)
  # A download that fails (here: a file URL that does not exist).
  config.eval.inception_url = (tmp_path / 'missing-6726825d.pth').as_uri()
  config.eval.inception_cache_dir = str(tmp_path / 'cache')
  with pytest.raises(common.EvaluatorUnavailable,
                     match='inception_weights.*downloading.*failed'):
    fid.resolve_weights(config)


def test_download_into_the_cache_checks_the_hash(tmp_path):
  config = test_config.get_config()
  source = tmp_path / 'weights-00000000.npz'
  inception.save_npz(str(source), inception.random_state_dict(0))
  config.eval.inception_url = source.as_uri()
  config.eval.inception_cache_dir = str(tmp_path / 'cache')
  with pytest.raises(common.EvaluatorUnavailable, match='sha256'):
    fid.resolve_weights(config)
  assert not os.listdir(tmp_path / 'cache')


def test_inception_weights_load_from_a_pth_as_from_the_npz(tmp_path):
  """The .pth goes through the importer's PyTorch-free reader."""
  torch = pytest.importorskip('torch')
  arrays = inception.random_state_dict(0)
  npz = str(tmp_path / 'weights.npz')
  inception.save_npz(npz, arrays)
  state = {k: torch.from_numpy(np.asarray(v, np.float32))
           for k, v in arrays.items()}
  # Entries pytorch-fid's file has and the features do not use.
  state['fc.weight'] = torch.zeros(1008, 2048)
  state['Conv2d_1a_3x3.bn.num_batches_tracked'] = torch.tensor(0)
  pth = str(tmp_path / 'weights.pth')
  # The legacy format, as pytorch-fid's pt_inception-2015-12-05 file.
  torch.save(state, pth, _use_new_zipfile_serialization=False)
  from_pth, from_npz = (inception.load_variables(p) for p in (pth, npz))
  assert inception.fingerprint(from_pth) == inception.fingerprint(from_npz)
  jax.tree.map(np.testing.assert_array_equal, from_pth, from_npz)
