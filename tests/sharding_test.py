"""Data parallelism gives the single-device results on the same global batch.

The train step and the FID sampler (generator samples, their EBM revision
and their Inception features) are run sharded over 8 fake CPU devices and on
one device. Each check runs in a subprocess, since the device count is fixed
when JAX starts and the rest of the suite runs on one device.
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
    models = ts.create_models(config)
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


def _run_on_8_devices(script: str) -> dict:
  """Runs `script` with 8 fake CPU devices; returns its last line as JSON."""
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=8')
  out = subprocess.run([sys.executable, '-c', script], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_sharded_step_matches_single_device_step():
  result = _run_on_8_devices(_SCRIPT)
  assert result['param_devices'] == 8
  # float32 tolerance: the reductions are summed in a different order.
  assert result['num_leaves'] > 100, result
  assert result['max_rel_diff'] < 1e-4, result
  # Two Adam steps of at most ~3.2 * lr_g each on noise gradients.
  assert result['num_null_grad_biases'] > 0, result
  assert result['null_grad_bias_max_abs_diff'] < 2 * 3.2 * 3e-4 * 1.01, result
  assert abs(result['loss_e'][0] - result['loss_e'][1]) <= 1e-3 * abs(
      result['loss_e'][0]) + 1e-3, result


_FID_SCRIPT = textwrap.dedent('''
    import json
    import jax
    import numpy as np
    from configs import test as test_config
    from dual_mcmc_jax import networks, sharding, train_state as ts
    from dual_mcmc_jax.evaluators import common, fid, inception

    assert jax.device_count() == 8, jax.devices()
    config = test_config.get_config()
    config.eval.langevin_steps = 5
    models = ts.create_models(config)
    opt = ts.create_optimizers(config.optim, 10)
    state = ts.create_train_state(models, opt, 0)
    variables = inception.state_dict_to_variables(
        inception.random_state_dict(0))
    key = jax.random.key(3)
    batch = 16  # Two samples per device.

    out = {}
    for name, devices in (('single', jax.devices()[:1]),
                          ('sharded', jax.devices())):
      mesh = sharding.data_mesh(devices)
      sampler = common.make_sampler(config, models, mesh, batch)
      features = fid.make_feature_fn(variables, mesh)
      x0, x1 = sampler(sharding.replicate(state, mesh), key)
      out[name] = {
          'devices': len(x0.sharding.device_set),
          'x0': np.asarray(x0), 'x1': np.asarray(x1),
          'f0': np.asarray(features(x0)), 'f1': np.asarray(features(x1))}

    def rel(k):
      a, b = out['sharded'][k], out['single'][k]
      return float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-12))

    s = out['single']
    print(json.dumps({
        'devices': [out['single']['devices'], out['sharded']['devices']],
        'shape': list(s['f0'].shape),
        'revision_moved': float(np.max(np.abs(s['x1'] - s['x0']))),
        'feature_spread': float(np.std(s['f0'], axis=0).mean()),
        **{f'max_rel_diff_{k}': rel(k) for k in ('x0', 'x1', 'f0', 'f1')},
    }))
''')


def test_fid_sampler_and_features_shard_like_one_device():
  result = _run_on_8_devices(_FID_SCRIPT)
  assert result['devices'] == [1, 8], result
  assert result['shape'] == [16, 2048], result
  # Not vacuous: the chain moves the samples, the features differ per image.
  assert result['revision_moved'] > 1e-4, result
  assert result['feature_spread'] > 1e-3, result
  # Generator BatchNorm uses the global batch's statistics on both meshes.
  for k in ('x0', 'x1', 'f0', 'f1'):
    assert result[f'max_rel_diff_{k}'] < 1e-4, result
