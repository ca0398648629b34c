"""The user's own images: the PNG / JPEG files in `config.data.image_folder`.

Files are found recursively (hidden files and directories left out), sorted by
path so that the order does not depend on the file system, and decoded into
one uint8 array [N, S, S, C] by a grain pipeline over the file list whose
thread pool runs Pillow (which releases the GIL while it decodes and
resizes). Each file is converted like torchvision's `ImageFolder` loader
followed by `Resize(S)` and `CenterCrop(S)`: EXIF orientation applied, RGB or
L by `config.data.num_channels` (an alpha channel is dropped), the shorter
side resized to `config.data.image_size` with Pillow's antialiased bilinear
filter, the centre square kept.

Files Pillow cannot decode are skipped and counted in one warning
(`config.data.skip_unreadable=False` stops at the first instead); a folder in
which nothing is readable is an error. The decoded pixels of every file pass
the NaN / Inf check before they are stored.

The decoded array belongs to the call that made it: nothing is cached in the
process. A caller that reads the same folder twice (the size for the
schedule, then the training stream) can share one decode through a
`data.Store` it owns; a folder that changed between two uncached calls is
simply read afresh.
"""

import dataclasses
import os
import time

from absl import logging
import grain
import numpy as np

from dual_mcmc_jax.data import common

# File name endings (lower-cased) that image_folder reads.
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg')


@dataclasses.dataclass(frozen=True)
class ImageFolder:
  """The decoded contents of an image folder.

  Attributes:
    images: uint8 [N, S, S, C], one row per readable file, in `paths` order.
    paths: the N files read, relative to the folder, sorted.
    skipped: (relative path, reason) of every file that could not be read.
  """

  images: np.ndarray
  paths: tuple[str, ...]
  skipped: tuple[tuple[str, str], ...]


def list_image_files(folder: str) -> list[str]:
  """Lists the PNG / JPEG files under `folder`, recursively.

  Hidden files and directories (names starting with '.', e.g. macOS's
  '._x.jpg' resource forks) are left out; symbolic links to directories are
  not followed.

  Args:
    folder: the directory to search.

  Returns:
    Paths relative to `folder`, sorted, so the order does not depend on the
    file system.
  """
  found = []
  for root, dirs, files in os.walk(folder):
    dirs[:] = [d for d in dirs if not d.startswith('.')]
    for name in files:
      if not name.startswith('.') and name.lower().endswith(IMAGE_EXTENSIONS):
        found.append(os.path.relpath(os.path.join(root, name), folder))
  return sorted(found)


def load_image_file(
    path: str, image_size: int, num_channels: int
) -> np.ndarray:
  """Decodes one image file into a square uint8 array.

  The EXIF orientation is applied, the image converted to L (1 channel) or
  RGB (3; an alpha channel is dropped, as torchvision's loader does), the
  shorter side resized to `image_size` with PIL's antialiased bilinear
  filter and the centre square kept (torchvision's `Resize(S)` then
  `CenterCrop(S)`, without rounding the crop to whole pixels).

  Args:
    path: a PNG or JPEG file.
    image_size: output side length S.
    num_channels: 1 or 3.

  Returns:
    uint8 [S, S, num_channels].

  Raises:
    Whatever Pillow raises for a file it cannot decode.
  """
  # pylint: disable=g-import-not-at-top
  from PIL import Image
  from PIL import ImageOps
  # pylint: enable=g-import-not-at-top

  mode = 'L' if num_channels == 1 else 'RGB'
  with Image.open(path) as image:
    width, height = image.size
    shorter = min(width, height)
    # JPEG only: decode at 1/2, 1/4 or 1/8 scale when the image stays at
    # least as large as the resize target; big photos decode several times
    # faster.
    image.draft(mode, (
        -(-width * image_size // shorter), -(-height * image_size // shorter)
    ))
    image = ImageOps.exif_transpose(image)
    if image.mode in ('I', 'I;16', 'I;16B', 'I;16L'):
      # 16-bit greyscale: convert() would clip everything above 255 to white.
      image = Image.fromarray(
          (np.asarray(image, dtype=np.uint32) >> 8).astype(np.uint8)
      )
    image = image.convert(mode)
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    image = image.resize(
        (image_size, image_size),
        resample=Image.Resampling.BILINEAR,
        box=(left, top, left + side, top + side),
    )
    array = np.asarray(image, dtype=np.uint8)
  return array.reshape(image_size, image_size, num_channels)


def _decoded_files(folder, paths, image_size, num_channels, num_workers):
  """A grain iterator of (pixels or None, why unreadable) in `paths` order."""

  def decode(index: int) -> tuple[np.ndarray | None, str]:
    try:
      return load_image_file(
          os.path.join(folder, paths[index]), image_size, num_channels
      ), ''
    except Exception as e:  # pylint: disable=broad-except
      # Decoders raise many types on corrupt data (OSError, SyntaxError,
      # ValueError, zlib.error, DecompressionBombError...): for one file, any
      # of them means "unreadable".
      return None, f'{type(e).__name__}: {e}'.replace('\n', ' ')

  workers = num_workers or os.cpu_count() or 1
  return iter(grain.MapDataset.range(len(paths)).map(decode).to_iter_dataset(
      grain.ReadOptions(num_threads=workers, prefetch_buffer_size=2 * workers)
  ))


def _check_folder(folder: str, image_size: int, num_channels: int) -> list[str]:
  """The folder's image files, or the error that says what is wrong."""
  if image_size <= 0 or num_channels not in (1, 3):
    raise ValueError(
        'load_image_folder needs image_size > 0 and num_channels 1 or 3; got'
        f' {image_size} and {num_channels}.'
    )
  if not os.path.isdir(folder):
    raise FileNotFoundError(
        f'config.data.image_folder={folder!r} is not a directory.'
    )
  paths = list_image_files(folder)
  if not paths:
    raise ValueError(
        f'config.data.image_folder={folder!r} holds no image files (searched'
        f' recursively for {", ".join(IMAGE_EXTENSIONS)}).'
    )
  return paths


def load_image_folder(
    folder: str,
    image_size: int,
    num_channels: int,
    *,
    skip_unreadable: bool = True,
    num_workers: int | None = None,
) -> ImageFolder:
  """Decodes every PNG / JPEG under `folder` into one uint8 array.

  Args:
    folder: the directory (searched recursively, see `list_image_files`).
    image_size: output side length S.
    num_channels: 1 (L) or 3 (RGB).
    skip_unreadable: skip files Pillow cannot decode, with a warning that
      counts them; False raises on the first one.
    num_workers: decoding threads; None or 0 uses every CPU.

  Returns:
    The ImageFolder: images [N, S, S, C] (read-only), the files read and the
    files skipped.
  """
  paths = _check_folder(folder, image_size, num_channels)
  start_time = time.time()
  out = np.empty((len(paths), image_size, image_size, num_channels), np.uint8)
  kept, skipped = [], []
  files = _decoded_files(folder, paths, image_size, num_channels, num_workers)
  try:
    for path, (pixels, reason) in zip(paths, files):
      if pixels is None:
        if not skip_unreadable:
          raise ValueError(
              f'config.data.image_folder={folder!r}: cannot read {path!r}'
              f' ({reason}); remove it or set'
              ' config.data.skip_unreadable=True.'
          )
        skipped.append((path, reason))
        continue
      common.check_finite(
          pixels, f'config.data.image_folder={folder}: file {path!r}')
      out[len(kept)] = pixels
      kept.append(path)
  finally:
    files.close()  # Stops decoding ahead after an error.
  _report(folder, paths, skipped, len(kept), start_time)
  out = out[:len(kept)]
  out.flags.writeable = False  # Shared by every batch gathered from it.
  return ImageFolder(images=out, paths=tuple(kept), skipped=tuple(skipped))


def _report(folder, paths, skipped, num_kept, start_time) -> None:
  """Raises when nothing was readable; logs what was skipped and loaded."""
  if not num_kept:
    raise ValueError(
        f'config.data.image_folder={folder!r}: none of its {len(paths)} image'
        f' files could be read (first: {skipped[0][0]!r}, {skipped[0][1]}).'
    )
  if skipped:
    logging.warning(
        'config.data.image_folder=%r: skipped %d of %d image files that could'
        ' not be read (first: %r, %s).',
        folder, len(skipped), len(paths), skipped[0][0], skipped[0][1],
    )
  logging.info('Loaded %d images from %s in %.1f s.', num_kept, folder,
               time.time() - start_time)


def _load(config: common.Config, split: str) -> np.ndarray:
  """The config's image folder as uint8 [N, S, S, C]; both splits are all."""
  folder = config.data.image_folder
  if not folder:
    raise ValueError(
        'config.data.image_folder must be set for'
        ' config.data.dataset=\'image_folder\'.'
    )
  common.check_whole_set_split('image_folder', split)
  common.check_image_config(config, num_channels=(1, 3))
  folder = os.path.abspath(os.path.expanduser(folder))
  return load_image_folder(
      folder,
      int(config.data.image_size),
      int(config.data.num_channels),
      skip_unreadable=bool(config.data.skip_unreadable),
      num_workers=config.data.num_load_workers or None,
  ).images


SOURCE = common.Source(load=_load, whole_set=True)
