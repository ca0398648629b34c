"""Tests of the inpainting evaluator on a tiny, untrained model.

Masks hide the intended area or fraction and are reproducible; the Tx
pipeline never changes an observed pixel; PSNR / SSIM give the known values
for a perfect and a uniformly shifted recovery; the evaluator runs end to
end and yields the paper's table and figure.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import test as test_config
from dual_mcmc_jax import networks
from dual_mcmc_jax import sharding
from dual_mcmc_jax import train_state as ts
from dual_mcmc_jax.evaluators import inpainting


@pytest.mark.parametrize('name,size,side', [
    ('M20', 64, 20), ('M40', 64, 40), ('M20', 32, 10), ('M30', 32, 15),
    ('M40', 16, 10)])
def test_centre_masks_hide_a_centred_square(name, size, side):
  m = inpainting.make_masks(name, 2, size, seed=0)
  assert m.shape == (2, size, size, 1) and m.dtype == bool
  hidden = ~m[0, :, :, 0]
  assert hidden.sum() == side * side
  rows, cols = np.nonzero(hidden)
  lo = (size - side) // 2
  assert rows.min() == lo and rows.max() == lo + side - 1
  assert cols.min() == lo and cols.max() == lo + side - 1
  np.testing.assert_array_equal(m[0], m[1])


@pytest.mark.parametrize('name,size', [('R20', 64), ('R30', 32), ('R40', 16)])
def test_random_masks_hide_the_fraction_and_are_reproducible(name, size):
  fraction = int(name[1:]) / 100
  m = inpainting.make_masks(name, 5, size, seed=3)
  hidden = 1.0 - m.mean(axis=(1, 2, 3))
  # 8x8 blocks of 64 cells: exact up to half a block.
  np.testing.assert_allclose(hidden, fraction, atol=0.5 / 64)
  assert not np.array_equal(m[0], m[1])  # Each image has its own holes.
  np.testing.assert_array_equal(m, inpainting.make_masks(name, 5, size, 3))
  assert not np.array_equal(m, inpainting.make_masks(name, 5, size, 4))
  # A mask depends on the image index, not on the batch it falls in.
  np.testing.assert_array_equal(
      m[2:], inpainting.make_masks(name, 3, size, 3, start_index=2))
  with pytest.raises(ValueError, match='unknown'):
    inpainting.make_masks('X10', 1, size, 0)


def test_psnr_and_ssim_of_known_recoveries():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(-0.5, 0.5, (2, 16, 16, 1)), jnp.float32)
  psnr, ssim = inpainting.psnr_ssim(x, x)
  assert np.all(np.isinf(psnr)) and np.allclose(ssim, 1.0)
  # +0.2 in [-1, 1] is +0.1 in [0, 1]: MSE 0.01, PSNR 20 dB.
  psnr, _ = inpainting.psnr_ssim(x, x + 0.2)
  np.testing.assert_allclose(psnr, 20.0, rtol=1e-4)


def _tiny():
  config = test_config.get_config()
  models = ts.create_models(config)
  optimizers = ts.create_optimizers(config.optim, steps_per_epoch=1)
  state = ts.create_train_state(models, optimizers, seed=0)
  return config, models, state


def test_tx_pipeline_keeps_observed_pixels():
  config, models, state = _tiny()
  x = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (8, 16, 16, 1)),
                  jnp.float32)
  mask = jnp.asarray(inpainting.make_masks('R40', 8, 16, seed=0))
  out = inpainting.make_recover_fn(config, models)(state, x, mask,
                                                   jax.random.key(0))
  observed = np.broadcast_to(np.asarray(mask), x.shape)
  np.testing.assert_array_equal(np.asarray(out['inf_tz_gen_tx'])[observed],
                                np.asarray(x)[observed])
  # The hole is filled by the chain, not left at the fill value.
  assert not np.allclose(np.asarray(out['inf_tz_gen_tx'])[~observed], 0.0)
  # The x-chain moved the hole away from the pasted generator output.
  assert not np.array_equal(np.asarray(out['inf_tz_gen_tx'])[~observed],
                            np.asarray(out['inf_tz_gen'])[~observed])
  np.testing.assert_array_equal(np.asarray(out['occluded'])[~observed], 0.0)


def test_evaluator_end_to_end_yields_table_and_figure():
  config, models, state = _tiny()
  config.eval.inpainting_masks = 'M20,R40'
  evaluator = inpainting.Evaluator(config, '', models, sharding.data_mesh())
  out = dict(evaluator.run(state))
  for mask in ('M20', 'R40'):
    for p in inpainting.PIPELINES:
      assert np.isfinite(out[f'{mask}/{p}/psnr']), (mask, p)
      assert -1.0 <= out[f'{mask}/{p}/ssim'] <= 1.0
  assert out['num_images'] == config.eval.inpainting_num_images
  assert '| Inf+Tz+Gen+Tx |' in out['table'] and 'R40' in out['table']
  grid = out['grid']
  assert grid.dtype == np.uint8 and grid.ndim == 3
  # Five rows (test, occluded, three recoveries) of 2 masks x 2 images.
  tile = grid.shape[0] // 5
  assert grid.shape[1] // tile == 4
