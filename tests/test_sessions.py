"""Sessions that end badly still tell the truth (issue 18): interrupted and killed traces
read back up to where they ended, and the exit status follows the stops reached."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fake_live import CODE, PROGRAM, FakeLive
from vmxdbg import cli
from vmxdbg.hypervisors.minihv.demo import booting_recording
from vmxdbg.record.recording import read_recording
from vmxdbg.trace.session import replay_trace, run_trace


class InterruptedAt(FakeLive):
    """The fake target, with Ctrl-C arriving during the n-th go() or the n-th step()."""

    def __init__(self, *, go: int = 0, step: int = 0, cores: int = 2) -> None:
        super().__init__(cores=cores)
        self.go_left, self.step_left = go, step

    def go(self, timeout: float = 30.0):  # type: ignore[no-untyped-def]
        self.go_left -= 1
        if self.go_left == 0:
            raise KeyboardInterrupt
        return super().go(timeout)

    def step(self, cpu: int):  # type: ignore[no-untyped-def]
        self.step_left -= 1
        if self.step_left == 0:
            raise KeyboardInterrupt
        return super().step(cpu)


def run(capsys, *argv: str):  # type: ignore[no-untyped-def]
    rc = cli.main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def rows(text: str) -> list:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("cpu  instruction"))
    out = []
    for line in lines[start + 1:]:
        if not line.strip() or line.startswith("* "):
            break
        out.append(line.split())
    return out


def interrupted(tmp_path: Path, **at: int) -> Path:
    path = tmp_path / "t.vmxrec.jsonl"
    with pytest.raises(KeyboardInterrupt):
        run_trace(InterruptedAt(**at), {CODE: PROGRAM}, record=path)
    assert path.exists() and not Path(str(path) + ".partial").exists()
    return path


def test_interrupted_while_the_target_ran_shows_the_stops_before(tmp_path, capsys):
    path = interrupted(tmp_path, go=2)           # after cpu 0's VMXON stop, waiting for the next
    for argv in (["check", str(path)], ["trace", "--replay", str(path)]):
        rc, out, err = run(capsys, *argv)
        assert err == ""
        table = rows(out)
        assert [r[:2] for r in table] == [["0", "vmxon"], ["?", "-"]]
        assert "INTERRUPTED" in table[1] and "KeyboardInterrupt" in out
        assert "while the target ran, after 1 stop(s)" in out
        assert rc == 0, out                       # the one stop reached was ok


def test_interrupted_inside_a_stop_names_it_and_fails_when_a_stop_failed(tmp_path, capsys):
    path = interrupted(tmp_path, step=4)      # stepping the 4th stop: cpu 1's VMLAUNCH
    rc, out, err = run(capsys, "check", str(path))
    table = rows(out)
    assert table[-1][:3] == ["1", "vmlaunch", hex(CODE + 6)] and "INTERRUPTED" in table[-1]
    assert "at this stop" in out
    assert any("VMfailInvalid" in r for r in table[:-1])   # a VMLAUNCH reached before it failed
    assert rc == 1
    rc, out, err = run(capsys, "trace", "--replay", str(path), "--format", "json")
    rep = json.loads(out)
    assert rep["interrupted"]["cpu"] == 1 and rep["interrupted"]["instruction"] == "vmlaunch"
    assert rc == 1


def test_a_killed_recorder_reads_to_its_last_complete_stop_wherever_it_was_killed(tmp_path, capsys):
    full = tmp_path / "full.vmxrec.jsonl"
    run_trace(FakeLive(cores=2), {CODE: PROGRAM}, record=full)
    lines = full.read_bytes().splitlines(keepends=True)[:-1]     # no trailer: the recorder was killed
    complete = len(rows(run(capsys, "check", str(full))[1]))
    seen = []
    for n in range(1, len(lines) + 1):
        part = tmp_path / f"k{n}.vmxrec.jsonl.partial"
        part.write_bytes(b"".join(lines[:n]) + b'{"seq": 99')       # and a cut-off last line
        argvs = [["check", str(part), "--partial"]] + [["trace", "--replay", str(part), "--partial"]] * (n % 8 == 0)
        for argv in argvs:
            rc, out, err = run(capsys, *argv)
            assert rc in (0, 1), (n, err)
            table = rows(out)
            reached = [r for r in table if "INTERRUPTED" not in r]
            if n < len(lines):
                assert "INTERRUPTED" in table[-1] and "did not finish" in out
            else:                                  # every call is there; only the trailer is missing
                assert "INTERRUPTED" not in out and "did not finish" in err
            assert len(reached) <= complete
        seen.append(len(reached))
    assert seen == sorted(seen) and seen[-1] == complete and seen[0] == 0 and len(set(seen)) == complete + 1


def test_killed_before_the_target_booted_the_file_says_nothing_was_reached(tmp_path, capsys):
    path = tmp_path / "r.vmxrec.jsonl"
    booting_recording(path, ["trace", "--bochs"], "minihv on Bochs")    # then SIGKILL: nothing more
    part = Path(str(path) + ".partial")
    assert part.exists() and not path.exists()
    for argv in (["check", str(part), "--partial"], ["trace", "--replay", str(part), "--partial"]):
        rc, out, err = run(capsys, *argv)
        assert rc == 1 and "no stop was reached" in out, (out, err)
    assert replay_trace(read_recording(part, partial=True))[0].actual == "interrupted"


# ----------------------------------------------------------------- no option silently ignored

ROOT = Path(__file__).resolve().parent.parent
BOCHS_TRACE = str(ROOT / "recordings/bochs/healthy-2cpu.vmxrec.jsonl")      # a real Bochs run (recordings/bochs/README.md)


def test_check_of_a_trace_recording_honours_cpu_and_refuses_what_it_cannot_do(capsys):
    rc, out, err = run(capsys, "check", BOCHS_TRACE, "--cpu", "1")
    assert rc == 0 and {r[0] for r in rows(out)} == {"1"}
    for extra, why in ((["--cpu", "7"], "no stop on that processor"), (["--at", "5"], "--at LINE is for kd logs"),
                       (["--format", "dml"], "--format dml"), (["--assume", "smx=1"], "--assume")):
        rc, out, err = run(capsys, "check", BOCHS_TRACE, *extra)
        assert rc == 2 and out == "" and err.count("\n") == 1 and why in err, (extra, err)


@pytest.mark.parametrize("extra", [["--record", "x.vmxrec.jsonl"], ["--knob", "1:bit31"], ["--cpus", "4"]])
def test_trace_replay_refuses_live_only_options(capsys, extra):
    rc, out, err = run(capsys, "trace", "--replay", BOCHS_TRACE, *extra)
    assert rc == 2 and out == "" and f"{extra[0]} does not go with --replay" in err


@pytest.mark.parametrize("path, kind", [(ROOT / "recordings/snapshots/skylake-cr4-vmxe-clear.vmxsnap.json", "a snapshot"),
                                        (ROOT / "recordings/kdlogs/cve-2021-28476-cxr.log", "a kd log")])
def test_trace_replay_of_another_kind_of_file_says_what_it_is(capsys, path, kind):
    rc, out, err = run(capsys, "trace", "--replay", str(path))
    assert rc == 2 and f"not a trace recording but {kind}" in err and "`vmxdbg check`" in err
    assert "JSON" not in err and "Extra data" not in err


# ----------------------------------------------------------------- assumptions

def _snapshot_without(tmp_path: Path, key: str) -> Path:
    data = json.loads((ROOT / "recordings/snapshots/skylake-cr4-vmxe-clear.vmxsnap.json").read_text())
    for p in data["processors"].values():
        p["state"].pop(key, None)
        p["registers"]["cr4"] = hex(int(str(p["registers"]["cr4"]), 16) | 0x2000)
    out = tmp_path / "s.vmxsnap.json"
    out.write_text(json.dumps(data))
    return out


def test_an_assumption_that_conflicts_with_known_state_is_reported(tmp_path, capsys):
    snap = _snapshot_without(tmp_path, "a20m")          # vmx=off is known
    rc, out, err = run(capsys, "check", str(snap), "--assume", "vmx=root", "--assume", "a20m=0")
    assert "cpu 0: --assume vmx=root conflicts with vmx=off" in err and "the known value is used" in err


@pytest.mark.parametrize("fmt", ["text", "dml", "json"])
def test_every_verdict_resting_on_an_assumption_is_marked_in_every_format(tmp_path, capsys, fmt):
    snap = _snapshot_without(tmp_path, "a20m")
    rc, out, err = run(capsys, "check", str(snap), "--assume", "a20m=0", "--format", fmt)
    assert rc == 0
    if fmt == "json":
        assert json.loads(out)["processors"]["0"][0]["assumed"] == ["state:a20m"]
    else:
        assert "vmxon: ok  [rests on an assumption: state:a20m (--assume a20m=false)]" in out
    rc, out, err = run(capsys, "check", str(snap), "--format", fmt)       # nothing assumed: no mark
    assert "rests on an assumption" not in out and "\"assumed\"" not in out


def test_a_trace_prediction_resting_on_an_assumption_is_marked(capsys):
    rc, out, err = run(capsys, "trace", "--replay", BOCHS_TRACE)
    vmxon = [r for r in rows(out) if r[1] == "vmxon"]
    assert vmxon and all(r[4] == "ok*" for r in vmxon)
    assert "* the prediction rests on assumed values, not read from the target: state:a20m" in out


# ----------------------------------------------------------------- a snapshot is one moment

def test_snapshot_of_a_trace_is_each_processor_at_its_last_complete_stop(tmp_path, capsys):
    out_path = tmp_path / "s.vmxsnap.json"
    rc, out, err = run(capsys, "snapshot", BOCHS_TRACE, "-o", str(out_path))
    assert rc == 0 and "cpu 0 at stop 16, cpu 1 at stop 7" in err
    procs = json.loads(out_path.read_text())["processors"]
    for cpu in ("0", "1"):      # both read at their VMLAUNCH stop: RIP there, in VMX root operation
        assert procs[cpu]["registers"]["rip"] == "0xb00b" and procs[cpu]["state"]["vmx"] == "root"
    rc, out, err = run(capsys, "check", str(out_path), "--format", "json")
    assert "vmexit" not in out


def test_snapshot_stop_n_chooses_the_moment(tmp_path, capsys):
    out_path = tmp_path / "s.vmxsnap.json"
    rc, out, err = run(capsys, "snapshot", BOCHS_TRACE, "-o", str(out_path), "--stop", "9")
    assert rc == 0 and "cpu 0 at stop 9, cpu 1 at stop 7" in err
    procs = json.loads(out_path.read_text())["processors"]
    assert procs["0"]["registers"]["rip"] == "0xae94" and procs["0"]["state"]["vmx"] == "off"   # at its VMXON
    rc, out, err = run(capsys, "snapshot", BOCHS_TRACE, "-o", str(out_path), "--stop", "99", "--force")
    assert rc == 2 and "the recording has stops 1 to 19" in err


# ----------------------------------------------------------------- housekeeping

@pytest.mark.parametrize("version", ["4", "3.12", "2.6", "x.y", "3.9.1"])
def test_windbg_setup_refuses_a_python_pykd_has_no_wheel_for(capsys, version):
    rc, out, err = run(capsys, "windbg-setup", "--python", version)
    assert rc == 2 and out == "" and "--python" in err and "3.5 to 3.9" in err


def test_windbg_setup_takes_a_python_pykd_has(capsys):
    rc, out, err = run(capsys, "windbg-setup", "--python", "3.9")
    assert rc == 0 and "!py -3.9 -g -m vmxdbg.bang" in out


def test_snapshot_output_is_not_replaced_without_force(tmp_path, capsys):
    out_path = tmp_path / "s.vmxsnap.json"
    out_path.write_text("keep me")
    rc, out, err = run(capsys, "snapshot", BOCHS_TRACE, "-o", str(out_path))
    assert rc == 2 and "exists; pass --force to replace it" in err and out_path.read_text() == "keep me"
    rc, out, err = run(capsys, "snapshot", BOCHS_TRACE, "-o", str(out_path), "--force")
    assert rc == 0 and '"vmxdbg-snapshot"' in out_path.read_text()


def test_trace_record_is_not_replaced_without_force(tmp_path, capsys):
    rec = tmp_path / "r.vmxrec.jsonl"
    rec.write_text("keep me")
    rc, out, err = run(capsys, "trace", "--bochs", "--record", str(rec))     # refused before Bochs starts
    assert rc == 2 and "exists; pass --force to replace it" in err and rec.read_text() == "keep me"


def test_an_interrupted_check_recording_reads_as_far_as_it_went(tmp_path, capsys):
    from recfakes import POINTERS, two_cpu_snapshot
    from vmxdbg.backends.snapshot_backend import SnapshotBackend
    from vmxdbg.record.recorded import record_check

    class CtrlC(SnapshotBackend):
        reads = 0

        def read_msr(self, cpu: int, index: int) -> int:
            CtrlC.reads += 1
            if CtrlC.reads == 40:
                raise KeyboardInterrupt
            return super().read_msr(cpu, index)
    path = tmp_path / "c.vmxrec.jsonl"
    with pytest.raises(KeyboardInterrupt):
        record_check(CtrlC(two_cpu_snapshot()), path, vmxon_pointers=POINTERS)
    rc, out, err = run(capsys, "check", str(path))
    assert rc == 1 and "the session was interrupted (KeyboardInterrupt" in err and "unknown" in out


# ----------------------------------------------------------------- progress for long reads

def _on_a_terminal(argv: list) -> tuple:
    import os
    from terminal import run_on_a_terminal
    return run_on_a_terminal(argv, env=dict(os.environ, PYTHONPATH=str(ROOT)))


def test_reading_a_long_kd_log_shows_progress_on_a_terminal_only(tmp_path):
    import subprocess
    import sys
    real = (ROOT / "recordings/kdlogs/cve-2021-28476-cxr.log").read_bytes()     # a real kd session
    big = tmp_path / "big.log"
    big.write_bytes(real * (17 * (1 << 20) // len(real) + 1))                   # past the progress threshold (4 MiB)
    status, out, term = _on_a_terminal(["check", str(big)])
    assert status in (0, 1) and b"cpu" in out
    assert "vmxdbg: reading big.log" in term and "MiB of the log read" in term and "100.0%" in term
    piped = subprocess.run([sys.executable, "-m", "vmxdbg", "check", str(big)], capture_output=True, text=True,
                           timeout=120)
    assert "MiB of the log read" not in piped.stderr and "\x1b" not in piped.stderr


def test_a_signal_while_a_recording_line_is_written_waits_for_the_line_and_its_count(tmp_path):
    """The trailer's event count must match the lines: a SIGINT between writing a line and
    counting it is held until both are done (it once left 'trailer says 487, file has 488')."""
    import signal
    from vmxdbg.common import interrupt
    from vmxdbg.record.recording import RecordingWriter, new_header, read_recording
    writer = RecordingWriter(tmp_path / "s.vmxrec.jsonl", new_header({"kind": "test"}, []))
    replaced = interrupt.install()
    original = writer._line

    def line_then_signal(obj):
        original(obj)
        if obj.get("seq") == 2:
            signal.raise_signal(signal.SIGINT)     # lands after the line, before it is counted
    writer._line = line_then_signal
    try:
        writer.write({"op": "processors", "result": [0]})
        with pytest.raises(KeyboardInterrupt):
            writer.write({"op": "processors", "result": [0]})
        assert writer.events == 2
        writer.close()
    finally:
        interrupt.restore(replaced)
        interrupt.reset()
    assert len(read_recording(tmp_path / "s.vmxrec.jsonl").records) == 2
