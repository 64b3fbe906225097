"""Disagreements the random Bochs differential run found, kept as regression cases
(tests/data/differential/): vmxdbg's prediction on the saved snapshot, and the known Bochs 2.7
deviation that explains what Bochs did."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from vmxdbg.trace import deviations as dev
from vmxdbg.rules.evaluate import check_snapshot
from vmxdbg.state.snapshot import load_snapshot

DATA = Path(__file__).resolve().parent / "data" / "differential"
BOCHS = dev.known_for("bochs-2.7")

# case -> (vmxdbg's possible outcomes, what Bochs did, the deviations that explain it)
CASES = {
    # pending debug exceptions bit 32: Bochs checks only bits 31:0
    "seed752014-000435-deviation": (["entry-fail:33:0"], "ok", ["GUEST520"]),
    # an unrestricted real-mode guest, CS selector 0xFFFF (RPL 3), CS DPL 0 = SS DPL: Bochs compares RPL and DPL
    "seed752014-003697-deviation": (["ok"], "entry-fail:33:0", ["GUEST247"]),
    # the same with the CS access rights marked unusable: Bochs checks CS whatever its unusable bit
    "seed250623-008593-deviation": (["ok"], "entry-fail:33:0", ["GUEST247"]),
    # an unrestricted 32-bit guest with SS DPL 3 beside a CS of DPL 0 = CS RPL: Bochs skips the SS DPL comparison
    "seed356194-008888-deviation": (["entry-fail:33:0"], "ok", ["GUEST247"]),
    # a usable SS with a null selector in a 64-bit guest, read-only data: Bochs skips its checks
    "seed160810-005221-deviation": (["entry-fail:33:0"], "ok", ["GUEST231"]),
    # a 64-bit guest whose FS is execute/read code (type 11), DPL 0, selector 0xFFFF (RPL 3): Bochs checks types below 11
    "seed965763-040773-deviation": (["entry-fail:33:0"], "ok", ["GUEST253"]),
    # an NMI injected with "virtual NMIs" and blocking by NMI: Bochs 2.7 has that check commented out
    "seed965763-043050-deviation": (["entry-fail:33:0"], "ok", ["GUEST516"]),
    # a null SS in a 64-bit guest with reserved access-rights bit 8 set: Bochs skips the null SS's checks
    "seed363250-035438-deviation": (["entry-fail:33:0"], "ok", ["GUEST262"]),
    # "use TSC scaling" with a TSC multiplier of 0
    "seed752014-001765-deviation": (["ok"], "VMfailValid:7", ["CTL003"]),
    # an MSR-load entry for IA32_DEBUGCTL, which Bochs 2.7 does not have
    "seed752014-002165-deviation": (["ok"], "entry-fail:34:1", ["MSRLD006"]),
    # type 7 vector 1, length 16, no FRED: CTL101 (FRED only) no longer fails; Bochs enters, then panics
    "seed752014-007265-ctl101": (["VMfailValid:7"], "ok", ["CTL091", "CTL094"]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_kept_disagreement_is_predicted_and_explained(name: str) -> None:
    possible, bochs, explained = CASES[name]
    case = json.loads((DATA / f"{name}.case.json").read_text())
    assert "bochs_says" in case and case["fields"]     # Bochs says nothing when an entry succeeds
    snap = load_snapshot(DATA / f"{name}.vmxsnap.json")
    verdict = check_snapshot(snap).verdict(0, "vmlaunch")
    assert verdict.possible == possible
    assert bochs not in verdict.possible
    assert [d.rule for d in dev.explain(snap, 0, verdict, bochs, BOCHS)] == explained


def test_ctl101_is_not_reported_without_fred() -> None:
    snap = load_snapshot(DATA / "seed752014-007265-ctl101.vmxsnap.json")
    failing = [f.id for f in check_snapshot(snap).verdict(0, "vmlaunch").findings if f.status == "fail"]
    assert "CTL091" in failing and "CTL094" in failing and "CTL101" not in failing
