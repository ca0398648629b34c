"""Sample quality judged by a classifier trained on real digits (no Inception).

FID needs the Inception weights, which an offline machine may not have. For
the digits config a reader can trust a smaller yardstick built from the data
itself: a scikit-learn `MLPClassifier` (one hidden ReLU layer of
`config.eval.classifier_hidden` units) trained on the real training digits,
then used to score

* `generator`: x0 = G(z), z ~ N(0, I);
* `ebm_revised`: x0 revised by the EBM with the evaluation sampler (the one
  FID uses: `config.eval.langevin_*`), clipped to [-1, 1];
* `test_digits`: the held-out real digits, the ceiling the classifier
  scores are read against (the classifier's accuracy on them is reported),
  and the reference of the Fréchet distance;
* `train_digits`: the real training digits, the ceiling of the Fréchet
  distance (the generator learns their distribution; the test digits come
  from other writers, so even real training digits are some distance from
  them). The classifier was fit to these, so their confidence is optimistic.

Per set, from the classifier's class probabilities p(y|x):

* `confidence`: mean max_y p(y|x) (a blurry or ambiguous sample scores low);
* `classes_covered`: classes predicted for at least 1% of the set (a fair
  share is 10%), out of 10;
* `effective_classes`: exp of the entropy of the predicted-class histogram
  (10 = perfectly balanced, 1 = every sample the same class);
* `classifier_score`: exp(E_x KL(p(y|x) || p(y))), the Inception-score
  formula with this classifier (10 at best);
* `frechet_distance`: the Fréchet distance (`fid.frechet_distance`) between
  Gaussians fitted to the classifier's hidden-layer features of the set and
  of the test digits, with as many samples per set as there are test digits;
  confidence and coverage use all `config.eval.classifier_num_samples`
  samples (all training digits for `train_digits`). A reference of training
  digits would favour a generator that reproduces them over real digits of
  other writers (measured: generator 3.2, test digits 7.6 against the
  training digits), so the held-out digits are the reference.
* `frechet_distance_inf`: the same distance extrapolated to infinitely many
  samples (Chong & Forsyth, "Effectively Unbiased FID", 2020): the estimate
  is biased upwards by roughly c / n, which at a few hundred samples in a
  64-dimensional feature space can exceed the differences between sets, so
  the distance is averaged over random subsets of `_EXTRAPOLATION_COUNTS`
  fractions of that count and the line fitted against 1 / n is read at
  1 / n = 0. Every set uses the same counts, so the numbers compare.

Also yields a Markdown 'table' and, per sampled set, a picture of samples
sorted into rows by predicted class (most confident first). Needs labelled
data, so it runs on `config.data.dataset='digits'` only; elsewhere it is
skipped with the reason.
"""

from __future__ import annotations

import math
from typing import Any, Iterator

import jax
import numpy as np

from dual_mcmc_jax import data
from dual_mcmc_jax import networks
from dual_mcmc_jax import sharding
from dual_mcmc_jax import train_state as ts
from dual_mcmc_jax import visualize
from dual_mcmc_jax.evaluators import common
from dual_mcmc_jax.evaluators import fid

NUM_CLASSES = 10
# A class counts as covered when it gets at least this share of a set.
COVERED_SHARE = 0.01
# Samples per class row in the picture.
_PICTURE_COLUMNS = 10
# Subset sizes (fractions of the matched count) and subsets per size of the
# extrapolated Fréchet distance.
_EXTRAPOLATION_COUNTS = (1 / 3, 1 / 2, 2 / 3, 1.0)
_EXTRAPOLATION_REPEATS = 5


def train_classifier(images: np.ndarray, labels: np.ndarray, hidden: int,
                     max_iter: int, seed: int) -> Any:
  """Fits an MLPClassifier to flattened images.

  Args:
    images: [N, H, W, C] in [-1, 1].
    labels: int [N].
    hidden: units of the one hidden layer.
    max_iter: Adam epochs at most.
    seed: the classifier's random_state.

  Returns:
    The fitted `sklearn.neural_network.MLPClassifier`.
  """
  # pylint: disable=g-import-not-at-top
  from sklearn import neural_network
  # pylint: enable=g-import-not-at-top
  clf = neural_network.MLPClassifier(
      hidden_layer_sizes=(hidden,), max_iter=max_iter, random_state=seed,
      early_stopping=False)
  clf.fit(images.reshape(len(images), -1), labels)
  return clf


def hidden_features(clf: Any, images: np.ndarray) -> np.ndarray:
  """The classifier's hidden-layer (ReLU) activations, float64 [N, hidden]."""
  x = images.reshape(len(images), -1).astype(np.float64)
  return np.maximum(x @ clf.coefs_[0] + clf.intercepts_[0], 0.0)


def class_scores(probs: np.ndarray) -> dict[str, float]:
  """Confidence and class-coverage numbers of one set's p(y|x).

  Args:
    probs: [N, 10] class probabilities.

  Returns:
    {'confidence', 'classes_covered', 'effective_classes',
    'classifier_score'} as described in the module docstring.
  """
  probs = np.asarray(probs, np.float64)
  predicted = np.argmax(probs, axis=1)
  share = np.bincount(predicted, minlength=NUM_CLASSES) / len(predicted)
  nonzero = share[share > 0]
  marginal = probs.mean(axis=0)
  with np.errstate(divide='ignore', invalid='ignore'):
    kl = np.where(probs > 0, probs * (np.log(probs) - np.log(marginal)), 0.0)
  return {
      'confidence': float(probs.max(axis=1).mean()),
      'classes_covered': int(np.sum(share >= COVERED_SHARE)),
      'effective_classes': float(np.exp(-np.sum(nonzero * np.log(nonzero)))),
      'classifier_score': float(np.exp(kl.sum(axis=1).mean())),
  }


def extrapolated_frechet_distance(features: np.ndarray, mu_ref: np.ndarray,
                                  sigma_ref: np.ndarray, count: int,
                                  rng: np.random.Generator,
                                  method: str) -> tuple[float, float]:
  """Fréchet distance at `count` samples, and extrapolated to infinity.

  Args:
    features: [N, D] features of the set, N >= count.
    mu_ref, sigma_ref: statistics of the reference features.
    count: the largest subset size (every set is scored at the same sizes).
    rng: draws the random subsets.
    method: `fid.frechet_distance`'s matrix square root.

  Returns:
    (distance of the first `count` features, intercept at 1 / n = 0 of the
    least-squares line through the mean distance of random subsets of each
    size in `_EXTRAPOLATION_COUNTS` times `count`, against 1 / n).
  """
  def distance(subset: np.ndarray) -> float:
    mu, sigma = fid.statistics(subset)
    return fid.frechet_distance(mu, sigma, mu_ref, sigma_ref, method=method)

  at_count = distance(features[:count])
  sizes, means = [], []
  for fraction in _EXTRAPOLATION_COUNTS:
    n = max(int(round(fraction * count)), 2)
    values = [distance(features[rng.choice(len(features), n, replace=False)])
              for _ in range(_EXTRAPOLATION_REPEATS)]
    sizes.append(n)
    means.append(float(np.mean(values)))
  _, intercept = np.polyfit(1.0 / np.asarray(sizes, np.float64), means, 1)
  return at_count, float(intercept)


def class_picture(images: np.ndarray, probs: np.ndarray) -> np.ndarray:
  """Samples in rows by predicted class, most confident first (uint8 grid)."""
  predicted = np.argmax(probs, axis=1)
  confidence = probs.max(axis=1)
  blank = -np.ones_like(images[:1])  # Black tiles where a class has few.
  tiles = []
  for c in range(NUM_CLASSES):
    mine = np.flatnonzero(predicted == c)
    mine = mine[np.argsort(-confidence[mine])][:_PICTURE_COLUMNS]
    row = [images[i:i + 1] for i in mine]
    row += [blank] * (_PICTURE_COLUMNS - len(row))
    tiles.extend(row)
  return visualize.image_grid(np.concatenate(tiles), ncols=_PICTURE_COLUMNS)


class Evaluator:
  """Classifier confidence, class coverage and Fréchet distance of samples.

  Yields '<set>/<score>' for the sets 'generator', 'ebm_revised',
  'train_digits' and 'test_digits' (no Fréchet distance: the reference),
  'classifier_test_accuracy', 'num_samples', 'frechet_num_samples', a
  Markdown 'table' and the pictures '<set>/by_class'.
  """

  def __init__(self, config: common.Settings, workdir: str,
               models: networks.Models, mesh: jax.sharding.Mesh):
    del workdir
    common.require_images(models, 'Classifier-based sample quality')
    if config.data.dataset != 'digits':
      raise common.EvaluatorUnavailable(
          'classifier-based sample quality needs labelled data; it runs on '
          f"config.data.dataset='digits', not {config.data.dataset!r}")
    self.config = config = common.settings_of(config)
    self.models = models
    self.mesh = mesh
    self.batch_size = common.eval_batch_size(config)
    self.num_samples = int(config.eval.classifier_num_samples)
    if self.num_samples <= 0:
      raise ValueError('config.eval.classifier_num_samples='
                       f'{self.num_samples} must be > 0')

  def _split(self, split: str) -> np.ndarray:
    batches = list(common.eval_batches(self.config, split, self.batch_size))
    return np.concatenate(batches)

  def _samples(self, state: ts.TrainState) -> dict[str, np.ndarray]:
    sampler = common.make_sampler(self.config, self.models, self.mesh,
                                  self.batch_size)
    state = sharding.replicate(state, self.mesh)
    key = jax.random.key(int(self.config.eval.seed))
    outs: dict[str, list[np.ndarray]] = {'generator': [], 'ebm_revised': []}
    for r in range(math.ceil(self.num_samples / self.batch_size)):
      x0, x1 = sampler(state, jax.random.fold_in(key, r))
      outs['generator'].append(common.to_host(x0))
      outs['ebm_revised'].append(common.to_host(x1))
    # The revised samples may leave the data range slightly; the classifier
    # has only seen [-1, 1].
    return {k: np.clip(np.concatenate(v)[:self.num_samples], -1.0, 1.0)
            for k, v in outs.items()}

  def run(self, state: ts.TrainState) -> Iterator[tuple[str, Any]]:
    ev = self.config.eval
    train_x = self._split('train')
    test_x = self._split('test')
    clf = train_classifier(train_x, data.digits_labels('train'),
                           int(ev.classifier_hidden),
                           int(ev.classifier_max_iter), int(ev.seed))
    accuracy = float(clf.score(test_x.reshape(len(test_x), -1),
                               data.digits_labels('test')))
    yield 'classifier_test_accuracy', accuracy
    mu_ref, sigma_ref = fid.statistics(hidden_features(clf, test_x))
    # Random order, so the first `matched` training digits are not one
    # writer's.
    shuffled = train_x[np.random.default_rng(int(ev.seed)).permutation(
        len(train_x))]
    sets = {**self._samples(state), 'train_digits': shuffled,
            'test_digits': test_x}
    matched = min(len(test_x), self.num_samples)
    yield 'num_samples', self.num_samples
    yield 'frechet_num_samples', matched
    rows = []
    for name, images in sets.items():
      probs = clf.predict_proba(images.reshape(len(images), -1))
      scores = class_scores(probs)
      fd = '- (reference) | -'
      if name != 'test_digits':
        # Every set draws its subsets from the same seed: equal sizes, and
        # the set is the only thing that differs.
        (scores['frechet_distance'],
         scores['frechet_distance_inf']) = extrapolated_frechet_distance(
             hidden_features(clf, images), mu_ref, sigma_ref, matched,
             np.random.default_rng(int(ev.seed)), str(ev.fid_matrix_sqrt))
        fd = (f'{scores["frechet_distance"]:.2f} | '
              f'{scores["frechet_distance_inf"]:.2f}')
      for k, v in scores.items():
        yield f'{name}/{k}', v
      if name in ('generator', 'ebm_revised'):
        yield f'{name}/by_class', class_picture(images, probs)
      rows.append(
          f'| {name} | {len(images)} | {scores["confidence"]:.3f} | '
          f'{scores["classes_covered"]} / {NUM_CLASSES} | '
          f'{scores["effective_classes"]:.2f} | '
          f'{scores["classifier_score"]:.2f} | {fd} |')
    table = [f'MLP classifier ({int(ev.classifier_hidden)} hidden units) '
             f'trained on {len(train_x)} training digits, test accuracy '
             f'{accuracy:.3f}; Fréchet distance in its hidden layer against '
             f'the {len(test_x)} test digits, {matched} samples per set (FD) '
             'and extrapolated to infinitely many (FD_inf).', '',
             '| samples | n | confidence | classes covered | '
             'effective classes | classifier score | FD | FD_inf |',
             '| --- | --- | --- | --- | --- | --- | --- | --- |', *rows]
    yield 'table', '\n'.join(table)
