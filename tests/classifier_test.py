"""Tests of the classifier-based sample-quality evaluator (digits).

The scores are checked on probability tables whose answers are known; the
hidden features are checked to be the layer the classifier actually uses;
the evaluator is run on an untrained model, whose samples must score far
below the real test digits.
"""

import numpy as np
import pytest

from configs import test as test_config
from configs import toy2d as toy2d_config
from dual_mcmc_jax import data
from dual_mcmc_jax import networks
from dual_mcmc_jax import sharding
from dual_mcmc_jax import train_state as ts
from dual_mcmc_jax.evaluators import classifier
from dual_mcmc_jax.evaluators import common

# The short fits here stop before sklearn's convergence criterion on purpose.
pytestmark = pytest.mark.filterwarnings(
    'ignore::sklearn.exceptions.ConvergenceWarning')


def test_class_scores_of_known_probability_tables():
  balanced = np.eye(10)[np.arange(200) % 10]
  s = classifier.class_scores(balanced)
  assert s['confidence'] == pytest.approx(1.0)
  assert s['classes_covered'] == 10
  assert s['effective_classes'] == pytest.approx(10.0)
  assert s['classifier_score'] == pytest.approx(10.0)
  collapsed = classifier.class_scores(np.eye(10)[np.zeros(50, int)])
  assert collapsed['classes_covered'] == 1
  assert collapsed['effective_classes'] == pytest.approx(1.0)
  assert collapsed['classifier_score'] == pytest.approx(1.0)
  unsure = classifier.class_scores(np.full((30, 10), 0.1))
  assert unsure['confidence'] == pytest.approx(0.1)
  assert unsure['classifier_score'] == pytest.approx(1.0)
  # Two classes, 99 : 1: the rare one is exactly at the coverage threshold.
  skewed = classifier.class_scores(np.eye(10)[np.r_[np.zeros(99, int), 1]])
  assert skewed['classes_covered'] == 2
  assert 1.0 < skewed['effective_classes'] < 1.1


@pytest.fixture(scope='module')
def fitted():
  config = test_config.get_config()
  images = np.concatenate(list(common.eval_batches(config, 'train', 500)))
  clf = classifier.train_classifier(
      images, data.digits_labels('train'), hidden=32, max_iter=40,
      seed=0)
  return clf, images


def test_hidden_features_are_the_layer_the_classifier_reads(fitted):
  clf, images = fitted
  h = classifier.hidden_features(clf, images[:50])
  logits = h @ clf.coefs_[1] + clf.intercepts_[1]
  probs = np.exp(logits - logits.max(axis=1, keepdims=True))
  probs /= probs.sum(axis=1, keepdims=True)
  np.testing.assert_allclose(probs, clf.predict_proba(
      images[:50].reshape(50, -1)), atol=1e-5)  # sklearn fits in float32
  assert h.shape == (50, 32) and np.all(h >= 0)


def test_digits_labels_match_the_images(fitted):
  clf, _ = fitted
  config = test_config.get_config()
  test_x = np.concatenate(list(common.eval_batches(config, 'test', 500)))
  labels = data.digits_labels('test')
  assert len(labels) == len(test_x) == 297
  # Misaligned labels would give chance accuracy.
  assert clf.score(test_x.reshape(len(test_x), -1), labels) > 0.9


def test_untrained_model_scores_far_below_the_real_digits():
  config = test_config.get_config()
  config.eval.batch_size = 100
  config.eval.classifier_num_samples = 100
  config.eval.classifier_hidden = 32
  config.eval.classifier_max_iter = 40
  models = ts.create_models(config)
  optimizers = ts.create_optimizers(config.optim, 1)
  state = ts.create_train_state(models, optimizers, seed=0)
  out = dict(classifier.Evaluator(config, '', models,
                                  sharding.data_mesh()).run(state))
  assert out['classifier_test_accuracy'] > 0.9
  assert out['frechet_num_samples'] == 100  # As many as the samples.
  assert out['test_digits/confidence'] > 0.9
  assert out['test_digits/classes_covered'] == 10
  assert 'test_digits/frechet_distance' not in out  # The reference.
  for name in ('generator', 'ebm_revised'):
    assert (out[f'{name}/frechet_distance_inf'] >
            5 * out['train_digits/frechet_distance_inf'])
    assert (out[f'{name}/frechet_distance'] >
            2 * out['train_digits/frechet_distance'])
    assert out[f'{name}/by_class'].dtype == np.uint8
  assert '| test_digits | 297 |' in out['table']
  assert '| generator | 100 |' in out['table']


def test_needs_digits():
  config = toy2d_config.get_config()
  models = ts.create_models(config)
  with pytest.raises(common.EvaluatorUnavailable, match='image'):
    classifier.Evaluator(config, '', models, sharding.data_mesh())
  config = test_config.get_config()
  config.data.dataset = 'npz'
  models = ts.create_models(config)
  with pytest.raises(common.EvaluatorUnavailable, match='digits'):
    classifier.Evaluator(config, '', models, sharding.data_mesh())


def test_extrapolated_frechet_distance_removes_the_small_sample_bias():
  # Features N(m, I) against exact reference statistics N(0, I): the true
  # distance is |m|^2; at 200 samples in 32 dimensions the plain estimate is
  # biased upwards by about d^2 / (2 n) ~ 2.5.
  rng = np.random.default_rng(0)
  d, m = 32, np.full(32, 0.25)
  features = rng.standard_normal((200, d)) + m
  at_n, at_inf = classifier.extrapolated_frechet_distance(
      features, np.zeros(d), np.eye(d), 200, np.random.default_rng(1),
      'eigh')
  truth = float(m @ m)  # 2.0
  assert at_n - truth > 1.0
  assert abs(at_inf - truth) < 0.5 * (at_n - truth)
