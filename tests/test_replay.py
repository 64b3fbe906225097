"""Replay: identical reports, divergence at the first wrong call, keyed exploration, record modes."""
from __future__ import annotations

import json

import pytest

from recfakes import POINTERS, FakeLive, trace_session, two_cpu_snapshot
from vmxdbg import cli
from vmxdbg.record.recorder import Recorder
from vmxdbg.record.replay import ReplayBackend, ReplayDivergence
from vmxdbg.backends.snapshot_backend import SnapshotBackend
from vmxdbg.record.cassette import NoLiveTarget, open_cassette
from vmxdbg.state.collect import collect
from vmxdbg.common.errors import Divergence, NotAvailable
from vmxdbg.record.recorded import record_check
from vmxdbg.record.recording import read_recording
from vmxdbg.report.model import report_to_json
from vmxdbg.rules import check_snapshot
from vmxdbg.state.snapshot import snapshot_to_json


@pytest.fixture
def check_rec(tmp_path):
    path = tmp_path / "s.vmxrec.jsonl"
    live_snap = record_check(SnapshotBackend(two_cpu_snapshot()), path, vmxon_pointers=POINTERS)
    return path, live_snap


def test_replayed_check_gives_the_live_report(check_rec, capsys):
    path, live_snap = check_rec
    live_report = report_to_json(check_snapshot(live_snap))
    replay = ReplayBackend(read_recording(path))
    snap = collect(replay, vmxon_pointers=POINTERS)
    assert snapshot_to_json(snap)["processors"] == snapshot_to_json(live_snap)["processors"]
    assert replay.unused() == []
    rc = cli.main(["check", str(path), "--format", "json"])
    out = capsys.readouterr()
    assert json.loads(out.out) == live_report
    assert rc == (1 if check_snapshot(live_snap).any_failed() else 0)
    assert out.err == ""
    # the two processors differ (CR4.VMXE), so a report that mixed them up would not match
    assert live_snap.processors[0].registers["cr4"] != live_snap.processors[1].registers["cr4"]


def test_recorded_errors_replay_as_the_same_errors(check_rec):
    path, _ = check_rec
    rec = read_recording(path)
    failed = next(r for r in rec.records if r.error is not None)
    with pytest.raises(NotAvailable) as live_exc:
        getattr(SnapshotBackend(two_cpu_snapshot()), failed.op)(failed.cpu, *failed.args)
    replay = ReplayBackend(rec, strict=False)
    with pytest.raises(NotAvailable) as replay_exc:
        getattr(replay, failed.op)(failed.cpu, *failed.args)
    assert str(replay_exc.value) == str(live_exc.value)


def test_wrong_args_diverge_naming_seq_recorded_called_and_closest(check_rec):
    path, _ = check_rec
    replay = ReplayBackend(read_recording(path))
    assert replay.processors() == [0, 1]
    with pytest.raises(ReplayDivergence) as exc:
        replay.cpuid(0, 0x1)          # recorded: cpuid(cpu 0, leaf=0x0, subleaf=0x0) first
    e = exc.value
    assert isinstance(e, Divergence) and e.seq == 2
    msg = str(e)
    assert "seq 2" in msg and "recorded cpuid(cpu 0, leaf=0x0, subleaf=0x0)" in msg
    assert "called cpuid(cpu 0, leaf=0x1, subleaf=0x0)" in msg
    assert e.closest[0].args == (0x1, 0) and e.closest[0].cpu == 0      # the exact call, recorded later
    assert "closest recorded: seq 3 cpuid(cpu 0, leaf=0x1" in msg
    assert "\n" not in msg


def test_wrong_order_diverges_at_the_first_wrong_call(check_rec):
    path, _ = check_rec
    replay = ReplayBackend(read_recording(path))
    with pytest.raises(ReplayDivergence) as exc:
        replay.read_msr(0, 0x3A)       # recorded first: processors()
    assert exc.value.seq == 1 and exc.value.recorded.op == "processors"
    assert "read_msr(cpu 0, index=0x3a)" in exc.value.called


def test_extra_call_past_the_end_diverges(check_rec):
    path, _ = check_rec
    replay = ReplayBackend(read_recording(path))
    collect(replay, vmxon_pointers=POINTERS)
    with pytest.raises(ReplayDivergence, match="after the last recorded call") as exc:
        replay.read_msr(1, 0x480)
    assert exc.value.recorded is None
    assert exc.value.closest and exc.value.closest[0].key == ("read_msr", 1, (0x480,))


def test_missing_calls_are_reported_unused(tmp_path):
    path = tmp_path / "s.vmxrec.jsonl"
    with Recorder(SnapshotBackend(two_cpu_snapshot()), path, command="check") as rec:
        collect(rec, cpus=[0], vmxon_pointers=POINTERS)
        collect(rec, cpus=[1], vmxon_pointers=POINTERS)     # the recording also holds cpu 1
    replay = ReplayBackend(read_recording(path))
    collect(replay, cpus=[0], vmxon_pointers=POINTERS)
    left = replay.unused()
    assert left and {r.cpu for r in left if r.op != "read_physical"} == {1}
    assert f"{len(left)} recorded call(s) were not replayed" in replay.unused_note()


def test_check_reports_unused_calls_as_a_note(tmp_path, capsys):
    path = tmp_path / "s.vmxrec.jsonl"
    with Recorder(SnapshotBackend(two_cpu_snapshot()), path, command="check",
                  params={"vmxon_pointers": {"0": "0x1a2b3000", "1": "0x1a2b4000"}}) as rec:
        collect(rec, vmxon_pointers=POINTERS)
        rec.read_msr(0, 0x3A)           # something collect() does not do
    cli.main(["check", str(path)])
    assert "1 recorded call(s) were not replayed: seq" in capsys.readouterr().err


def test_partial_recording_checks_with_unknowns(check_rec, capsys):
    path, _ = check_rec
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text("".join(lines[:len(lines) // 2]) + lines[len(lines) // 2][:10], encoding="utf-8")
    rc = cli.main(["check", str(partial)])
    assert rc == 2 and "pass --partial" in capsys.readouterr().err
    rc = cli.main(["check", "--partial", "--format", "json", str(partial)])
    out = capsys.readouterr()
    assert "is a partial recording" in out.err
    report = json.loads(out.out)
    assert report["processors"]["0"]      # cpu 0 was reached before the cut


# ----------------------------------------------------------------- keyed mode and a trace

def _record_trace(path):
    with Recorder(FakeLive(), path, command="trace") as rec:
        return trace_session(rec)


def test_trace_replays_strictly(tmp_path):
    path = tmp_path / "t.vmxrec.jsonl"
    live_seen = _record_trace(path)
    replay = ReplayBackend(read_recording(path))
    assert trace_session(replay) == live_seen
    assert replay.unused() == []
    assert live_seen[0] != live_seen[-1]     # the state did change along the trace


def test_keyed_mode_answers_in_any_order_at_each_stop(tmp_path):
    path = tmp_path / "t.vmxrec.jsonl"
    live_seen = _record_trace(path)
    replay = ReplayBackend(read_recording(path), strict=False)
    assert len(replay.stops) == 5          # go + 4 steps
    assert replay.read_msr(1, 0x480) == 0xDA040000000005
    assert replay.read_msr(0, 0x480) == 0xDA040000000004
    with pytest.raises(NotAvailable, match="up to stop 0"):
        replay.read_register(0, "rip")     # nothing read before the first stop
    for k in range(1, 6):
        replay.seek(k)
        assert (replay.read_register(0, "rip"), replay.read_register(0, "cr4")) == live_seen[k - 1]
    replay.seek(0)
    ev = replay.go()
    assert ev.kind == "breakpoint" and replay.position == 1
    assert replay.step(0).kind == "step" and replay.position == 2
    # memory is assembled from the reads that cover it
    replay.seek(5)
    assert replay.read_physical(0x10014, 4) == bytes([0x14, 0x15, 0x16, 0x17])
    with pytest.raises(NotAvailable):
        replay.read_physical(0x10000, 4)


def test_check_of_a_trace_checks_its_last_stop(tmp_path, capsys):
    path = tmp_path / "t.vmxrec.jsonl"
    _record_trace(path)
    rc = cli.main(["check", str(path), "--format", "json"])
    out = capsys.readouterr()
    assert rc in (0, 1), out.err
    assert "last recorded stop (5)" in out.err
    assert set(json.loads(out.out)["processors"]) == {"0", "1"}


# ----------------------------------------------------------------- record modes

class Factory:
    def __init__(self):
        self.made = []

    def __call__(self):
        self.made.append(FakeLive())
        return self.made[-1]


def test_mode_none_needs_the_file(tmp_path):
    with pytest.raises(NoLiveTarget, match="record mode none replays only"):
        with open_cassette(tmp_path / "x.vmxrec.jsonl"):
            pass


def test_mode_once_records_then_replays(tmp_path):
    path = tmp_path / "t.vmxrec.jsonl"
    live = Factory()
    with open_cassette(path, "once", live, command={"command": "trace"}) as b:
        first = trace_session(b)
    assert len(live.made) == 1 and live.made[0].closed
    with open_cassette(path, "once", live) as b:
        assert isinstance(b, ReplayBackend)
        assert trace_session(b) == first
    assert len(live.made) == 1          # the second session never touched a target


def test_mode_all_records_anew(tmp_path):
    path = tmp_path / "t.vmxrec.jsonl"
    live = Factory()
    for _ in range(2):
        with open_cassette(path, "all", live) as b:
            b.read_msr(0, 0x3A)
    assert len(live.made) == 2 and len(read_recording(path).records) == 1
    with pytest.raises(NoLiveTarget, match="needs a live target"):
        with open_cassette(path, "all"):
            pass


def test_mode_new_episodes_replays_old_and_records_new(tmp_path):
    path = tmp_path / "t.vmxrec.jsonl"
    live = Factory()
    with open_cassette(path, "all", live) as b:
        b.read_msr(0, 0x480)
        b.read_msr(1, 0x480)
    live.made.clear()
    with open_cassette(path, "new_episodes", live) as b:
        assert b.read_msr(1, 0x480) == 0xDA040000000005   # from the recording
        assert live.made == []                            # no target needed yet
        assert b.read_register(0, "cr0") == 0x80050033   # a new episode: asks the target
        assert len(live.made) == 1
    rec = read_recording(path)
    assert [r.key for r in rec.records] == [("read_msr", 1, (0x480,)), ("read_register", 0, ("cr0",)),
                                            ("read_msr", 0, (0x480,))]
    # the rewritten file replays this session in order
    replay = ReplayBackend(rec)
    replay.read_msr(1, 0x480)
    replay.read_register(0, "cr0")
    assert [r.key for r in replay.unused()] == [("read_msr", 0, (0x480,))]


def test_mode_new_episodes_without_target_says_so(tmp_path):
    path = tmp_path / "t.vmxrec.jsonl"
    with open_cassette(path, "all", Factory()) as b:
        b.read_msr(0, 0x480)
    with pytest.raises(NoLiveTarget, match="no live target"):
        with open_cassette(path, "new_episodes") as b:
            b.read_msr(0, 0x3A)
    assert read_recording(path).complete      # the file is still whole after the failure


def test_unsolicited_events_are_stops_and_strict_replay_passes_them(tmp_path):
    from vmxdbg.backends.base import StopEvent
    path = tmp_path / "t.vmxrec.jsonl"
    with Recorder(FakeLive(), path, command="trace", probe=False) as rec:
        rec.read_msr(0, 0x480)
        rec.record_event(StopEvent("vmexit", cpu=1, detail="exit reason 33"))
        rec.read_msr(1, 0x480)
    got = read_recording(path)
    assert got.records[1].op is None and got.records[1].event.detail == "exit reason 33"
    strict = ReplayBackend(got)
    strict.read_msr(0, 0x480)
    assert strict.read_msr(1, 0x480) == 0xDA040000000005 and strict.unused() == []
    keyed = ReplayBackend(got, strict=False)
    assert keyed.stop_count() == 1 and keyed.stop_event(1).kind == "vmexit"
    with pytest.raises(NotAvailable):
        keyed.read_msr(1, 0x480)            # read after the exit, not before it
    keyed.seek(1)
    assert keyed.read_msr(1, 0x480) == 0xDA040000000005
