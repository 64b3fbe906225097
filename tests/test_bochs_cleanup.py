"""Every way a live Bochs session can end removes our breakpoints and leaves no Bochs behind.

Each test runs tests/fixtures/bochs_driver.py in its own process and ends it
for real: normally, by an error inside the session, by SIGINT, by SIGTERM,
or by killing bochs-bin.  The driver records the backend's close_report,
which holds Bochs' own `blist` taken just before quitting, and records the
session: every way of ending closes the recording (its trailer names the
exception) or leaves a readable .partial, and what was recorded replays.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import pytest

ROOT = Path(__file__).resolve().parent.parent
DRIVER = ROOT / "tests" / "fixtures" / "bochs_driver.py"

pytestmark = [
    pytest.mark.bochs,
    pytest.mark.skipif(not shutil.which("bochs-bin"), reason="bochs-bin not installed (apt-get install bochs bochsbios vgabios)"),
    pytest.mark.skipif(not shutil.which("nasm"), reason="nasm not installed (apt-get install nasm)"),
]


def start(tmp_path: Path, mode: str):  # type: ignore[no-untyped-def]
    status = tmp_path / "status.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, str(DRIVER), mode, str(status)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return proc, status


def read(status: Path) -> dict:
    try:
        return json.loads(status.read_text())
    except (OSError, ValueError):
        return {}


def wait_for(status: Path, key: str, proc: subprocess.Popen, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = read(status)
        if key in data:
            return data
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    out, err = proc.communicate()
    pytest.fail(f"driver never reported {key!r}; stderr: {err.decode()[-800:]}")


def wait_running(pid: int, timeout: float = 30) -> None:
    """Until bochs-bin `pid` has used 0.1 s of processor time more than now: the guest runs (at
    its prompt Bochs waits for input and uses none). A fixed sleep was too short on a loaded
    machine."""
    def ticks() -> int:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])        # utime, stime (proc(5): fields 14, 15)
    start, deadline = ticks(), time.monotonic() + timeout
    while ticks() - start < os.sysconf("SC_CLK_TCK") // 10:
        if time.monotonic() > deadline:
            pytest.fail(f"bochs-bin {pid} did not start running the guest within {timeout} s")
        time.sleep(0.02)


def finish(proc: subprocess.Popen, timeout: float = 60) -> int:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail("the driver did not end")
    return proc.returncode


def gone(pid: int) -> bool:
    """No process `pid`, or only its zombie (it is not ours to reap)."""
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return "\nState:\tZ" in state


def check_clean(data: dict, bochs_died: bool = False) -> None:
    report = data["close_report"]
    assert sorted(data["blist_before"]) == sorted(data["breakpoints"]) and len(data["breakpoints"]) == 2
    if bochs_died:
        assert "target_gone" in report, report
    else:
        assert report["breakpoints_removed"] == sorted(data["breakpoints"]), report
        assert report["blist_after"] == [], report
        assert report["errors"] == [], report
    assert gone(data["pid"]), f"bochs-bin {data['pid']} is still there"


def check_recording(tmp_path: Path, ended_by: Optional[str] = None) -> None:
    """The session's recording is complete (its trailer names what ended it), or a readable .partial."""
    from vmxdbg.record.replay import ReplayBackend
    from vmxdbg.record.recording import read_recording
    path = tmp_path / "session.vmxrec.jsonl"
    partial = tmp_path / "session.vmxrec.jsonl.partial"
    assert path.exists() != partial.exists(), sorted(p.name for p in tmp_path.iterdir())
    rec = read_recording(path if path.exists() else partial, partial=partial.exists())
    ops = [r.op for r in rec.records]
    assert ops[:3] == ["go", "set_breakpoint", "set_breakpoint"], ops
    if path.exists():
        assert rec.complete and rec.trailer.get("events") == len(rec.records)
        if ended_by is None:
            assert "exception" not in rec.trailer, rec.trailer
        else:
            assert rec.trailer.get("exception", "").startswith(ended_by), rec.trailer
    replay = ReplayBackend(rec, strict=True)       # what was recorded replays
    assert replay.go(60).kind == rec.records[0].event.kind


def test_normal_end(tmp_path: Path) -> None:
    proc, status = start(tmp_path, "normal")
    assert finish(proc) == 0
    check_clean(read(status))
    check_recording(tmp_path)


def test_error_inside_the_session(tmp_path: Path) -> None:
    proc, status = start(tmp_path, "error")
    assert finish(proc) == 1
    data = read(status)
    assert data["outcome"].startswith("NotAvailable: bochs physical 0xffffffff0000")
    check_clean(data)
    check_recording(tmp_path, ended_by="NotAvailable")


@pytest.mark.parametrize("signum, outcome", [(signal.SIGINT, "KeyboardInterrupt"),
                                             (signal.SIGTERM, "Terminated")])   # a SystemExit(143)
def test_signal_while_the_guest_runs(tmp_path: Path, signum: int, outcome: str) -> None:
    proc, status = start(tmp_path, "wait")
    data = wait_for(status, "state", proc)
    wait_running(data["pid"])            # go() has sent `c` and waits
    proc.send_signal(signum)
    finish(proc)
    data = read(status)
    assert data["outcome"].startswith(outcome), data["outcome"]
    assert data["close_report"].get("resynced") is True, data["close_report"]   # SIGINT brought the prompt back
    check_clean(data)
    check_recording(tmp_path, ended_by=outcome)


def test_bochs_dies_while_the_guest_runs(tmp_path: Path) -> None:
    proc, status = start(tmp_path, "wait")
    data = wait_for(status, "state", proc)
    wait_running(data["pid"])
    os.kill(data["pid"], signal.SIGKILL)
    assert finish(proc) == 0
    data = read(status)
    assert data["outcome"] == "go returned exited", data["outcome"]
    check_clean(data, bochs_died=True)
    check_recording(tmp_path)
