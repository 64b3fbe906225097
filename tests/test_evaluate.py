"""How verdicts are made from findings: order, alternatives, unknowns."""
from __future__ import annotations

from vmxdbg.rules.evaluate import check_snapshot
from vmxdbg.rules.examples import apply_patch, baseline_tree
from vmxdbg.state.snapshot import snapshot_from_json


def vmxon_verdict(patch):
    snap = snapshot_from_json(apply_patch(baseline_tree("vmxon"), patch))
    return check_snapshot(snap).verdict(0, "vmxon")


def test_ud_comes_before_gp_and_stops():
    v = vmxon_verdict({"registers/cr4": "0x3706f8", "msr/0x3a": "0x0", "state/cpl": 3})
    assert v.outcome == "#UD" and v.possible == ["#UD"]
    ids = {f.id for f in v.findings}
    assert "VMXON002" in ids and "VMXON007" not in ids  # CPL is never checked after #UD


def test_missing_input_that_cannot_change_the_outcome_leaves_it_known():
    v = vmxon_verdict({"state/a20m": None, "msr/0x3a": "0x1"})  # A20M unknown, feature control fails: #GP either way
    assert v.outcome == "#GP"
    assert {f.id: f.status for f in v.findings}["VMXON009"] == "unknown"


def test_missing_input_that_could_change_the_outcome_makes_it_unknown():
    v = vmxon_verdict({"state/a20m": None, "/memory/0x1a2b3000": "0500000000000000"})
    assert v.outcome == "unknown" and v.possible == ["#GP", "VMfailInvalid"]
    unknown = [f for f in v.findings if f.status == "unknown"][0]
    assert unknown.inputs == ["state:a20m"] and "state:a20m" in unknown.message


def test_nothing_known_is_unknown_not_ok():
    snap = snapshot_from_json({"format": "vmxdbg-snapshot", "version": 1, "processors": {"0": {}}})
    v = check_snapshot(snap).verdict(0, "vmxon")
    assert v.outcome == "unknown" and "ok" in v.possible
    assert all(f.status == "unknown" for f in v.findings)


def test_vmfail_15_depends_on_current_vmcs():
    v = vmxon_verdict({"state/vmx": "root", "vmcs_pointer": "0x1a2b4000"})
    assert v.outcome == "VMfailValid:15"
    v = vmxon_verdict({"state/vmx": "root"})
    assert v.outcome == "VMfailInvalid"


def test_vmfail_with_unknown_current_vmcs_lists_both():
    v = vmxon_verdict({"state/vmx": "root", "vmcs_pointer": None})
    assert v.outcome == "unknown"
    assert "VMfailInvalid" in v.possible and "VMfailValid:15" in v.possible and "unknown" not in v.possible


def test_text_names_missing_inputs_and_how_to_read_them():
    from vmxdbg.report.render import render_text
    snap = snapshot_from_json(apply_patch(baseline_tree("vmxon"), {"registers/cr4": None, "msr/0x3a": None}))
    text = render_text(check_snapshot(snap), snap)
    assert "cpu 0 vmxon: unknown" in text
    assert "reg:cr4 (r cr4)" in text and "msr:0x3a (rdmsr 0x3a)" in text
    assert "[UNKNOWN]" not in text          # listed one by one only with -v
    assert "[UNKNOWN]" in render_text(check_snapshot(snap), snap, verbose=True)


def test_host_cr3_too_wide_fails_without_asking_about_lam():
    """Bits 60:39 set as well as 62:61: a failure whatever CPUID.(7,1) says about LAM."""
    snap = snapshot_from_json(apply_patch(baseline_tree("vmentry"), {"vmcs/0x6c02": "0xfff0000000001000"}))
    v = check_snapshot(snap).verdict(0, "vmlaunch")
    assert v.outcome == "VMfailValid:8"
    assert "HOST006" in {f.id for f in v.findings if f.status == "fail"}


def test_cr4_vmxe_clear_means_the_processor_is_about_to_run_vmxon():
    """Without state.vmx, CR4.VMXE = 0 proves VMX is off: only VMXON's verdict decides the exit status."""
    from vmxdbg.report.render import summary_rows
    from vmxdbg.rules.evaluate import next_instructions
    tree = apply_patch(baseline_tree("vmxon"), {"state/vmx": None, "vmxon_pointer": None, "cpuid/0x1": None,
                                                  "registers/cr4": "0x3506f8"})
    snap = snapshot_from_json(tree)
    assert next_instructions(snap.processors[0]) == ["vmxon"]
    rep = check_snapshot(snap)
    assert summary_rows(rep, snap)[0]["vmx"] == "yes"      # IA32_VMX_BASIC was read: VMX is there
    assert rep.verdict(0, "vmxon").outcome == "#UD"
    del tree["processors"]["0"]["msr"]["0x480"]
    snap = snapshot_from_json(tree)
    assert summary_rows(check_snapshot(snap), snap)[0]["vmx"] == "yes"   # IA32_VMX_CR0_FIXED0 etc. prove it too
    for k in [k for k in tree["processors"]["0"]["msr"] if 0x480 <= int(k, 16) <= 0x493]:
        del tree["processors"]["0"]["msr"][k]
    snap = snapshot_from_json(tree)
    assert summary_rows(check_snapshot(snap), snap)[0]["vmx"] == "?"
