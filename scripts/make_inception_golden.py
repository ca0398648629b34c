"""Writes tests/fixtures/inception_golden.npz (needs PyTorch, not torchvision).

  pip install torch
  python scripts/make_inception_golden.py [--out=tests/fixtures/inception_golden.npz]

Builds pytorch-fid's FID InceptionV3 from scratch in PyTorch (the layers,
names and patched blocks of torchvision's Inception3 with pytorch-fid's
`FIDInceptionA/C/E_1/E_2`), loads the deterministic random weights of
`inception.random_state_dict(SEED)` into it (strictly: every key, every
shape), and stores its outputs for two small images: the 2048-d pool
features and the spatial means of pytorch-fid's blocks 0-2. It also stores
one PyTorch bilinear resize (`F.interpolate(..., align_corners=False)`)
that shrinks one axis and enlarges the other. The weights themselves are not
stored: `tests/fid_test.py` regenerates them from the seed, so the file stays
small. Run once; the .npz is committed and the tests run without PyTorch.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dual_mcmc_jax.evaluators import inception  # pylint: disable=g-import-not-at-top,wrong-import-position

SEED = 0
IMAGE_SEED = 1
IMAGE_SHAPE = (2, 24, 20, 3)  # [B, H, W, C]: non-square, resized to 299.
RESIZE_IN = (1, 9, 7, 2)  # [B, H, W, C]
RESIZE_OUT = (4, 11)


class BasicConv2d(nn.Module):

  def __init__(self, cin, cout, kernel_size, stride=1, padding=0):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride,
                          padding=padding, bias=False)
    self.bn = nn.BatchNorm2d(cout, eps=0.001)

  def forward(self, x):
    return F.relu(self.bn(self.conv(x)))


def _avg_pool(x):
  return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):

  def __init__(self, cin, pool_features):
    super().__init__()
    self.branch1x1 = BasicConv2d(cin, 64, 1)
    self.branch5x5_1 = BasicConv2d(cin, 48, 1)
    self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
    self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
    self.branch_pool = BasicConv2d(cin, pool_features, 1)

  def forward(self, x):
    b1 = self.branch1x1(x)
    b5 = self.branch5x5_2(self.branch5x5_1(x))
    b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    bp = self.branch_pool(_avg_pool(x))
    return torch.cat([b1, b5, b3, bp], 1)


class InceptionB(nn.Module):

  def __init__(self, cin):
    super().__init__()
    self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
    self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

  def forward(self, x):
    b3 = self.branch3x3(x)
    bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    return torch.cat([b3, bd, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionC(nn.Module):

  def __init__(self, cin, c7):
    super().__init__()
    self.branch1x1 = BasicConv2d(cin, 192, 1)
    self.branch7x7_1 = BasicConv2d(cin, c7, 1)
    self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
    self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
    self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
    self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
    self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
    self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
    self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
    self.branch_pool = BasicConv2d(cin, 192, 1)

  def forward(self, x):
    b1 = self.branch1x1(x)
    b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    bd = self.branch7x7dbl_1(x)
    for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3,
                  self.branch7x7dbl_4, self.branch7x7dbl_5):
      bd = layer(bd)
    bp = self.branch_pool(_avg_pool(x))
    return torch.cat([b1, b7, bd, bp], 1)


class InceptionD(nn.Module):

  def __init__(self, cin):
    super().__init__()
    self.branch3x3_1 = BasicConv2d(cin, 192, 1)
    self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
    self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
    self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
    self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
    self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

  def forward(self, x):
    b3 = self.branch3x3_2(self.branch3x3_1(x))
    b7 = self.branch7x7x3_1(x)
    for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
      b7 = layer(b7)
    return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):

  def __init__(self, cin, pool):
    super().__init__()
    self.pool = pool
    self.branch1x1 = BasicConv2d(cin, 320, 1)
    self.branch3x3_1 = BasicConv2d(cin, 384, 1)
    self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
    self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
    self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
    self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
    self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
    self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
    self.branch_pool = BasicConv2d(cin, 192, 1)

  def forward(self, x):
    b1 = self.branch1x1(x)
    b3 = self.branch3x3_1(x)
    b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
    bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
    if self.pool == 'avg':  # FIDInceptionE_1
      pooled = _avg_pool(x)
    else:  # FIDInceptionE_2
      pooled = F.max_pool2d(x, 3, stride=1, padding=1)
    return torch.cat([b1, b3, bd, self.branch_pool(pooled)], 1)


class FidInceptionV3(nn.Module):
  """pytorch-fid's InceptionV3(output_blocks=[0, 1, 2, 3]) forward pass."""

  def __init__(self):
    super().__init__()
    self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
    self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
    self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
    self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
    self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
    self.Mixed_5b = InceptionA(192, 32)
    self.Mixed_5c = InceptionA(256, 64)
    self.Mixed_5d = InceptionA(288, 64)
    self.Mixed_6a = InceptionB(288)
    self.Mixed_6b = InceptionC(768, 128)
    self.Mixed_6c = InceptionC(768, 160)
    self.Mixed_6d = InceptionC(768, 160)
    self.Mixed_6e = InceptionC(768, 192)
    self.Mixed_7a = InceptionD(768)
    self.Mixed_7b = InceptionE(1280, 'avg')
    self.Mixed_7c = InceptionE(2048, 'max')

  def forward(self, x):
    x = F.interpolate(x, size=(299, 299), mode='bilinear', align_corners=False)
    x = 2 * x - 1
    x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
    x = F.max_pool2d(x, 3, stride=2)
    block0 = x
    x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)
    block1 = x
    for name in ('5b', '5c', '5d', '6a', '6b', '6c', '6d', '6e'):
      x = getattr(self, f'Mixed_{name}')(x)
    block2 = x
    for name in ('7a', '7b', '7c'):
      x = getattr(self, f'Mixed_{name}')(x)
    pool = F.adaptive_avg_pool2d(x, (1, 1))[:, :, 0, 0]
    mean = lambda t: t.mean(dim=(2, 3))
    return {'pool': pool, 'block0': mean(block0), 'block1': mean(block1),
            'block2': mean(block2)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', default=os.path.join(
      os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tests',
      'fixtures', 'inception_golden.npz'))
  args = parser.parse_args()

  torch.manual_seed(0)
  net = FidInceptionV3().eval()
  weights = inception.random_state_dict(SEED)
  own = {k for k in net.state_dict() if not k.endswith('num_batches_tracked')}
  if own != set(weights):
    raise SystemExit('key layouts differ: only in PyTorch '
                     f'{sorted(own - set(weights))[:5]}, only in Flax '
                     f'{sorted(set(weights) - own)[:5]}')
  net.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()},
                      strict=False)

  rng = np.random.default_rng(IMAGE_SEED)
  images = rng.uniform(0.0, 1.0, IMAGE_SHAPE).astype(np.float32)
  resize_in = rng.standard_normal(RESIZE_IN).astype(np.float32)
  with torch.no_grad():
    out = net(torch.from_numpy(images).permute(0, 3, 1, 2))
    resized = F.interpolate(torch.from_numpy(resize_in).permute(0, 3, 1, 2),
                            size=RESIZE_OUT, mode='bilinear',
                            align_corners=False).permute(0, 2, 3, 1)
  arrays = {k: v.numpy().astype(np.float32) for k, v in out.items()}
  arrays.update(images=images, resize_in=resize_in,
                resize_out=resized.numpy().astype(np.float32),
                weights_seed=np.int64(SEED))
  np.savez_compressed(args.out, **arrays)
  print(f'wrote {args.out} ({os.path.getsize(args.out)} bytes); pool mean '
        f'{arrays["pool"].mean():.4f}')


if __name__ == '__main__':
  main()
