"""Where the train step's time goes, read from a jax.profiler trace.

  python benchmarks/train_step.py --config=configs/cifar10.py \
      --config.model.ngf=32 --config.model.nef=32 --config.model.nif=16 \
      --config.training.batch_size=8 --iters=2 --profile_dir=/tmp/prof

`benchmarks/train_step.py --profile_dir=DIR` records the timed iterations
with `jax.profiler` (which also writes a Chrome-format `*.trace.json.gz`)
and calls `summarize` here. Nothing needs TensorFlow or TensorBoard: the
trace is JSON, and every event's name is an HLO instruction of the compiled
step, whose text (`compiled.as_text()`) says what it computes.

Each device op is attributed to
* a place: the x-chains, the z-chain or outside them, from how often it ran
  (an op inside a `fori_loop` body runs once per chain step: `n_x` times per
  x-chain and iteration, `n_z` times in the z-chain, once outside);
* a network and a direction: the Flax module named in the op's metadata
  (`jvp(ResEBM)` is a forward pass, `transpose(jvp(ResEBM))` its backward
  pass), sampling (`_normal`, threefry) or anything else (Langevin and
  optimiser arithmetic). Fusions carry no metadata of their own; they are
  named after the first op inside them that has some.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import gzip
import json
import os
import re

_INSTRUCTION = re.compile(
    r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\S+(?:\{[^}]*\})?)\s+([\w\-]+)\(')
_COMPUTATION = re.compile(r'^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s+\(.*\{\s*$')
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_CALLS = re.compile(r'calls=%?([\w.\-]+)')
_NETWORK = re.compile(r'(\w*?)(EBM|Generator|Inference)\)')

NETWORKS = {'EBM': 'E', 'Generator': 'G', 'Inference': 'I'}


@dataclasses.dataclass(frozen=True)
class HloOp:
  shape: str
  opcode: str
  op_name: str  # '' when the instruction (and its fused body) has none.


def parse_hlo(text: str) -> dict[str, HloOp]:
  """Maps instruction names of an HLO module's text to what they compute."""
  raw: dict[str, tuple[str, str, str, str | None]] = {}
  first_name_in: dict[str, str] = {}
  computation = None
  for line in text.splitlines():
    m = _COMPUTATION.match(line)
    if m and '=' not in line.split('(')[0]:
      computation = m.group(1)
      continue
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    name, shape, opcode = m.groups()
    op_name = _OP_NAME.search(line)
    op_name = op_name.group(1) if op_name else ''
    calls = _CALLS.search(line)
    raw[name] = (shape, opcode, op_name, calls.group(1) if calls else None)
    if computation and op_name and computation not in first_name_in:
      first_name_in[computation] = op_name
  return {name: HloOp(shape, opcode,
                      op_name or first_name_in.get(calls or '', ''))
          for name, (shape, opcode, op_name, calls) in raw.items()}


def classify(op: HloOp | None) -> str:
  """'E forward', 'G backward', 'sampling', 'other', ... for one op."""
  if op is None or not op.op_name:
    return 'other'
  m = None
  for m in _NETWORK.finditer(op.op_name):
    pass  # The innermost module wins.
  if m is not None:
    net = NETWORKS[m.group(2)]
    backward = 'transpose(jvp(' + m.group(1) + m.group(2) in op.op_name
    return f'{net} {"backward" if backward else "forward"}'
  if '_normal' in op.op_name or 'threefry' in op.op_name:
    return 'sampling'
  return 'other'


def load_trace_events(trace_dir: str) -> list[dict]:
  """Complete ('X') events of the newest `*.trace.json.gz` under a dir."""
  paths = sorted(glob.glob(os.path.join(trace_dir, '**', '*.trace.json.gz'),
                           recursive=True), key=os.path.getmtime)
  if not paths:
    raise FileNotFoundError(f'no *.trace.json.gz under {trace_dir}')
  with gzip.open(paths[-1], 'rt') as f:
    events = json.load(f)['traceEvents']
  return [e for e in events if e.get('ph') == 'X']


def summarize(trace_dir: str, hlo_text: str, iters: int, x_steps: int,
              z_steps: int, second_x_chain: bool, top: int = 12) -> dict:
  """Time per iteration by place and by network pass, and the top ops.

  Args:
    trace_dir: the `--profile_dir` of the traced run.
    hlo_text: `compiled.as_text()` of the traced step.
    iters: traced iterations.
    x_steps, z_steps: chain lengths (they tell the places apart; equal
      lengths, or a length of 1, make the places ambiguous: those ops are
      reported under 'x- or z-chain' / 'outside').
    second_x_chain: whether the step runs two x-chains.
    top: how many of the costliest ops to list.

  Returns:
    {'device_ms_per_iter', 'by_place', 'by_pass', 'by_place_and_pass',
     'top_ops'}; times in ms per iteration.
  """
  hlo = parse_hlo(hlo_text)
  calls = collections.Counter()
  total_us = collections.Counter()
  for e in load_trace_events(trace_dir):
    name = e.get('args', {}).get('hlo_op') or e['name']
    if name in hlo:
      calls[name] += 1
      total_us[name] += float(e.get('dur', 0.0))

  def place(per_iter: float) -> str:
    if x_steps > 1 and x_steps != z_steps and per_iter == x_steps:
      return 'x-chain'
    if z_steps > 1 and x_steps != z_steps and per_iter == z_steps:
      return 'z-chain'
    if per_iter > 1 and per_iter in (x_steps, z_steps):
      return 'x- or z-chain'
    return 'outside chains'

  by_place, by_pass, both = (collections.Counter(), collections.Counter(),
                             collections.Counter())
  rows = []
  for name, us in total_us.items():
    per_iter = calls[name] / max(iters, 1)
    ms = us / 1e3 / max(iters, 1)
    where, what = place(per_iter), classify(hlo.get(name))
    by_place[where] += ms
    by_pass[what] += ms
    both[f'{where} / {what}'] += ms
    rows.append({'op': name, 'opcode': hlo[name].opcode,
                 'shape': hlo[name].shape, 'place': where, 'pass': what,
                 'calls_per_iter': per_iter, 'ms_per_iter': ms,
                 'ms_per_call': ms / per_iter if per_iter else 0.0,
                 'op_name': hlo[name].op_name[-90:]})
  rows.sort(key=lambda r: -r['ms_per_iter'])
  sort = lambda c: dict(sorted(c.items(), key=lambda kv: -kv[1]))
  return {'device_ms_per_iter': sum(by_place.values()),
          'x_chains_per_iter': 2 if second_x_chain else 1,
          'by_place': sort(by_place), 'by_pass': sort(by_pass),
          'by_place_and_pass': sort(both), 'top_ops': rows[:top]}


def format_summary(s: dict) -> str:
  """The summary as a plain-text table."""
  total = max(s['device_ms_per_iter'], 1e-9)
  lines = [f'\nProfile: {s["device_ms_per_iter"]:.1f} ms of device ops per '
           'iteration']
  for title, key in (('place', 'by_place'), ('network pass', 'by_pass'),
                     ('place / pass', 'by_place_and_pass')):
    lines.append(f'{"by " + title:<44} {"ms/iter":>10} {"share":>7}')
    for k, v in s[key].items():
      if v / total >= 0.005:
        lines.append(f'  {k:<42} {v:10.1f} {100 * v / total:6.1f}%')
  lines.append(f'{"top ops":<28} {"place":<15} {"pass":<11} {"calls":>6} '
               f'{"ms/call":>8} {"ms/iter":>8}  shape')
  for r in s['top_ops']:
    lines.append(f'  {r["op"][:26]:<26} {r["place"]:<15} {r["pass"]:<11} '
                 f'{r["calls_per_iter"]:6.0f} {r["ms_per_call"]:8.2f} '
                 f'{r["ms_per_iter"]:8.1f}  {r["shape"]}')
  return '\n'.join(lines)
