"""What the running state proves (issue 15): each derivation decides a verdict a debugger
without CPUID would otherwise leave unknown, shows the inference, and never overrides a value
that was read or assumed (a disagreement is reported)."""
from __future__ import annotations

import json
import subprocess
import sys

from vmxdbg.report.model import report_from_json, report_to_json
from vmxdbg.report.render import render_text
from vmxdbg.rules.engine import Context, get_rule
from vmxdbg.rules.evaluate import check_snapshot, run_rule
from vmxdbg.rules.examples import apply_patch, baseline_tree
from vmxdbg.state.assume import apply_assumptions
from vmxdbg.state.evidence import evidence_of
from vmxdbg.state.snapshot import load_snapshot, snapshot_from_json

AMD = ["0xd", "0x68747541", "0x444d4163", "0x69746e65"]          # "AuthenticAMD"
INTEL = ["0x16", "0x756e6547", "0x6c65746e", "0x49656e69"]       # "GenuineIntel"


def snap(baseline="vmentry", patch=None, cpuid=False):
    """A baseline snapshot with every CPUID leaf removed (what a kernel debugger sees), then `patch`."""
    tree = baseline_tree(baseline)
    if not cpuid:
        for p in tree["processors"].values():
            p.pop("cpuid", None)
    return snapshot_from_json(apply_patch(tree, patch or {}))


def rule_result(snapshot, rule_id, cpu=0):
    findings, applied = run_rule(get_rule(rule_id), Context(snapshot, cpu))
    return findings, applied


def statuses(findings):
    return {f.status for f in findings}


# ------------------------------------------------------------- derivations

def test_a_vmx_capability_msr_read_proves_vmx():
    s = snap("vmxon", {"registers/cr4": None})
    s.processors[0].msr = {0x486: s.processors[0].msr[0x486]}      # only IA32_VMX_CR0_FIXED0 was read
    findings, applied = rule_result(s, "VMXON001")
    assert applied and findings == []
    ctx = Context(s, 0)
    assert ctx.vmx_supported()
    assert "CPUID.01H:ECX.VMX[5] = 1, inferred from IA32_VMX_CR0_FIXED0 (MSR 0x486)" in ctx.inferences[0].text()


def test_without_any_evidence_vmx_support_stays_unknown():
    s = snap("vmxon", {"registers/cr4": None})
    s.processors[0].msr = {}
    findings, _ = rule_result(s, "VMXON001")
    assert statuses(findings) == {"unknown"} and findings[0].missing == "cpuid:0x1"


def test_an_amd_vendor_means_no_vmx_and_vmxon_ud_with_the_evidence():
    s = snap("vmxon", {"cpuid/0x0": AMD, "registers/cr4": "0x3706f8"})
    s.processors[0].msr = {0x3A: 5}
    v = check_snapshot(s).verdict(0, "vmxon")
    assert v.outcome == "#UD"
    f = [f for f in v.findings if f.id == "VMXON001"][0]
    assert f.status == "fail" and "AuthenticAMD" in f.message
    assert any("AuthenticAMD" in t for t in f.inferred)


def test_an_intel_vendor_proves_nothing_about_vmx():
    s = snap("vmxon", {"cpuid/0x0": INTEL, "registers/cr4": None})
    s.processors[0].msr = {}
    assert statuses(rule_result(s, "VMXON001")[0]) == {"unknown"}


def test_efer_lma_proves_intel64_for_host050():
    findings, applied = rule_result(snap(), "HOST050")
    assert not applied and findings == []   # the rule's guard (no Intel 64) is off: proved by EFER.LMA
    s = snap(patch={"registers/efer": None, "msr/0xc0000080": None})
    assert statuses(rule_result(s, "HOST050")[0]) == {"unknown"}


def test_efer_nxe_and_sce_prove_the_features_guest117_asks_for():
    s = snap(patch={"vmcs/0x2806": "0xd01"})
    findings, applied = rule_result(s, "GUEST117")
    assert applied and findings == []
    ctx = Context(s, 0)
    assert ctx.cpuid_bit(0x80000001, 0, 3, 20) == 1 and ctx.cpuid_bit(0x80000001, 0, 3, 11) == 1
    texts = [i.text() for i in ctx.inferences]
    assert "CPUID.80000001H:EDX.NX[20] = 1, inferred from IA32_EFER.NXE = 1 (IA32_EFER = 0xd01)" in texts
    bare = snap(patch={"vmcs/0x2806": "0xd01", "registers/efer": "0x500", "msr/0xc0000080": "0x500"})
    assert statuses(rule_result(bare, "GUEST117")[0]) == {"unknown"}   # NXE/SCE clear: nothing proves them


LAM_FIXED1 = hex(0x3727ff | 1 << 28)   # IA32_VMX_CR4_FIXED1 allowing CR4.LAM_SUP


def test_a_cr4_bit_set_proves_its_feature_lam_for_host006():
    patch = {"vmcs/0x6c02": hex((1 << 61) | 0x1ad000), "msr/0x489": LAM_FIXED1}
    assert statuses(rule_result(snap(patch=patch), "HOST006")[0]) == {"unknown"}
    findings, applied = rule_result(snap(patch={**patch, "registers/cr4": hex(0x3726f8 | 1 << 28)}), "HOST006")
    assert applied and findings == []


def test_cr4_fixed1_without_lam_decides_host006():
    findings, _ = rule_result(snap(patch={"vmcs/0x6c02": hex((1 << 61) | 0x1ad000)}), "HOST006")
    assert statuses(findings) == {"fail"}
    assert any("IA32_VMX_CR4_FIXED1 = 0x3727ff (CR4.LAM_SUP, bit 28, may not be 1)" in t for t in findings[0].inferred)


def test_subleaf_above_the_maximum_is_zero_for_host006():
    patch = {"vmcs/0x6c02": hex((1 << 61) | 0x1ad000), "msr/0x489": LAM_FIXED1,
             "cpuid/0x7": ["0x0", "0x29c67af", "0x40000000", "0xbc000400"]}
    findings, _ = rule_result(snap(patch=patch), "HOST006")
    assert statuses(findings) == {"fail"}
    assert any("CPUID.(EAX=07H,ECX=0):EAX = 0" in t for t in findings[0].inferred)
    patch["cpuid/0x7"] = ["0x1", "0x29c67af", "0x40000000", "0xbc000400"]   # sub-leaf 1 exists: unread
    assert statuses(rule_result(snap(patch=patch), "HOST006")[0]) == {"unknown"}


CP_NO_ERROR_CODE = {"vmcs/0x4016": hex(0x80000315)}   # valid, hardware exception, vector 21 (#CP), no error code


def test_cr4_fixed1_without_cet_decides_the_cp_error_code():
    cet_allowed = {**CP_NO_ERROR_CODE, "msr/0x489": hex(0x3727ff | 1 << 23)}
    assert statuses(rule_result(snap(patch=cet_allowed), "CTL096")[0]) == {"unknown"}
    s = snap(patch={**CP_NO_ERROR_CODE, "msr/0x489": "0x3727ff"})     # bit 23 (CET) may not be 1
    findings, applied = rule_result(s, "CTL096")
    assert applied and findings == []
    ctx = Context(s, 0)
    assert ctx.cpuid_bit(7, 0, 2, 7) == 0
    assert "IA32_VMX_CR4_FIXED1 = 0x3727ff" in ctx.inferences[0].text()


def test_a_field_of_a_control_the_processor_lacks_does_not_exist():
    exit_ctls = hex(0x2beffb | 1 << 29)                  # "load PKRS": IA32_VMX_EXIT_CTLS allows only 0
    s = snap(patch={"vmcs/0x400c": exit_ctls})
    v = check_snapshot(s).verdict(0, "vmlaunch")
    assert v.outcome == "VMfailValid:7" and v.possible == ["VMfailValid:7"]
    assert any("HOST_IA32_PKRS (0x2c06) does not exist" in t for t in v.inferred)
    allowed = snap(patch={"vmcs/0x400c": exit_ctls, "msr/0x483": "0x3fffffff00036dff",
                          "msr/0x48f": "0x3fffffff00036dfb"})
    v2 = check_snapshot(allowed).verdict(0, "vmlaunch")
    assert v2.outcome == "unknown"                       # the control is allowed: the field is needed


def test_maxphyaddr_lower_bound_from_an_address_in_use():
    wide = {"vmxon_pointer": hex(1 << 40), "/memory/0x10000000000": "0400000000000000", "state/vmx": "off",
            "registers/cr4": "0x3726f8"}
    findings, _ = rule_result(snap("vmxon", wide), "VMXON018")
    assert statuses(findings) == {"unknown"}
    s = snap("vmxon", {**wide, "registers/cr3": hex(1 << 41 | 0x1000)})
    findings, applied = rule_result(s, "VMXON018")
    assert applied and findings == []
    ctx = Context(s, 0)
    assert ctx.physical_address_fits(1 << 40)
    assert ctx.inferences[0].text().startswith("MAXPHYADDR >= 42, inferred from CR3 = 0x20000001000")


def test_cr4_vmxe_clear_proves_vmx_off_and_a_hypervisor_overrides_it():
    s = snap("vmxon", {"state/vmx": None, "registers/cr4": "0x3706f8"})
    assert evidence_of(s.processors[0]).states["vmx"].value == "off"
    hv = snap("vmxon", {"state/vmx": None, "cpuid/0x1": ["0x906ea", "0x100800", hex(0x7ffafbbf | 1 << 31),
                                                              "0xbfebfbff"]}, cpuid=True)
    v = check_snapshot(hv).verdict(0, "vmxon")
    assert v.outcome == "vmexit:27"
    ev = check_snapshot(hv).evidence[0]
    assert ev["hypervisor"]["evidence"].startswith("CPUID.01H:ECX[31] = 1")
    assert "runs under a hypervisor (CPUID.01H:ECX[31] = 1" in render_text(check_snapshot(hv), hv)


def test_a_synthetic_msr_read_proves_a_hypervisor():
    s = snap("vmxon", {"state/vmx": None, "msr/0x40000000": "0x1040a00003839"})
    assert check_snapshot(s).verdict(0, "vmxon").outcome == "vmexit:27"
    assert "MSR 0x40000000" in evidence_of(s.processors[0]).states["hypervisor"].evidence


def test_vmx_operation_rules_out_a20m():
    ev = evidence_of(snap("vmxroot").processors[0])
    assert ev.states["a20m"].value is False and "Vol.3C 24.8" in ev.states["a20m"].sdm
    assert "a20m" not in evidence_of(snap("vmxon", {"state/vmx": "off"}).processors[0]).states


# ------------------------------------------- unknown only when it matters

def test_tpr_threshold_zero_holds_whatever_the_virtual_apic_page_holds():
    tpr = {"vmcs/0x4002": hex(0x8401e1f2 | 1 << 21), "vmcs/0x401c": "0x0", "vmcs/0x2012": "0x1a2b9000"}
    findings, applied = rule_result(snap(patch=tpr), "CTL031")
    assert applied and findings == []
    tpr["vmcs/0x401c"] = "0x5"
    findings, _ = rule_result(snap(patch=tpr), "CTL031")
    assert statuses(findings) == {"unknown"} and findings[0].missing == "mem:0x1a2b9080"


def test_a_missing_flag_that_cannot_change_the_result_is_shown_as_regardless():
    s = snap("vmxon", {"state/smx": None, "registers/cr4": "0x3766f8", "msr/0x3a": "0x7"})
    findings, applied = rule_result(s, "VMXON015")    # enabled inside and outside SMX: smx does not matter
    ctx = Context(s, 0)
    run_rule(get_rule("VMXON015"), ctx)
    assert findings == [] and any("state:smx" in r for r in ctx.regardless)


# --------------------------------------------------------- shown, not hidden

def test_goal_a_64_bit_processor_with_a_complete_vmcs_gets_definite_entry_verdicts_without_cpuid():
    for name in ("vmentry", "vmentry-unrestricted", "vmentry-v86", "vmentry-realmode"):
        rep = check_snapshot(snap(name))
        for insn in ("vmlaunch", "vmresume"):
            assert rep.verdict(0, insn).outcome != "unknown", (name, insn)


def test_inferences_in_json_are_optional_keys_and_read_back():
    rep = check_snapshot(snap())
    data = report_to_json(rep)
    v = [v for v in data["processors"]["0"] if v["instruction"] == "vmlaunch"][0]
    assert any("inferred from IA32_EFER.LMA = 1" in t for t in v["inferred"])
    assert data["evidence"]["0"]["inferences"]
    back = report_from_json(json.loads(json.dumps(data)))
    assert back.verdict(0, "vmlaunch").outcome == rep.verdict(0, "vmlaunch").outcome


def test_only_assume_can_help_is_said_once_per_processor():
    s = snap("vmxon", {"state/vmx": None, "state/a20m": None, "registers/cr4": "0x3726f8"})
    text = render_text(check_snapshot(s), s)
    assert text.count("only --assume can decide") == 1
    assert "--assume vmx=..." in text and "state:vmx (" not in text


# --------------------------------------------------------- contradictions

def test_cpuid_without_nx_and_efer_nxe_is_a_contradiction_naming_both():
    s = snap(patch={"cpuid/0x80000001": ["0x0", "0x0", "0x121", "0x2c000800"]}, cpuid=True)
    rep = check_snapshot(s)
    msgs = [c["message"] for c in rep.evidence[0]["contradictions"]]
    assert any("CPUID.80000001H:EDX.NX[20] = 0 (cpuid:0x80000001, read)" in m and "IA32_EFER.NXE = 1" in m
               for m in msgs)
    assert rep.any_failed()
    assert "inputs disagree" in render_text(rep, s)


def test_an_assumption_against_the_evidence_is_a_contradiction():
    s = snap("vmxon", {"state/vmx": None, "registers/cr4": "0x3706f8"})
    apply_assumptions(s, {"vmx": "root"})
    msgs = [c["message"] for c in check_snapshot(s).evidence[0]["contradictions"]]
    assert any("vmx = root (state:vmx, assumed (--assume vmx=root))" in m and "CR4.VMXE = 0" in m for m in msgs)


def test_cli_contradiction_is_a_line_not_a_traceback(tmp_path):
    tree = apply_patch(baseline_tree("vmxon"), {"cpuid/0x0": AMD})
    path = tmp_path / "amd.vmxsnap.json"
    path.write_text(json.dumps(tree))
    got = subprocess.run([sys.executable, "-m", "vmxdbg", "check", str(path)], capture_output=True, text=True)
    assert got.returncode == 1 and "Traceback" not in got.stderr
    assert "inputs disagree" in got.stdout and "AuthenticAMD" in got.stdout


def test_snapshot_command_marks_inferred_values_apart_from_read_ones(tmp_path):
    tree = baseline_tree("vmentry")
    tree["processors"]["0"].pop("cpuid")
    src, out = tmp_path / "in.vmxsnap.json", tmp_path / "out.vmxsnap.json"
    src.write_text(json.dumps(tree))
    got = subprocess.run([sys.executable, "-m", "vmxdbg", "snapshot", str(src), "-o", str(out)],
                         capture_output=True, text=True)
    assert got.returncode == 0 and "inferred" in got.stderr
    data = json.loads(out.read_text())
    p = data["processors"]["0"]
    assert "cpuid" not in p
    assert any(i["conclusion"] == "CPUID.80000001H:EDX.LM[29] = 1" for i in p["inferred"])
    assert load_snapshot(out).processors[0].cpuid == {}


def test_the_kernels_record_of_a_hypervisor_can_be_given_as_state():
    s = snap("vmxon", {"state/vmx": None})
    apply_assumptions(s, {"hypervisor": True})
    rep = check_snapshot(s)
    assert rep.verdict(0, "vmxon").outcome == "vmexit:27"
    assert "assumed (--assume hypervisor=true)" in rep.evidence[0]["hypervisor"]["evidence"]


def test_text_lists_each_inference_once_per_processor_with_its_sdm_section():
    s = snap()
    text = render_text(check_snapshot(s), s)
    line = "cpu 0: CPUID.80000001H:EDX.LM[29] = 1, inferred from IA32_EFER.LMA = 1 (IA32_EFER = 0xd01) (SDM: Vol.4"
    assert text.count(line) == 1


def test_a_log_showing_only_rdmsr_482_shows_vmx_support():
    from vmxdbg.report.render import summary_rows
    s = snapshot_from_json({"format": "vmxdbg-snapshot", "version": 1,
                            "processors": {"0": {"msr": {"0x482": "0xfff9fffe0401e172"}}}})
    assert summary_rows(check_snapshot(s), s)[0]["vmx"] == "yes"
    bare = snapshot_from_json({"format": "vmxdbg-snapshot", "version": 1, "processors": {"0": {"msr": {"0x3a": "0x5"}}}})
    assert summary_rows(check_snapshot(bare), bare)[0]["vmx"] == "?"


def test_linear_width_from_la57_read_or_proved():
    import pytest
    from vmxdbg.rules.engine import Missing
    la57_allowed = hex(0x3727ff | 1 << 12)
    ctx = Context(snap(patch={"registers/cr4": hex(0x3726f8 | 1 << 12), "msr/0x489": la57_allowed}), 0)
    assert ctx.linear_width() == 57
    assert any(i.text().startswith("the linear-address width is 57 bits") for i in ctx.inferences)
    assert Context(snap(), 0).linear_width() == 48          # IA32_VMX_CR4_FIXED1: CR4.LA57 may not be 1
    with pytest.raises(Missing) as exc:
        Context(snap(patch={"msr/0x489": la57_allowed}), 0).linear_width()
    assert exc.value.choices == (48, 57)


def test_mtrr_physmask_bounds_maxphyaddr():
    s = snap("vmxon", {"msr/0x201": "0xffffff800800"})     # IA32_MTRR_PHYSMASK0: bits 47:12 set
    ev = evidence_of(s.processors[0])
    assert ev.maxphyaddr_min.value == 48 and "IA32_MTRR_PHYSMASK0" in ev.maxphyaddr_min.evidence


def test_the_evidence_table_is_parsed_once_for_its_four_sections(monkeypatch):
    """structs/evidence.yaml holds four top-level sections; the file is read and parsed once
    for all of them (it was parsed once per section, at the first stop of a trace)."""
    from vmxdbg.decode import loader
    from vmxdbg.state import evidence
    parsed = []
    real = loader.load_yaml
    monkeypatch.setattr(loader, "load_yaml", lambda text, label, *a, **k: parsed.append(label) or real(text, label, *a, **k))
    evidence.tables.cache_clear()
    try:
        tables = evidence.tables()
    finally:
        evidence.tables.cache_clear()
    assert tables.flags and tables.cr4 and tables.efer and tables.fields
    assert parsed.count("structs/evidence.yaml") == 1, parsed
