"""FID of generator samples and of EBM-revised samples (paper section 7).

Protocol of the reference's task_fid.py: `config.eval.num_samples` samples
(50,000; 30,000 for CelebA-HQ-256), drawn as `x0 = G(z)` and as its
x-revision under the EBM with the evaluation sampler (70 steps,
s_x = 0.4, n_x = 0.001), mapped from [-1, 1] to [0, 1] and clamped, scored
by pool3 features of the FID Inception network (`inception.py`) against
statistics of the training split. Grayscale images are repeated to three
channels.

* Reference statistics are computed once per (dataset, split, image count,
  Inception weights) and cached in `config.eval.stats_dir` (default
  `<workdir>/fid_stats`); `config.eval.fid_reference_stats` can name a
  precomputed .npz with `mu` and `sigma` instead.
* Samples are drawn in rounds of `config.eval.batch_size`, each round split
  over all local devices; round r uses `fold_in(key(config.eval.seed), r)`,
  so the result does not depend on where a run was interrupted. The features
  of each round go to `<workdir>/fid_features/step_<N>/round_<r>.npz` as
  soon as they are computed; a restarted evaluation loads the saved rounds
  and continues with the next. When all rounds are in, their mean and
  covariance are saved (`stats.npz`) and the round files are deleted.
* The Fréchet distance is computed in float64 as pytorch-fid does (scipy's
  `sqrtm`, an eps * I offset when the product is singular, the real part),
  falling back to an eigenvalue form that cannot go complex when `sqrtm`'s
  result is not usable; `config.eval.fid_matrix_sqrt='eigh'` uses that form
  directly (same value, faster).

Weights (`config.eval.inception_weights`, a .pth or .npz; else
`config.eval.inception_url` downloaded into `config.eval.inception_cache_dir`):
see `inception.py`. Without them the evaluator is skipped with the reason.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import re
import time
from typing import Any, Callable, Iterator
import urllib.request

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from dual_mcmc_jax import networks
from dual_mcmc_jax import sharding
from dual_mcmc_jax import train_state as ts
from dual_mcmc_jax.evaluators import common
from dual_mcmc_jax.evaluators import inception

Array = jax.Array
KINDS = ('generator', 'ebm_revised')
_DATA_IDENTITY_FIELDS = ('npz_path', 'npz_key', 'image_folder', 'toy2d_name')


# ----------------------------------------------------------------------------
# Fréchet distance.
# ----------------------------------------------------------------------------


def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean and (unbiased, as np.cov) covariance of [N, D] features, float64."""
  f = np.asarray(features, np.float64)
  return f.mean(axis=0), np.cov(f, rowvar=False)


def sqrt_factor(sigma: np.ndarray) -> np.ndarray:
  """F [D, k] with F F^T = sigma, over sigma's positive eigenvalues only."""
  w, v = np.linalg.eigh(np.asarray(sigma, np.float64))
  keep = w > 0.0
  return v[:, keep] * np.sqrt(w[keep])


def _trace_sqrt_product_eigh(sigma1: np.ndarray, sigma2: np.ndarray,
                             factor1: np.ndarray | None = None) -> float:
  """tr sqrt(sigma1 sigma2) for PSD matrices, via a symmetric eigenproblem.

  With sigma1 = F F^T, the nonzero eigenvalues of sigma1 sigma2 = F F^T sigma2
  are those of the symmetric PSD matrix F^T sigma2 F, so the trace is the sum
  of their (clipped) square roots. F has one column per positive eigenvalue
  of sigma1, so a low-rank sigma1 gives a small problem.
  """
  f = sqrt_factor(sigma1) if factor1 is None else factor1
  w = np.linalg.eigvalsh(f.T @ sigma2 @ f)
  return float(np.sum(np.sqrt(np.clip(w, 0.0, None))))


MATRIX_SQRT_METHODS = ('sqrtm', 'eigh')


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray, eps: float = 1e-6,
                     method: str = 'sqrtm',
                     factor1: np.ndarray | None = None) -> float:
  """||mu1 - mu2||^2 + tr(s1 + s2 - 2 sqrt(s1 s2)), in float64.

  method='sqrtm' is pytorch-fid's computation: `scipy.linalg.sqrtm` of the
  product; when the result is not finite (singular product), retry with
  eps * I added to both covariances; drop a negligible imaginary part. If a
  large imaginary part remains (pytorch-fid raises here), the trace is taken
  from the equivalent symmetric eigenproblem instead, with a warning.
  method='eigh' goes to that eigenproblem directly: the same value for
  covariance matrices, several times faster at 2048 dimensions.

  Args:
    mu1, mu2: [D] means.
    sigma1, sigma2: [D, D] covariances.
    eps: diagonal offset for singular products.
    method: 'sqrtm' or 'eigh'.
    factor1: `sqrt_factor(sigma1)`, if already known (method='eigh'; lets a
      fixed reference be factorised once).

  Returns:
    The squared Fréchet distance between the two Gaussians.
  """
  if method not in MATRIX_SQRT_METHODS:
    raise ValueError(f'config.eval.fid_matrix_sqrt={method!r} is unknown; '
                     f'allowed: {", ".join(MATRIX_SQRT_METHODS)}')
  mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(
      mu2).astype(np.float64)
  sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(
      sigma2).astype(np.float64)
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
    raise ValueError(f'mismatched statistics: means {mu1.shape} vs '
                     f'{mu2.shape}, covariances {sigma1.shape} vs '
                     f'{sigma2.shape}')
  diff = mu1 - mu2
  if method == 'eigh':
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) -
                 2.0 * _trace_sqrt_product_eigh(sigma1, sigma2, factor1))
  covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
  if not np.isfinite(covmean).all():
    logging.warning('FID: singular product of covariances; adding %g to the '
                    'diagonals', eps)
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
  if np.iscomplexobj(covmean):
    if np.isfinite(covmean).all() and np.allclose(
        np.diagonal(covmean).imag, 0, atol=1e-3):
      covmean = covmean.real
    else:
      covmean = None
  if covmean is None or not np.isfinite(covmean).all():
    logging.warning('FID: sqrtm gave an unusable result; using the '
                    'eigenvalue form of tr sqrt(sigma1 sigma2)')
    tr_covmean = _trace_sqrt_product_eigh(sigma1, sigma2)
  else:
    tr_covmean = float(np.trace(covmean))
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) -
               2.0 * tr_covmean)


# ----------------------------------------------------------------------------
# Resumable rounds.
# ----------------------------------------------------------------------------


def _save_npz_atomic(path: str, **arrays: np.ndarray) -> None:
  tmp = path + '.tmp.npz'
  np.savez(tmp, **arrays)
  os.replace(tmp, path)


def _reset_rounds_unless(directory: str, meta: dict[str, Any]) -> None:
  """Deletes saved rounds unless they were computed with settings `meta`."""
  meta_path = os.path.join(directory, 'meta.json')
  meta = json.loads(json.dumps(meta))  # Normalise tuples etc.
  os.makedirs(directory, exist_ok=True)
  old = None
  if os.path.exists(meta_path):
    with open(meta_path) as f:
      old = json.load(f)
  if old != meta:
    for p in glob.glob(os.path.join(directory, 'round_*.npz')):
      os.remove(p)
    with open(meta_path, 'w') as f:
      json.dump(meta, f, indent=2, sort_keys=True)


def compute_rounds(directory: str, num_rounds: int,
                   compute_round: Callable[[int], dict[str, np.ndarray]],
                   meta: dict[str, Any], what: str = 'round'
                   ) -> dict[str, np.ndarray]:
  """Runs `compute_round(r)` for r < num_rounds, saving each result.

  Rounds already saved in `directory` (by an interrupted earlier run with the
  same `meta`) are loaded instead of recomputed; saved rounds of a run with
  other settings are deleted first. Each round is written atomically, so an
  interruption at any point leaves only complete rounds behind.

  Args:
    directory: where the round files live.
    num_rounds: how many rounds make the result.
    compute_round: round index -> {name: array [n_r, ...]}.
    meta: JSON-able settings the rounds depend on.
    what: description for the progress log.

  Returns:
    {name: the rounds' arrays concatenated along the first axis}.
  """
  is_writer = jax.process_index() == 0
  if is_writer:
    _reset_rounds_unless(directory, meta)
  results: list[dict[str, np.ndarray]] = []
  loaded = 0
  start = time.time()
  for r in range(num_rounds):
    path = os.path.join(directory, f'round_{r:06d}.npz')
    arrays = None
    if os.path.exists(path):
      try:
        with np.load(path) as f:
          arrays = {k: f[k] for k in f.files}
        loaded += 1
      except (OSError, ValueError, EOFError):
        logging.warning('Recomputing unreadable %s', path)
    if arrays is None:
      arrays = {k: np.asarray(v) for k, v in compute_round(r).items()}
      if is_writer:
        _save_npz_atomic(path, **arrays)
      done = r + 1 - loaded
      if done == 1 or (r + 1) % max(num_rounds // 10, 1) == 0 or (
          r + 1 == num_rounds):
        rate = (time.time() - start) / done
        logging.info('%s %d / %d (%d loaded from an earlier run), %.2f s per '
                     'round, about %.0f s left', what, r + 1, num_rounds,
                     loaded, rate, rate * (num_rounds - r - 1))
    results.append(arrays)
  if loaded:
    logging.info('%s: resumed, %d of %d rounds came from %s', what, loaded,
                 num_rounds, directory)
  return {k: np.concatenate([a[k] for a in results], axis=0)
          for k in results[0]}


# ----------------------------------------------------------------------------
# Inception weights.
# ----------------------------------------------------------------------------


def _check_download(path: str, url: str) -> None:
  # pytorch-fid names its files <name>-<first hex digits of the sha256>.pth.
  m = re.search(r'-([0-9a-f]{8,})\.[a-z]+$', os.path.basename(url))
  if m:
    with open(path, 'rb') as f:
      digest = hashlib.sha256(f.read()).hexdigest()
    if not digest.startswith(m.group(1)):
      os.remove(path)
      raise common.EvaluatorUnavailable(
          f'downloaded {url} but its sha256 {digest[:12]}... does not match '
          f'{m.group(1)}')



def resolve_weights(config: common.Settings) -> str:
  """Path of the Inception weights: configured, cached, or downloaded.

  Raises:
    EvaluatorUnavailable: with one line saying what to set.
  """
  ev = config.eval
  hint = ('FID needs the Inception weights: set config.eval.inception_weights '
          "to pytorch-fid's pt_inception-2015-12-05-6726825d.pth (or an .npz "
          'from scripts/convert_inception_weights.py)')
  path = ev.inception_weights
  if path:
    path = os.path.expanduser(path)
    if not os.path.exists(path):
      raise common.EvaluatorUnavailable(
          f'config.eval.inception_weights={path!r} does not exist; {hint}')
    return path
  url = ev.inception_url
  if not url:
    raise common.EvaluatorUnavailable(
        f'{hint}; config.eval.inception_url is empty, so nothing is '
        'downloaded')
  cache = os.path.expanduser(ev.inception_cache_dir or
                             '~/.cache/dual_mcmc_jax')
  target = os.path.join(cache, os.path.basename(url))
  if os.path.exists(target):
    return target
  logging.info('Downloading the FID Inception weights from %s to %s', url,
               target)
  try:
    os.makedirs(cache, exist_ok=True)
    tmp = target + '.part'
    with urllib.request.urlopen(url, timeout=60) as r, open(tmp, 'wb') as f:
      while chunk := r.read(1 << 20):
        f.write(chunk)
    os.replace(tmp, target)
  except OSError as e:  # URLError, timeouts and file errors are OSErrors.
    raise common.EvaluatorUnavailable(
        f'{hint}; downloading {url} failed ({type(e).__name__}: {e})') from e
  _check_download(target, url)
  return target


def load_inception(config: common.Settings
                   ) -> tuple[dict[str, Any], str]:
  """(Flax variables, weights path) of the FID Inception for `config`."""
  path = resolve_weights(config)
  try:
    return inception.load_variables(path), path
  except (ValueError, OSError) as e:
    raise common.EvaluatorUnavailable(
        f'cannot load the Inception weights {path}: {e}') from e


def make_feature_fn(variables: dict[str, Any], mesh: jax.sharding.Mesh
                    ) -> Callable[[Array], Array]:
  """Jitted `features(x) -> [B, 2048]` for images in [-1, 1], sharded.

  Maps to [0, 1] with clamping, repeats a single channel to three, then runs
  the Inception network. The weights are replicated once here.
  """
  net = inception.FidInceptionV3()
  variables = sharding.replicate(variables, mesh)

  @jax.jit
  def features(variables, x):
    x = common.to_unit(x)
    if x.shape[-1] == 1:
      x = jnp.repeat(x, 3, axis=-1)
    return net.apply(variables, x)

  return lambda x: features(variables, x)


# ----------------------------------------------------------------------------
# The evaluator.
# ----------------------------------------------------------------------------


class Evaluator:
  """FID of generator and EBM-revised samples against the training data.

  Yields 'generator' and 'ebm_revised' (the FIDs) and 'num_samples'.
  """

  def __init__(self, config: common.Settings, workdir: str,
               models: networks.Models, mesh: jax.sharding.Mesh):
    common.require_images(models, 'FID')
    self.config = config = common.settings_of(config)
    self.workdir = workdir
    self.models = models
    self.mesh = mesh
    self.batch_size = common.eval_batch_size(config)
    self.num_samples = int(config.eval.num_samples)
    if self.num_samples < 2:
      raise ValueError(f'config.eval.num_samples={self.num_samples} must be '
                       '>= 2')
    self.variables, self.weights_path = load_inception(config)
    self.weights_id = inception.fingerprint(self.variables)
    self._features = make_feature_fn(self.variables, mesh)

  def _features_of(self, x: Array) -> np.ndarray:
    return common.to_host(self._features(x))

  # -- reference statistics ------------------------------------------------

  def _reference_path(self) -> tuple[str, dict[str, Any]]:
    cfg, ev = self.config, self.config.eval
    split = str(ev.fid_reference_split)
    limit = common.num_or_all(ev.fid_num_reference_images)
    key = {
        'dataset': cfg.data.dataset, 'image_size': int(cfg.data.image_size),
        'num_channels': int(cfg.data.num_channels), 'split': split,
        'num_images': limit or 'all', 'inception': self.weights_id,
        # The fields that decide which images the split holds.
        'data': {k: getattr(cfg.data, k) for k in _DATA_IDENTITY_FIELDS},
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str)
                            .encode()).hexdigest()[:10]
    stats_dir = ev.stats_dir or os.path.join(self.workdir, 'fid_stats')
    name = (f'{cfg.data.dataset}_{cfg.data.image_size}px_'
            f'{re.sub(r"[^A-Za-z0-9]+", "-", split)}_{limit or "all"}_'
            f'{digest}.npz')
    return os.path.join(os.path.expanduser(stats_dir), name), key

  def reference_statistics(self) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of the reference split; computed once, then cached."""
    ev = self.config.eval
    given = ev.fid_reference_stats
    if given:
      with np.load(os.path.expanduser(given)) as f:
        return f['mu'], f['sigma']
    path, key = self._reference_path()
    if os.path.exists(path):
      with np.load(path) as f:
        logging.info('FID reference statistics from %s (%d images)', path,
                     int(f['num_images']))
        return f['mu'], f['sigma']
    split = str(ev.fid_reference_split)
    limit = common.num_or_all(ev.fid_num_reference_images)
    logging.info('Computing FID reference statistics of %s split %r (%s '
                 'images) into %s', self.config.data.dataset, split,
                 limit or 'all', path)
    feats = []
    start = time.time()
    for i, batch in enumerate(common.eval_batches(
        self.config, split, self.batch_size, limit,
        what=f'the FID reference data {self.config.data.dataset!r}')):
      common.check_image_shape(batch, self.models.data_shape,
                               'the FID reference data')
      n = len(batch)
      x = common.shard_global(common.pad_to(batch, self.batch_size), self.mesh)
      feats.append(self._features_of(x)[:n])
      if i % 20 == 0:
        logging.info('FID reference features: %d images, %.0f s',
                     sum(map(len, feats)), time.time() - start)
    if not feats:
      raise common.EvaluatorUnavailable('the FID reference split is empty')
    feats = np.concatenate(feats, axis=0)
    mu, sigma = statistics(feats)
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(path), exist_ok=True)
      _save_npz_atomic(path, mu=mu, sigma=sigma, num_images=len(feats),
                       key=json.dumps(key, sort_keys=True, default=str))
    return mu, sigma

  # -- samples ----------------------------------------------------------------

  def sample_statistics(self, state: ts.TrainState
                        ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{kind: (mu, sigma)} of generator and EBM-revised sample features."""
    ev = self.config.eval
    step = int(jax.device_get(state.step))
    directory = os.path.join(self.workdir, 'fid_features', f'step_{step}')
    meta = {'num_samples': self.num_samples, 'batch_size': self.batch_size,
            'seed': int(ev.seed), 'inception': self.weights_id,
            'langevin': [int(ev.langevin_steps), float(ev.langevin_step_size),
                         float(ev.langevin_noise),
                         str(self.config.langevin_x.rule)]}
    stats_path = os.path.join(directory, 'stats.npz')
    if os.path.exists(stats_path):
      with np.load(stats_path) as f:
        if str(f['meta']) == json.dumps(meta, sort_keys=True):
          logging.info('FID sample statistics from %s', stats_path)
          return {k: (f[f'{k}_mu'], f[f'{k}_sigma']) for k in KINDS}
    sampler = common.make_sampler(self.config, self.models, self.mesh,
                                  self.batch_size)
    key = jax.random.key(int(ev.seed))

    def compute_round(r: int) -> dict[str, np.ndarray]:
      x0, x1 = sampler(state, jax.random.fold_in(key, r))
      return {'generator': self._features_of(x0),
              'ebm_revised': self._features_of(x1)}

    num_rounds = math.ceil(self.num_samples / self.batch_size)
    feats = compute_rounds(directory, num_rounds, compute_round, meta,
                           what='FID sample rounds')
    stats = {k: statistics(feats[k][:self.num_samples]) for k in KINDS}
    if jax.process_index() == 0:
      _save_npz_atomic(stats_path, meta=json.dumps(meta, sort_keys=True),
                       **{f'{k}_mu': v[0] for k, v in stats.items()},
                       **{f'{k}_sigma': v[1] for k, v in stats.items()})
      # The statistics are all that is needed now; the features are large.
      for p in glob.glob(os.path.join(directory, 'round_*.npz')):
        os.remove(p)
    return stats

  def run(self, state: ts.TrainState) -> Iterator[tuple[str, Any]]:
    state = sharding.replicate(state, self.mesh)
    mu_ref, sigma_ref = self.reference_statistics()
    stats = self.sample_statistics(state)
    method = str(self.config.eval.fid_matrix_sqrt)
    factor_ref = sqrt_factor(sigma_ref) if method == 'eigh' else None
    for kind in KINDS:
      mu, sigma = stats[kind]
      yield kind, frechet_distance(mu_ref, sigma_ref, mu, sigma,
                                   method=method, factor1=factor_ref)
    yield 'num_samples', self.num_samples
