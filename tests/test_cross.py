"""Cross-processor rules on 1, 2 and 64 processors; each finding is reported on every processor involved."""
from __future__ import annotations

import copy

import pytest

from vmxdbg.report.render import cross_lines, render_text
from vmxdbg.rules.evaluate import check_snapshot
from vmxdbg.rules.examples import baseline_tree
from vmxdbg.state.snapshot import snapshot_from_json


def machine(n: int, baseline: str = "vmxon") -> dict:
    """n copies of the baseline's processor 0, each with its own 4 KiB VMXON region."""
    tree = baseline_tree(baseline)
    cpu0 = tree["processors"]["0"]
    tree["processors"] = {}
    for i in range(n):
        p = copy.deepcopy(cpu0)
        p["vmxon_pointer"] = hex(0x10000000 + i * 0x2000)
        tree["memory"][hex(0x10000000 + i * 0x2000)] = "0400000000000000"
        tree["processors"][str(i)] = p
    return tree


def findings(tree: dict, rule_id: str):
    rep = check_snapshot(snapshot_from_json(tree))
    return rep, {cpu: [f for v in vs for f in v.findings if f.id == rule_id] for cpu, vs in rep.processors.items()}


@pytest.mark.parametrize("n", [1, 2, 64])
def test_clean_machines_have_no_cross_findings(n):
    rep, _ = findings(machine(n), "XCPU001")
    assert not cross_lines(rep)
    assert not rep.any_failed()


@pytest.mark.parametrize("n", [2, 64])
def test_shared_vmxon_region_reported_on_both(n):
    tree = machine(n)
    tree["processors"][str(n - 1)]["vmxon_pointer"] = tree["processors"]["0"]["vmxon_pointer"]
    rep, found = findings(tree, "XCPU001")
    involved = {cpu for cpu, fs in found.items() if fs}
    assert involved == {0, n - 1}
    assert found[0][0].status == "advice" and f"processors 0 and {n - 1} share VMXON region" in found[0][0].message
    assert rep.verdict(0, "vmxon").outcome == "ok"  # the CPU does not check it
    assert not rep.any_failed()      # advice: shown, never a failed check (exit status 0)
    assert any("share VMXON region 0x10000000" in line for line in cross_lines(rep))


def test_overlapping_regions_use_region_size():
    """Regions of IA32_VMX_BASIC[44:32] = 0x1000 bytes starting 0x800 apart overlap without being equal."""
    tree = machine(2)
    for p in tree["processors"].values():
        p["msr"]["0x480"] = "0xda100000000004"        # region size 0x1000
    tree["processors"]["1"]["vmxon_pointer"] = "0x10000800"
    _, found = findings(tree, "XCPU001")
    assert found[0] and found[1]
    assert "overlapping VMXON regions in 0x10000000-0x100017ff" in found[1][0].message
    tree["processors"]["1"]["vmxon_pointer"] = "0x10001000"   # adjacent, not overlapping
    _, found = findings(tree, "XCPU001")
    assert not found[0] and not found[1]


def test_capability_difference_names_msr_and_processors():
    tree = machine(64)
    tree["processors"]["17"]["msr"]["0x489"] = "0x1727ff"
    rep, found = findings(tree, "XCPU005")
    assert len(found) == 64 and all(found.values())
    msg = found[3][0].message
    assert "MSR 0x489" in msg and "processor 17: 0x1727ff" in msg


def test_one_processor_never_differs():
    tree = machine(1)
    for rule_id in ("XCPU004", "XCPU005", "XCPU006"):
        _, found = findings(tree, rule_id)
        assert not found[0], rule_id


def test_summary_names_processors():
    tree = machine(4)
    tree["processors"]["3"]["vmxon_pointer"] = tree["processors"]["0"]["vmxon_pointer"]
    snap = snapshot_from_json(tree)
    text = render_text(check_snapshot(snap), snap)
    assert "across processors:" in text and "processors 0 and 3 share VMXON region 0x10000000" in text


def root_machine(n: int) -> dict:
    """n processors in VMX root operation, each with its own VMXON region and current VMCS."""
    tree = machine(n, "vmxroot")
    for i, p in tree["processors"].items():
        vmcs = hex(0x20000000 + int(i) * 0x2000)
        p["vmcs_pointer"] = vmcs
        p["operands"] = {"vmclear": vmcs, "vmptrld": vmcs}
        tree["memory"][vmcs] = "0400000000000000"
    return tree


def _last(tree: dict) -> dict:
    return tree["processors"][str(len(tree["processors"]) - 1)]


BREAK = {   # rule id -> (machine builder, how to break the last processor against processor 0)
    "XCPU001": (machine, lambda t: _last(t).update(vmxon_pointer=t["processors"]["0"]["vmxon_pointer"])),
    "XCPU002": (root_machine, lambda t: _last(t).update(vmcs_pointer=t["processors"]["0"]["vmcs_pointer"])),
    "XCPU003": (root_machine, lambda t: _last(t).update(vmcs_pointer=t["processors"]["0"]["vmxon_pointer"])),
    "XCPU004": (machine, lambda t: _last(t)["msr"].update({"0x3a": "0x0"})),
    "XCPU005": (machine, lambda t: _last(t)["msr"].update({"0x489": "0x1727ff"})),
    "XCPU006": (machine, lambda t: _last(t)["cpuid"].update({"0x1": ["0x906ea", "0x100800", "0x7ffafb9f",
                                                                      "0xbfebfbff"]})),
}


@pytest.mark.parametrize("rule_id", sorted(BREAK))
@pytest.mark.parametrize("n", [1, 2, 64])
def test_every_cross_rule_passes_clean_machines(rule_id, n):
    build, _ = BREAK[rule_id]
    _, found = findings(build(n), rule_id)
    assert not any(found.values()), (rule_id, n)


@pytest.mark.parametrize("rule_id", sorted(BREAK))
@pytest.mark.parametrize("n", [2, 64])
def test_every_cross_rule_fails_and_names_both_processors(rule_id, n):
    build, brk = BREAK[rule_id]
    tree = build(n)
    brk(tree)
    _, found = findings(tree, rule_id)
    assert found[0] and found[n - 1], (rule_id, n)          # reported on each processor it involves
    assert str(n - 1) in found[0][0].message
