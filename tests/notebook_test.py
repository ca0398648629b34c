"""Executes notebooks/quickstart.ipynb end to end in its quick mode.

The notebook reads DUAL_MCMC_QUICK=1 (tiny widths, a few iterations),
DUAL_MCMC_WORKDIR (where it trains) and DUAL_MCMC_FIGURES (where it saves its
figures and a summary.json of its numbers), so the test can check what it
produced, not just that no cell raised. The kernel is this interpreter's
(`python3` from the same virtual environment), started in the notebooks/
folder as a user would open it, with the repository root on PYTHONPATH.
"""

import json
import math
import os
import sys

import nbclient
import nbformat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, 'notebooks', 'quickstart.ipynb')
FIGURES = ('toy2d_landscape', 'toy2d_chain', 'digits_samples',
           'digits_inpainting')
_TV_BOUND = 0.9  # total variation to the true 8-Gaussians density
TIMEOUT_S = 600  # per cell; the whole quick run takes about two minutes


def _kernel_env(tmp_path):
  """The variables the kernel inherits on top of this process's."""
  return dict(
      DUAL_MCMC_QUICK='1',
      DUAL_MCMC_WORKDIR=str(tmp_path / 'work'),
      DUAL_MCMC_FIGURES=str(tmp_path / 'figures'),
      PYTHONPATH=os.pathsep.join(
          p for p in (ROOT, os.environ.get('PYTHONPATH')) if p),
  )


def test_quickstart_notebook_runs_in_quick_mode(tmp_path, monkeypatch):
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  # Committed without outputs, so the file diffs stay readable.
  for cell in nb.cells:
    if cell.cell_type == 'code':
      assert not cell.outputs and cell.execution_count is None

  for key, value in _kernel_env(tmp_path).items():
    monkeypatch.setenv(key, value)
  # As a user starts it: without the suite's JAX and TensorFlow settings.
  monkeypatch.delenv('JAX_PLATFORMS', raising=False)
  monkeypatch.delenv('TF_CPP_MIN_LOG_LEVEL', raising=False)
  client = nbclient.NotebookClient(
      nb, timeout=TIMEOUT_S, kernel_name='python3',
      resources={'metadata': {'path': os.path.join(ROOT, 'notebooks')}})
  client.execute()  # Raises CellExecutionError naming the failing cell.

  setup_output = ''.join(o.get('text', '') for o in nb.cells[1].outputs
                         if o.get('name') == 'stdout')
  root = os.path.realpath(ROOT)
  assert f'repository: {root}' in setup_output, setup_output
  # jupyter_client runs the kernelspec's `python` as this interpreter, so
  # the notebook sees the packages this test run has.
  assert f'python: {sys.executable}' in setup_output, setup_output

  # A clean start: no traceback, no error line, no TensorFlow notices.
  streamed = ''.join(o.get('text', '') for c in nb.cells
                     if c.cell_type == 'code' for o in c.outputs)
  for word in ('Traceback', 'ERROR', 'oneDNN'):
    assert word not in streamed, streamed[-3000:]
  assert 'device(s)' in streamed

  # Shown inline (ipykernel's matplotlib backend) and saved as files.
  shown = [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs
           if 'image/png' in o.get('data', {})]
  assert len(shown) == len(FIGURES)
  figures = tmp_path / 'figures'
  for name in FIGURES:
    path = figures / f'notebook_{name}.png'
    assert path.is_file(), f'{path} missing'
    with open(path, 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  summary = json.loads((figures / 'summary.json').read_text())
  assert summary['quick'] is True
  # The learned density is closer to the 8-Gaussians truth than an untrained
  # EBM's: 600 quick iterations reach TV ~0.80; an untrained MLP energy is
  # ~0.96 (a near-flat density), so the bound fails without learning.
  assert summary['toy2d_tv_untrained'] > _TV_BOUND > summary['toy2d_tv'], (
      summary['toy2d_tv_untrained'], summary['toy2d_tv'])
  # The generator, the other model, is closer to the truth than untrained.
  assert summary['toy2d_ed_generator'] < summary[
      'toy2d_ed_generator_untrained'], (summary['toy2d_ed_generator'],
                                        summary['toy2d_ed_generator_untrained'])
  # The chain samples exp(-E) at T = 1, so its mean energy need not fall:
  # from generator samples at the modes' centres its noise raises it (quick
  # mode with the replay buffer: 0.65 -> 0.69). Only finiteness is a law.
  for key in ('toy2d_data_energy', 'toy2d_chain_energy_start',
              'toy2d_chain_energy_end',
              'digits_reconstruction_mse_before_z_revision',
              'digits_reconstruction_mse_after_z_revision'):
    assert math.isfinite(summary[key]), key
  for mask in ('M30', 'R40'):
    pipelines = summary['inpainting'][mask]
    assert set(pipelines) == {'Inf+Gen', 'Inf+Tz+Gen', 'Inf+Tz+Gen+Tx'}
    for psnr, ssim in pipelines.values():
      assert math.isfinite(psnr) and -1.0 <= ssim <= 1.0
  # Both runs left checkpoints that load_state read back.
  for name in ('toy2d', 'digits'):
    assert os.listdir(tmp_path / 'work' / name / 'checkpoints')
