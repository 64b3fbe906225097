"""Run the rules on a snapshot and give one verdict per instruction per processor.

Outcome (the vocabulary of docs/formats.md): tiers are walked in the processor's order. The
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
from ..state.evidence import Evidence, Inference, evidence_of
from .engine import ENTRY, INSTRUCTIONS, SKIP, Absent, Context, Missing, Rule, Tier, Violation, all_rules


def _as_list(result: object) -> List[Violation]:
    if result is None or result is SKIP:
        return []
    if isinstance(result, Violation):
        return [result]
    return list(result)  # type: ignore[arg-type]


def _unknown_finding(rule: Rule, exc: Missing, used: List[str], ctx: Optional[Context] = None) -> Finding:
    what = f" ({exc.what})" if exc.what else ""
    return Finding(rule.id, "unknown", rule.sdm, list(used),
                   f"{rule.title}: unknown, needs {exc.key}{what}",
                   f"Provide {exc.key} (read it from the target, or add it to the snapshot).",
                   rule.title, exc.outcome or rule.outcome, advisory=rule.status == "advice", missing=exc.key,
                   inferred=[i.text() for i in ctx.inferences] if ctx else [],
                   regardless=list(ctx.regardless) if ctx else [])


#: how many times one rule may be re-run to try the values of its missing inputs
MAX_RUNS = 600


def _signature(result: object) -> Tuple[object, ...]:
    """What a result means for the verdict: held (or could not apply), or failed with these outcomes."""
    if isinstance(result, Absent):
        return ("held",)
    vs = _as_list(result)
    if not vs:
        return ("held",)
    return ("fail",) + tuple(sorted((v.outcome or "", v.certain) for v in vs))


def _decide(rule: Rule, ctx: Context, budget: List[int]) -> Tuple[object, Optional[Missing]]:
    """Run a check; when an input it needs is missing but has a known set of values, run it
    once per value and, if every run means the same, take that result (Unknown only when
    it matters). Returns (result, None) or (None, the Missing that leaves it unknown)."""
    try:
        return rule.check(ctx), None
    except Absent as exc:
        return exc, None
    except Missing as exc:
        if not exc.choices or exc.slot in ctx.overrides or budget[0] < len(exc.choices):
            return None, exc
        results = []
        for value in exc.choices:
            budget[0] -= 1
            sub = ctx.branch(exc.slot, value)
            got, missing = _decide(rule, sub, budget)
            if missing is not None:
                return None, exc
            results.append((got, sub))
        if len({_signature(r) for r, _ in results}) != 1:
            return None, exc
        for _, sub in results:
            ctx.absorb(sub)
        what = f" ({exc.what})" if exc.what else ""
        note = f"{exc.key}{what} is not known, and every value it can have gives the same result"
        if note not in ctx.regardless:
            ctx.regardless.append(note)
        return results[-1][0], None


def run_rule(rule: Rule, ctx: Context) -> Tuple[List[Finding], bool]:
    """Findings of one rule on one processor, and whether it applied (not skipped)."""
    result, missing = _decide(rule, ctx, [MAX_RUNS])
    if missing is not None:
        return [_unknown_finding(rule, missing, ctx.used, ctx)], True
    if result is SKIP or isinstance(result, Absent):
        return [], False
    findings = []
    for v in _as_list(result):
        findings.append(Finding(rule.id, rule.status, rule.sdm, list(ctx.used), v.message,
                                v.fix or rule.fix, rule.title, v.outcome or rule.outcome, v.certain,
                                advisory=rule.status == "advice", inferred=[i.text() for i in ctx.inferences],
                                regardless=list(ctx.regardless)))
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
                cross: Optional[Dict[Tuple[int, str], List[Tuple[int, Finding]]]] = None,
                evidence: Optional[Evidence] = None) -> Verdict:
    """The verdict of one instruction on one processor."""
    if evidence is None:
        evidence = evidence_of(snapshot.processors[cpu])
    inferred: Dict[Inference, None] = {}
    by_tier = _rules_by_tier(tuple(rules), instruction)
    cross_here = (cross or {}).get((cpu, instruction), [])
    tiers = sorted(set(by_tier) | {t for t, _ in cross_here})
    findings: List[Finding] = []
    possible: List[str] = []
    unknown_outcomes: List[str] = []
    decided: List[str] = []
    status_ctx = Context(snapshot, cpu, instruction, evidence)
    used: List[str] = []
    for tier in tiers:
        tier_findings: List[Finding] = []
        for r in by_tier.get(tier, []):
            rctx = Context(snapshot, cpu, instruction, evidence)
            got, _ = run_rule(r, rctx)
            used += rctx.used
            tier_findings.extend(got)
            if not decided and rctx.inferences:
                for i in rctx.inferences:
                    inferred.setdefault(i, None)
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
    for i in status_ctx.inferences:
        inferred.setdefault(i, None)
    used += [k for f in findings for k in f.inputs]
    return Verdict(instruction, outcome, possible, findings, [i.text() for i in inferred],
                   assumed=assumed_inputs(snapshot, cpu, used))


def assumed_inputs(snapshot: Snapshot, cpu: int, used: Iterable[str]) -> List[str]:
    """The input keys among `used` whose value on `cpu` was assumed (--assume), not read."""
    p = snapshot.processors.get(cpu)
    if p is None:
        return []
    return sorted({k for k in used if p.provenance.get(k, "").startswith(ASSUMED)})


def next_instructions(p: Processor, evidence: Optional[Evidence] = None) -> List[str]:
    """The instructions this processor's state says it is about to run: VMXON
    outside VMX operation; VMCLEAR/VMPTRLD with a known operand and the VM entry
    its launch state allows in VMX root operation; everything when unknown. The
    VMX mode is as given, else as the state proves it (state/evidence.py)."""
    vmx = p.state.get("vmx")
    if vmx is None:
        inf = (evidence or evidence_of(p)).states.get("vmx")
        vmx = inf.value if inf is not None else None
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
        ev = evidence_of(p)
        verdicts = []
        for insn in INSTRUCTIONS:
            if insn in ("vmclear", "vmptrld") and insn not in p.operands:
                continue
            verdicts.append(verdict_for(snapshot, cpu, insn, rules, cross, ev))
        report.processors[cpu] = verdicts
        report.next[cpu] = next_instructions(p, ev)
        report.evidence[cpu] = evidence_summary(ev, [v for v in verdicts if v.instruction in report.next[cpu]])
    return report


#: state a debugger cannot show, which only --assume can give (the state keys of docs/formats.md)
ASSUMABLE = ("vmx", "cpl", "a20m", "smm", "smx", "blocking_by_mov_ss", "blocking_by_sti", "hypervisor")


def evidence_summary(ev: Evidence, relevant: Sequence[Verdict]) -> Dict[str, object]:
    """What one processor's state proves, for the report: every inference the relevant
    verdicts rest on, every contradiction, the hypervisor underneath, and the state
    only --assume can decide (named once per processor, not once per rule)."""
    used = {t for v in relevant for t in v.inferred}
    for v in relevant:
        for f in v.findings:
            used.update(f.inferred)
    inferences = [i.to_json() for i in ev.all_inferences() if i.text() in used]
    assume: Dict[str, None] = {}
    for v in relevant:
        if v.outcome != "unknown":
            continue
        for f in v.findings:
            if f.status == "unknown" and not f.advisory and f.missing.startswith("state:") \
                    and f.missing[6:] in ASSUMABLE:
                assume.setdefault(f.missing[6:], None)
    hv = ev.states.get("hypervisor")
    return {"inferences": inferences, "contradictions": [c.to_json() for c in ev.contradictions],
            "hypervisor": hv.to_json() if hv is not None else None, "assume": list(assume)}


__all__ = ["check_snapshot", "verdict_for", "run_rule", "ENTRY"]
