"""Logs whose text came from real kd sessions (recordings/kdlogs, sources noted next to each)."""
from __future__ import annotations

from pathlib import Path

import pytest

from vmxdbg.inputs.kdlog import parse_file
from vmxdbg.inputs.sources import kind_of

KDLOGS = Path(__file__).resolve().parent.parent / "recordings" / "kdlogs"
LOGS = sorted(KDLOGS.glob("*.log"))


def test_there_are_real_logs():
    assert len(LOGS) >= 5


@pytest.mark.parametrize("path", LOGS, ids=lambda p: p.name)
def test_every_real_log_has_its_source_and_parses_cleanly(path):
    source = path.with_name(path.stem + ".source.md")
    assert source.exists(), f"{source.name} missing"
    assert "Source" in source.read_text(encoding="utf-8")
    assert kind_of(path) == "kd log"
    log = parse_file(path)
    assert log.warnings == []


def load(name: str):
    return parse_file(KDLOGS / name)


def test_seed_tutorial_fixed_bit_msrs():
    log = load("seed-vmx-fixed-msrs.log")
    p = log.snapshot.processors[0]
    assert p.msr == {0x486: 0x80000021, 0x487: 0xFFFFFFFF, 0x488: 0x2000, 0x489: 0x3727FF}
    assert p.registers == {}  # .formats of a typed number is not a register
    where = {k: v.rsplit(":", 1)[1] for k, v in p.provenance.items()}
    assert where == {"msr:0x486": "2", "msr:0x487": "10", "msr:0x488": "18", "msr:0x489": "26"}


def test_local_kd_vmx_capability_msrs():
    p = load("rayanfam-vmcsauditor-msrs.log").snapshot.processors[0]
    assert p.msr == {
        0x481: 0x7F00000016, 0x482: 0xFFF9FFFE0401E172, 0x48B: 0x1FFCFF00000000,
        0x483: 0x1FFFFFF00036DFF, 0x484: 0x3FFFF000011FF, 0x48C: 0xF0106334141,
        0x491: 0x1, 0x486: 0x80000021, 0x487: 0xFFFFFFFF, 0x488: 0x2000, 0x489: 0x3767FF}


def test_cxr_context_of_a_real_crash_is_not_live():
    log = load("cve-2021-28476-cxr.log")
    p = log.snapshot.processors[0]
    assert p.registers == {} and p.segments == {} and p.state == {}
    assert len(log.contexts) == 1
    ctx = log.contexts[0]
    assert (ctx.kind, ctx.line) == (".cxr", 14)
    assert ctx.registers["rip"] == 0xFFFFF80AD4A41A63 and ctx.registers["efl"] == 0x50246


def test_breakpoint_moves_the_prompt_to_another_processor():
    snap = load("xinali-hevd-cr4.log").snapshot
    assert sorted(snap.processors) == [0, 1]
    assert snap.processors[1].registers == {"cr4": 0x3506F8}
    assert snap.processors[1].provenance["reg:cr4"].endswith("xinali-hevd-cr4.log:10")
    assert snap.processors[0].registers == {}


def test_commands_vmxdbg_does_not_read_are_skipped():
    snap = load("simplevisor-issue5-gp.log").snapshot
    assert sorted(snap.processors) == [1]
    p = snap.processors[1]
    assert not (p.msr or p.registers or p.segments or p.state)
