"""Tests of the OOD evaluator: AUROC of energies, set parsing, data sources.

A stand-in EBM whose energy is the mean pixel value separates dark from
bright images perfectly, so the AUROC is known: 1.0 when the OOD set is
brighter than the in-distribution set, 0.0 when it is darker. The TFDS path
runs on `tfds.testing.mock_data`.
"""

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import cifar10 as cifar10_config
from configs import test as test_config
from dual_mcmc_jax import data
from dual_mcmc_jax import networks
from dual_mcmc_jax import sharding
from dual_mcmc_jax import train_state as ts
from dual_mcmc_jax.evaluators import common
from dual_mcmc_jax.evaluators import ood


class MeanEnergy(nn.Module):
  """E(x) = mean pixel value: dark images have low energy."""

  @nn.compact
  def __call__(self, x, update_stats=True):
    del update_stats
    return jnp.mean(x, axis=(1, 2, 3))


def _models_and_state(shape):
  models = networks.Models(ebm=MeanEnergy(), gen=None, inf=None,
                           data_shape=shape, nz=1)
  net = ts.NetState(params={}, state={}, opt_state=())
  state = ts.TrainState(step=jnp.zeros((), jnp.int32), ebm=net, gen=net,
                        inf=net, rng=jnp.zeros((2,), jnp.uint32))
  return models, state


def _npz(path, low, high, n, shape=(16, 16, 1), seed=0):
  rng = np.random.default_rng(seed)
  np.savez(path, images=rng.uniform(low, high, (n, *shape)).astype(np.float32))
  return str(path)


def _run(config, shape):
  models, state = _models_and_state(shape)
  evaluator = ood.Evaluator(config, '', models, sharding.data_mesh())
  return dict(evaluator.run(state))


def test_auroc_of_separated_and_reversed_scores():
  assert ood.auroc([0.0, 0.1, 0.2], [0.5, 0.6]) == 1.0
  assert ood.auroc([0.5, 0.6], [0.0, 0.1, 0.2]) == 0.0
  assert ood.auroc([1.0, 1.0], [1.0, 1.0]) == 0.5


def test_parse_ood_sets():
  sets = ood.parse_ood_sets('svhn, npz:/a/b/far.npz,folder:/x/imgs/,uniform')
  assert [(s.label, s.source) for s in sets] == [
      ('svhn', 'dataset'), ('far', 'npz'), ('imgs', 'folder'),
      ('uniform', 'synthetic')]
  with pytest.raises(ValueError, match='twice'):
    ood.parse_ood_sets('svhn,svhn')


def test_energy_that_separates_the_sets_gives_auroc_one_and_zero(tmp_path):
  config = test_config.get_config()
  config.data.dataset = 'npz'
  config.data.npz_path = _npz(tmp_path / 'in.npz', -0.5, 0.0, 20)
  bright = _npz(tmp_path / 'bright.npz', 0.1, 0.6, 12, seed=1)
  dark = _npz(tmp_path / 'dark.npz', -1.0, -0.6, 9, seed=2)
  config.eval.ood_datasets = (f'npz:{bright},npz:{dark},'
                              f'npz:{tmp_path / "absent.npz"}')
  config.eval.ood_num_images = -1
  config.eval.batch_size = 8  # Partial last batches are padded and dropped.
  out = _run(config, (16, 16, 1))
  assert out['auroc/bright'] == 1.0
  assert out['auroc/dark'] == 0.0
  assert out['num_images/in_distribution'] == 20
  assert out['num_images/bright'] == 12 and out['num_images/dark'] == 9
  assert isinstance(out['auroc/absent'], common.Skipped)
  assert 'absent.npz' in out['auroc/absent'].reason
  assert '| bright | 1.0000 |' in out['table']


def test_synthetic_sets_on_digits_are_reproducible():
  config = test_config.get_config()  # digits test split, uniform, constant
  a = _run(config, (16, 16, 1))
  b = _run(config, (16, 16, 1))
  assert a == b
  assert a['num_images/uniform'] == config.eval.ood_num_images
  c = ood.synthetic_images('constant', 3, (4, 4, 3), seed=0)
  assert np.all(c == c[:, :1, :1, :])  # One colour per image.


def test_an_image_folder_is_an_ood_set(tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  folder = tmp_path / 'bright_pngs'
  folder.mkdir()
  rng = np.random.default_rng(0)
  for i in range(5):
    Image.fromarray(rng.integers(200, 256, (16, 16), np.uint8)).save(
        folder / f'{i}.png')
  config = test_config.get_config()  # In-distribution: dark-background digits.
  config.eval.ood_datasets = f'folder:{folder}'
  out = _run(config, (16, 16, 1))
  assert out['num_images/bright_pngs'] == 5
  assert out['auroc/bright_pngs'] == 1.0


def test_images_of_another_shape_are_skipped_with_the_reason(tmp_path):
  config = test_config.get_config()
  big = _npz(tmp_path / 'big.npz', 0, 1, 4, (8, 8, 1))
  config.eval.ood_datasets = f'npz:{big}'
  out = _run(config, (16, 16, 1))
  assert isinstance(out['auroc/big'], common.Skipped)


def test_tfds_ood_sets_on_mock_data():
  config = cifar10_config.get_config()
  names = [n for n in ('svhn', 'cifar100') if n in data.DATASETS]
  if not names:
    pytest.skip('the input pipeline has no svhn / cifar100 sources yet')
  config.eval.ood_datasets = ','.join(names + ['cifar10'])
  config.eval.ood_num_images = 10
  config.eval.batch_size = 4
  with tfds.testing.mock_data(num_examples=10):
    out = _run(config, (32, 32, 3))
  for name in names + ['cifar10']:
    assert 0.0 <= out[f'auroc/{name}'] <= 1.0, out
    assert out[f'num_images/{name}'] == 10
  # The same split scored against itself is chance.
  assert out['auroc/cifar10'] == 0.5
