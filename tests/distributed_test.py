"""Two local processes train together through jax.distributed on loopback.

Each process runs one CPU device and reads its own half of every global
batch; after two steps both must hold the parameters that a single process
computes on the whole batch.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np

from configs import test as test_config
from dual_mcmc_jax import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_WORKER = textwrap.dedent('''
    import json, sys
    import numpy as np
    from dual_mcmc_jax import sharding
    pid, port, workdir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    sharding.initialize_distributed(f'127.0.0.1:{port}', 2, pid)
    import jax
    from configs import test as test_config
    from dual_mcmc_jax import train
    config = test_config.get_config()
    config.model.arch = 'simple'
    config.training.num_train_steps = 2
    state = train.train_and_evaluate(config, workdir)
    leaves = [np.asarray(l.addressable_data(0), np.float64)
              for l in jax.tree.leaves(state.ebm.params) +
              jax.tree.leaves(state.gen.params)]
    print(json.dumps({'process_count': jax.process_count(),
                      'device_count': jax.device_count(),
                      'step': int(state.step),
                      'sums': [float(l.sum()) for l in leaves]}))
''')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_two_processes_train_two_steps_like_one(tmp_path):
  port = str(_free_port())
  workdir = str(tmp_path / 'distributed')
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  procs = [subprocess.Popen([sys.executable, '-c', _WORKER, str(i), port,
                             workdir], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for i in range(2)]
  results = []
  for p in procs:
    out, err = p.communicate(timeout=500)
    assert p.returncode == 0, err[-3000:]
    results.append(json.loads(out.strip().splitlines()[-1]))
  for r in results:
    assert r['process_count'] == 2 and r['device_count'] == 2
    assert r['step'] == 2
  np.testing.assert_array_equal(results[0]['sums'], results[1]['sums'])
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', '2'))

  config = test_config.get_config()
  config.model.arch = 'simple'
  config.training.num_train_steps = 2
  single = train.train_and_evaluate(config, str(tmp_path / 'single'))
  sums = [float(np.asarray(l, np.float64).sum()) for l in
          jax.tree.leaves(single.ebm.params) + jax.tree.leaves(single.gen.params)]
  # Generator conv biases before a batch-statistics BatchNorm get rounding
  # noise as gradient (see sharding_test); compare with an Adam-step margin.
  np.testing.assert_allclose(results[0]['sums'], sums, rtol=1e-4, atol=0.05)
