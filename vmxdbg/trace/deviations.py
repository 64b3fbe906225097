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

An entry with `when` (an expression over the processor's VMCS fields, e.g.
`vmcs[0x6822] >> 32 != 0`) applies only to states where it holds, so an entry
is as narrow as the behaviour. An entry with `adds: true` is a check the SDM
does not make: the implementation reports `outcome` for a state the SDM
allows; it explains a stop where `when` holds and the processor did that
outcome (`entry-fail:34` without a qualification matches any failing entry).
"""
from __future__ import annotations

import ast
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
_ADDED_OUTCOME = re.compile(r"^(VMfailValid:[0-9]+|entry-fail:3[34](:[0-9]+)?)$")
_REQUIRED = ("implementation", "rule", "catalog", "does", "sdm", "requirement", "shown_by")
_OPTIONAL = ("outcome", "when", "adds")
#: what a `when` expression may use: integers, vmcs[ENC], msr_load_indices, comparisons,
#: bit operations, and/or/not, `in` over a tuple
_NAMES = ("vmcs", "msr_load_indices")
_NODES = (ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.Invert, ast.BinOp,
          ast.BitAnd, ast.BitOr, ast.BitXor, ast.RShift, ast.LShift, ast.Add, ast.Sub, ast.Compare, ast.Eq,
          ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn, ast.Subscript, ast.Name, ast.Load,
          ast.Constant, ast.Tuple, ast.Index if hasattr(ast, "Index") else ast.Constant)


def compile_when(text: str) -> ast.Expression:
    """The parsed `when` expression, every node checked; ValueError naming what is not allowed.
    It is evaluated by walking the tree (`_value`), never by Python's eval."""
    tree = ast.parse(text, mode="eval")
    for node in ast.walk(tree):
        if not isinstance(node, _NODES):
            raise ValueError(f"{type(node).__name__} is not allowed")
        if isinstance(node, ast.Name) and node.id not in _NAMES:
            raise ValueError(f"unknown name {node.id!r} (known: {', '.join(_NAMES)})")
        if isinstance(node, ast.Constant) and (not isinstance(node.value, int) or isinstance(node.value, bool)):
            raise ValueError(f"constant {node.value!r} is not an integer")
    return tree


_BIN = {ast.BitAnd: lambda a, b: a & b, ast.BitOr: lambda a, b: a | b, ast.BitXor: lambda a, b: a ^ b,
        ast.RShift: lambda a, b: a >> b, ast.LShift: lambda a, b: a << b, ast.Add: lambda a, b: a + b,
        ast.Sub: lambda a, b: a - b}
_CMP = {ast.Eq: lambda a, b: a == b, ast.NotEq: lambda a, b: a != b, ast.Lt: lambda a, b: a < b,
        ast.LtE: lambda a, b: a <= b, ast.Gt: lambda a, b: a > b, ast.GtE: lambda a, b: a >= b,
        ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b}


def _value(node: ast.AST, env: Mapping[str, Any]) -> Any:
    """The value of a checked `when` node (KeyError: a VMCS field the snapshot lacks)."""
    if isinstance(node, ast.Expression):
        return _value(node.body, env)
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return env[node.id]
    if isinstance(node, ast.Tuple):
        return tuple(_value(e, env) for e in node.elts)
    if isinstance(node, ast.Subscript):
        index = node.slice.value if hasattr(ast, "Index") and isinstance(node.slice, ast.Index) else node.slice  # type: ignore[attr-defined]
        return _value(node.value, env)[_value(index, env)]
    if isinstance(node, ast.BoolOp):
        values = (_value(v, env) for v in node.values)
        return all(values) if isinstance(node.op, ast.And) else any(values)
    if isinstance(node, ast.UnaryOp):
        v = _value(node.operand, env)
        return (not v) if isinstance(node.op, ast.Not) else ~v
    if isinstance(node, ast.BinOp):
        return _BIN[type(node.op)](_value(node.left, env), _value(node.right, env))
    if isinstance(node, ast.Compare):
        left = _value(node.left, env)
        for op, comp in zip(node.ops, node.comparators):
            right = _value(comp, env)
            if not _CMP[type(op)](left, right):
                return False
            left = right
        return True
    raise ValueError(f"{type(node).__name__} is not allowed")


def when_holds(text: str, snapshot: Any, cpu: int) -> bool:
    """Whether a `when` expression holds for processor `cpu`; False when it needs an input
    the snapshot does not have."""
    p = snapshot.processors.get(cpu)
    if p is None:
        return False
    env = {"vmcs": dict(p.vmcs), "msr_load_indices": _msr_load_indices(snapshot, p.vmcs)}
    try:
        return bool(_value(compile_when(text), env))
    except (KeyError, TypeError, ValueError):
        return False


def _msr_load_indices(snapshot: Any, vmcs: Mapping[int, int]) -> Tuple[int, ...]:
    """The MSR indices of the VM-entry MSR-load list (Vol.3C 25.8.2), as far as memory shows them."""
    count, address = vmcs.get(0x4014, 0), vmcs.get(0x200A)
    if not count or address is None:
        return ()
    data = snapshot.memory.read(address, 16 * min(count, 64))
    if data is None:
        return ()
    return tuple(int.from_bytes(data[i:i + 4], "little") for i in range(0, len(data), 16))


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
    when: Optional[str] = None      # applies only where this expression holds (compile_when)
    adds: bool = False              # a check the SDM does not make, reporting `outcome`

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
        adds = row.get("adds", False)
        if not isinstance(adds, bool):
            raise DefinitionError("adds must be true or false", source=where, key=f"{key}.adds")
        pattern = _ADDED_OUTCOME if adds else _OUTCOME
        if (outcome is not None or adds) and (not isinstance(outcome, str) or not pattern.match(outcome)):
            raise DefinitionError(f"outcome {outcome!r} is not an outcome (e.g. entry-fail:33:0)"
                                  + (" (an added check needs one)" if adds else ""),
                                  source=where, key=f"{key}.outcome")
        when = row.get("when")
        if when is not None:
            try:
                if not isinstance(when, str):
                    raise ValueError("expected an expression in quotes")
                compile_when(when)
            except (SyntaxError, ValueError) as exc:
                raise DefinitionError(f"when {when!r}: {exc}", source=where, key=f"{key}.when") from None
        if adds and when is None:
            raise DefinitionError("an added check needs `when` (the states it fails)", source=where,
                                  key=f"{key}.when")
        if "(SDM" not in row["sdm"]:
            raise DefinitionError("the SDM citation must name its edition, e.g. (SDM 325462-080US, 2023)",
                                  source=where, key=f"{key}.sdm")
        pair = (row["implementation"], ("adds:" if adds else "") + row["rule"])
        if pair in seen:
            raise DefinitionError(f"{pair[1]} for {pair[0]} is already deviations[{seen[pair]}]",
                                  source=where, key=key)
        seen[pair] = i
        out.append(Deviation(**{k: row[k].strip() for k in _REQUIRED}, outcome=outcome, when=when, adds=adds))
    return tuple(out)


@functools.lru_cache(maxsize=None)
def _table() -> Tuple[Deviation, ...]:
    return load()


def known_for(implementation: str, table: Optional[Sequence[Deviation]] = None) -> Dict[str, Deviation]:
    """{rule id: deviation} of one implementation ("bochs-2.7"); an added check is keyed
    "adds:RULE"."""
    rows = _table() if table is None else table
    return {("adds:" if d.adds else "") + d.rule: d for d in rows if d.implementation == implementation}


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
    usable = {k: d for k, d in known.items() if d.when is None or when_holds(d.when, snapshot, cpu)}
    added = [d for d in usable.values() if d.adds and d.outcome is not None
             and (actual == d.outcome or actual.startswith(d.outcome + ":"))]
    if added:
        return added
    involved = sorted({f.id for f in verdict.findings if f.status in ("fail", "unknown")}
                      & {k for k, d in usable.items() if not d.adds})
    if not involved:
        return []
    from ..rules.evaluate import _cross_findings, verdict_for
    rules = _changed_rules(frozenset((rid, known[rid].outcome) for rid in involved))
    cross = _cross_findings(snapshot, [r for r in rules if r.cross])
    again = verdict_for(snapshot, cpu, verdict.instruction, rules, cross)
    return [known[rid] for rid in involved] if actual in again.possible else []


__all__ = ["Deviation", "load", "known_for", "implementation_of", "explain", "compile_when", "when_holds"]
