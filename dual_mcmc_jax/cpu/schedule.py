"""Chains that run alone: the order of the train step's stages on the CPU.

XLA's CPU backend runs independent parts of the step concurrently; with few
cores a Langevin chain then shares them with work that does not depend on
it (the other chain, the updates' passes), and the chain slows down by more
than running in turn costs (docs/performance.md, change 17: a whole Table 1
step 5.26 -> 4.86 s). That backend drops `lax.optimization_barrier` before
it schedules, so the order is made a data dependency instead: `after(done,
values)` adds to every float leaf of `values` an exact zero read from
`done`, and `in_order` applies it at every stage boundary, so that each
stage's array inputs wait for the previous stage's outputs.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp


def _floats(tree: Any) -> list[jax.Array]:
  return [leaf for leaf in jax.tree.leaves(tree)
          if isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype,
                                                             jnp.inexact)]


def after(done: Any, values: Any) -> Any:
  """`values` unchanged, computed only once `done` is.

  Each float leaf of `values` gets a zero made from the first element of
  each float leaf of `done` (non-finite elements count as zero), so the
  values do not change, NaN and inf included.
  """
  leaves = _floats(done)
  if not leaves:
    return values
  zero = jnp.zeros((), jnp.float32)
  for leaf in leaves:
    first = leaf.ravel()[0].astype(jnp.float32)
    zero = zero + 0.0 * jnp.where(jnp.isfinite(first), first, 0.0)

  def wait(v):
    if isinstance(v, jax.Array) and jnp.issubdtype(v.dtype, jnp.inexact):
      return v + zero.astype(v.dtype)
    return v

  return jax.tree.map(wait, values)


def in_order(stages: Any) -> Any:
  """The stages of a `train_step.Stages`, each waiting for the one before.

  A stage's plain array arguments (data, samples, latents; not the train
  state or the networks' state dicts) are passed through `after` with the
  previous stage's outputs. Every stage of one iteration receives the same
  train state object, which is how a stage knows that the outputs it
  waits for are its own iteration's; `finish`, the last stage of every
  iteration, forgets them.

  Args:
    stages: a dataclass of stage functions `(state, *args) -> outputs`.

  Returns:
    The same stages, in order.
  """
  previous: dict[str, Any] = {}

  def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
    def run(state, *args, **kwargs):
      if previous.get('state') is state:
        wait = lambda a: (after(previous['out'], a)
                          if isinstance(a, jax.Array) else a)
        args = tuple(wait(a) for a in args)
        kwargs = {k: wait(v) for k, v in kwargs.items()}
      out = fn(state, *args, **kwargs)
      previous.update(state=state, out=out)
      return out
    return run

  def finish(state, *args, **kwargs):
    previous.clear()  # The trace's values are not kept past it.
    return stages.finish(state, *args, **kwargs)

  return dataclasses.replace(stages, finish=finish, **{
      f.name: wrap(getattr(stages, f.name))
      for f in dataclasses.fields(stages) if f.name != 'finish'})
