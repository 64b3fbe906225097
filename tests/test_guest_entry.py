"""Guest-state checks (SDM Vol.3C 27.3, exit reason 33): order, alternatives, relaxations, unknowns."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmxdbg.common.errors import DefinitionError
from vmxdbg.rules.engine import Context, all_rules, get_rule
from vmxdbg.rules.evaluate import check_snapshot, run_rule
from vmxdbg.rules.examples import apply_patch, baseline_tree
from vmxdbg.state.snapshot import snapshot_from_json


def segments():
    """The segment-rule module, imported after the registry loaded every rule module in its usual order
    (importing it first would change the registration order docs/rules.md follows)."""
    all_rules()
    from vmxdbg.rules.guest import segments as guest_segments
    return guest_segments

BREAK_GUEST = {"vmcs/0x6804": "0x3706f8"}          # guest CR4 without VMXE (GUEST104)
BREAK_CONTROL = {"vmcs/0x4012": hex(0xD3FF | 1 << 30)}  # an entry control this CPU does not allow
BREAK_HOST = {"vmcs/0x6c04": "0x3706f8"}           # host CR4 without VMXE


def snap(patch, baseline="vmentry"):
    return snapshot_from_json(apply_patch(baseline_tree(baseline), patch))


def launch(patch, baseline="vmentry"):
    return check_snapshot(snap(patch, baseline)).verdict(0, "vmlaunch")


def rule_status(rule_id, patch, baseline="vmentry"):
    findings, applied = run_rule(get_rule(rule_id), Context(snap(patch, baseline), 0))
    if not applied:
        return "skip"
    return findings[0].status if findings else "pass"


# ------------------------------------------------------------------ order

def test_guest_failure_is_exit_reason_33_when_controls_and_host_pass():
    v = launch(BREAK_GUEST)
    assert v.outcome == "entry-fail:33:0" and v.possible == ["entry-fail:33:0"]
    assert [f.id for f in v.findings if f.status == "fail"] == ["GUEST104"]


@pytest.mark.parametrize("other,outcome", [(BREAK_CONTROL, "VMfailValid:7"), (BREAK_HOST, "VMfailValid:8")])
def test_control_or_host_failure_comes_first_but_the_guest_finding_is_listed(other, outcome):
    v = launch({**BREAK_GUEST, **other})
    assert v.outcome == outcome and "entry-fail:33:0" not in v.possible
    assert "GUEST104" in {f.id for f in v.findings if f.status == "fail"}


def test_msr_loading_comes_after_guest_state():
    bad_list = {"vmcs/0x4014": "0x1", "vmcs/0x200a": "0x1a2b9000",
                "/memory/0x1a2b9000": (0x808).to_bytes(16, "little").hex()}  # an x2APIC MSR
    assert launch(bad_list).outcome == "entry-fail:34:1"
    v = launch({**bad_list, **BREAK_GUEST})
    assert v.outcome == "entry-fail:33:0" and v.possible == ["entry-fail:33:0"]
    assert {"GUEST104", "MSRLD003"} <= {f.id for f in v.findings if f.status == "fail"}


def test_baselines_launch_ok():
    for name in ("vmentry", "vmentry-realmode", "vmentry-v86", "vmentry-unrestricted"):
        v = launch({}, name)
        assert v.outcome == "ok", (name, [(f.id, f.status, f.message) for f in v.findings])


# ------------------------------------------------------------------ alternatives and qualifications

NMI_IN_STI_SHADOW = {"vmcs/0x4016": "0x80000202", "vmcs/0x4824": "0x1"}


def test_nmi_under_sti_blocking_lists_both_outcomes():
    v = launch(NMI_IN_STI_SHADOW)
    assert v.possible == ["entry-fail:33:3", "ok"]
    f = [f for f in v.findings if f.id == "GUEST513"][0]
    assert f.status == "fail" and not f.certain and f.outcome == "entry-fail:33:3"


def test_nmi_under_sti_blocking_with_another_guest_failure():
    v = launch({**NMI_IN_STI_SHADOW, **BREAK_GUEST})
    assert v.outcome == "entry-fail:33:0" and v.possible == ["entry-fail:33:0", "entry-fail:33:3"]


def test_nmi_under_mov_ss_blocking_is_certain():
    v = launch({"vmcs/0x4016": "0x80000202", "vmcs/0x4824": "0x2"})
    assert v.outcome == "entry-fail:33:0" and v.possible == ["entry-fail:33:0"]


def test_link_pointer_and_pdpte_qualifications():
    assert launch({"vmcs/0x2800": "0x1a2b7010"}).outcome == "entry-fail:33:4"
    pae = {"vmcs/0x6804": "0x3526f8", "vmcs/0x280a": "0x1000003"}
    assert launch(pae, "vmentry-v86").outcome == "entry-fail:33:2"


# ------------------------------------------------------------------ unknown is not zero

def test_link_pointer_memory_missing_is_unknown_naming_the_address():
    v = launch({"vmcs/0x2800": "0x1a2b7000"})
    assert v.outcome == "unknown" and "entry-fail:33:4" in v.possible and "ok" in v.possible
    unknown = {f.id: f for f in v.findings if f.status == "unknown"}
    assert {i for i in unknown if i.startswith("GUEST")} == {"GUEST532", "GUEST533"}
    assert "mem:0x1a2b7000" in unknown["GUEST532"].inputs and "mem:0x1a2b7000" in unknown["GUEST532"].message


def test_pdpte_memory_missing_is_unknown_naming_the_table():
    v = launch({"vmcs/0x6804": "0x3526f8", "vmcs/0x401e": "0x101028"}, "vmentry-v86")
    assert v.outcome == "unknown" and v.possible == ["entry-fail:33:2", "ok"]
    f = [f for f in v.findings if f.id == "GUEST601"][0]
    assert f.status == "unknown" and "mem:0x185000" in f.message


def test_missing_guest_field_is_unknown_not_a_pass():
    v = launch({"vmcs/0x6820": None})  # guest RFLAGS
    assert v.outcome == "unknown"
    assert any(f.status == "unknown" and "vmcs:0x6820" in f.inputs for f in v.findings)


# ------------------------------------------------------------------ unrestricted guest

def test_unrestricted_guest_counts_only_when_secondary_controls_are_activated():
    # the real-mode baseline with primary bit 31 cleared: the stale "unrestricted guest" bit no longer exempts PE/PG
    stale = {"vmcs/0x4002": hex(0x94006172 & ~(1 << 31))}
    assert rule_status("GUEST101", {}, "vmentry-realmode") == "pass"
    assert rule_status("GUEST101", stale, "vmentry-realmode") == "fail"


def test_unrestricted_guest_relaxes_rpl_and_dpl_rules():
    mixed = {"vmcs/0x0804": "0x13", "vmcs/0x0806": "0x13"}  # SS.RPL 3 != CS.RPL 0, DS.DPL 0 < RPL 3
    for rid in ("GUEST203", "GUEST249", "GUEST251"):
        assert rule_status(rid, mixed, "vmentry-unrestricted") == "skip", rid
        assert rule_status(rid, {**mixed, "vmcs/0x401e": "0x10102a"}, "vmentry-unrestricted") == "fail", rid


def test_cs_type_3_needs_unrestricted_guest():
    data_cs = {"vmcs/0x4816": "0xc093"}
    assert rule_status("GUEST230", data_cs, "vmentry-unrestricted") == "pass"
    assert rule_status("GUEST230", {**data_cs, "vmcs/0x401e": "0x10102a"}, "vmentry-unrestricted") == "fail"


def test_unusable_registers():
    # an unusable DS skips its access-rights rules, an unusable GS base must still be canonical,
    # an unusable CS is checked anyway, TR must be usable
    assert rule_status("GUEST257", {"vmcs/0x481a": "0x10000"}) == "skip"
    assert rule_status("GUEST212", {"vmcs/0x481e": "0x10000", "vmcs/0x6810": "0x800000000000"}) == "fail"
    assert rule_status("GUEST255", {"vmcs/0x4816": "0x1201b"}) == "fail"
    assert rule_status("GUEST285", {"vmcs/0x4822": "0x1008b"}) == "fail"


# ------------------------------------------------------------------ properties

@settings(max_examples=150, deadline=None)
@given(limit=st.integers(0, 0xFFFFFFFF), g=st.booleans())
def test_granularity_rule_matches_the_byte_limit_it_could_describe(limit, g):
    """G = 1 describes limits of the form (n << 12) | 0xFFF; G = 0 limits up to 0xFFFFF."""
    representable = limit & 0xFFF == 0xFFF if g else limit <= 0xFFFFF
    ar = 0xC0F3 if g else 0x40F3
    assert (segments().granularity_problem(limit, ar) is None) == representable
    status = rule_status("GUEST270", {"vmcs/0x4806": hex(limit), "vmcs/0x481a": hex(ar)})
    assert status == ("pass" if representable else "fail")


@settings(max_examples=100, deadline=None)
@given(selector=st.integers(0, 0xFFFF), base=st.integers(0, 0xFFFFF))
def test_v86_base_rule(selector, base):
    status = rule_status("GUEST206", {"vmcs/0x0806": hex(selector), "vmcs/0x680c": hex(base)}, "vmentry-v86")
    assert status == ("pass" if base == selector * 16 else "fail")


@settings(max_examples=100, deadline=None)
@given(rip=st.integers(0, (1 << 64) - 1))
def test_rip_rule_compares_bits_63_to_48(rip):
    top = rip >> 48
    status = rule_status("GUEST402", {"vmcs/0x681e": hex(rip)})
    assert status == ("pass" if top in (0, 0xFFFF) else "fail")


# ------------------------------------------------------------------ the table

def test_segment_table_covers_every_register_and_is_validated(tmp_path):
    load_table = segments().load_table
    rows = load_table().rows
    assert {r.reg.name for r in rows} == {"cs", "ss", "ds", "es", "fs", "gs", "tr", "ldtr"}
    src = (load_table.__globals__["default_directory"]() / "guest_segments.yaml").read_text()
    (tmp_path / "guest_segments.yaml").write_text(src.replace("kind: present,", "kind: presnt,", 1))
    with pytest.raises(DefinitionError) as exc:
        load_table(str(tmp_path))
    assert "guest_segments.yaml" in str(exc.value) and "kind" in str(exc.value)


def test_pdptes_of_an_unchanged_pae_cr3_may_be_checked():
    """27.3.1.6: a processor already using PAE paging with the same CR3 may skip the PDPTE check."""
    bad_table = {"vmcs/0x6804": "0x3526f8", "vmcs/0x401e": "0x101028",
                 "/memory/0x185000": "0100190000000000" + "03" + "00" * 23}
    assert launch(bad_table, "vmentry-v86").possible == ["entry-fail:33:2"]  # a 64-bit host: checked

    def certain(patch):
        found, _ = run_rule(get_rule("GUEST601"), Context(snap(patch, "vmentry-v86"), 0))
        assert [f.status for f in found] == ["fail"]
        return found[0].certain

    pae = {**bad_table, "registers/cr0": "0x80000031", "registers/cr4": "0x2020", "registers/efer": "0x0"}
    assert certain({**pae, "registers/cr3": "0x186000"})          # CR3 changes: checked
    assert not certain({**pae, "registers/cr3": "0x185000"})      # same CR3 under PAE paging: may be checked
    assert not certain({**pae, "registers/cr3": None})            # unknown: may be checked
