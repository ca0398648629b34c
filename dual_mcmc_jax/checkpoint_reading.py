"""Reading what a checkpoint holds, and quieting the reads a failed restore
abandons.

`shape_mismatch` tells a checkpoint of other nets (a config problem, said as
one line) from a damaged one (skipped with a warning) by reading its
metadata only. `quiet_abandoned_reads` drops the hundreds of reports that
orbax and TensorStore print for the reads still in flight when a restore
fails. Both serve `checkpointing.restore_latest`.
"""

from __future__ import annotations

import logging as logging_lib
import re
import sys
from typing import Any
import warnings

from etils import epath
import jax
import orbax.checkpoint as ocp


def _key(entry: Any) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def _shapes(tree: Any) -> dict[tuple[str, ...], tuple[int, ...]]:
  return {tuple(_key(k) for k in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def shape_mismatch(directory: Any, step: int, abstract: Any) -> str | None:
  """The first array a checkpoint stores in another shape than `abstract`.

  Reads the checkpoint's metadata only. A config whose nets differ from the
  checkpoint's is not damage; the reason is returned so that it is said as
  what it is. None: the shapes agree, or the metadata cannot be read (then
  the restore itself tells whether the checkpoint is damaged).
  """
  handler = ocp.PyTreeCheckpointHandler()
  try:
    stored = _shapes(handler.metadata(
        epath.Path(str(directory)) / str(step) / 'default').tree)
  except Exception:  # pylint: disable=broad-exception-caught
    return None
  finally:
    handler.close()
  wanted = _shapes(abstract)
  for path in sorted(wanted.keys() & stored.keys()):
    if wanted[path] != stored[path]:
      return (f'{".".join(path)} is {stored[path]} in the checkpoint of step '
              f'{step} and {wanted[path]} in this config\'s nets')
  missing = sorted(wanted.keys() ^ stored.keys())
  if missing:
    return (f'{".".join(missing[0])} is in one of the checkpoint of step '
            f'{step} and this config\'s state, not the other')
  return None


class _AbandonedReadsFilter(logging_lib.Filter):
  """Drops asyncio's log line for a failed read nobody waited for."""

  def filter(self, record: logging_lib.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    # asyncio's wording: 'Future', 'Task' or '_GatheringFuture exception
    # was never retrieved'.
    return not ('exception was never retrieved' in record.getMessage()
                and _is_abandoned_read_error(exc))


# TensorStore's failed read ('OUT_OF_RANGE: Error reading "ebm.params..." in
# OCDBT database ...'), and orbax's wrapping of it.
_READ_ERROR = re.compile(r'^[A-Z_]+: Error reading |while reading array index')


def _is_abandoned_read_error(exc: BaseException | None) -> bool:
  if isinstance(exc, RuntimeError) and str(exc) == 'Event loop is closed':
    return True
  return exc is not None and bool(_READ_ERROR.search(str(exc)))


def quiet_abandoned_reads() -> None:
  """Drops the reports of reads a failed restore leaves in flight.

  When one array of a checkpoint cannot be read, orbax's restore fails and
  closes its event loop while TensorStore still completes the other reads.
  Each of them is then reported as it ends: through `sys.unraisablehook`
  ('Event loop is closed', or the read's own failure, hundreds of
  tracebacks), through asyncio's log ('Future', 'Task' or
  '_GatheringFuture exception was never retrieved') and as never-awaited coroutines. Those reads are abandoned on
  purpose (the fallback restores another checkpoint), so exactly those
  reports are dropped; the hooks are set before a restore, since the first
  report can come before the restore's own exception. Idempotent.
  """
  if getattr(sys.unraisablehook, 'drops_abandoned_reads', False):
    return
  previous = sys.unraisablehook

  def hook(unraisable):
    code = getattr(unraisable.object, 'cr_code', None)
    if _is_abandoned_read_error(unraisable.exc_value) or (
        code is not None and code.co_name.startswith('_read') and
        'orbax' in code.co_filename):
      return
    previous(unraisable)

  hook.drops_abandoned_reads = True
  sys.unraisablehook = hook
  logging_lib.getLogger('asyncio').addFilter(_AbandonedReadsFilter())
  warnings.filterwarnings('ignore', message=r"coroutine '_read\w*' was never "
                          'awaited', category=RuntimeWarning)
