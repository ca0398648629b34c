"""The house rules a new maintainer relies on, checked on the source tree.

* No function or method in the library, `main.py` or the benchmarks is over
  60 lines (config files are exempt).
* The evaluation side (and the PyTorch import) does not import the training
  modules: sampling lives in `sampling.py`, loading a workdir in
  `checkpointing.py`.
* Every file of `dual_mcmc_jax/import_torch/` is at most 300 lines.
* Nothing in the package imports PyTorch at module level (it is optional).
* Every citation is one a reader can open: no file names a private notes
  file as its source.
* README.md stays short enough to read whole; details live in docs/.
* Only the CPU plug-in (`dual_mcmc_jax/cpu/`) and the start-up module read
  the backend, and only the plug-in's tests read compiled HLO text.
"""

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
MAX_FUNCTION_LINES = 60
MAX_README_LINES = 250
MAX_IMPORT_TORCH_LINES = 300


def _python_files(*roots: str) -> list[pathlib.Path]:
  files = []
  for root in roots:
    path = REPO / root
    files.extend([path] if path.suffix == '.py' else sorted(path.rglob('*.py')))
  return files


def _imports(tree: ast.AST) -> set[str]:
  """Modules a file imports, as dotted names (`from a import b` -> a.b)."""
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      names.add(node.module)
      names.update(f'{node.module}.{a.name}' for a in node.names)
  return names


def test_no_function_is_longer_than_a_screen():
  long = []
  for path in _python_files('dual_mcmc_jax', 'main.py', 'benchmarks'):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        lines = node.end_lineno - node.lineno + 1
        if lines > MAX_FUNCTION_LINES:
          long.append(f'{path.relative_to(REPO)}:{node.lineno} {node.name} '
                      f'({lines} lines)')
  assert not long, long


@pytest.mark.parametrize('path', [
    'dual_mcmc_jax/evaluate.py',
    *[str(p.relative_to(REPO)) for folder in ('import_torch', 'evaluators')
      for p in sorted((REPO / 'dual_mcmc_jax' / folder).glob('*.py'))]])
def test_evaluation_does_not_import_the_training_modules(path):
  imports = _imports(ast.parse((REPO / path).read_text()))
  assert not imports & {'dual_mcmc_jax.train', 'dual_mcmc_jax.train_step'}


def test_import_torch_files_are_short():
  files = _python_files('dual_mcmc_jax/import_torch')
  assert files
  long = [f'{p.relative_to(REPO)} ({n} lines)' for p in files
          if (n := len(p.read_text().splitlines())) > MAX_IMPORT_TORCH_LINES]
  assert not long, long


def test_networks_do_not_read_configs():
  for path in _python_files('dual_mcmc_jax/networks'):
    text = path.read_text()
    assert 'ml_collections' not in text, path
    assert 'config.' not in text, path


def test_the_package_does_not_import_torch_at_module_level():
  for path in _python_files('dual_mcmc_jax'):
    tree = ast.parse(path.read_text())
    top = set()
    for node in tree.body:
      if isinstance(node, (ast.Import, ast.ImportFrom)):
        top |= _imports(node)
    assert not {n for n in top if n.split('.')[0] == 'torch'}, path


def test_no_file_cites_a_notes_file_a_reader_cannot_open():
  suffixes = {'.py', '.md', '.ipynb', '.sh', '.txt', '.toml'}
  citing = [str(p.relative_to(REPO)) for p in REPO.rglob('*')
            if p.suffix in suffixes and p.is_file()
            and not {'.venv', '.git', 'node_modules'} & set(p.parts)
            and p.name != 'layout_test.py'
            and 'REFERENCE.md' in p.read_text(errors='replace')]
  assert not citing, citing


def test_readme_is_short_and_links_every_docs_page():
  readme = (REPO / 'README.md').read_text()
  assert len(readme.splitlines()) <= MAX_README_LINES
  for page in sorted((REPO / 'docs').glob('*.md')):
    assert f'docs/{page.name}' in readme, page.name


def test_only_the_cpu_plug_in_and_start_up_read_the_backend():
  allowed = {'dual_mcmc_jax/runtime.py'}
  readers = [str(p.relative_to(REPO)) for p in _python_files('dual_mcmc_jax')
             if 'default_backend' in p.read_text()
             and p.parent.name != 'cpu'
             and str(p.relative_to(REPO)) not in allowed]
  assert not readers, readers


def test_only_the_cpu_plug_in_tests_read_compiled_hlo():
  readers = [p.name for p in sorted((REPO / 'tests').glob('*.py'))
             if 'as_text()' in p.read_text() and p.name not in (
                 'cpu_test.py', 'layout_test.py')]
  assert not readers, readers

