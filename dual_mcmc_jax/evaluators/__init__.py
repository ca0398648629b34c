"""The paper's evaluations, one small module each, chosen by name.

`config.eval.evaluators` names them (comma-separated): `fid` (fid.py),
`ood` (ood.py), `inpainting` (inpainting.py), `cost` (cost.py),
`classifier` (classifier.py: digits sample quality without Inception). Each
module has an `Evaluator(config, workdir, models, mesh)` whose `run(state)`
yields `(name, value)` pairs; see `common.py` for the contract and
`dual_mcmc_jax/evaluate.py` for the driver.
"""

from __future__ import annotations

import importlib

NAMES = ('fid', 'ood', 'inpainting', 'cost', 'classifier')


def get_evaluator_class(name: str) -> type:
  """The Evaluator class of evaluator `name`."""
  if name not in NAMES:
    raise ValueError(f'config.eval.evaluators names {name!r}, which is '
                     f'unknown; allowed: {", ".join(NAMES)}')
  return importlib.import_module(f'dual_mcmc_jax.evaluators.{name}').Evaluator
