"""Datasets: every source the experiments read, behind one grain pipeline.

`config.data.dataset` picks the source from one table (`SOURCES` in
pipeline.py); each lives in a small module of its own:

* tfds.py: the paper's training sets `cifar10`, `celeba64`, `lsun_church64`,
  `celebahq256` and the out-of-distribution sets `svhn`, `cifar100`,
  `celeba32`, read through TFDS with their crops and resizes.
* digits.py: scikit-learn's bundled 8x8 digits, no download.
* toy2d.py: points from the 2-D densities of dual_mcmc_jax/toy2d.py.
* npz.py: an array from the user's .npz file (`config.data.npz_path`).
* image_folder.py: the user's PNG / JPEG files (`config.data.image_folder`).

pipeline.py turns a loaded split into the training stream with grain:
shuffled per epoch, batched, sliced per host and prefetched, every batch a
pure function of (config.training.seed, step), so that
`create_train_iterator(config, start_step=k)` resumes exactly and at once.
`create_eval_iterator` makes ordered evaluation passes, `get_dataset_info`
gives the training split's size and example shape, and `prefetch_to_device`
moves batches onto the accelerators ahead of the step. Batches are float32,
images in [-1, 1] as [B, H, W, C] or points as [B, D].

TensorFlow and TFDS are imported only by the TFDS sources, when called, so
digits, toy2d, npz and image_folder work on machines without them
(image_folder needs Pillow).
"""

from dual_mcmc_jax.data.common import DatasetInfo
from dual_mcmc_jax.data.digits import digits_labels
from dual_mcmc_jax.data.image_folder import IMAGE_EXTENSIONS
from dual_mcmc_jax.data.image_folder import ImageFolder
from dual_mcmc_jax.data.image_folder import list_image_files
from dual_mcmc_jax.data.image_folder import load_image_file
from dual_mcmc_jax.data.image_folder import load_image_folder
from dual_mcmc_jax.data.npz import load_npz
from dual_mcmc_jax.data.pipeline import check_batch_fits
from dual_mcmc_jax.data.pipeline import create_eval_iterator
from dual_mcmc_jax.data.pipeline import create_train_iterator
from dual_mcmc_jax.data.pipeline import DATASETS
from dual_mcmc_jax.data.pipeline import DevicePrefetcher
from dual_mcmc_jax.data.pipeline import get_dataset_info
from dual_mcmc_jax.data.pipeline import prefetch_to_device
from dual_mcmc_jax.data.pipeline import source_fingerprint
from dual_mcmc_jax.data.pipeline import SOURCES
from dual_mcmc_jax.data.pipeline import Store
from dual_mcmc_jax.data.pipeline import TFDS_DATASETS
from dual_mcmc_jax.data.pipeline import train_dataset
from dual_mcmc_jax.data.tfds import preprocess_celeba
from dual_mcmc_jax.data.tfds import preprocess_cifar10
from dual_mcmc_jax.data.tfds import preprocess_lsun
from dual_mcmc_jax.data.tfds import preprocess_resize
