"""How the golden fixtures derive inputs and Adam gradients (no torch).

Shared by scripts/make_golden_fixtures.py, which writes the fixtures, and
tests/agreement_test.py, which rebuilds the same inputs to check them, so the
two cannot drift apart.
"""

from __future__ import annotations

import numpy as np


def pixels_to_float(pixels: np.ndarray) -> np.ndarray:
  """uint8 pixels -> float32 in [-1, 1], as the input pipeline maps them."""
  return (pixels.astype(np.float32) / 127.5 - 1.0).astype(np.float32)


def first_gradient(grads: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The first Adam step's gradients: one net's loss gradients, max |g| = 1."""
  scale = max(float(np.max(np.abs(g))) for g in grads.values())
  return {k: (g / np.float32(scale)).astype(np.float32)
          for k, g in grads.items()}


def second_gradient(g1: np.ndarray) -> np.ndarray:
  """The pseudo-gradient of the second Adam step (PyTorch layout)."""
  flat = g1.reshape(-1)
  return (-0.5 * g1 + 0.3 * np.roll(flat, 1).reshape(g1.shape)).astype(
      np.float32)
