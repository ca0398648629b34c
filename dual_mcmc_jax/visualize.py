"""Pictures for TensorBoard and files: image grids and 2-D scatter plots."""

from __future__ import annotations

import io
import math

import numpy as np


def image_grid(images: np.ndarray, ncols: int | None = None,
               pad: int = 1, min_size: int = 48) -> np.ndarray:
  """Tiles images in [-1, 1] into one uint8 grid.

  Args:
    images: [N, H, W, C] in [-1, 1].
    ncols: columns (default: ceil(sqrt(N))).
    pad: pixels of white between tiles.
    min_size: small images are enlarged (nearest neighbour, integer factor)
      until their side is at least this, so 16x16 digits stay readable.

  Returns:
    [rows * (H + pad) + pad, ncols * (W + pad) + pad, C] uint8.
  """
  images = np.asarray(images, np.float32)
  factor = max(1, -(-min_size // images.shape[1]))
  if factor > 1:
    images = images.repeat(factor, axis=1).repeat(factor, axis=2)
  n, h, w, c = images.shape
  ncols = ncols or int(math.ceil(math.sqrt(n)))
  nrows = int(math.ceil(n / ncols))
  grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), 255,
                 np.uint8)
  pixels = np.clip((images + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
  for i in range(n):
    r, col = divmod(i, ncols)
    y, x = pad + r * (h + pad), pad + col * (w + pad)
    grid[y:y + h, x:x + w] = pixels[i]
  return grid


def scatter_image(point_sets: dict[str, np.ndarray], lim: float = 4.5,
                  size: float = 3.0) -> np.ndarray:
  """Renders 2-D point sets side by side as one RGB uint8 image.

  Args:
    point_sets: title -> [N, 2] points.
    lim: axis limits are [-lim, lim].
    size: inches per panel.

  Returns:
    [H, W, 3] uint8.
  """
  # A bare Figure renders with Agg without pyplot, so drawing here leaves the
  # process's backend alone (matplotlib.use('Agg') would turn off a
  # notebook's inline plots for good).
  from matplotlib import figure  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top

  k = len(point_sets)
  fig = figure.Figure(figsize=(size * k, size))
  axes = fig.subplots(1, k, squeeze=False)
  for ax, (title, pts) in zip(axes[0], point_sets.items()):
    pts = np.asarray(pts)
    ax.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.5)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect('equal')
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format='png', dpi=80)
  buf.seek(0)
  return np.asarray(Image.open(buf).convert('RGB'))


def save_png(path: str, image: np.ndarray) -> None:
  """Writes a uint8 [H, W, C] array (C = 1 or 3) as PNG."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  image = np.asarray(image)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  Image.fromarray(image).save(path)
