"""Live Bochs sessions ended by a signal (issue 18): `vmxdbg trace --bochs --record R` interrupted
by SIGINT or SIGTERM, or killed by SIGKILL, at a real point of a real run, leaves a recording that
`check` and `trace --replay` read up to the interrupt; the run ends with one line and 130 / 143."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
INJECTION = ROOT / "tests" / "fixtures" / "signal_in_injection.py"

pytestmark = [
    pytest.mark.bochs,
    pytest.mark.skipif(not shutil.which("bochs-bin"), reason="bochs-bin not installed (apt-get install bochs bochsbios vgabios)"),
    pytest.mark.skipif(not shutil.which("nasm"), reason="nasm not installed (apt-get install nasm)"),
]
ENV = dict(os.environ, PYTHONPATH=str(ROOT))


def vmxdbg(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vmxdbg", *argv], capture_output=True, text=True, env=ENV,
                          timeout=120)


def trace_until(rec: Path, steps: int, sig: int, cpus: int = 2) -> subprocess.CompletedProcess:
    """Start a recorded trace; once the recording holds `steps` single steps (0: as soon as
    the file exists), send `sig`; the finished process."""
    proc = subprocess.Popen([sys.executable, "-m", "vmxdbg", "trace", "--bochs", "--cpus", str(cpus),
                             "--record", str(rec)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV)
    partial = Path(str(rec) + ".partial")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if partial.read_text().count('"op":"step"') >= steps:
                break
        except OSError:
            pass
        time.sleep(0.01)
    assert proc.poll() is None, "the trace ended before the signal could be sent"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def table_rows(out: str) -> list:
    return [line.split() for line in out.splitlines() if line[:1].isdigit() or line.startswith("? ")]


@pytest.mark.parametrize("sig, status, name", [(signal.SIGINT, 130, "SIGINT"), (signal.SIGTERM, 143, "SIGTERM")])
def test_a_signal_mid_trace_leaves_a_recording_that_reads_to_the_interrupt(tmp_path, sig, status, name):
    rec = tmp_path / "r.vmxrec.jsonl"
    done = trace_until(rec, 4, sig)          # 4 steps recorded: at least 3 stops complete
    assert done.returncode == status, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(f"vmxdbg: interrupted by {name} during the trace")
    assert f"the recording {rec} holds the" in done.stderr
    assert "Bochs was quit cleanly" in done.stderr or "closing Bochs: " in done.stderr   # said either way
    assert rec.exists() and not Path(str(rec) + ".partial").exists()
    outs = []
    for argv in (["check", str(rec)], ["trace", "--replay", str(rec)]):
        got = vmxdbg(*argv)
        rows = table_rows(got.stdout)
        reached = [r for r in rows if "INTERRUPTED" not in r]
        assert len(reached) >= 3 and "INTERRUPTED" in rows[-1], got.stdout + got.stderr
        assert "the session was interrupted" in got.stdout
        assert got.returncode == (0 if all(r[-1] == "ok" for r in reached) else 1), got.stdout
        outs.append(got.stdout)
    assert outs[0] == outs[1]


def test_sigkill_mid_trace_leaves_a_partial_that_reads_to_its_last_complete_stop(tmp_path):
    rec = tmp_path / "r.vmxrec.jsonl"
    done = trace_until(rec, 5, signal.SIGKILL)
    assert done.returncode == -signal.SIGKILL
    partial = Path(str(rec) + ".partial")
    assert partial.exists() and not rec.exists()
    for argv in (["check", str(partial), "--partial"], ["trace", "--replay", str(partial), "--partial"]):
        got = vmxdbg(*argv)
        rows = table_rows(got.stdout)
        assert len([r for r in rows if "INTERRUPTED" not in r]) >= 4, got.stdout + got.stderr
        assert "did not finish" in got.stdout and got.returncode in (0, 1)


def test_sigkill_before_the_first_stop_leaves_a_file_that_says_nothing_was_reached(tmp_path):
    rec = tmp_path / "r.vmxrec.jsonl"
    done = trace_until(rec, 0, signal.SIGKILL)
    assert done.returncode == -signal.SIGKILL
    got = vmxdbg("check", str(rec) + ".partial", "--partial")
    assert got.returncode == 1 and "no stop was reached" in got.stdout, got.stdout + got.stderr


@pytest.mark.parametrize("name, status", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_during_an_injection_undoes_it_and_says_so_in_one_line(tmp_path, name, status):
    got = subprocess.run([sys.executable, str(INJECTION), name, "3", "--", "trace", "--bochs", "--cpus", "2"],
                         capture_output=True, text=True, env=ENV, timeout=120)
    assert got.returncode == status, got.stderr
    line = got.stderr
    assert line.count("\n") == 1 and line.startswith(f"vmxdbg: interrupted by {name} during "), line
    assert "by an injected " in line and "was undone: its " in line and "read back as before" in line
    assert "<bochs:" not in line                         # no debugger transcript


# ----------------------------------------------------------------- every planned stop gets a row

SITES = ("vmxon", "vmclear", "vmptrld", "vmlaunch")


def test_breakpoints_with_a_knob_give_rows_for_every_core_and_exit_by_the_table():
    got = vmxdbg("trace", "--bochs", "--cpus", "2", "--breakpoints", "--knob", "1:bit31")
    rows = table_rows(got.stdout)
    assert {r[0] for r in rows} == {"0", "1"}, got.stdout
    vmxon1 = [r for r in rows if r[:2] == ["1", "vmxon"]]
    assert len(vmxon1) == 1, got.stdout                 # cpu 1's VMXON failure is its own row
    assert "VMfailInvalid" in vmxon1[0] or "fail" in " ".join(vmxon1[0]), got.stdout
    assert got.returncode == 1                           # the table holds a failure (and maybe a miss)
    for cpu in ("0", "1"):                               # every planned stop: a row
        assert [r[1] for r in rows if r[0] == cpu] == list(SITES), got.stdout


def test_four_cores_with_breakpoints_every_planned_stop_has_a_row():
    got = vmxdbg("trace", "--bochs", "--cpus", "4", "--breakpoints")
    rows = table_rows(got.stdout)
    for cpu in map(str, range(4)):
        assert [r[1] for r in rows if r[0] == cpu] == list(SITES), got.stdout
    missed = [r for r in rows if "MISSED" in r]
    assert got.returncode == (1 if missed else 0)
    assert all("debugger miss" in " ".join(r) for r in missed)


def test_a_normal_guest_shutdown_is_not_reported_as_bochs_not_answering(tmp_path):
    rec = tmp_path / "r.vmxrec.jsonl"
    got = vmxdbg("trace", "--bochs", "--cpus", "1", "--record", str(rec))
    assert got.returncode == 0, got.stdout + got.stderr
    text = rec.read_text()
    assert '"kind":"exited"' in text and "the guest ran until Bochs exited (status" in text
    assert "stopped answering" not in text


# ----------------------------------------------------------------- progress

def test_progress_is_shown_on_a_terminal_and_nowhere_else():
    from terminal import run_on_a_terminal
    status, out, text = run_on_a_terminal(["trace", "--bochs", "--cpus", "2"], env=ENV)
    assert status == 0 and b"vmxon" in out
    for label in ("booting Bochs", "cpu 0: stops", "cpu 1: stops", "4/  4"):
        assert label in text, text[-600:]
    quiet = vmxdbg("trace", "--bochs", "--cpus", "2")       # stderr a pipe: nothing
    assert quiet.returncode == 0 and quiet.stderr == ""
