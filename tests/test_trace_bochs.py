"""`vmxdbg trace --bochs` for real: every core stepped, predictions equal what Bochs did."""
from __future__ import annotations

import shutil

import pytest

pytestmark = [pytest.mark.bochs,
              pytest.mark.skipif(not (shutil.which("bochs-bin") and shutil.which("nasm")),
                                 reason="needs Debian's bochs and nasm (scripts/setup.sh installs them as root)")]


def test_four_cores_one_broken_every_prediction_right():
    from vmxdbg.hypervisors.minihv.demo import bochs_trace
    results = bochs_trace(cpus=4, knobs=["2:vmxe_clear"], timeout=30)
    by_cpu = {}
    for r in results:
        by_cpu.setdefault(r.cpu, []).append(r)
    assert sorted(by_cpu) == [0, 1, 2, 3]
    for cpu in (0, 1, 3):
        assert [r.instruction for r in by_cpu[cpu]] == ["vmxon", "vmclear", "vmptrld", "vmlaunch"]
        assert all(r.actual == "ok" and r.verdict.outcome == "ok" and r.match for r in by_cpu[cpu])
    (broken,) = by_cpu[2]
    assert (broken.instruction, broken.actual, broken.verdict.outcome, broken.match) == ("vmxon", "#UD", "#UD", True)
    assert "VMXON002" in {f.id for f in broken.verdict.findings if f.status == "fail"}


def test_code_breakpoints_work_and_a_missed_stop_is_reported_as_such():
    """Without magic breakpoints Bochs may run past a code breakpoint: never a guest result."""
    from vmxdbg.hypervisors.minihv.demo import bochs_trace
    results = bochs_trace(cpus=2, knobs=["1:wrong_revision"], timeout=30, magic=False)
    assert not [r for r in results if r.match is False], "a prediction disagreed with Bochs"
    cpu1 = [r for r in results if r.cpu == 1]
    # cpu 1's VMXON fails; its later planned stops are rows too, not reached after that failure
    assert [(r.instruction, r.actual, r.match) for r in cpu1] == [("vmxon", "VMfailInvalid", True)] + [
        (i, "not reached", None) for i in ("vmclear", "vmptrld", "vmlaunch")]
    for r in results:
        if r.verdict is None and r.actual == "not reached":
            assert r.cpu == 1 and "vmxon failed (VMfailInvalid) before it" in r.note
        elif r.verdict is None:
            assert r.actual == "missed stop" and "debugger miss" in r.note
        else:
            assert r.actual in r.verdict.possible
