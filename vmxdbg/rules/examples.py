"""Run a rule's examples: patches on a baseline snapshot shipped in vmxdbg/examples/.

A patch maps a path to a new value (None deletes it). Paths are relative to
the example's processor (`registers/cr4`, `msr/0x3a`, `state/cpl`,
`registers/cs/attributes`, `vmcs/0x4000`, `cpuid/0x1`) or, with a leading
slash, to the snapshot (`/memory/0x1a2b3000`, `/processors/1`).
"""
from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any, Dict, List

from ..state.snapshot import snapshot_from_json
from .engine import Example, Rule
from .evaluate import run_rule
from .engine import Context

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"


@functools.lru_cache(maxsize=None)
def _baseline_text(name: str) -> str:
    return (EXAMPLES_DIR / f"{name}.vmxsnap.json").read_text(encoding="utf-8")


def baseline_names() -> List[str]:
    return sorted(p.name[: -len(".vmxsnap.json")] for p in EXAMPLES_DIR.glob("*.vmxsnap.json"))


def baseline_tree(name: str) -> Dict[str, Any]:
    """A fresh copy of the baseline's JSON tree."""
    return json.loads(_baseline_text(name))


def _find_key(d: Dict[str, Any], key: str) -> str:
    """The existing key equal to `key` by value (0x802 == 0x0802), else `key`."""
    if key in d:
        return key
    try:
        want = int(key, 16) if key.lower().startswith("0x") else None
    except ValueError:
        want = None
    if want is not None:
        for k in d:
            try:
                if str(k).lower().startswith("0x") and int(k, 16) == want:
                    return k
            except ValueError:
                continue
    return key


def apply_patch(tree: Dict[str, Any], patch: Dict[str, Any], cpu: int = 0) -> Dict[str, Any]:
    """Apply `patch` to a copy of `tree` and return it."""
    out = copy.deepcopy(tree)
    for path, value in patch.items():
        parts = path.strip("/").split("/")
        node = out if path.startswith("/") else out["processors"].setdefault(str(cpu), {})
        for part in parts[:-1]:
            node = node.setdefault(_find_key(node, part), {})
        last = _find_key(node, parts[-1])
        if value is None:
            node.pop(last, None)
        else:
            node[last] = copy.deepcopy(value)
    return out


def example_snapshot(example: Example):  # type: ignore[no-untyped-def]
    tree = apply_patch(baseline_tree(example.baseline), example.patch, example.cpu)
    return snapshot_from_json(tree, source=f"example on {example.baseline}")


def run_example(rule: Rule, example: Example) -> str:
    """'fail', 'unknown', 'pass' (applied, nothing found) or 'skip' (guard off)."""
    snap = example_snapshot(example)
    if rule.cross:
        from .evaluate import _cross_findings
        found = _cross_findings(snap, [rule])
        statuses = {f.status for (cpu, _), items in found.items() if cpu == example.cpu for _, f in items}
    else:
        findings, applied = run_rule(rule, Context(snap, example.cpu))
        if not applied:
            return "skip"
        statuses = {f.status for f in findings}
    if "fail" in statuses or "advice" in statuses:
        return "fail"
    if "unknown" in statuses:
        return "unknown"
    return "pass"
