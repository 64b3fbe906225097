"""Known deviations of VMX implementations (structs/deviations.yaml) and how a trace shows them."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fake_live import CODE, PROGRAM, FakeLive
from vmxdbg.trace import deviations as dev
from vmxdbg.common.errors import DefinitionError
from vmxdbg.record.recording import read_recording
from vmxdbg.rules.engine import all_rules
from vmxdbg.rules.evaluate import check_snapshot
from vmxdbg.rules.examples import apply_patch, baseline_tree
from vmxdbg.state.snapshot import snapshot_from_json
from vmxdbg.trace.stepper import deviations, mismatches
from vmxdbg.trace.session import render_trace, replay_trace, run_trace, trace_report_json

BOCHS = dev.known_for("bochs-2.7")
BASE = baseline_tree("vmentry")
ENTRY = int(BASE["processors"]["0"]["vmcs"]["0x4012"], 16)


def launch(patch):  # type: ignore[no-untyped-def]
    snap = snapshot_from_json(apply_patch(BASE, patch))
    return snap, check_snapshot(snap).verdict(0, "vmlaunch")


def test_the_table_loads_and_names_real_rules_with_their_catalog_ids():
    rows = dev.load()
    assert len(rows) >= 5 and len(BOCHS) == len([d for d in rows if d.implementation == "bochs-2.7"])
    rules = {r.id: r for r in all_rules()}
    for d in rows:
        assert d.catalog in rules[d.rule].catalog, (d.rule, d.catalog, rules[d.rule].catalog)
        assert "(SDM 325462-080US, 2023)" in d.sdm and d.requirement and d.does


def test_a_skipped_check_explains_the_success_only():
    snap, v = launch({"vmcs/0x681e": "0x8000000000000000"})           # non-canonical guest RIP
    assert v.outcome == "entry-fail:33:0"
    assert [d.rule for d in dev.explain(snap, 0, v, "ok", BOCHS)] == ["GUEST402"]
    assert dev.explain(snap, 0, v, "VMfailValid:7", BOCHS) == []       # not what a skipped check gives
    assert dev.explain(snap, 0, v, "ok", dev.known_for("bochs-2.6")) == []
    assert dev.explain(snap, 0, v, "entry-fail:33:0", BOCHS) == []     # predicted right: nothing to explain


def test_a_skipped_check_with_a_later_failure_gives_that_failure():
    # "entry to SMM" outside SMM: error 7 by the SDM; without that check the guest-state check
    # that "entry to SMM" needs blocking by SMI fails instead (what Bochs 2.7 reports)
    snap, v = launch({"vmcs/0x4012": hex(ENTRY | 1 << 10), "state/smm": False})
    assert v.outcome == "VMfailValid:7"
    assert [d.rule for d in dev.explain(snap, 0, v, "entry-fail:33:0", BOCHS)] == ["CTL105"]
    assert dev.explain(snap, 0, v, "ok", BOCHS) == []


def test_a_different_outcome_is_explained_only_when_it_is_that_outcome():
    snap, v = launch({"vmcs/0x4016": "0x80000202", "vmcs/0x4824": "0x1", "vmcs/0x6820": "0x202"})
    assert v.possible == ["entry-fail:33:3", "ok"]                      # NMI under blocking by STI
    assert [d.rule for d in dev.explain(snap, 0, v, "entry-fail:33:0", BOCHS)] == ["GUEST513"]
    assert dev.explain(snap, 0, v, "entry-fail:33:4", BOCHS) == []


def test_a_narrow_entry_explains_only_the_states_its_condition_names():
    # Bochs reads the pending debug exceptions as 32 bits: bits 63:32 pass, bit 4 does not
    snap, v = launch({"vmcs/0x6822": "0x100000000"})
    assert v.outcome == "entry-fail:33:0"
    assert [d.rule for d in dev.explain(snap, 0, v, "ok", BOCHS)] == ["GUEST520"]
    snap, v = launch({"vmcs/0x6822": "0x10"})
    assert v.outcome == "entry-fail:33:0" and dev.explain(snap, 0, v, "ok", BOCHS) == []


def test_an_added_check_explains_its_outcome_where_its_condition_holds():
    # unrestricted guest (no SS.RPL = CS.RPL check) and a CS selector with RPL 1 over a
    # non-conforming CS of DPL 0 = SS.DPL: legal by the SDM, refused by Bochs 2.7
    proc = int(BASE["processors"]["0"]["vmcs"]["0x4002"], 16) | 1 << 31
    ug = {"vmcs/0x4002": hex(proc), "vmcs/0x401e": "0x82", "vmcs/0x201a": "0x1801e"}
    snap, v = launch({**ug, "vmcs/0x802": "0x9"})
    assert v.possible == ["ok"]
    assert [d.rule for d in dev.explain(snap, 0, v, "entry-fail:33:0", BOCHS)] == ["GUEST247"]
    assert dev.explain(snap, 0, v, "VMfailValid:7", BOCHS) == []        # not the outcome it adds
    snap, v = launch({**ug, "vmcs/0x802": "0x8"})                       # RPL = DPL: the condition fails
    assert v.possible == ["ok"] and dev.explain(snap, 0, v, "entry-fail:33:0", BOCHS) == []


def test_a_condition_uses_only_fields_numbers_and_operators():
    assert dev.compile_when("vmcs[0x6822] >> 32 != 0 and 0x1D9 in msr_load_indices")
    for bad in ("__import__('os')", "vmcs.get(1)", "open", "'text' == 'text'", "[x for x in vmcs]"):
        with pytest.raises((ValueError, SyntaxError)):
            dev.compile_when(bad)
    snap, _ = launch({})
    assert dev.when_holds("vmcs[0x123456] == 0", snap, 0) is False        # a field it lacks: does not hold


def test_the_implementation_comes_from_describe_or_the_recording():
    assert dev.implementation_of({"kind": "bochs", "version": "2.7", "model": "x"}) == "bochs-2.7"
    assert dev.implementation_of({"kind": "replay", "recorded": "bochs", "version": "2.7"}) == "bochs-2.7"
    assert dev.implementation_of({"kind": "windbg"}) == "windbg"


@pytest.mark.parametrize("text, key, message", [
    ("nothing: 1\n", "deviations", "a list `deviations`"),
    ("deviations: [1]\n", "deviations[0]", "expected a mapping"),
    ("deviations:\n - {implementation: bochs-2.7, rule: GUEST402}\n", "deviations[0]", "needs text for catalog"),
    ("deviations:\n - {implementation: Bochs 2.7, rule: GUEST402, catalog: c, does: d, sdm: '(SDM x)', "
     "requirement: r, shown_by: s}\n", "deviations[0].implementation", "KIND-VERSION"),
    ("deviations:\n - {implementation: bochs-2.7, rule: NOPE001, catalog: c, does: d, sdm: '(SDM x)', "
     "requirement: r, shown_by: s}\n", "deviations[0].rule", "no rule"),
    ("deviations:\n - {implementation: bochs-2.7, rule: GUEST402, catalog: c, does: d, sdm: s, "
     "requirement: r, shown_by: s}\n", "deviations[0].sdm", "edition"),
    ("deviations:\n - {implementation: bochs-2.7, rule: GUEST402, catalog: c, does: d, sdm: '(SDM x)', "
     "requirement: r, shown_by: s, outcome: failed}\n", "deviations[0].outcome", "not an outcome"),
    ("deviations:\n - {implementation: bochs-2.7, rule: GUEST402, catalog: c, does: d, sdm: '(SDM x)', "
     "requirement: r, shown_by: s, extra: 1}\n", "deviations[0]", "unknown key"),
    ("deviations:\n - &a {implementation: bochs-2.7, rule: GUEST402, catalog: c, does: d, sdm: '(SDM x)', "
     "requirement: r, shown_by: s}\n - *a\n", "deviations[1]", r"already deviations\[0\]"),
    ("deviations: [\n", None, "cannot read"),
])
def test_a_bad_table_is_one_error_naming_the_entry(tmp_path: Path, text: str, key, message: str) -> None:
    path = tmp_path / "deviations.yaml"
    path.write_text(text)
    with pytest.raises(DefinitionError, match=message) as err:
        dev.load(path)
    assert str(path) in str(err.value) and err.value.key == key


def _broken_feature_control() -> FakeLive:
    fake = FakeLive(cores=1)
    fake.cpus[0].msr[0x3A] = 0x1     # unlocked: VMXON #GP by the SDM; the fake target runs it anyway
    return fake


def _fake_deviation(rule: str) -> dev.Deviation:
    return dev.Deviation("fake-live", rule, "VMXON.FEATURE_CONTROL.LOCKED", "runs VMXON with the MSR unlocked",
                         "Vol.3C 31.3 VMXON (SDM 325462-080US, 2023)", "VMXON #GPs unless the lock bit is 1",
                         "msr 0x3a = 1")


def test_a_trace_shows_a_known_deviation_quietly_and_keeps_it_in_the_report(tmp_path, monkeypatch):
    plain = run_trace(_broken_feature_control(), {CODE: PROGRAM})
    assert len(mismatches(plain)) == 1 and not deviations(plain)
    rule = [f.id for f in mismatches(plain)[0].verdict.findings if f.status == "fail"][0]
    monkeypatch.setattr("vmxdbg.trace.stepper.known_for", lambda impl: {rule: _fake_deviation(rule)}
                        if impl == "fake-live" else {})
    path = tmp_path / "t.vmxrec.jsonl"
    results = run_trace(_broken_feature_control(), {CODE: PROGRAM}, record=path)
    assert not mismatches(results) and [r.instruction for r in deviations(results)] == ["vmxon"]
    text = render_trace(results)
    assert "MISMATCH" not in text and text.startswith("1 stop(s) where the target deviates")
    row = [line for line in text.splitlines() if line.startswith("0    vmxon")][0]
    assert "deviation" in row.split() and f"[DEVIATION] {rule} fake-live runs VMXON" in text
    rep = trace_report_json(results)["processors"]["0"][0]
    assert rep["match"] is False and rep["deviation"][0]["rule"] == rule
    json.dumps(rep)
    again = replay_trace(read_recording(path))            # replayed: the same deviation
    assert render_trace(again) == text


def test_docs_list_every_deviation():
    text = (Path(__file__).resolve().parent.parent / "docs" / "deviations.md").read_text()
    for d in dev.load():
        row = [line for line in text.splitlines() if line.startswith(f"| {d.rule} | {d.catalog} |")]
        assert row, f"docs/deviations.md has no row for {d.rule} ({d.implementation})"
