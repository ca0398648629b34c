"""Process start-up: which devices JAX uses, a quiet TensorFlow and Ctrl-C.

Entry points (main.py, the benchmarks, the notebook and the import script)
import this module before anything else of the project (it imports no JAX
itself) and call `configure()` before JAX picks its devices:

* requirements.txt installs JAX's CUDA 12 build on every Linux machine. On a
  machine without a usable GPU that build's plugin fails to start and JAX
  logs a full traceback before falling back to the CPU. When the plugin is
  installed but the CUDA driver is missing or finds no device, JAX is told to
  use the CPU from the start, and `device_summary` says why. A machine with a
  GPU is left alone, and so is an explicit `JAX_PLATFORMS`.
* TensorFlow only reads datasets here; its C++ start-up notices (oneDNN,
  CPU features) are switched off unless the user set the variables.
* The command lines call `quiet_ctrl_c()` first of all, so that Ctrl-C ends
  them with one line and exit status 130, never a traceback.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import signal
import sys
from typing import Any, Callable

from absl import app
from absl import logging

_CPU_REASON = None


def _cuda_plugin_installed() -> bool:
  return any(importlib.util.find_spec(name) is not None
             for name in ('jax_plugins.xla_cuda12', 'jax_cuda12_plugin'))


def _cuda_device_count() -> int:
  """GPUs the CUDA driver sees; 0 when there is no driver or it fails."""
  try:
    driver = ctypes.CDLL('libcuda.so.1')
  except OSError:
    return 0
  count = ctypes.c_int(0)
  if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)):
    return 0
  return count.value


def quiet_tensorflow() -> None:
  """Switches off TensorFlow's C++ start-up notices (before it is imported)."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  # TensorFlow announces its oneDNN kernels at start-up; the input pipeline
  # uses none of them (decoding, cropping and resizing only).
  os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')


# Importing this module is enough to quiet TensorFlow, so entry points import
# it before anything that may import TensorFlow.
quiet_tensorflow()


def configure() -> None:
  """Chooses the CPU where a CUDA build is installed but finds no GPU."""
  import jax  # pylint: disable=g-import-not-at-top
  global _CPU_REASON
  if os.environ.get('JAX_PLATFORMS') or jax.config.jax_platforms:
    return
  if _cuda_plugin_installed() and _cuda_device_count() == 0:
    jax.config.update('jax_platforms', 'cpu')
    _CPU_REASON = ("JAX's CUDA build is installed but the CUDA driver finds "
                   'no GPU here')


def device_summary() -> str:
  """One line: the devices in use, and why the CPU where that was chosen."""
  import jax  # pylint: disable=g-import-not-at-top
  devices = jax.devices()
  kinds = sorted({d.device_kind for d in devices})
  line = (f'JAX {jax.__version__}: process {jax.process_index()} of '
          f'{jax.process_count()}, {len(devices)} {devices[0].platform} '
          f'device(s) ({", ".join(kinds)})')
  return line + (f'; using the CPU because {_CPU_REASON}' if _CPU_REASON
                 else '')


def _interrupted(signum: int, frame: Any) -> None:
  # Stops at once. Raising here instead would be lost wherever the handler
  # happens to run inside a callback whose exceptions Python ignores (a
  # garbage-collection hook), and the command would go on.
  del signum, frame
  os.write(2, b'Interrupted (Ctrl-C).\n')
  os._exit(INTERRUPTED_STATUS)  # pylint: disable=protected-access


def quiet_ctrl_c() -> None:
  """Makes Ctrl-C end a command at once, with one line and exit status 130.

  Entry points call it first, before their imports, so that an interrupt
  anywhere (an import, a compilation, an evaluation) prints one line
  instead of a KeyboardInterrupt traceback. What they write is written
  atomically (JSON files by rename, checkpoints as temporary directories
  that are never loaded), so stopping at once leaves nothing half-written
  that is later read. Training replaces it while it runs: there Ctrl-C
  first saves the step in progress (train.py).
  Libraries and notebooks do not call it, so KeyboardInterrupt keeps
  interrupting a notebook cell.
  """
  signal.signal(signal.SIGINT, _interrupted)


# What bad input raises in this project: a config field, a missing file, a
# workdir or dataset that cannot be used.
INPUT_ERRORS = (ValueError, OSError)
# The exit status after Ctrl-C (128 + SIGINT), in every entry point.
INTERRUPTED_STATUS = 130


def run_main(main: Callable[[list[str]], Any]) -> None:
  """`absl.app.run(main)` for scripts: bad input exits with one line.

  Sets up the devices (`configure`) and logs them once; a ValueError or
  OSError from `main` becomes `error: <message>` on stderr and exit status
  1, and Ctrl-C one line and exit status 130, instead of a traceback.
  """
  def wrapped(argv: list[str]) -> Any:
    configure()
    logging.info('%s', device_summary())
    try:
      return main(argv)
    except INPUT_ERRORS as e:
      sys.exit(f'error: {" ".join(str(e).split())}')
    except KeyboardInterrupt:
      sys.stderr.write('Interrupted (Ctrl-C).\n')
      sys.exit(INTERRUPTED_STATUS)

  app.run(wrapped)
