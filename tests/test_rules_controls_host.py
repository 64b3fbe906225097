"""VM-entry checks on the VMX controls (error 7) and the host-state area (error 8).

Each rule's own failing/passing examples run in test_rule_examples.py; these
tests cover what examples cannot: both errors at once, unknown inputs,
skipped guards, activation of secondary/tertiary controls, the table loader,
and the allowed-settings arithmetic against a direct reading of Vol.3D A.3.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import pytest
from hypothesis import given, settings, strategies as st

from vmxdbg.common.errors import DefinitionError
from vmxdbg.rules import entry_tables
from vmxdbg.rules.engine import Context, all_rules, get_rule
from vmxdbg.rules.evaluate import check_snapshot, run_rule
from vmxdbg.rules.examples import apply_patch, baseline_tree
from vmxdbg.state.snapshot import snapshot_from_json

BASE = baseline_tree("vmentry")


def snap(patch: Optional[Dict[str, Any]] = None):  # type: ignore[no-untyped-def]
    return snapshot_from_json(apply_patch(BASE, patch or {}), source="test")


def findings(rule_id: str, patch: Optional[Dict[str, Any]] = None):  # type: ignore[no-untyped-def]
    """(findings, applied) of one rule on the patched baseline."""
    return run_rule(get_rule(rule_id), Context(snap(patch), 0))


def test_baseline_launches_cleanly():
    v = check_snapshot(snap()).verdict(0, "vmlaunch")
    assert v.outcome == "ok", [(f.id, f.status, f.message) for f in v.findings]
    assert [f.id for f in v.findings if not f.advisory] == []


def test_control_and_host_failures_give_both_errors_and_list_every_finding():
    broken = {"vmcs/0x4000": "0x14",      # pin-based bit 1 cleared: CTL001
              "vmcs/0x400a": "0x5",       # CR3-target count 5: CTL010
              "vmcs/0x0c00": "0x2b",      # host ES selector RPL 3: HOST030
              "vmcs/0x6c04": "0x3706f8"}  # host CR4 without VMXE: HOST003
    v = check_snapshot(snap(broken)).verdict(0, "vmlaunch")
    assert sorted(v.possible) == ["VMfailValid:7", "VMfailValid:8"]
    assert v.outcome in ("VMfailValid:7", "VMfailValid:8")
    failed = {f.id for f in v.findings if f.status == "fail"}
    assert {"CTL001", "CTL010", "HOST030", "HOST003"} <= failed
    by_id = {f.id: f for f in v.findings}
    assert by_id["CTL001"].outcome == "VMfailValid:7" and by_id["HOST003"].outcome == "VMfailValid:8"


def test_only_host_failures_give_error_8():
    v = check_snapshot(snap({"vmcs/0x0c02": "0x0"})).verdict(0, "vmlaunch")
    assert v.possible == ["VMfailValid:8"] and v.outcome == "VMfailValid:8"
    assert [f.id for f in v.findings if f.status == "fail"] == ["HOST037"]


def test_missing_field_is_unknown_and_named():
    got, applied = findings("CTL003", {"vmcs/0x401e": None})
    assert applied and [f.status for f in got] == ["unknown"]
    assert "vmcs:0x401e" in got[0].message and "SECONDARY_VM_EXEC_CONTROL" in got[0].message
    assert "vmcs:0x401e" in got[0].inputs


def test_missing_capability_msr_is_unknown():
    got, _ = findings("CTL001", {"msr/0x48d": None})
    assert [f.status for f in got] == ["unknown"] and "msr:0x48d" in got[0].message


def test_true_msrs_are_used_only_when_basic_bit55_is_set():
    # bit 3 of the primary controls is allowed-0 in 0x482 but not required in 0x48e
    patch = {"vmcs/0x4002": "0x94006172", "msr/0x482": "0xfff9fffe0401e17a"}
    assert findings("CTL002", patch)[0] == []                       # BASIC[55] = 1: TRUE MSR governs
    got, _ = findings("CTL002", {**patch, "msr/0x480": "0x5a040000000004"})
    assert [f.status for f in got] == ["fail"] and "IA32_VMX_PROCBASED_CTLS (MSR 0x482)" in got[0].message
    assert 'bit 3 "use TSC offsetting"' in got[0].message and 'bit 15 "CR3 load exiting"' in got[0].message


@pytest.mark.parametrize("rule_id,patch", [
    ("CTL004", {}),                                      # tertiary not activated (and 0x492 absent)
    ("CTL006", {}),                                      # secondary exit controls not activated
    ("CTL008", {}),                                      # VM functions not enabled
    ("CTL011", {"vmcs/0x2000": None}),                   # I/O bitmaps off: their addresses may be absent
    ("CTL014", {"vmcs/0x2012": None}),                   # no TPR shadow
    ("CTL031", {}),
    ("CTL072", {"vmcs/0x401e": "0x101028", "vmcs/0x201a": None}),   # EPT off, no EPTP
    ("CTL090", {}),                                      # nothing injected
    ("CTL080", {"vmcs/0x2006": None}),                   # count 0: address unused
    ("HOST016", {"vmcs/0x2c04": None}),                  # PERF_GLOBAL_CTRL not loaded
    ("HOST014", {}),                                     # CET state not loaded
    ("HOST040", {}),                                     # LMA = 1
    ("HOST050", {}),                                     # Intel 64 present
])
def test_guard_off_skips(rule_id, patch):
    got, applied = findings(rule_id, patch)
    assert not applied and got == []


def test_secondary_controls_count_only_when_activated():
    stale = {"vmcs/0x4002": "0x14006172",  # primary bit 31 (activate secondary controls) = 0
             "vmcs/0x401e": "0x80",        # unrestricted guest without EPT, and not allowed-1 either
             "vmcs/0x201a": None}
    assert not findings("CTL003", stale)[1]
    assert not findings("CTL051", stale)[1]
    assert not findings("CTL072", stale)[1]
    active = dict(stale, **{"vmcs/0x4002": "0x94006172"})
    assert [f.status for f in findings("CTL051", active)[0]] == ["fail"]


def test_tertiary_field_is_not_read_unless_activated():
    # the tertiary field holds junk but primary bit 17 is 0: no finding, no unknown
    got, applied = findings("CTL058", {"vmcs/0x2034": "0xffffffffffffffff", "vmcs/0x401e": "0x101028"})
    assert not applied and got == []


def test_dependency_message_names_both_controls_and_the_field():
    got, _ = findings("CTL047", entry_tables.controls_patch(("secondary.virtual_interrupt_delivery", 1),
                                                           ("pin_based.external_interrupt_exiting", 0)))
    assert len(got) == 1
    m = got[0].message
    assert '"virtual-interrupt delivery"' in m or '"virtual interrupt delivery"' in m
    assert "PIN_BASED_VM_EXEC_CONTROL (0x4000)" in m and got[0].fix


def test_msr_area_end_beyond_width():
    got, _ = findings("CTL082", {"vmcs/0x4014": "0x100", "vmcs/0x200a": "0x7ffffff800"})
    assert [f.status for f in got] == ["fail"] and "last byte" in got[0].message


def test_host_canonical_uses_the_linear_width():
    addr = {"vmcs/0x6c06": "0x00ff000000000000"}       # canonical only with 57-bit addresses
    assert [f.status for f in findings("HOST009", addr)[0]] == ["fail"]
    la57 = dict(addr, **{"cpuid/0x80000008": ["0x3927", "0x0", "0x0", "0x0"]})
    assert findings("HOST009", la57)[0] == []


def test_every_rule_of_this_issue_is_tier_controls_host():
    from vmxdbg.rules.engine import Tier
    mine = [r for r in all_rules() if r.id.startswith(("CTL", "HOST"))]
    assert len(mine) > 120
    for r in mine:
        assert r.tier == Tier.CONTROLS_HOST and r.instructions == ("vmlaunch", "vmresume")
        assert r.outcome == ("VMfailValid:7" if r.id.startswith("CTL") else "VMfailValid:8")
        assert "325462" in r.sdm


def test_malformed_table_row_is_a_definition_error(tmp_path, monkeypatch):
    import yaml
    raw = yaml.safe_load(entry_tables._path().read_text(encoding="utf-8"))
    raw["control_dependencies"][0]["then"] = "primary.no_such_control"
    bad = tmp_path / entry_tables.FILE
    bad.write_text(yaml.safe_dump(raw), encoding="utf-8")
    monkeypatch.setattr(entry_tables, "_path", lambda: bad)
    entry_tables.table.cache_clear()
    try:
        with pytest.raises(DefinitionError, match=r"control_dependencies\[0\].*CTL040"):
            entry_tables.table()
    finally:
        entry_tables.table.cache_clear()


# ---------------------------------------------------------------- property

def _expected_bad_bits(value: int, cap: int, width: int) -> set:
    """Vol.3D A.3.1 read literally: for a 32-bit field, control X fails if it is 0 while MSR bit X is 1,
    or 1 while MSR bit 32+X is 0; for a 64-bit field, if it is 1 while MSR bit X is 0."""
    out = set()
    for x in range(width):
        v = value >> x & 1
        if width == 32:
            if (v == 0 and cap >> x & 1) or (v == 1 and not cap >> (32 + x) & 1):
                out.add(x)
        elif v == 1 and not cap >> x & 1:
            out.add(x)
    return out


def _named_bits(messages) -> set:  # type: ignore[no-untyped-def]
    import re
    return {int(b) for m in messages for b in re.findall(r"bit (\d+) [\"(]", m)}


@settings(max_examples=150, deadline=None)
@given(value=st.integers(0, 2**32 - 1), cap=st.integers(0, 2**64 - 1), true_cap=st.integers(0, 2**64 - 1),
       use_true=st.booleans())
def test_pin_based_allowed_settings_match_the_sdm(value, cap, true_cap, use_true):
    basic = 0xDA040000000004 if use_true else 0x5A040000000004
    s = snap({"vmcs/0x4000": hex(value), "msr/0x481": hex(cap), "msr/0x48d": hex(true_cap), "msr/0x480": hex(basic)})
    got, _ = run_rule(get_rule("CTL001"), Context(s, 0))
    expected = _expected_bad_bits(value, true_cap if use_true else cap, 32)
    assert all(f.status == "fail" for f in got)
    assert bool(got) == bool(expected)
    assert _named_bits(f.message for f in got) == expected


@settings(max_examples=100, deadline=None)
@given(value=st.integers(0, 2**64 - 1), cap=st.integers(0, 2**64 - 1))
def test_tertiary_allowed_settings_match_the_sdm(value, cap):
    s = snap({"vmcs/0x4002": "0x94026172", "vmcs/0x2034": hex(value), "msr/0x492": hex(cap)})
    got, _ = run_rule(get_rule("CTL004"), Context(s, 0))
    expected = _expected_bad_bits(value, cap, 64)
    assert bool(got) == bool(expected)
    assert _named_bits(f.message for f in got) == expected


# ------------------------------------------------------------- coverage doc

def test_coverage_doc_matches_the_rules():
    """Every CTL/HOST rule appears in the coverage table, and each catalog row it lists names rules that
    really carry that catalog id."""
    import re
    from pathlib import Path
    doc = (Path(__file__).resolve().parent.parent / "docs" / "coverage-entry-controls-host.md").read_text(encoding="utf-8")
    ids = {r.id: r for r in all_rules() if r.id.startswith(("CTL", "HOST"))}
    mentioned = set(re.findall(r"\b(?:CTL|HOST)\d{3}\b", doc))
    for prefix, lo, hi in re.findall(r"\b(HOST|CTL)(\d{3})-(?:HOST|CTL)(\d{3})\b", doc):
        mentioned |= {f"{prefix}{i:03d}" for i in range(int(lo), int(hi) + 1)}
    assert set(ids) <= mentioned, sorted(set(ids) - mentioned)
    rows = re.findall(r"^\| `((?:CTRL|HOST)\.[A-Z0-9_.]+)` \|[^|]*\| ([^|]*) \|", doc, re.M)
    assert len(rows) >= 140
    for cat, rules in rows:
        listed = re.findall(r"(?:CTL|HOST)\d{3}", rules)
        assert listed, cat
        for rid in listed:
            assert cat in ids[rid].catalog, (cat, rid)


def test_host_perf_global_ctrl_bits_no_processor_has_fail_without_cpuid_leaf_0a():
    # found by the Bochs differential test: the debugger reads no CPUID leaf 0AH, and bit 63
    # was left unknown although IA32_PERF_GLOBAL_CTRL has no bit above 48 on any processor
    patch = {"vmcs/0x400c": hex(int(BASE["processors"]["0"]["vmcs"]["0x400c"], 16) | 1 << 12),
             "cpuid/0xa": None}
    got, applied = findings("HOST016", {**patch, "vmcs/0x2c04": hex(1 << 63)})
    assert applied and [(f.status, f.certain) for f in got] == [("fail", True)] and "63" in got[0].message
    got, _ = findings("HOST016", {**patch, "vmcs/0x2c04": "0x1"})
    assert [f.status for f in got] == ["unknown"] and "cpuid:0xa" in got[0].message
