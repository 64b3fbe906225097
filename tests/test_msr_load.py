"""VM-entry MSR loading (SDM Vol.3C 27.4, exit reason 34): list order, positions, unknown memory, WRMSR values."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmxdbg.common.errors import DefinitionError
from vmxdbg.rules.engine import Context
from vmxdbg.rules.evaluate import check_snapshot
from vmxdbg.rules.examples import apply_patch, baseline_tree
from vmxdbg.rules.msrvalues import load_table, reserved_bits, rule_for
from vmxdbg.state.snapshot import snapshot_from_json

AREA = 0x1A2B9000
STAR = (0xC0000081, 0x0023001000000000)
LSTAR = (0xC0000082, 0xFFFFF80351801A40)


def entry(index, value, reserved=0):
    return ((reserved << 32 | index).to_bytes(8, "little") + value.to_bytes(8, "little")).hex()


def msr_list(entries, count=None, memory=None):
    """A patch: `entries` at AREA, the count (default: all of them), memory only for the first `memory` entries."""
    data = "".join(entry(*e) for e in entries[:memory if memory is not None else len(entries)])
    patch = {"vmcs/0x4014": hex(len(entries) if count is None else count), "vmcs/0x200a": hex(AREA)}
    if data:
        patch[f"/memory/{AREA:#x}"] = data
    return patch


def launch(patch, baseline="vmentry"):
    snap = snapshot_from_json(apply_patch(baseline_tree(baseline), patch))
    return check_snapshot(snap).verdict(0, "vmlaunch")


def failing(v):
    return sorted(f.id for f in v.findings if f.status == "fail")


def test_a_clean_list_loads():
    v = launch(msr_list([STAR, LSTAR, (0xC0000080, 0xD01), (0x277, 0x0007040600070406)]))
    assert v.outcome == "ok", [(f.id, f.message) for f in v.findings]


@pytest.mark.parametrize("position", [1, 2, 5])
def test_the_exit_qualification_is_the_position_of_the_first_failing_entry(position):
    entries = [STAR] * 5
    entries[position - 1] = (0xC0000100, 0)       # IA32_FS_BASE
    v = launch(msr_list(entries))
    assert v.outcome == f"entry-fail:34:{position}" and v.possible == [f"entry-fail:34:{position}"]


def test_every_broken_entry_is_listed_and_the_first_decides():
    v = launch(msr_list([STAR, (0x808, 0), (0xC0000101, 0), LSTAR]))
    assert v.outcome == "entry-fail:34:2" and v.possible == ["entry-fail:34:2"]
    assert failing(v) == ["MSRLD002", "MSRLD003"]
    gs = [f for f in v.findings if f.id == "MSRLD002"][0]
    assert "entry 3" in gs.message and gs.outcome == "entry-fail:34:2"


def test_reserved_high_dword_fails_its_entry():
    v = launch(msr_list([STAR, (LSTAR[0], LSTAR[1], 1)]))
    assert v.outcome == "entry-fail:34:2" and failing(v) == ["MSRLD001"]


def test_smm_only_msr_fails_outside_smm_only():
    assert launch(msr_list([(0x9B, 0)])).outcome == "entry-fail:34:1"
    assert "MSRLD004" not in failing(launch({**msr_list([(0x9B, 0)]), "state/smm": True}))


def test_unknown_smm_leaves_only_that_entry_unknown():
    # found by the Bochs differential test: an unknown SMM state used to make every MSR-load
    # rule unknown with the unresolved outcome "entry-fail:34:<n>"
    v = launch({**msr_list([STAR, (0x9B, 0)]), "state/smm": None})
    assert v.outcome == "unknown" and v.possible == ["entry-fail:34:2", "ok"], v.possible
    unknown = [f for f in v.findings if f.status == "unknown" and f.id.startswith("MSRLD")]
    assert "MSRLD004" in [f.id for f in unknown] and "MSRLD003" not in [f.id for f in unknown]
    assert all(f.outcome == "entry-fail:34:2" for f in unknown)
    v = launch({**msr_list([(0x808, 0), (0x9B, 0)]), "state/smm": None})
    assert v.outcome == "entry-fail:34:1" and v.possible == ["entry-fail:34:1"]


def test_model_specific_msr_is_possible_not_certain():
    v = launch(msr_list([STAR, (0x79, 0)]))
    assert v.possible == ["entry-fail:34:2", "ok"]
    v = launch(msr_list([(0x8B, 0), STAR, (0x808, 0)]))
    assert v.outcome == "entry-fail:34:3" and v.possible == ["entry-fail:34:3", "entry-fail:34:1"]


def test_missing_page_is_unknown_naming_the_address():
    v = launch(msr_list([STAR, LSTAR, STAR], memory=1))
    assert v.outcome == "unknown" and "entry-fail:34:2" in v.possible and "ok" in v.possible
    unknown = [f for f in v.findings if f.status == "unknown" and f.id.startswith("MSRLD")]
    assert unknown and all(f"mem:{AREA + 16:#x}" in f.message for f in unknown)
    assert all(f.outcome == "entry-fail:34:2" for f in unknown)


def test_missing_page_after_a_certain_failure_does_not_matter():
    v = launch(msr_list([(0x808, 0), STAR], memory=1))
    assert v.outcome == "entry-fail:34:1" and v.possible == ["entry-fail:34:1"]


def test_guard_off_is_skipped_not_read():
    v = launch({"vmcs/0x4014": "0x0", "vmcs/0x200a": "0xdead0000"})
    assert v.outcome == "ok" and not any(f.id.startswith("MSRLD") for f in v.findings)


def test_wrmsr_value_rules():
    assert launch(msr_list([(0xC0000082, 0x0000800000000000)])).outcome == "entry-fail:34:1"   # LSTAR not canonical
    assert launch(msr_list([(0x277, 0x0007040600070402)])).outcome == "entry-fail:34:1"       # PAT type 2
    assert launch(msr_list([(0x480, 0)])).outcome == "entry-fail:34:1"                        # read-only
    assert launch(msr_list([(0x3A, 0x5)])).outcome == "entry-fail:34:1"                       # locked
    assert launch(msr_list([(0xC0000080, 0x401)])).outcome == "entry-fail:34:1"               # LME change, paging on
    assert launch(msr_list([(0xC0000080, 0x0)]), "vmentry-v86").outcome == "ok"               # 32-bit guest: LME 0


def test_unmodelled_msr_needs_to_be_known_to_exist():
    v = launch(msr_list([(0x1A0, 0x850089)]))    # IA32_MISC_ENABLE: no value rules in the table
    assert v.outcome == "unknown" and any("msr:0x1a0" in f.message for f in v.findings)
    assert launch({**msr_list([(0x1A0, 0x850089)]), "msr/0x1a0": "0x850089"}).outcome == "ok"


@settings(max_examples=150, deadline=None)
@given(value=st.integers(0, (1 << 64) - 1))
def test_efer_reserved_bits_are_exactly_the_undefined_ones(value):
    snap = snapshot_from_json(baseline_tree("vmentry"))  # CPUID reports SYSCALL, NX and LM
    assert reserved_bits(Context(snap, 0), rule_for(0xC0000080), value) == value & ~0xD01


def test_msr_table_is_validated(tmp_path):
    assert rule_for(0x48A).name == "IA32_VMX_CAPABILITIES" and rule_for(0x1A0) is None
    src = (load_table.__globals__["default_directory"]() / "msr_values.yaml").read_text()
    (tmp_path / "msr_values.yaml").write_text(src.replace('"8": cpuid:0x80000001.edx[29]', '"8": cpuid:0x80000001.edz[29]', 1))
    with pytest.raises(DefinitionError) as exc:
        load_table(tmp_path)
    assert "msr_values.yaml" in str(exc.value) and "IA32_EFER.valid.8" in str(exc.value)
