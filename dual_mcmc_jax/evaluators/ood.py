"""Out-of-distribution detection with the EBM's energy (paper Table 3).

The energy E(x) is the decision score: in-distribution data should get low
energy, so the AUROC is that of telling an OOD image (positive) from an
in-distribution test image (negative) by its energy, i.e. the probability
that a random OOD image has a higher energy than a random test image
(`sklearn.metrics.roc_auc_score`). 1.0 is perfect, 0.5 chance, 0.0 exactly
reversed.

`config.eval.ood_datasets` lists the OOD sets (comma-separated):

* a dataset name of the input pipeline (`svhn`, `cifar100`, `celeba32`,
  `cifar10`, `digits`, ...): its `config.eval.ood_split` split, read through
  `data.create_eval_iterator` with the model's image size;
* `npz:/path/file.npz`: every image of the file's first array (uint8
  [N, H, W, C] or floats in [-1, 1]);
* `folder:/path/dir`: the images of a folder (the pipeline's
  `image_folder` source);
* `uniform` (i.i.d. uniform noise in [-1, 1]) and `constant` (one uniform
  random grey level or colour per image): synthetic sets that need no data,
  so the evaluator also runs offline (e.g. on digits).

The in-distribution set is `config.eval.ood_split` of `config.data.dataset`.
Each set is capped at `config.eval.ood_num_images` (<= 0: all). A set that
cannot be read here is reported as skipped with the reason; the others are
still scored. The EBM is applied without updating its spectral-norm vectors
(PyTorch's eval mode), one sharded batch at a time.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Iterator

import jax
import numpy as np
from sklearn import metrics as sk_metrics

from dual_mcmc_jax import networks
from dual_mcmc_jax import sharding
from dual_mcmc_jax import train_state as ts
from dual_mcmc_jax.evaluators import common

Array = jax.Array
SYNTHETIC = ('uniform', 'constant')
# Sources with a single split: the whole file or folder.
_WHOLE_SPLIT_SOURCES = ('npz', 'image_folder')


def auroc(in_energy: np.ndarray, ood_energy: np.ndarray) -> float:
  """AUROC of separating OOD (high energy) from in-distribution (low)."""
  in_energy, ood_energy = np.asarray(in_energy), np.asarray(ood_energy)
  labels = np.concatenate([np.zeros(len(in_energy)), np.ones(len(ood_energy))])
  scores = np.concatenate([in_energy, ood_energy]).astype(np.float64)
  return float(sk_metrics.roc_auc_score(labels, scores))


@dataclasses.dataclass(frozen=True)
class OodSet:
  """One entry of config.eval.ood_datasets.

  Attributes:
    label: name in metric keys (a file or folder's base name).
    source: 'dataset', 'npz', 'folder' or 'synthetic'.
    value: the dataset name, path or synthetic kind.
  """
  label: str
  source: str
  value: str


def parse_ood_sets(spec: str | tuple[str, ...]) -> list[OodSet]:
  """Parses config.eval.ood_datasets into OodSets."""
  sets = []
  for entry in common.parse_list(spec):
    prefix, _, rest = entry.partition(':')
    if rest and prefix in ('npz', 'folder'):
      path = os.path.expanduser(rest)
      base = os.path.basename(os.path.normpath(path))
      label = os.path.splitext(base)[0] if prefix == 'npz' else base
      sets.append(OodSet(label or prefix, prefix, path))
    elif entry in SYNTHETIC:
      sets.append(OodSet(entry, 'synthetic', entry))
    else:
      sets.append(OodSet(entry, 'dataset', entry))
  labels = [s.label for s in sets]
  if len(set(labels)) != len(labels):
    raise ValueError(f'config.eval.ood_datasets={spec!r} names a set twice '
                     f'({", ".join(labels)})')
  return sets


def synthetic_images(kind: str, n: int, shape: tuple[int, ...],
                     seed: int) -> np.ndarray:
  """`n` synthetic OOD images in [-1, 1], reproducible from `seed`."""
  rng = np.random.default_rng(np.random.SeedSequence(
      [seed, SYNTHETIC.index(kind)]))
  if kind == 'uniform':
    return rng.uniform(-1.0, 1.0, (n, *shape)).astype(np.float32)
  levels = rng.uniform(-1.0, 1.0, (n, 1, 1, shape[-1])).astype(np.float32)
  return np.broadcast_to(levels, (n, *shape)).copy()


def make_energy_fn(models: networks.Models, mesh: jax.sharding.Mesh
                   ) -> Callable[[ts.NetState, Array], Array]:
  """Jitted `energy(ebm_state, x) -> [B]`, no spectral-norm update."""

  @jax.jit
  def energy(ebm: ts.NetState, x: Array) -> Array:
    return models.ebm.apply({'params': ebm.params, **ebm.state}, x,
                            update_stats=False)

  del mesh  # The input's sharding decides the partitioning.
  return energy


class Evaluator:
  """AUROC of the energy for each configured OOD set.

  Yields 'auroc/<set>' per set, 'energy_mean/<set>' (and
  'energy_mean/in_distribution'), a Markdown 'table', and a `Skipped` for
  each set that cannot be read here.
  """

  def __init__(self, config: common.Settings, workdir: str,
               models: networks.Models, mesh: jax.sharding.Mesh):
    del workdir
    common.require_images(models, 'OOD detection')
    self.config = config = common.settings_of(config)
    self.models = models
    self.mesh = mesh
    self.batch_size = common.eval_batch_size(config)
    self.sets = parse_ood_sets(config.eval.ood_datasets)
    if not self.sets:
      raise common.EvaluatorUnavailable('config.eval.ood_datasets is empty')
    self.limit = common.num_or_all(config.eval.ood_num_images)
    self.split = str(config.eval.ood_split)
    self._energy = make_energy_fn(models, mesh)

  def energies(self, ebm: ts.NetState, batches: Iterator[np.ndarray],
               what: str) -> np.ndarray:
    """Energies of every image of `batches`, [N]."""
    out = []
    for batch in batches:
      common.check_image_shape(batch, self.models.data_shape, what)
      n = len(batch)
      x = common.shard_global(common.pad_to(batch, self.batch_size), self.mesh)
      out.append(common.to_host(self._energy(ebm, x))[:n])
    if not out:
      raise common.EvaluatorUnavailable(f'{what} holds no images')
    return np.concatenate(out).astype(np.float64)

  def _batches(self, ood: OodSet, n_in: int) -> Iterator[np.ndarray]:
    what = f'OOD set {ood.label!r}'
    if ood.source == 'synthetic':
      n = self.limit or n_in
      images = synthetic_images(ood.value, n, self.models.data_shape,
                                int(self.config.eval.seed))
      return iter([images[i:i + self.batch_size]
                   for i in range(0, n, self.batch_size)])
    if ood.source == 'npz':
      cfg = common.dataset_config(self.config, 'npz', npz_path=ood.value,
                                  npz_key=None)
    elif ood.source == 'folder':
      cfg = common.dataset_config(self.config, 'image_folder',
                                  image_folder=ood.value)
    else:
      cfg = common.dataset_config(self.config, ood.value)
    return self._open(cfg, what)

  def _open(self, cfg: common.Settings,
            what: str) -> Iterator[np.ndarray]:
    if cfg.data.dataset in _WHOLE_SPLIT_SOURCES:
      # These sources hold one split, the whole file or folder, which older
      # versions of the pipeline call only 'train'.
      try:
        return common.eval_batches(cfg, self.split, self.batch_size,
                                   self.limit, what)
      except common.EvaluatorUnavailable:
        return common.eval_batches(cfg, 'train', self.batch_size, self.limit,
                                   what)
    return common.eval_batches(cfg, self.split, self.batch_size, self.limit,
                               what)

  def run(self, state: ts.TrainState) -> Iterator[tuple[str, Any]]:
    ebm = sharding.replicate(state.ebm, self.mesh)
    in_name = self.config.data.dataset
    what = f'the in-distribution data {in_name!r}'
    e_in = self.energies(ebm, self._open(self.config, what), what)
    yield 'energy_mean/in_distribution', float(e_in.mean())
    yield 'num_images/in_distribution', len(e_in)
    rows = []
    for ood in self.sets:
      try:
        e_ood = self.energies(ebm, self._batches(ood, len(e_in)),
                              f'OOD set {ood.label!r}')
      except common.EvaluatorUnavailable as e:
        rows.append(f'| {ood.label} | skipped: {e} | | |')
        yield f'auroc/{ood.label}', common.Skipped(str(e))
        continue
      score = auroc(e_in, e_ood)
      rows.append(f'| {ood.label} | {score:.4f} | {e_ood.mean():.4g} | '
                  f'{len(e_ood)} |')
      yield f'auroc/{ood.label}', score
      yield f'energy_mean/{ood.label}', float(e_ood.mean())
      yield f'num_images/{ood.label}', len(e_ood)
    table = [f'In-distribution: {in_name} {self.split} ({len(e_in)} images, '
             f'mean energy {e_in.mean():.4g}); energy is the score, '
             'higher = OOD.', '', '| OOD set | AUROC | mean energy | images |',
             '| --- | --- | --- | --- |', *rows]
    yield 'table', '\n'.join(table)
