"""Converts pytorch-fid's Inception weights (.pth) to the FID evaluator's .npz.

One-time, on a machine with PyTorch (torchvision is not needed):

  pip install torch
  wget https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
  python scripts/convert_inception_weights.py \
      --pth=pt_inception-2015-12-05-6726825d.pth --out=pt_inception-2015-12-05.npz

then evaluate with `--config.eval.inception_weights=pt_inception-2015-12-05.npz`.
The .npz holds the state-dict arrays the features need, under their PyTorch
names and in PyTorch's layout (see `dual_mcmc_jax/evaluators/inception.py`).

The conversion is optional: `config.eval.inception_weights` also accepts the
.pth itself, which the evaluator reads without PyTorch. This script is the
cross-check: it reads the file with `torch.load`, compares every array with
the torch-free reader, and checks keys and shapes against the Flax network.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from dual_mcmc_jax.evaluators import inception
from dual_mcmc_jax.import_torch import pth
# pylint: enable=g-import-not-at-top,wrong-import-position


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--pth', required=True, help="pytorch-fid's .pth file")
  parser.add_argument('--out', required=True, help='the .npz to write')
  args = parser.parse_args()

  state = torch.load(args.pth, map_location='cpu', weights_only=True)
  arrays = {k: v.numpy() for k, v in state.items()}
  # Raises with the offending key if anything is missing or misshapen.
  inception.state_dict_to_variables(arrays, source=args.pth)
  own = pth.load_state_dict(args.pth)
  for key in inception.state_dict_shapes():
    if not np.array_equal(own[key], arrays[key]):
      raise SystemExit(f'torch-free reader disagrees with torch.load on {key}')
  inception.save_npz(args.out, arrays)
  n = sum(arrays[k].size for k in inception.state_dict_shapes())
  print(f'wrote {args.out}: {len(inception.state_dict_shapes())} arrays, '
        f'{n} parameters; fingerprint '
        f'{inception.fingerprint(inception.load_variables(args.out))}')


if __name__ == '__main__':
  main()
