"""Trace recordings as pytest items: the replayed stops must agree with the expected report."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import vmxdbg.pytest_plugin  # noqa: F401
import vmxdbg.trace.session  # noqa: F401  (pytester in-process runs cannot import iced-x86 a second time)
from vmxdbg.pytest_plugin import stop_differences
from vmxdbg.rules.engine import all_rules

pytest_plugins = ["pytester"]
all_rules()
BOCHS = Path(__file__).resolve().parent.parent / "recordings" / "bochs"


def test_stop_differences_flags_a_changed_outcome_and_a_lost_match():
    expected = {"processors": {"1": [{"instruction": "vmxon", "address": "0xae94", "actual": "VMfailInvalid",
                                      "match": True}]}}
    got = {"processors": {"1": [{"instruction": "vmxon", "address": "0xae94", "actual": "VMfailInvalid",
                                 "match": False, "outcome": "ok", "possible": ["ok"]}]}}
    diffs = stop_differences(expected, got)
    assert len(diffs) == 1 and "no longer matches" in diffs[0] and "cpu 1 stop 1 vmxon" in diffs[0]
    got["processors"]["1"][0]["actual"] = "ok"
    assert any("the processor did ok, expected VMfailInvalid" in d for d in stop_differences(expected, got))
    expected["processors"]["1"][0]["match"] = False          # a documented disagreement stays allowed
    got["processors"]["1"][0]["actual"] = "VMfailInvalid"
    assert stop_differences(expected, got) == []


def test_a_real_bochs_trace_recording_passes_and_a_tampered_expectation_fails(pytester, request):
    src = BOCHS / "wrong-revision-cpu1.vmxrec.jsonl"
    if not src.exists():
        pytest.skip("no Bochs recordings in this checkout")
    d = pytester.path / "recordings" / "bochs"
    d.mkdir(parents=True)
    shutil.copy(src, d / src.name)
    expected = json.loads((BOCHS / "wrong-revision-cpu1.expected.json").read_text())
    (d / "wrong-revision-cpu1.expected.json").write_text(json.dumps(expected))
    loaded = request.config.pluginmanager.hasplugin("vmxdbg")
    args = ["-p", "no:benchmark", "-p", "no:hypothesispytest"] + ([] if loaded else ["-p", "vmxdbg.pytest_plugin"])
    pytester.makeini("[pytest]\nvmxdbg_recordings = recordings\n")
    assert pytester.runpytest_inprocess(*args).ret == 0
    stop = expected["processors"]["1"][0]
    assert stop["instruction"] == "vmxon" and stop["outcome"] == "VMfailInvalid"
    stop["outcome"] = "ok"
    (d / "wrong-revision-cpu1.expected.json").write_text(json.dumps(expected))
    result = pytester.runpytest_inprocess(*args)
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*cpu 1 vmxon: outcome VMfailInvalid, expected ok*"])
