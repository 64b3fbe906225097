"""A recorder killed with SIGKILL leaves a .partial whose every complete line reads back and replays."""
from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vmxdbg import cli
from vmxdbg.backends.base import MSR, PHYSICAL, Backend
from vmxdbg.record.recorder import Recorder
from vmxdbg.record.replay import PastEnd, ReplayBackend
from vmxdbg.record.recording import read_recording

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork() and SIGKILL")

KILL_POINTS = 60
BIG = 48 * 1024          # a read whose line (96 KiB of hex) takes several write() calls


class Target(Backend):
    """Deterministic answers, so a replay can check every value it gets back."""

    name = "killtarget"

    def capabilities(self):
        return frozenset({MSR, PHYSICAL})

    def processors(self):
        return [0, 1]

    def read_msr(self, cpu, index):
        return (index << 8) | cpu

    def read_physical(self, address, size):
        return bytes((address + i) & 0xFF for i in range(size))


def workload(backend):
    """Calls forever, small and large; checks each answer against the target's rule."""
    for i in itertools.count():
        cpu, index = i % 2, 0x480 + i % 16
        assert backend.read_msr(cpu, index) == (index << 8) | cpu
        if i % 5 == 0:
            addr = i * 0x1000
            assert backend.read_physical(addr, BIG)[:4] == bytes((addr + k) & 0xFF for k in range(4))
        yield i


def _record_until_killed(path: Path, ready_w: int) -> None:
    rec = Recorder(Target(), path, command="trace", probe=False)
    os.write(ready_w, b"x")
    for _ in workload(rec):
        pass


def _kill_once(path: Path, delay: float) -> None:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the recorder
        try:
            os.close(r)
            _record_until_killed(path, w)
        finally:
            os._exit(1)
    os.close(w)
    try:
        assert os.read(r, 1) == b"x"
        time.sleep(delay)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(r)


def test_sigkill_at_random_points_leaves_a_replayable_partial(tmp_path):
    rng = random.Random(20261126)
    torn = 0
    for point in range(KILL_POINTS):
        path = tmp_path / f"k{point}.vmxrec.jsonl"
        _kill_once(path, rng.uniform(0.0, 0.03))
        partial = path.with_name(path.name + ".partial")
        assert partial.exists() and not path.exists()
        raw = partial.read_bytes()
        complete_lines = raw.count(b"\n")
        rec = read_recording(partial, partial=True)
        assert not rec.complete
        assert len(rec.records) == complete_lines - 1, f"kill point {point}"
        assert rec.dropped_tail == (not raw.endswith(b"\n"))
        torn += rec.dropped_tail
        # every complete line replays: the same workload runs against it to its very end
        replay = ReplayBackend(rec)
        with pytest.raises(PastEnd):
            for _ in workload(replay):
                pass
        assert replay.unused() == []
    print(f"{KILL_POINTS} kills, {torn} with a torn last line")


SCRIPT = """
import sys, time
sys.path.insert(0, {tests!r})
from recfakes import POINTERS, two_cpu_snapshot
from vmxdbg.backends.snapshot_backend import SnapshotBackend
from vmxdbg.record.recorded import record_check

class Slow(SnapshotBackend):
    def read_msr(self, cpu, index):
        time.sleep(0.02)
        return super().read_msr(cpu, index)

record_check(Slow(two_cpu_snapshot()), {path!r}, vmxon_pointers=POINTERS)
print("finished")
"""


def test_killed_check_subprocess_reads_with_partial_flag(tmp_path, capsys):
    path = tmp_path / "c.vmxrec.jsonl"
    partial = path.with_name(path.name + ".partial")
    script = SCRIPT.format(tests=str(Path(__file__).parent), path=str(path))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent.parent)]
                                                      + os.environ.get("PYTHONPATH", "").split(os.pathsep)))
    proc = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if partial.exists() and partial.read_bytes().count(b"\n") >= 12:
                break
            assert proc.poll() is None, "the recorder finished before it could be killed"
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert partial.exists() and not path.exists()
    assert cli.main(["check", str(partial)]) == 2
    assert "pass --partial" in capsys.readouterr().err
    assert cli.main(["check", "--partial", str(partial)]) in (0, 1)
    out = capsys.readouterr()
    assert "is a partial recording" in out.err and "cpu" in out.out
