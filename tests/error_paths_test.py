"""Every error path ends in one line, in every mode, and faults lose no work.

* The error table (`error_table.BAD_INPUTS`) run in every mode each case
  applies to (`train`, `eval`, `sample`), one process per mode as `main.py`
  runs: each case ends in its one `error:` line with nothing printed after
  it, nothing on disk changes, and no output of the process (threads, event
  loops and its exit included) holds a traceback. The warning paths
  (`error_table.WARNING_CASES`: a fallback past a damaged file of the newest
  checkpoint, whichever file; a deleted `config.json`) finish, also without
  a traceback.
* Faults beyond the table, each a row of the table in docs/long_runs.md: a
  save that fails midway (an I/O error, a full disk) keeps the previous
  checkpoint and a rerun resumes; SIGKILL during the first compilation, then
  a rerun; a workdir path with spaces and non-ASCII characters; an image
  folder whose files change between two runs of one workdir.
"""

import ast
import os
import re
import shutil
import signal
import subprocess
import sys
import threading

import jax
import numpy as np
from PIL import Image
import pytest

from configs import test as test_config
from dual_mcmc_jax import checkpointing
from dual_mcmc_jax import train
from tests import error_table
import main

REPO = error_table.REPO


@pytest.fixture(scope='module')
def clean_run(tmp_path_factory):
  return error_table.train_clean_run(tmp_path_factory)


def _sections(stderr: str) -> dict[str, list[str]]:
  """The driver's output per case: {case: its lines}."""
  parts = re.split(r'(?m)^=== (\w+)\n', stderr)
  return {name: body.rstrip('\n').splitlines()
          for name, body in zip(parts[1::2], parts[2::2])}


def _check_error_case(case: str, words: list[str], lines: list[str]):
  # What the run printed ends with its exit: nothing came after it.
  assert lines[-2].startswith('exit: ') and lines[-1].startswith('disk: '), (
      case, lines[-5:])
  line = ast.literal_eval(lines[-2][len('exit: '):])
  assert isinstance(line, str) and line.startswith('error: '), (case, line)
  assert '\n' not in line, (case, line)
  for word in words:
    assert word in line, (case, word, line)
  assert lines[-1] == 'disk: unchanged', (case, lines[-1])


def _check_warning_case(case: str, mode: str, words: list[str],
                        lines: list[str]):
  assert lines[-2] == 'exit: 0', (case, lines[-8:])
  text = '\n'.join(lines)
  # A run that finishes prints no ERROR line (absl's 'E<date>' prefix).
  errors = [l for l in lines if re.match(r'E\d{4} ', l)]
  assert not errors, (case, errors[:3])
  for word in words:
    assert word in text, (case, word, text[-3000:])
  if 'unreadable' in ' '.join(words):
    where = ('moved to' if mode == 'train' else 'left where they are')
    assert where in text, (case, text[-3000:])


@pytest.mark.parametrize('mode', ['train', 'eval', 'sample'])
def test_every_error_case_in_every_mode_is_one_line_without_traceback(
    mode, clean_run, tmp_path):
  errors = [c for c in error_table.BAD_INPUTS if mode in c[3]]
  warnings = [c for c in error_table.WARNING_CASES if mode in c[3]]
  cases = [c[0] for c in errors + warnings]
  proc = subprocess.run(
      [sys.executable, 'tests/error_table.py', mode, clean_run[0],
       str(tmp_path), *cases], cwd=REPO, capture_output=True, text=True,
      timeout=900)
  output = proc.stdout + proc.stderr
  assert proc.returncode == 0, output[-3000:]
  assert 'Traceback' not in output, output[output.find('Traceback') - 2000:][
      :6000]
  sections = _sections(proc.stderr)
  assert list(sections) == cases, list(sections)
  for case, _, words, _ in errors:
    _check_error_case(case, words, sections[case])
  for case, _, words, _ in warnings:
    _check_warning_case(case, mode, words, sections[case])


# --- Faults beyond the table ------------------------------------------------


@pytest.mark.parametrize('case', ['write_error_during_save',
                                  'disk_full_in_background_write'])
def test_a_save_failing_midway_keeps_the_last_checkpoint_and_a_rerun_resumes(
    case, clean_run, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(clean_run[0], workdir)
  change = {c[0]: c[1] for c in error_table.BAD_INPUTS}[case]
  config = error_table.cheap_config()
  with pytest.MonkeyPatch.context() as patch:
    change(config, workdir, patch)
    with pytest.raises(SystemExit, match='step 14'):
      main.run('train', config, workdir)
  assert error_table.saved_steps(workdir) == [8, 10, 12]
  # Step 12 is still whole, and the rerun of the same command resumes.
  _, last = checkpointing.load_state(error_table.cheap_config(), workdir)
  error_table.assert_same_state(clean_run[1], jax.device_get(last))
  state = train.train_and_evaluate(config, workdir)
  assert int(state.step) == error_table.NUM_STEPS + 2
  assert error_table.saved_steps(workdir)[-1] == error_table.NUM_STEPS + 2


def _run_until(cmd: list[str], marker: str, timeout: float = 300
               ) -> tuple[subprocess.Popen, list[str]]:
  """Starts `cmd`; returns once its stderr printed a line with `marker`."""
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  lines, seen = [], threading.Event()

  def read():
    for line in proc.stderr:
      lines.append(line)
      if marker in line:
        seen.set()

  threading.Thread(target=read, daemon=True).start()
  assert seen.wait(timeout), ''.join(lines)[-3000:]
  return proc, lines


def test_killed_during_the_first_compilation_then_rerun_finishes(tmp_path):
  workdir = str(tmp_path / 'run')
  cmd = error_table.main_command(workdir, num_steps=4)
  # 'Parameters:' is logged as the loop starts: the first step compiles next.
  proc, _ = _run_until(cmd, 'Parameters:')
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert error_table.saved_steps(workdir) == []
  rerun = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                         timeout=300)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert 'Traceback' not in rerun.stderr
  assert error_table.saved_steps(workdir) == [2, 4]


def test_a_workdir_path_with_spaces_and_non_ascii_characters(tmp_path):
  workdir = str(tmp_path / 'my runs' / 'Übung é 実験')
  train_run = subprocess.run(
      error_table.main_command(workdir, num_steps=2), cwd=REPO,
      capture_output=True, text=True, timeout=300)
  assert train_run.returncode == 0, train_run.stderr[-3000:]
  sample_run = subprocess.run(
      error_table.main_command(workdir, num_steps=2) + ['--mode=sample'],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert sample_run.returncode == 0, sample_run.stderr[-3000:]
  for run in (train_run, sample_run):
    assert 'Traceback' not in run.stderr
  assert error_table.saved_steps(workdir) == [2]
  assert any(name.endswith('.png') for name in os.listdir(workdir))


def _image_folder(folder, count: int, seed: int = 0):
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(seed)
  for i in range(count):
    Image.fromarray(rng.integers(0, 255, (16, 16), np.uint8)).save(
        os.path.join(folder, f'{i:03d}.png'))


def _image_folder_config(folder: str, num_steps: int):
  config = test_config.get_config()
  config.model.arch = 'simple'
  config.data.dataset = 'image_folder'
  config.data.image_folder = folder
  config.training.num_train_steps = num_steps
  config.training.checkpoint_every_steps = 2
  return config


def test_an_image_folder_that_changed_between_runs_is_refused(tmp_path):
  folder, workdir = str(tmp_path / 'images'), str(tmp_path / 'run')
  _image_folder(folder, 16)
  train.train_and_evaluate(_image_folder_config(folder, 2), workdir)
  _image_folder(os.path.join(folder, 'more'), 4, seed=1)  # Four new images.
  before = error_table.snapshot(workdir)
  with pytest.raises(SystemExit) as exit_info:
    main.run('train', _image_folder_config(folder, 4), workdir)
  line = exit_info.value.code
  for word in (f'the data {folder} changed', '16 files then, 20 now',
               '--config.recovery.allow_config_change=True'):
    assert word in line, (word, line)
  assert error_table.snapshot(workdir) == before
  # Allowed, the run resumes on the new data and records it.
  config = _image_folder_config(folder, 4)
  config.recovery.allow_config_change = True
  state = train.train_and_evaluate(config, workdir)
  assert int(state.step) == 4
  # Unchanged data resume without a word.
  config = _image_folder_config(folder, 6)
  assert int(train.train_and_evaluate(config, workdir).step) == 6
