"""Mutated recordings: reading and checking one gives a report or a one-line VmxdbgError, never anything else."""
from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recfakes import POINTERS, FakeLive, trace_session, two_cpu_snapshot
from vmxdbg.record.recorder import Recorder
from vmxdbg.backends.snapshot_backend import SnapshotBackend
from vmxdbg.common.errors import VmxdbgError
from vmxdbg.record.recorded import record_check, snapshot_of
from vmxdbg.record.recording import read_recording
from vmxdbg.rules import check_snapshot


def _seed_files(tmp):
    check = tmp / "c.vmxrec.jsonl"
    record_check(SnapshotBackend(two_cpu_snapshot()), check, vmxon_pointers=POINTERS)
    trace = tmp / "t.vmxrec.jsonl"
    with Recorder(FakeLive(), trace, command="trace") as rec:
        trace_session(rec)
    return [check.read_bytes(), trace.read_bytes()]


SEEDS = None


def seeds(tmp_path_factory):
    global SEEDS
    if SEEDS is None:
        SEEDS = _seed_files(tmp_path_factory.mktemp("seeds"))
    return SEEDS


def _mutate(data: bytes, how: int, pos: float, value: int) -> bytes:
    i = int(pos * len(data))
    if how == 0:      # flip a bit
        return data[:i] + bytes([data[i] ^ (1 << (value % 8))]) + data[i + 1:] if i < len(data) else data
    if how == 1:      # cut off
        return data[:i]
    if how == 2:      # duplicate a line
        lines = data.split(b"\n")
        k = int(pos * len(lines))
        return b"\n".join(lines[:k + 1] + lines[k:])
    if how == 3:      # replace a JSON value with another type
        lines = data.split(b"\n")
        k = min(int(pos * len(lines)), len(lines) - 1)
        try:
            obj = json.loads(lines[k])
        except ValueError:
            return data
        if isinstance(obj, dict) and obj:
            key = sorted(obj)[value % len(obj)]
            obj[key] = [None, True, -1, "zz", {}, [1], 2 ** 70, 1.5][value % 8]
            lines[k] = json.dumps(obj).encode()
        return b"\n".join(lines)
    return data[:i] + bytes([value % 256]) * (value % 7) + data[i:]   # insert junk


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.integers(0, 1), how=st.integers(0, 4), pos=st.floats(0, 1), value=st.integers(0, 1000),
       partial=st.booleans())
def test_mutated_recordings_give_a_report_or_one_clear_line(tmp_path_factory, which, how, pos, value, partial):
    data = _mutate(seeds(tmp_path_factory)[which], how, pos, value)
    path = tmp_path_factory.mktemp("m") / "m.vmxrec.jsonl"
    path.write_bytes(data)
    try:
        rec = read_recording(path, partial=partial)
        check_snapshot(snapshot_of(rec))
    except VmxdbgError as exc:
        msg = str(exc)
        assert msg and "\n" not in msg
