"""Two local processes train together through jax.distributed on loopback.

Each process runs one CPU device and reads its own half of every global
batch; both must end with the parameters that a single process computes on
the whole batch. A SIGTERM to one of them stops both at the same
step with one checkpoint, and the restarted pair ends exactly where an
uninterrupted pair does. Ctrl-C (SIGINT) to one of them reaches the same
agreed stop.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np

from configs import test as test_config
from dual_mcmc_jax import checkpointing
from dual_mcmc_jax import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


_PREEMPTIBLE_WORKER = textwrap.dedent('''
    import json, sys
    import numpy as np
    from dual_mcmc_jax import sharding
    pid, port, workdir, steps = (int(sys.argv[1]), sys.argv[2], sys.argv[3],
                                 int(sys.argv[4]))
    sharding.initialize_distributed(f'127.0.0.1:{port}', 2, pid)
    import jax
    from dual_mcmc_jax import train
    from tests import distributed_test
    try:
      state = train.train_and_evaluate(distributed_test._config(steps),
                                       workdir)
      interrupted = False
    except train.Interrupted as e:  # Ctrl-C: saved, then stopped.
      state, interrupted = e.state, True
    print(json.dumps({'process_count': jax.process_count(),
                      'interrupted': interrupted,
                      'device_count': jax.device_count(),
                      'step': int(state.step),
                      'sums': distributed_test.param_sums(
                          state, lambda l: l.addressable_data(0))}))
''')


def _start_pair(workdir: str, steps: int) -> list[subprocess.Popen]:
  port = str(_free_port())
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  return [subprocess.Popen(
      [sys.executable, '-c', _PREEMPTIBLE_WORKER, str(i), port, workdir,
       str(steps)], cwd=REPO, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for i in range(2)]


def _finish_pair(procs: list[subprocess.Popen]) -> list[dict]:
  results = []
  for p in procs:
    out, err = p.communicate(timeout=500)
    assert p.returncode == 0, err[-3000:]
    results.append(json.loads(out.strip().splitlines()[-1]))
  return results


def _saved_steps(workdir: str) -> list[int]:
  ckpt = os.path.join(workdir, 'checkpoints')
  return sorted(int(d) for d in os.listdir(ckpt) if d.isdigit())


def param_sums(state, local=lambda leaf: leaf) -> dict[str, float]:
  """Sum of every EBM and generator parameter array, by path."""
  flat = jax.tree_util.tree_flatten_with_path(
      {'ebm': state.ebm.params, 'gen': state.gen.params})[0]
  return {jax.tree_util.keystr(path): float(
      np.asarray(local(leaf), np.float64).sum()) for path, leaf in flat}


def _config(steps: int):
  config = test_config.get_config()
  config.model.arch = 'simple'
  config.training.num_train_steps = steps
  config.training.checkpoint_every_steps = 3
  config.training.log_every_steps = 3
  config.training.image_every_steps = 100_000
  config.training.max_checkpoints_to_keep = 100
  return config


def _stop_one_after_the_first_checkpoint(workdir: str,
                                         sig: int) -> list[dict]:
  """Starts a long pair, signals process 1 once step 3 is saved."""
  procs = _start_pair(workdir, 100_000)
  first = os.path.join(workdir, 'checkpoints', '3')
  deadline = time.time() + 400
  while not os.path.isdir(first):
    assert time.time() < deadline and all(p.poll() is None for p in procs), (
        'training did not reach its first checkpoint')
    time.sleep(0.2)
  procs[1].send_signal(sig)  # Only one process is stopped.
  return _finish_pair(procs)


def test_ctrl_c_to_one_process_stops_both_at_one_saved_step(tmp_path):
  workdir = str(tmp_path / 'interrupted')
  stopped = _stop_one_after_the_first_checkpoint(workdir, signal.SIGINT)
  step = stopped[0]['step']
  assert stopped[1]['step'] == step and 3 <= step < 100_000
  # The Ctrl-C'd process says so; the other one stopped at the sync point.
  assert [r['interrupted'] for r in stopped] == [False, True]
  assert stopped[0]['sums'] == stopped[1]['sums']
  assert _saved_steps(workdir)[-1] == step


def test_sigterm_to_one_process_stops_both_at_one_step_and_resumes_exactly(
    tmp_path):
  """Pre-emption agreed across processes; both halves train like one."""
  workdir = str(tmp_path / 'preempted')
  stopped = _stop_one_after_the_first_checkpoint(workdir, signal.SIGTERM)
  step = stopped[0]['step']
  assert stopped[1]['step'] == step and 3 <= step < 100_000
  assert stopped[0]['sums'] == stopped[1]['sums']
  assert _saved_steps(workdir)[-1] == step

  resumed = _finish_pair(_start_pair(workdir, step + 2))
  straight = _finish_pair(_start_pair(str(tmp_path / 'straight'), step + 2))
  for r in resumed + straight:
    assert r['process_count'] == 2 and r['device_count'] == 2
    assert r['step'] == step + 2
  assert resumed[0]['sums'] == straight[0]['sums']
  assert resumed[1]['sums'] == straight[1]['sums']
  assert straight[0]['sums'] == straight[1]['sums']

  # Two processes, each with half of every global batch, train like one
  # process with the whole batch, compared at the first checkpoint (Langevin
  # chains and Adam amplify summation-order differences over more steps).
  # Generator conv biases before a batch-statistics BatchNorm get rounding
  # noise as gradient (see sharding_test); compare with an Adam-step margin.
  _, pair = checkpointing.load_state(_config(3), str(tmp_path / 'straight'),
                                     step=3)
  single = train.train_and_evaluate(_config(3), str(tmp_path / 'single'))
  pair, single = param_sums(pair), param_sums(single)
  assert pair.keys() == single.keys()
  np.testing.assert_allclose([pair[k] for k in single],
                             list(single.values()), rtol=1e-4, atol=0.05)
