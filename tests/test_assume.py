"""--assume fills state no debugger shows, never overrides what was read, and says so."""
from __future__ import annotations

import json

import pytest

from vmxdbg import cli
from vmxdbg.state.assume import apply_assumptions, parse_assumptions
from vmxdbg.common.errors import InputError
from vmxdbg.rules.examples import apply_patch, baseline_tree
from vmxdbg.state.snapshot import snapshot_from_json


def test_parse_and_reject():
    assert parse_assumptions(["vmx=off", "a20m=0", "cpl=0", "smx=false"]) == \
        {"vmx": "off", "a20m": False, "cpl": 0, "smx": False}
    for bad in ("vmx=maybe", "a20m", "cr4=0", "cpl=4", "smx=2"):
        with pytest.raises(InputError, match="--assume"):
            parse_assumptions([bad])


def test_fills_only_unknown_and_records_provenance():
    snap = snapshot_from_json(apply_patch(baseline_tree("vmxon"), {"state/a20m": None, "state/vmx": "root"}))
    apply_assumptions(snap, parse_assumptions(["a20m=0", "vmx=off"]))
    p = snap.processors[0]
    assert p.state["a20m"] is False and p.state["vmx"] == "root"
    assert p.provenance["state:a20m"] == "assumed (--assume a20m=false)"
    assert "state:vmx" not in p.provenance


def test_cli_assumption_turns_unknown_into_a_verdict(tmp_path):
    tree = apply_patch(baseline_tree("vmxon"), {"state/a20m": None, "state/vmx": None})
    f = tmp_path / "s.vmxsnap.json"
    f.write_text(json.dumps(tree))
    assert cli.main(["check", "--format", "json", str(f)]) == 1
    assert cli.main(["check", str(f), "--assume", "vmx=off", "--assume", "a20m=0"]) == 0
