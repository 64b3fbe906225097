"""The KVM recordings (recordings/kvm/, real runs of scripts/record-kvm.sh) replay with no Bochs and
no kernel: every stop predicted right, each knob's fault where it was injected, and docs/kvm.md's
list of the VM-entry rules KVM's VMCS exercises beyond minihv is what the recordings say."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from vmxdbg.record.recording import read_recording
from vmxdbg.trace.session import replay_trace

ROOT = Path(__file__).resolve().parent.parent
KVM = ROOT / "recordings" / "kvm"
RECS = sorted(KVM.glob("*.vmxrec.jsonl"))
#: recording -> (processor, instruction, what it did) at the stop the knob broke
FAULTS = {
    "vmxe-clear-cpu1": (1, "vmxon", "#UD"),
    "wrong-revision-cpu1": (1, "vmxon", "VMfailInvalid"),
    "pin-reserved-cpu1": (1, "vmlaunch", "VMfailValid:7"),
    "rflags-bit1-cpu1": (1, "vmlaunch", "entry-fail:33:0"),
    "fs-base-noncanonical-cpu0": (0, "vmlaunch", "entry-fail:33:0"),
}


def _name(p: Path) -> str:
    return p.name[:-len(".vmxrec.jsonl")]


def test_the_recordings_are_there_and_small():
    names = {_name(p) for p in RECS}
    assert "healthy-2cpu" in names and names & set(FAULTS), names
    assert sum(p.stat().st_size for p in KVM.iterdir()) < 4_000_000


@pytest.mark.parametrize("rec", RECS, ids=_name)
def test_every_stop_is_predicted_right_on_every_processor(rec):
    results = replay_trace(read_recording(rec))
    assert {r.cpu for r in results} == {0, 1}
    assert all(r.match for r in results), [(r.cpu, r.instruction, r.actual) for r in results if not r.match]
    name = _name(rec)
    if name.startswith("healthy-2cpu"):
        for cpu in (0, 1):
            done = [r.instruction for r in results if r.cpu == cpu]
            assert {"vmxon", "vmptrld", "vmlaunch", "vmresume"} <= set(done), done
        assert all(r.actual == "ok" for r in results)
    if name == "healthy-2cpu-approach":     # entries reached by stepping the jump before them: definite
        entries = [r for r in results if r.instruction in ("vmlaunch", "vmresume")]
        definite = [r for r in entries if r.verdict.outcome == "ok"]
        assert {r.cpu for r in definite} == {0, 1} and len(definite) >= len(entries) - 1
        for r in definite:
            assert "VMfailValid:26" not in r.verdict.possible
    if name in FAULTS:
        cpu, instruction, actual = FAULTS[name]
        broken = next(r for r in results if r.cpu == cpu and r.instruction == instruction)
        assert broken.actual == actual and broken.match and actual in broken.verdict.possible
        assert any(f.status == "fail" for f in broken.verdict.findings)


@pytest.mark.parametrize("rec", RECS, ids=_name)
def test_trace_replay_on_the_command_line_gives_the_table_and_its_exit_status(rec):
    out = subprocess.run([sys.executable, "-m", "vmxdbg", "trace", "--replay", str(rec)], capture_output=True,
                         text=True, cwd=ROOT)
    name = _name(rec)
    assert out.returncode == (1 if name in FAULTS else 0), out.stderr     # a fault injected: not all ok
    assert "MISMATCH" not in out.stdout and out.stderr == ""
    if name in FAULTS:
        cpu, instruction, actual = FAULTS[name]
        assert any(line.split()[:2] == [str(cpu), instruction] and actual in line.split()
                   for line in out.stdout.splitlines()), out.stdout
    if name == "rflags-bit1-cpu1":
        assert "GUEST404" in out.stdout
    if name == "fs-base-noncanonical-cpu0":
        assert "GUEST211" in out.stdout and "FS.BASE non canonical" in out.stdout   # Bochs' own log line


def test_the_docs_list_the_rules_kvm_exercises_that_minihv_does_not():
    from vmxdbg.trace.coverage import only_in
    want = only_in(RECS, sorted((ROOT / "recordings" / "bochs").glob("*.vmxrec.jsonl")))
    text = (ROOT / "docs" / "kvm.md").read_text()
    section = text.split("## What KVM's VMCS exercised", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\| ([A-Z]+\d+) \|", section, re.M)
    assert listed == sorted(want), (sorted(set(want) - set(listed)), sorted(set(listed) - set(want)))
