"""Where the iteration's Gaussian draws come from.

Every standard-normal draw of a training iteration goes through one
`Normal` function, `normal(name, key, shape, index)`:

* `name` says which draw it is (`PRIOR`, `REPARAM`, `X_CHAIN`, `Z_CHAIN`,
  `X_CHAIN_NEGATIVE`);
* `key` is the PRNG key the step derives for it (per chain step:
  `fold_in(chain key, i)`);
* `index` is the chain step `i` for the chains' per-step noise, None for
  one-off draws.

`prng_normal`, the default everywhere, ignores `name` and `index` and
returns `jax.random.normal(key, shape)`, so the draws, and with them every
run and resumed run, are the PRNG's. `table_normal` reads the draws from
fixed arrays instead, so that an iteration can be compared number for number
with another implementation fed the same draws
(`tests/golden_iteration_test.py` does this with the authors' PyTorch loop).
"""

from __future__ import annotations

from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
# normal(name, key, shape, index) -> a float32 standard-normal array.
Normal = Callable[[str, Array, tuple[int, ...], 'Array | int | None'], Array]

PRIOR = 'prior'  # z ~ N(0, I), the generator's proposal latents.
REPARAM = 'reparam'  # eps of z0 = mu + exp(logvar / 2) * eps.
X_CHAIN = 'x_chain'  # Per-step noise of the x-revision of G(z).
Z_CHAIN = 'z_chain'  # Per-step noise of the z-revision.
X_CHAIN_NEGATIVE = 'x_chain_negative'  # The EBM's own negative chain.


def prng_normal(name: str, key: Array, shape: tuple[int, ...],
                index: Array | int | None = None) -> Array:
  """The PRNG's draw for `key`; `name` and `index` are not used."""
  del name, index
  return jax.random.normal(key, shape, jnp.float32)


def table_normal(table: Mapping[str, np.ndarray]) -> Normal:
  """Draws read from fixed arrays instead of the PRNG.

  Args:
    table: name -> the draws: [*shape] for a one-off draw, [steps, *shape]
      for a chain's per-step noise (row `index` is step `index`'s).

  Returns:
    A `Normal` that ignores the key. A name missing from the table, or a
    shape that does not match, raises when the step is traced.
  """
  arrays = {k: np.asarray(v, np.float32) for k, v in table.items()}

  def normal(name: str, key: Array, shape: tuple[int, ...],
             index: Array | int | None = None) -> Array:
    del key
    if name not in arrays:
      raise KeyError(f'no draws named {name!r} in the table; it has '
                     f'{", ".join(sorted(arrays))}')
    a = jnp.asarray(arrays[name])
    if index is not None:
      a = a[index]
    if tuple(a.shape) != tuple(shape):
      raise ValueError(f'draws {name!r} have shape {a.shape}, the step '
                       f'needs {tuple(shape)}')
    return a

  return normal
