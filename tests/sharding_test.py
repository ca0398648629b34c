"""Data-parallel training equals single-device training on the same batch.

Runs in a subprocess with 8 fake CPU devices (the device count is fixed when
JAX starts, and the rest of the suite runs on one).
"""

import json
import os
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SCRIPT = textwrap.dedent('''
    import json
    import jax
    import numpy as np
    from configs import test as test_config
    from dual_mcmc_jax import networks, sharding, train_state as ts
    from dual_mcmc_jax import train_step as tsl

    assert jax.device_count() == 8, jax.devices()
    config = test_config.get_config()
    config.training.batch_size = 16
    models = networks.create_models(config)
    opt = ts.create_optimizers(config.optim, 10)
    step = tsl.make_train_step(config, models, opt)
    batches = [np.random.default_rng(i).uniform(
        -1, 1, (16,) + models.data_shape).astype(np.float32) for i in range(2)]

    # One device.
    dev0 = jax.devices()[0]
    single = jax.device_put(ts.create_train_state(models, opt, 0), dev0)
    single_step = jax.jit(step)
    for b in batches:
      single, m_single = single_step(single, jax.device_put(b, dev0))

    # Eight devices: batch split 2 per device, state replicated.
    mesh = sharding.data_mesh()
    sharded = sharding.replicate(ts.create_train_state(models, opt, 0), mesh)
    sharded_step = jax.jit(step, donate_argnums=0,
                           out_shardings=sharding.replicated(mesh))
    for b in batches:
      x = sharding.shard_batch(b, mesh)
      assert len(x.sharding.device_set) == 8
      sharded, m_sharded = sharded_step(sharded, x)

    # Generator conv biases that feed a batch-statistics BatchNorm have an
    # exactly zero gradient; what autodiff returns there is rounding noise,
    # which Adam (beta1 = 0) turns into steps of about lr. Those leaves and
    # their Adam moments are compared on that scale, every other leaf to
    # float32 tolerance.
    def null_grad(path):
      p = jax.tree_util.keystr(path)
      return p.startswith('.gen') and "['bias']" in p and 'conv_out' not in p
    strict, loose = [], []
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(sharded)[0],
                            jax.tree.leaves(single)):
      a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
      if not null_grad(path):
        strict.append(float(np.max(np.abs(a - b)) /
                            (np.max(np.abs(b)) + 1e-12)))
      elif '.params' in jax.tree_util.keystr(path):
        loose.append(float(np.max(np.abs(a - b))))
    leaves = strict
    print(json.dumps({
        'max_rel_diff': max(strict),
        'num_leaves': len(strict),
        'null_grad_bias_max_abs_diff': max(loose),
        'num_null_grad_biases': len(loose),
        'loss_e': [float(m_single['loss_e']), float(m_sharded['loss_e'])],
        'param_devices': len(jax.tree.leaves(sharded.ebm.params)[0]
                             .sharding.device_set),
    }))
''')


def test_sharded_step_matches_single_device_step():
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=8')
  out = subprocess.run([sys.executable, '-c', _SCRIPT], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result['param_devices'] == 8
  # float32 tolerance: the reductions are summed in a different order.
  assert result['num_leaves'] > 100, result
  assert result['max_rel_diff'] < 1e-4, result
  # Two Adam steps of at most ~3.2 * lr_g each on noise gradients.
  assert result['num_null_grad_biases'] > 0, result
  assert result['null_grad_bias_max_abs_diff'] < 2 * 3.2 * 3e-4 * 1.01, result
  assert abs(result['loss_e'][0] - result['loss_e'][1]) <= 1e-3 * abs(
      result['loss_e'][0]) + 1e-3, result
