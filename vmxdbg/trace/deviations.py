"""Known deviations of VMX implementations from the SDM (structs/deviations.yaml).

An emulator or hypervisor can skip a check the SDM requires, or report a
failure with another outcome. Where such a deviation is known (found by the
Bochs differential test, tests/test_differential_bochs.py), a trace shows the
stop as `deviation` with the reason instead of a MISMATCH: vmxdbg's
prediction follows the SDM, and the implementation did what the table says it
does.

A stop is a known deviation when (1) the prediction did not include what the
processor did, (2) a rule the table names for this implementation failed (or
was unknown) in the prediction, and (3) the verdict recomputed with those
rules changed as the table says — left out (`skips`) or with the outcome the
implementation gives (`outcome`) — includes what the processor did.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple

import yaml

from ..common.errors import DefinitionError
from ..report.model import Verdict

FILE = "deviations.yaml"
_IMPL = re.compile(r"^[a-z0-9]+(-[0-9][0-9.]*)?$")
_OUTCOME = re.compile(r"^(VMfailInvalid|VMfailValid:[0-9]+|entry-fail:3[34]:[0-9]+|ok|#UD|#GP)$")
_REQUIRED = ("implementation", "rule", "catalog", "does", "sdm", "requirement", "shown_by")
_OPTIONAL = ("outcome",)


@dataclass(frozen=True)
class Deviation:
    """One rule an implementation does not follow as the SDM says."""

    implementation: str     # "bochs-2.7": backend kind and version
    rule: str               # vmxdbg rule id
    catalog: str            # id in the SDM check catalog
    does: str               # what the implementation does instead
    sdm: str                # citation with edition
    requirement: str        # the SDM's requirement (quoted or paraphrased)
    shown_by: str           # the minihv knob that shows it
    outcome: Optional[str] = None   # None: the check is skipped; else what is reported instead

    @property
    def reason(self) -> str:
        """One line for a trace: who deviates, how, and what the SDM requires."""
        return f"{self.implementation} {self.does} (SDM: {self.requirement}, {self.sdm})"


def _path() -> Path:
    from ..decode.loader import default_directory
    return default_directory() / FILE


def load(path: Optional[Path] = None) -> Tuple[Deviation, ...]:
    """Read and validate the table; DefinitionError names the file and the entry's key."""
    from ..rules.engine import all_rules
    p = _path() if path is None else Path(path)
    where = f"structs/{FILE}" if path is None else str(p)
    try:
        raw = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise DefinitionError(f"cannot read: {exc}".splitlines()[0], source=where) from None
    if not isinstance(raw, dict) or not isinstance(raw.get("deviations"), list):
        raise DefinitionError("expected a mapping with a list `deviations`", source=where, key="deviations")
    rules = {r.id for r in all_rules()}
    out: List[Deviation] = []
    seen: Dict[Tuple[str, str], int] = {}
    for i, row in enumerate(raw["deviations"]):
        key = f"deviations[{i}]"
        if not isinstance(row, dict):
            raise DefinitionError("expected a mapping", source=where, key=key)
        missing = [k for k in _REQUIRED if not isinstance(row.get(k), str) or not row[k].strip()]
        if missing:
            raise DefinitionError(f"needs text for {', '.join(missing)}", source=where, key=key)
        unknown = sorted(set(row) - set(_REQUIRED) - set(_OPTIONAL))
        if unknown:
            raise DefinitionError(f"unknown key(s) {', '.join(unknown)}", source=where, key=key)
        if not _IMPL.match(row["implementation"]):
            raise DefinitionError(f"implementation {row['implementation']!r} is not KIND-VERSION (e.g. bochs-2.7)",
                                  source=where, key=f"{key}.implementation")
        if row["rule"] not in rules:
            raise DefinitionError(f"no rule {row['rule']!r}", source=where, key=f"{key}.rule")
        outcome = row.get("outcome")
        if outcome is not None and (not isinstance(outcome, str) or not _OUTCOME.match(outcome)):
            raise DefinitionError(f"outcome {outcome!r} is not an outcome (e.g. entry-fail:33:0)",
                                  source=where, key=f"{key}.outcome")
        if "(SDM" not in row["sdm"]:
            raise DefinitionError("the SDM citation must name its edition, e.g. (SDM 325462-080US, 2023)",
                                  source=where, key=f"{key}.sdm")
        pair = (row["implementation"], row["rule"])
        if pair in seen:
            raise DefinitionError(f"{pair[1]} for {pair[0]} is already deviations[{seen[pair]}]",
                                  source=where, key=key)
        seen[pair] = i
        out.append(Deviation(**{k: row[k].strip() for k in _REQUIRED}, outcome=outcome))
    return tuple(out)


@functools.lru_cache(maxsize=None)
def _table() -> Tuple[Deviation, ...]:
    return load()


def known_for(implementation: str, table: Optional[Sequence[Deviation]] = None) -> Dict[str, Deviation]:
    """{rule id: deviation} of one implementation ("bochs-2.7")."""
    rows = _table() if table is None else table
    return {d.rule: d for d in rows if d.implementation == implementation}


def implementation_of(describe: Mapping[str, Any]) -> str:
    """"KIND-VERSION" from a backend's describe(); a replay names the backend it recorded."""
    kind = str(describe.get("recorded") or describe.get("kind") or "unknown")
    version = describe.get("version")
    return f"{kind}-{version}" if version not in (None, "", "unknown") else kind


@functools.lru_cache(maxsize=None)
def _changed_rules(changes: FrozenSet[Tuple[str, Optional[str]]]) -> Tuple[Any, ...]:
    """Every rule, with each (rule id, outcome) of `changes` left out (outcome None) or
    reporting that outcome. Kept for the process's life: the engine caches by rule identity."""
    from ..rules.engine import all_rules
    how = dict(changes)
    out = []
    for r in all_rules():
        if r.id not in how:
            out.append(r)
        elif how[r.id] is not None:
            out.append(replace(r, outcome=how[r.id], check=_reporting(r.check, how[r.id])))
    return tuple(out)


def _reporting(check: Any, outcome: str) -> Any:
    from ..rules.evaluate import _as_list

    def wrapped(ctx: Any) -> Any:
        result = check(ctx)
        violations = _as_list(result)
        if not violations:
            return result
        for v in violations:
            v.outcome = outcome
        return violations
    return wrapped


def explain(snapshot: Any, cpu: int, verdict: Verdict, actual: str,
            known: Mapping[str, Deviation]) -> List[Deviation]:
    """The known deviations that account for `actual` at this stop (empty: none do).
    See the module docstring for the three conditions."""
    if actual in verdict.possible or not known:
        return []
    involved = sorted({f.id for f in verdict.findings if f.status in ("fail", "unknown")} & set(known))
    if not involved:
        return []
    from ..rules.evaluate import _cross_findings, verdict_for
    rules = _changed_rules(frozenset((rid, known[rid].outcome) for rid in involved))
    cross = _cross_findings(snapshot, [r for r in rules if r.cross])
    again = verdict_for(snapshot, cpu, verdict.instruction, rules, cross)
    return [known[rid] for rid in involved] if actual in again.possible else []


__all__ = ["Deviation", "load", "known_for", "implementation_of", "explain"]
