"""Run the rules on a snapshot and give one verdict per instruction per processor.

Outcome, following DESIGN.md: tiers are walked in the processor's order. The
first tier with a certain failure decides; every outcome its failing rules
give is `possible` (the SDM lets rules of one tier be checked in any order).
An unknown rule, or an implementation-specific failure, in an earlier tier
adds its outcome to `possible` and the walk goes on. `outcome` is `unknown`
when a missing input could make the processor do something other than what
the known failures (or, without any, success) give; else the first possible.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from ..report.model import Finding, Report, Verdict
from ..state.assume import ASSUMED
from ..state.snapshot import Processor, Snapshot
from .engine import ENTRY, INSTRUCTIONS, SKIP, Context, Missing, Rule, Tier, Violation, all_rules


def _as_list(result: object) -> List[Violation]:
    if result is None or result is SKIP:
        return []
    if isinstance(result, Violation):
        return [result]
    return list(result)  # type: ignore[arg-type]


def _unknown_finding(rule: Rule, exc: Missing, used: List[str]) -> Finding:
    what = f" ({exc.what})" if exc.what else ""
    return Finding(rule.id, "unknown", rule.sdm, list(used),
                   f"{rule.title}: unknown, needs {exc.key}{what}",
                   f"Provide {exc.key} (read it from the target, or add it to the snapshot).",
                   rule.title, exc.outcome or rule.outcome, advisory=rule.status == "advice", missing=exc.key)


def run_rule(rule: Rule, ctx: Context) -> Tuple[List[Finding], bool]:
    """Findings of one rule on one processor, and whether it applied (not skipped)."""
    try:
        result = rule.check(ctx)
    except Missing as exc:
        return [_unknown_finding(rule, exc, ctx.used)], True
    if result is SKIP:
        return [], False
    findings = []
    for v in _as_list(result):
        findings.append(Finding(rule.id, rule.status, rule.sdm, list(ctx.used), v.message,
                                v.fix or rule.fix, rule.title, v.outcome or rule.outcome, v.certain,
                                advisory=rule.status == "advice"))
    return findings, True


def _resolve_outcome(outcome: str, ctx: Context) -> List[str]:
    """`VMfail:<n>` is VMfailValid(n) with a current VMCS, VMfailInvalid without;
    both (VMfailInvalid first) when whether a VMCS is current is unknown."""
    if not outcome.startswith("VMfail:"):
        return [outcome]
    valid = "VMfailValid:" + outcome.split(":", 1)[1]
    try:
        return [valid] if ctx.has_current_vmcs() else ["VMfailInvalid"]
    except Missing:
        return ["VMfailInvalid", valid]


def _cross_findings(snapshot: Snapshot, rules: Sequence[Rule]) -> Dict[Tuple[int, str], List[Tuple[int, Finding]]]:
    """Findings of cross-processor rules, keyed by (cpu, instruction), with the rule's tier."""
    from .cross import CrossContext  # cross rules see every processor
    out: Dict[Tuple[int, str], List[Tuple[int, Finding]]] = defaultdict(list)
    for rule in rules:
        ctx = CrossContext(snapshot)
        try:
            result = rule.check(ctx)  # type: ignore[arg-type]
        except Missing as exc:
            for cpu in snapshot.processors:
                for insn in rule.instructions:
                    out[(cpu, insn)].append((rule.tier, _unknown_finding(rule, exc, ctx.used)))
            continue
        for v in _as_list(result):
            cpus = getattr(v, "cpus", None) or list(snapshot.processors)
            for cpu in cpus:
                for insn in rule.instructions:
                    f = Finding(rule.id, rule.status, rule.sdm, list(ctx.used), v.message, v.fix or rule.fix,
                                rule.title, v.outcome or rule.outcome, v.certain, list(cpus),
                                advisory=rule.status == "advice")
                    out[(cpu, insn)].append((rule.tier, f))
    return out


_BY_TIER: Dict[Tuple[int, str], Dict[int, List[Rule]]] = {}


def _rules_by_tier(rules: Tuple[Rule, ...], instruction: str) -> Dict[int, List[Rule]]:
    """The single-processor rules of one instruction grouped by tier (computed once per rule set)."""
    key = (hash(tuple(id(r) for r in rules)), instruction)
    got = _BY_TIER.get(key)
    if got is None:
        got = defaultdict(list)
        for r in rules:
            if instruction in r.instructions and not r.cross:
                got[r.tier].append(r)
        _BY_TIER[key] = got
    return got


def verdict_for(snapshot: Snapshot, cpu: int, instruction: str, rules: Sequence[Rule],
                cross: Optional[Dict[Tuple[int, str], List[Tuple[int, Finding]]]] = None) -> Verdict:
    """The verdict of one instruction on one processor."""
    by_tier = _rules_by_tier(tuple(rules), instruction)
    cross_here = (cross or {}).get((cpu, instruction), [])
    tiers = sorted(set(by_tier) | {t for t, _ in cross_here})
    findings: List[Finding] = []
    possible: List[str] = []
    unknown_outcomes: List[str] = []
    decided: List[str] = []
    status_ctx = Context(snapshot, cpu, instruction)
    used: List[str] = []
    for tier in tiers:
        tier_findings: List[Finding] = []
        for r in by_tier.get(tier, []):
            ctx = Context(snapshot, cpu, instruction)
            got, _ = run_rule(r, ctx)
            used += ctx.used
            tier_findings.extend(got)
        tier_findings.extend(f for t, f in cross_here if t == tier)
        alternatives: Dict[int, List[str]] = {}
        for f in tier_findings:
            resolved = _resolve_outcome(f.outcome, status_ctx)
            f.outcome, alternatives[id(f)] = resolved[0], resolved[1:]
        findings.extend(tier_findings)
        if decided:
            continue  # already failed in an earlier VM-entry tier: only listing what else is broken
        counted = [f for f in tier_findings if f.status in ("fail", "unknown") and not f.advisory]
        certain = [f for f in counted if f.status == "fail" and f.certain]
        for f in certain + [f for f in counted if f not in certain]:
            for o in [f.outcome] + alternatives[id(f)]:
                if o not in possible:
                    possible.append(o)
        unknown_outcomes += [f.outcome for f in counted if f.status == "unknown"]
        unknown_outcomes += [o for f in counted for o in alternatives[id(f)]]
        if certain:
            decided = [f.outcome for f in certain]
            if tier in Tier.STOPS:
                break
    if not decided and "ok" not in possible:
        possible.append("ok")
    # unknown only when a missing input could make the processor do something else
    final = set(decided) if decided else {"ok"}
    outcome = "unknown" if any(o not in final for o in unknown_outcomes) else possible[0]
    used += [k for f in findings for k in f.inputs]
    return Verdict(instruction, outcome, possible, findings, assumed=assumed_inputs(snapshot, cpu, used))


def assumed_inputs(snapshot: Snapshot, cpu: int, used: Iterable[str]) -> List[str]:
    """The input keys among `used` whose value on `cpu` was assumed (--assume), not read."""
    p = snapshot.processors.get(cpu)
    if p is None:
        return []
    return sorted({k for k in used if p.provenance.get(k, "").startswith(ASSUMED)})


def next_instructions(p: Processor) -> List[str]:
    """The instructions this processor's state says it is about to run: VMXON
    outside VMX operation; VMCLEAR/VMPTRLD with a known operand and the VM entry
    its launch state allows in VMX root operation; everything when unknown."""
    vmx = p.state.get("vmx")
    if vmx is None and "cr4" in p.registers and not p.registers["cr4"] >> 13 & 1:
        vmx = "off"     # CR4.VMXE = 0 proves it (fixed to 1 in VMX operation, SDM Vol.3C 24.8)
    if vmx == "off" or (vmx is None and p.vmxon_pointer is not None):
        return ["vmxon"]
    if vmx == "root":
        out = [i for i in ("vmclear", "vmptrld") if i in p.operands]
        if p.vmcs_launch_state != "launched":
            out.append("vmlaunch")
        if p.vmcs_launch_state != "clear":
            out.append("vmresume")
        return out
    return list(INSTRUCTIONS)


def check_snapshot(snapshot: Snapshot, cpus: Optional[Iterable[int]] = None) -> Report:
    """Verdicts for vmxon, vmlaunch and vmresume on every processor (and vmclear /
    vmptrld where their operand is known)."""
    rules = all_rules()
    cross = _cross_findings(snapshot, [r for r in rules if r.cross])
    report = Report(source=snapshot.source)
    wanted = sorted(snapshot.processors) if cpus is None else list(cpus)
    for cpu in wanted:
        p = snapshot.processors[cpu]
        verdicts = []
        for insn in INSTRUCTIONS:
            if insn in ("vmclear", "vmptrld") and insn not in p.operands:
                continue
            verdicts.append(verdict_for(snapshot, cpu, insn, rules, cross))
        report.processors[cpu] = verdicts
        report.next[cpu] = next_instructions(p)
    return report


__all__ = ["check_snapshot", "verdict_for", "run_rule", "ENTRY"]
