"""The `vmxdbg` command end to end, in a subprocess, on mutated files: a sample.

Every command that reads a file (check, snapshot, caps, vmcs, trace --replay,
replay -c) and decode run on seeded mutants of real files. Each must exit 0
or 1 with output, or 2 with exactly one error line on stderr that names the
file; never a traceback, never another status. (The in-process CLI fuzzing,
many more inputs, is the `cli` reader of test_fuzz_readers.py.)
"""
from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

import fuzzkit

ROOT = Path(__file__).resolve().parent.parent
SEED = 77


def _vmxdbg(args, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "vmxdbg", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, errors="replace", timeout=120, stdin=subprocess.DEVNULL)
    return fuzzkit.CliResult(proc.returncode, proc.stdout, proc.stderr)


def _cases(tmp: Path):
    """(argv, file it names) pairs for each command: a mutant of any kind and one that keeps the
    format (values changed), so both the readers' refusals and the checks are reached. Deterministic."""
    c = fuzzkit.corpus()
    rnd = random.Random(SEED)
    others = c.all_files()
    plans = [("check", c.snapshots, "s.vmxsnap.json", ["check", "@"]),
             ("check-log", c.kdlogs, "k.log", ["check", "@", "--format", "json"]),
             ("check-rec", c.recordings, "r.vmxrec.jsonl", ["check", "@", "--partial"]),
             ("snapshot", c.recordings + c.kdlogs, "x.in", ["snapshot", "@", "-o", "out.vmxsnap.json", "--force"]),
             ("caps", c.snapshots, "c.vmxsnap.json", ["caps", "@"]),
             ("vmcs", [s for s, _ in c.regions[:1]], "v.vmxsnap.json", ["vmcs", hex(c.regions[0][1]), "--source", "@"]),
             ("trace", c.traces, "t.vmxrec.jsonl", ["trace", "--replay", "@"]),
             ("replay", c.traces, "p.vmxrec.jsonl", ["replay", "@", "-c", "!stops;g;r;!vmxcheck"])]
    out = []
    for name, seeds, fname, argv in plans:
        for i in range(2):
            seed = rnd.choice(seeds)
            data = fuzzkit.mutate(rnd, seed, others) if i == 0 else fuzzkit.gentle(rnd, seed)
            path = tmp / f"{i}-{fname}"
            path.write_bytes(data)
            out.append((f"{name}-{i}", [str(path) if a == "@" else a for a in argv], path.name))
    out.append(("decode", ["decode", "msr", "0x480", "00da0400`0000000" + "\u00b2"], None))
    out.append(("decode-list", ["decode", "--list"], None))
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    return [(label, argv, name, _vmxdbg(argv, tmp)) for label, argv, name in _cases(tmp)]


def test_every_command_on_mutated_files_exits_as_the_contract_says(runs):
    problems = []
    for label, argv, name, res in runs:
        problem = fuzzkit.judge_cli(res, [name] if name else [a for a in argv if a])
        if problem:
            problems.append(f"{label}: vmxdbg {' '.join(argv)[:160]}: {problem}")
    assert not problems, "\n".join(problems)


def test_the_sample_reaches_both_results_and_errors(runs):
    statuses = [res.status for _, _, _, res in runs]
    assert 2 in statuses and (0 in statuses or 1 in statuses), statuses
    assert all(res.stdout or res.stderr for _, _, _, res in runs if res.status in (0, 1))


def test_a_real_traceback_would_be_caught(tmp_path):
    # the judge sees what the interpreter prints for an uncaught exception
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", "import vmxdbg.cli; raise ValueError('x')"], env=env,
                          capture_output=True, text=True, cwd=tmp_path)
    assert "traceback" in fuzzkit.judge_cli(fuzzkit.CliResult(proc.returncode, proc.stdout, proc.stderr))
