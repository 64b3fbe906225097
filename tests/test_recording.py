"""The recording format: what the Recorder writes, and how every bad file is refused in one line."""
from __future__ import annotations

import json

import pytest

from recfakes import POINTERS, FakeLive, trace_session, two_cpu_snapshot
from vmxdbg import cli
from vmxdbg.record.recorder import Recorder
from vmxdbg.backends.snapshot_backend import SnapshotBackend
from vmxdbg.common.errors import InputError, NotAvailable
from vmxdbg.record.recorded import record_check
from vmxdbg.record.recording import MAX_LINE_BYTES, looks_like_recording, read_recording


@pytest.fixture
def check_rec(tmp_path):
    path = tmp_path / "s.vmxrec.jsonl"
    record_check(SnapshotBackend(two_cpu_snapshot()), path, vmxon_pointers=POINTERS, argv=["check", "live"])
    return path


def lines_of(path):
    return path.read_text(encoding="utf-8").splitlines()


def test_header_calls_and_trailer(check_rec):
    lines = [json.loads(x) for x in lines_of(check_rec)]
    h = lines[0]
    assert h["format"] == "vmxdbg-recording" and h["version"] == 1
    assert h["producer"].startswith("vmxdbg ") and h["created"]
    assert h["backend"]["kind"] == "snapshot"
    assert "msr" in h["capabilities"]
    assert h["command"] == "check" and h["argv"] == ["check", "live"]
    assert h["params"]["vmxon_pointers"] == {"0": "0x1a2b3000", "1": "0x1a2b4000"}
    assert h["target"]["processors"] == [0, 1]
    assert h["target"]["capability_msrs"]["0"]["0x480"] == "0xda040000000004"
    body = lines[1:-1]
    assert [r["seq"] for r in body] == list(range(1, len(body) + 1))
    assert lines[-1] == {"end": True, "events": len(body)}
    msr480 = [r for r in body if r["op"] == "read_msr" and r["args"]["index"] == "0x480"]
    assert [r["result"] for r in msr480] == ["0xda040000000004", "0xda040000000004"]
    errors = [r for r in body if "error" in r]
    assert errors and errors[0]["error"]["type"] == "NotAvailable" and errors[0]["error"]["backend"] == "snapshot"
    assert not (check_rec.parent / (check_rec.name + ".partial")).exists()


def test_read_back(check_rec):
    rec = read_recording(check_rec)
    assert rec.complete and rec.command == "check"
    r = next(r for r in rec.records if r.op == "cpuid" and r.error is None)
    assert r.result == (0x906EA, 0x100800, 0x7FFAFBBF, 0xBFEBFBFF)
    assert looks_like_recording(check_rec.read_bytes()[:4096])


def test_partial_while_open_and_renamed_on_close(tmp_path):
    path = tmp_path / "t.vmxrec.jsonl"
    partial = tmp_path / "t.vmxrec.jsonl.partial"
    rec = Recorder(FakeLive(), path, command="trace")
    rec.read_msr(0, 0x480)
    assert partial.exists() and not path.exists()
    # every call is flushed: the partial file already holds it
    got = read_recording(partial, partial=True)
    assert not got.complete and [r.op for r in got.records] == ["read_msr"]
    with pytest.raises(InputError, match="pass --partial"):
        read_recording(partial)
    rec.close()
    assert path.exists() and not partial.exists()
    assert read_recording(path).complete


def test_closed_on_exception_and_errors_recorded(tmp_path):
    path = tmp_path / "t.vmxrec.jsonl"
    with pytest.raises(NotAvailable):
        with Recorder(FakeLive(), path, command="trace") as rec:
            rec.read_msr(0, 0x999)
    rec = read_recording(path)
    assert rec.complete and "NotAvailable" in rec.trailer["exception"]
    assert rec.records[0].error["what"] == "MSR 0x999"


def test_trace_events_recorded(tmp_path):
    path = tmp_path / "t.vmxrec.jsonl"
    with Recorder(FakeLive(), path, command="trace") as rec:
        trace_session(rec)
    ops = [r.op for r in read_recording(path).records]
    assert ops.count("step") == 4 and "go" in ops and "set_breakpoint" in ops
    go = next(r for r in read_recording(path).records if r.op == "go")
    assert go.event.kind == "breakpoint" and go.event.address == 0x4000 and go.event.log == ["hit"]


def test_answer_too_large_is_refused_and_recorded(tmp_path, monkeypatch):
    import vmxdbg.record.recording as fmt
    monkeypatch.setattr(fmt, "MAX_LINE_BYTES", 2000)
    path = tmp_path / "t.vmxrec.jsonl"
    with Recorder(FakeLive(), path, command="trace", probe=False) as rec:
        with pytest.raises(NotAvailable, match="too large"):
            rec.read_physical(0x10000, 2048)
    assert read_recording(path).records[0].error["type"] == "NotAvailable"


# ----------------------------------------------------------------- bad input

def _rewrite(path, fn):
    lines = lines_of(path)
    path.write_text("\n".join(fn(lines)) + "\n", encoding="utf-8")


def _one_line_error(path, capsys, *extra):
    rc = cli.main(["check", str(path), *extra])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


def test_corrupt_line_names_file_and_line(check_rec, capsys):
    _rewrite(check_rec, lambda ls: ls[:5] + ['{"seq": 5, "op": "read_msr", garbage'] + ls[6:])
    err = _one_line_error(check_rec, capsys)
    assert f"{check_rec}:6: not JSON" in err


def test_wrong_types_name_the_key(check_rec, capsys):
    def bad(ls):
        r = json.loads(ls[3])
        r["cpu"] = "zero"
        return ls[:3] + [json.dumps(r)] + ls[4:]
    _rewrite(check_rec, bad)
    err = _one_line_error(check_rec, capsys)
    assert f"{check_rec}:4 [cpu]" in err


@pytest.mark.parametrize("mutate,expect", [
    (lambda ls: ls[:-1], "partial recording"),
    (lambda ls: [ls[0].replace('"version":1', '"version":7')] + ls[1:], "version 7 is not supported"),
    (lambda ls: ["this is not json"] + ls[1:], "not a file vmxdbg reads"),
    (lambda ls: ['{"format": "vmxdbg-recording", "version": 1,'] + ls[1:], ":1: not JSON"),
    (lambda ls: ['{"format": "vmxdbg-recording"}'] + ls[1:], ":1 [version]: version is missing"),
    (lambda ls: ls[:2] + ls[3:], "expected seq 2, got 3"),
    (lambda ls: ls[:-1] + ['{"end": true, "events": 3}'], "the end trailer says 3 events"),
    (lambda ls: ls + ['{"seq": 99}'], "data after the end trailer"),
    (lambda ls: ls[:2] + ['[1, 2]'] + ls[2:], "expected a JSON object"),
    (lambda ls: ls[:2] + ['{"seq": 2, "op": "format_disk"}'] + ls[3:], "unknown call"),
    (lambda ls: ls[:2] + ['{"seq": 2, "op": "read_msr", "cpu": 0}'] + ls[3:], "[args.index]: missing"),
    (lambda ls: ls[:2] + ['{"seq": 2, "op": "read_msr", "cpu": 0, "args": {"index": "0x3a"}}'] + ls[3:],
     "[result]: missing"),
    (lambda ls: ls[:2] + ['{"seq": 2, "op": "read_msr", "cpu": 0, "args": {"index": "0x3a"}, "result": "zz"}']
     + ls[3:], "expected a hex integer"),
])
def test_bad_files_are_one_line_errors(check_rec, capsys, mutate, expect):
    _rewrite(check_rec, mutate)
    assert expect in _one_line_error(check_rec, capsys)


def test_truncated_mid_line(check_rec, capsys):
    data = check_rec.read_bytes()
    check_rec.write_bytes(data[: len(data) // 2])
    err = _one_line_error(check_rec, capsys)
    assert "cut off" in err and "--partial" in err


def test_empty_binary_and_overlong(tmp_path, capsys):
    empty = tmp_path / "e.vmxrec.jsonl"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty file"):
        read_recording(empty)
    binary = tmp_path / "b.vmxrec.jsonl"
    binary.write_bytes(b'{"format":"vmxdbg-recording","version":1}\n\xff\xfe\x00garbage\n')
    with pytest.raises(InputError, match=r"b.vmxrec.jsonl:2: not UTF-8"):
        read_recording(binary)
    long = tmp_path / "l.vmxrec.jsonl"
    with open(long, "wb") as f:
        f.write(b'{"format":"vmxdbg-recording","version":1}\n{"seq": 1, "x": "')
        f.write(b"a" * (MAX_LINE_BYTES + 10))
    with pytest.raises(InputError, match=r"l.vmxrec.jsonl:2: line longer than"):
        read_recording(long, partial=True)
    other = tmp_path / "o.vmxrec.jsonl"
    other.write_text('{"format": "something-else"}\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"o.vmxrec.jsonl:1: not a vmxdbg recording"):
        read_recording(other)
    missing = tmp_path / "none.vmxrec.jsonl"
    with pytest.raises(InputError, match="none.vmxrec.jsonl"):
        read_recording(missing)


def test_unknown_keys_ignored(check_rec):
    def extra(ls):
        out = []
        for x in ls:
            d = json.loads(x)
            d["future_key"] = {"nested": [1, 2]}
            out.append(json.dumps(d))
        return out
    _rewrite(check_rec, extra)
    assert read_recording(check_rec).complete


def test_an_event_with_more_log_lines_than_a_recording_holds_keeps_both_ends():
    from vmxdbg.backends.base import StopEvent
    from vmxdbg.record.recording import MAX_LIST, encode_event
    lines = [f"line {i}" for i in range(3 * MAX_LIST)]
    log = encode_event(StopEvent(kind="stopped", log=lines))["log"]
    assert len(log) <= MAX_LIST and log[0] == "line 0" and log[-1] == lines[-1]
    assert f"[vmxdbg: {3 * MAX_LIST - len(log) + 1} log lines left out]" in log
