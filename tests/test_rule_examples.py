"""Every rule's failing and passing examples, run on its baseline (ruff-style)."""
from __future__ import annotations

import pytest

from vmxdbg.rules.engine import all_rules
from vmxdbg.rules.examples import baseline_names, example_snapshot, run_example
from vmxdbg.rules.evaluate import check_snapshot

CASES = [(r, i, e) for r in all_rules() for i, e in enumerate(r.examples)]


@pytest.mark.parametrize("rule,index,example", CASES,
                         ids=[f"{r.id}-{e.expect}{i}" for r, i, e in CASES])
def test_example(rule, index, example):
    assert run_example(rule, example) == example.expect


@pytest.mark.parametrize("name", baseline_names())
def test_baselines_are_clean(name):
    """A baseline breaks no rule of the instructions it is about to run (its `baseline_for`)."""
    from vmxdbg.rules.examples import baseline_tree
    from vmxdbg.state.snapshot import snapshot_from_json
    tree = baseline_tree(name)
    assert tree.get("baseline_for"), f"{name} must say which instructions it is a clean baseline for"
    snap = snapshot_from_json(tree)
    report = check_snapshot(snap)
    for cpu, verdicts in report.processors.items():
        for v in verdicts:
            if v.instruction not in tree["baseline_for"]:
                continue
            failed = [f.id for f in v.findings if f.status == "fail"]
            assert not failed, f"baseline {name} cpu {cpu} {v.instruction}: {failed}"


def test_every_rule_has_both_examples():
    for r in all_rules():
        kinds = {e.expect for e in r.examples}
        assert kinds == {"fail", "pass"}, r.id


def test_bad_example_changes_the_outcome_of_its_instruction():
    """A failing example of a (non-advice) rule makes at least one of its instructions not ok."""
    for r in all_rules():
        if r.status == "advice":
            continue
        for e in r.examples:
            if e.expect != "fail":
                continue
            report = check_snapshot(example_snapshot(e))
            outcomes = [report.verdict(e.cpu, i).outcome for i in r.instructions if report.verdict(e.cpu, i)]
            assert any(o != "ok" for o in outcomes), (r.id, outcomes)
