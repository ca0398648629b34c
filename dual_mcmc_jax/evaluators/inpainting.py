"""Image inpainting with the two MCMC revisions (supplementary section 1.3).

Masks (`config.eval.inpainting_masks`):

* `M20`, `M30`, `M40`: a centred square hole of side 20, 30, 40 pixels.
  These sides are pixels of a `config.eval.inpainting_mask_reference_size`
  (64) image, the size of the paper's face images (a 40-pixel hole does not
  fit in 32x32, and M40 = 39% of a 64x64 image matches R40's 40%); for other
  sizes the side scales proportionally, side = round(k * S / 64): 10/15/20
  pixels at 32x32, 5/8/10 at 16x16.
* `R20`, `R30`, `R40`: the image is tiled into square blocks of
  `config.eval.inpainting_block_size` pixels (8 at the reference size, scaled
  the same way) and a random round(k% x number of blocks) of them are hidden,
  so the hidden fraction is k% up to one block.

Masks are drawn per image from `config.eval.seed`, the mask's name and the
image's index, so every run (and every pipeline) sees the same holes.

Recovery pipelines (all reuse the training samplers of `train_step`):

* `Inf+Gen`: z = mean of q(z | x_occ); x = G(z).
* `Inf+Tz+Gen`: then z-Langevin (`revise_z`) under the generator posterior
  with only the observed pixels in the likelihood; x = G(z').
* `Inf+Tz+Gen+Tx`: then x-Langevin (`revise_x`) under the EBM started at
  G(z') with the observed pixels pasted in and held fixed by the mask.

The inference model cannot be told which pixels are missing, so it sees the
occluded image with the hidden pixels set to
`config.eval.inpainting_fill_value` (0: mid-grey in [-1, 1]). With
`config.eval.inpainting_paste_observed` (default) the observed pixels are
pasted back into the first two recoveries as well, so that all three are
judged on the hole alone, like the third, whose observed pixels are exact by
construction. The chains use `config.langevin_z` / `config.langevin_x` (the
training chains), with the step counts overridable by
`config.eval.inpainting_z_steps` / `inpainting_x_steps` (<= 0: training's).

PSNR and SSIM (dm-pix, on [0, 1] images, SSIM with its default 11x11
Gaussian window) are averaged over `config.eval.inpainting_num_images`
images of `config.eval.inpainting_split`. Outputs: scalars
`<mask>/<pipeline>/psnr|ssim`, the paper's table as Markdown, and a picture
like the paper's Figure 1: rows test image, occluded image, the three
recoveries; columns `config.eval.inpainting_grid_images` images per mask.
"""

from __future__ import annotations

import dataclasses
import math
import re
import zlib
from typing import Any, Callable, Iterator

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np

from dual_mcmc_jax import networks
from dual_mcmc_jax import sampling
from dual_mcmc_jax import sharding
from dual_mcmc_jax import train_state as ts
from dual_mcmc_jax import visualize
from dual_mcmc_jax.evaluators import common

Array = jax.Array
PIPELINES = ('inf_gen', 'inf_tz_gen', 'inf_tz_gen_tx')
PIPELINE_TITLES = {'inf_gen': 'Inf+Gen', 'inf_tz_gen': 'Inf+Tz+Gen',
                   'inf_tz_gen_tx': 'Inf+Tz+Gen+Tx'}
_MASK_RE = re.compile(r'^([MR])(\d+)$')


def scaled_size(pixels: float, image_size: int, reference_size: int) -> int:
  """A length given at the reference size, scaled to `image_size` (>= 1)."""
  return max(1, int(round(pixels * image_size / reference_size)))


def parse_mask(name: str) -> tuple[str, int]:
  """'M20' -> ('M', 20); raises ValueError on anything else."""
  m = _MASK_RE.match(name)
  if not m or (m.group(1) == 'R' and not 0 < int(m.group(2)) < 100):
    raise ValueError(f'inpainting mask {name!r} is unknown; use M<side> '
                     '(centre square, e.g. M20) or R<percent> (random '
                     'blocks, e.g. R40)')
  return m.group(1), int(m.group(2))


def make_masks(name: str, num_images: int, image_size: int, seed: int,
               reference_size: int = 64, block_size: int = 8,
               start_index: int = 0) -> np.ndarray:
  """Observation masks, True = observed, [N, S, S, 1] bool.

  Args:
    name: 'M<side>' or 'R<percent>' (see module doc).
    num_images: N.
    image_size: S.
    seed: evaluation seed.
    reference_size: image size at which M sides and block sizes are given.
    block_size: block side of R masks at the reference size.
    start_index: index of the first image (masks depend on the image index,
      not on the batch it falls in).

  Returns:
    The masks.
  """
  kind, k = parse_mask(name)
  masks = np.ones((num_images, image_size, image_size, 1), bool)
  if kind == 'M':
    side = min(scaled_size(k, image_size, reference_size), image_size)
    lo = (image_size - side) // 2
    masks[:, lo:lo + side, lo:lo + side] = False
    return masks
  block = min(scaled_size(block_size, image_size, reference_size), image_size)
  cells = math.ceil(image_size / block)
  n_hide = int(round(k / 100.0 * cells * cells))
  name_id = zlib.crc32(name.encode())
  for i in range(num_images):
    rng = np.random.default_rng(
        np.random.SeedSequence([seed, name_id, start_index + i]))
    hidden = rng.permutation(cells * cells)[:n_hide]
    cell_mask = np.ones(cells * cells, bool)
    cell_mask[hidden] = False
    full = np.repeat(np.repeat(cell_mask.reshape(cells, cells), block, 0),
                     block, 1)
    masks[i, :, :, 0] = full[:image_size, :image_size]
  return masks


def psnr_ssim(x: Array, recovery: Array) -> tuple[Array, Array]:
  """Per-image PSNR (dB) and SSIM of images in [-1, 1], measured in [0, 1].

  Args:
    x: [B, H, W, C] ground truth.
    recovery: [B, H, W, C] recovered images (clamped to the data range).

  Returns:
    ([B] PSNR, [B] SSIM); PSNR is inf for a perfect recovery.
  """
  target, unit = common.to_unit(x), common.to_unit(recovery)
  return pix.psnr(target, unit), pix.ssim(target, unit)


def make_recover_fn(config: common.Settings,
                    models: networks.Models
                    ) -> Callable[[ts.TrainState, Array, Array, Array],
                                  dict[str, Array]]:
  """Jitted `recover(state, x, mask, key) -> images and per-image metrics`.

  Args:
    config: experiment config.
    models: the three modules.

  Returns:
    A function of x [B, H, W, C] in [-1, 1] and mask [B, H, W, 1] (True =
    observed) returning 'occluded' and the three pipelines' recoveries
    ([B, H, W, C]) and '<pipeline>/psnr', '<pipeline>/ssim' ([B]).
  """
  ev = config.eval
  lz, lx = config.langevin_z, config.langevin_x
  if ev.inpainting_z_steps > 0:
    lz = dataclasses.replace(lz, steps=ev.inpainting_z_steps)
  if ev.inpainting_x_steps > 0:
    lx = dataclasses.replace(lx, steps=ev.inpainting_x_steps)
  sigma, prior_sigma = float(config.loss.sigma), float(config.loss.prior_sigma)
  fill = float(ev.inpainting_fill_value)
  paste = bool(ev.inpainting_paste_observed)

  def recover(state: ts.TrainState, x: Array, mask: Array,
              key: Array) -> dict[str, Array]:
    k_z, k_x = jax.random.split(key)
    x_occ = jnp.where(mask, x, fill)  # [B, H, W, C]
    z0, _, _ = sampling.infer_z(models, state.inf, x_occ, None)
    rec0, _ = sampling.generate(models, state.gen, z0)
    z1, _, _ = sampling.revise_z(models, state.gen, z0, x_occ, k_z, lz,
                                   sigma, prior_sigma, x_mask=mask)
    rec1, _ = sampling.generate(models, state.gen, z1)
    x_init = jnp.where(mask, x, rec1)
    rec2, _, _ = sampling.revise_x(models, state.ebm, x_init, k_x, lx,
                                     mask=mask)
    if paste:
      rec0 = jnp.where(mask, x, rec0)
      rec1 = x_init
    out = {'occluded': x_occ}
    for name, rec in zip(PIPELINES, (rec0, rec1, rec2)):
      out[name] = rec
      out[f'{name}/psnr'], out[f'{name}/ssim'] = psnr_ssim(x, rec)
    return out

  return jax.jit(recover)


def markdown_table(results: dict[str, dict[str, tuple[float, float]]],
                   masks: list[str]) -> str:
  """The paper's table: PSNR / SSIM per pipeline (rows) and mask (columns).

  Args:
    results: mask -> pipeline -> (psnr, ssim).
    masks: column order.

  Returns:
    Markdown; M and R masks in separate tables as in the paper.
  """
  lines = []
  for group in ('M', 'R'):
    cols = [m for m in masks if m.startswith(group)]
    if not cols:
      continue
    lines.append('| PSNR / SSIM | ' + ' | '.join(cols) + ' |')
    lines.append('| --- ' * (len(cols) + 1) + '|')
    for p in PIPELINES:
      cells = [f'{results[m][p][0]:.3f} / {results[m][p][1]:.3f}'
               for m in cols]
      lines.append(f'| {PIPELINE_TITLES[p]} | ' + ' | '.join(cells) + ' |')
    lines.append('')
  return '\n'.join(lines).rstrip() + '\n'


class Evaluator:
  """PSNR / SSIM of the three recovery pipelines for each mask.

  Yields '<mask>/<pipeline>/psnr' and '.../ssim', 'num_images', the Markdown
  'table' and the 'grid' picture.
  """

  def __init__(self, config: common.Settings, workdir: str,
               models: networks.Models, mesh: jax.sharding.Mesh):
    del workdir
    common.require_images(models, 'Inpainting')
    self.config = config = common.settings_of(config)
    self.models = models
    self.mesh = mesh
    self.batch_size = common.eval_batch_size(config)
    self.masks = common.parse_list(config.eval.inpainting_masks)
    if not self.masks:
      raise common.EvaluatorUnavailable('config.eval.inpainting_masks is empty')
    for m in self.masks:
      parse_mask(m)
    self.limit = common.num_or_all(config.eval.inpainting_num_images)
    self._recover = make_recover_fn(config, models)

  def run(self, state: ts.TrainState) -> Iterator[tuple[str, Any]]:
    ev = self.config.eval
    state = sharding.replicate(state, self.mesh)
    n_dev = jax.device_count()
    key = jax.random.key(int(ev.seed))
    sums = {(name, p, metric): 0.0 for name in self.masks for p in PIPELINES
            for metric in ('psnr', 'ssim')}
    columns = []  # Per mask: [5, n_grid, H, W, C] from the first batch.
    n = 0
    batches = common.eval_batches(
        self.config, str(ev.inpainting_split), self.batch_size, self.limit,
        f'the inpainting data {self.config.data.dataset!r}')
    for b, x in enumerate(batches):  # x: [k, H, W, C]
      common.check_image_shape(x, self.models.data_shape, 'the inpainting data')
      k = len(x)
      # The generator normalises with batch statistics, so a short last
      # batch is padded only up to a multiple of the device count.
      padded = (self.batch_size if k == self.batch_size else
                -(-k // n_dev) * n_dev)
      x_dev = common.shard_global(common.pad_to(x, padded), self.mesh)
      for mask_index, name in enumerate(self.masks):
        m = make_masks(name, k, x.shape[1], int(ev.seed),
                       int(ev.inpainting_mask_reference_size),
                       int(ev.inpainting_block_size), start_index=n)
        out = self._recover(
            state, x_dev,
            common.shard_global(common.pad_to(m, padded), self.mesh),
            jax.random.fold_in(jax.random.fold_in(key, mask_index), b))
        out = {kk: common.to_host(v)[:k] for kk, v in out.items()}
        for p in PIPELINES:
          for metric in ('psnr', 'ssim'):
            sums[name, p, metric] += float(
                np.sum(out[f'{p}/{metric}'].astype(np.float64)))
        if b == 0:
          g = int(ev.inpainting_grid_images)
          columns.append(np.stack([x[:g], out['occluded'][:g]] +
                                  [out[p][:g] for p in PIPELINES]))
      n += k
    if not n:
      raise common.EvaluatorUnavailable('the inpainting split is empty')
    results: dict[str, dict[str, tuple[float, float]]] = {}
    for name in self.masks:
      results[name] = {}
      for p in PIPELINES:
        psnr, ssim = sums[name, p, 'psnr'] / n, sums[name, p, 'ssim'] / n
        results[name][p] = (psnr, ssim)
        yield f'{name}/{p}/psnr', psnr
        yield f'{name}/{p}/ssim', ssim
    yield 'num_images', n
    yield 'table', markdown_table(results, self.masks)
    if columns[0].shape[1]:
      # Rows: test, occluded, three recoveries; columns grouped by mask.
      tiles = np.concatenate(columns, axis=1)  # [5, masks * g, H, W, C]
      rows, cols = tiles.shape[:2]
      yield 'grid', visualize.image_grid(
          tiles.reshape(rows * cols, *tiles.shape[2:]), ncols=cols)
