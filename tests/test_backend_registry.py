"""The backend registry and the forwarding written from recording.OPS."""
from __future__ import annotations

import pytest

from vmxdbg.backends.base import Backend
from vmxdbg.backends.kdlog import KdLogBackend
from vmxdbg.backends.registry import KINDS, backend_class, for_file
from vmxdbg.backends.snapshot_backend import SnapshotBackend
from vmxdbg.commands.replay import open_state
from vmxdbg.common.errors import InputError, NotAvailable
from vmxdbg.record.cassette import _Episodes, open_cassette
from vmxdbg.record.forwarding import forwards_ops
from vmxdbg.record.recorder import Recorder
from vmxdbg.record.recording import OPS
from vmxdbg.record.replay import ReplayBackend
from vmxdbg.state.snapshot import load_snapshot
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "vmxdbg" / "examples" / "vmxon.vmxsnap.json"
LOG = "0: kd> rdmsr 480\nmsr[480] = 00da0400`00000004\n0: kd> dq fffff800`04289000 L1\n" \
      "fffff800`04289000  00cf9b00`0000ffff\n"


def test_every_registered_backend_is_a_backend():
    for kind in KINDS:
        assert issubclass(backend_class(kind.name), Backend), kind.name


def test_an_unknown_backend_name_is_bad_input_naming_the_known_ones():
    with pytest.raises(InputError, match="no backend called 'gdb'.*windbg, bochs"):
        backend_class("gdb")


def test_a_kd_log_is_read_through_the_kd_log_backend_with_its_virtual_memory(tmp_path):
    path = tmp_path / "s.log"
    path.write_text(LOG)
    backend, _ = for_file(path)
    assert isinstance(backend, KdLogBackend)
    assert backend.read_virtual(0, 0xFFFFF80004289000, 8) == bytes.fromhex("ffff0000009bcf00")
    state, banner = open_state(path)
    assert "kd log" in banner and isinstance(state.backend, KdLogBackend)


def test_a_snapshot_is_read_through_the_snapshot_backend():
    backend, snap = for_file(EXAMPLE)
    assert isinstance(backend, SnapshotBackend) and backend.processors() == sorted(snap.processors)


def test_every_operation_is_forwarded_by_the_recorder_cassette_and_replay():
    for cls in (Recorder, ReplayBackend, _Episodes):
        for op in OPS:
            assert getattr(cls, op) is not getattr(Backend, op), f"{cls.__name__}.{op} is not forwarded"


def test_a_forwarded_call_is_named_as_the_recording_names_it(tmp_path):
    seen = []

    @forwards_ops
    class Spy(Backend):
        def _forward(self, op, cpu, args, call):
            seen.append((op, cpu, args))
            return call(SnapshotBackend(load_snapshot(EXAMPLE)))

    spy = Spy()
    assert spy.read_msr(0, 0x480) == load_snapshot(EXAMPLE).processors[0].msr[0x480]
    spy.read_registers(0, ["cr0", "cr4"])
    with pytest.raises(NotAvailable):
        spy.go(5)
    assert seen == [("read_msr", 0, (0x480,)), ("read_registers", 0, (("cr0", "cr4"),)), ("go", None, (5.0,))]


def test_the_recorder_and_the_cassette_record_and_answer_through_the_same_list(tmp_path):
    snap = load_snapshot(EXAMPLE)
    path = tmp_path / "s.vmxrec.jsonl"
    with Recorder(SnapshotBackend(snap), path, probe=False) as rec:
        cr0 = rec.read_register(0, "cr0")
    with open_cassette(path, "none") as replay:
        assert replay.read_register(0, "cr0") == cr0
