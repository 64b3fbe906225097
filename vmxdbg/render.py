"""Render a report as text, WinDbg DML or JSON. Rows are built separately from how they print."""
from __future__ import annotations

import html
from typing import Dict, List, Optional, Sequence

from .report import Finding, Report, Verdict, dumps_report
from .snapshot import Processor, Snapshot
from .values import hexs

SUMMARY_INSNS = ("vmxon", "vmlaunch", "vmresume")


def _known(v: Optional[int]) -> str:
    return "?" if v is None else hexs(v)


def summary_rows(report: Report, snapshot: Snapshot) -> List[Dict[str, str]]:
    """One row per processor: VMX support, feature control, CR0, CR4, VMXON pointer, outcomes."""
    rows = []
    for cpu, verdicts in sorted(report.processors.items()):
        p = snapshot.processors.get(cpu) or Processor()
        leaf1 = p.cpuid.get((1, 0))
        row = {
            "cpu": str(cpu),
            "vmx": "?" if leaf1 is None else ("yes" if leaf1[2] >> 5 & 1 else "no"),
            "feature_control": _known(p.msr.get(0x3A)),
            "cr0": _known(p.registers.get("cr0")),
            "cr4": _known(p.registers.get("cr4")),
            "vmxon_pointer": _known(p.vmxon_pointer),
        }
        for v in verdicts:
            if v.instruction in SUMMARY_INSNS:
                row[v.instruction] = v.outcome
        rows.append(row)
    return rows


_COLUMNS = (("cpu", "cpu"), ("vmx", "VMX"), ("feature_control", "FEATURE_CONTROL"), ("cr0", "CR0"),
            ("cr4", "CR4"), ("vmxon_pointer", "VMXON ptr"), ("vmxon", "vmxon"), ("vmlaunch", "vmlaunch"),
            ("vmresume", "vmresume"))


def _table(rows: Sequence[Dict[str, str]]) -> List[str]:
    widths = {k: max([len(t)] + [len(r.get(k, "")) for r in rows]) for k, t in _COLUMNS}
    lines = ["  ".join(t.ljust(widths[k]) for k, t in _COLUMNS).rstrip()]
    for r in rows:
        lines.append("  ".join(r.get(k, "").ljust(widths[k]) for k, _ in _COLUMNS).rstrip())
    return lines


def cross_lines(report: Report) -> List[str]:
    """One line per cross-processor problem, naming the processors (deduplicated)."""
    seen: Dict[str, None] = {}
    for verdicts in report.processors.values():
        for v in verdicts:
            for f in v.findings:
                if len(f.cpus) > 1:
                    seen.setdefault(f"{f.id}: {f.message}", None)
    return list(seen)


def _finding_lines(f: Finding, provenance: Optional[Dict[str, str]] = None) -> List[str]:
    tag = {"fail": "FAIL", "unknown": "UNKNOWN", "advice": "ADVICE"}[f.status]
    if f.status == "fail" and not f.certain:
        tag = "MAY FAIL"
    out = [f"  [{tag}] {f.id} {f.title}".rstrip(), f"      {f.message}", f"      SDM: {f.sdm}"]
    if f.inputs:
        out.append(f"      inputs: {', '.join(f.inputs)}")
    for key in f.inputs:
        if provenance and key in provenance:
            out.append(f"      {key} from {provenance[key]}")
    if f.fix and f.status != "unknown":
        out.append(f"      fix: {f.fix}")
    return out


def render_text(report: Report, snapshot: Snapshot, *, verbose: bool = False) -> str:
    """The per-processor summary table, cross-processor lines, then every finding."""
    lines = _table(summary_rows(report, snapshot))
    cross = cross_lines(report)
    if cross:
        lines.append("")
        lines.append("across processors:")
        lines.extend(f"  {c}" for c in cross)
    for cpu, verdicts in sorted(report.processors.items()):
        prov = snapshot.processors[cpu].provenance if cpu in snapshot.processors else {}
        relevant = {v.instruction for v in report.relevant(cpu)}
        for v in verdicts:
            if v.instruction not in relevant and not verbose:
                continue
            shown = [f for f in v.findings if verbose or f.status != "unknown" or v.outcome == "unknown"]
            if not shown and v.outcome == "ok":
                continue
            possible = f" (possible: {', '.join(v.possible)})" if len(v.possible) > 1 else ""
            lines.append("")
            lines.append(f"cpu {cpu} {v.instruction}: {v.outcome}{possible}")
            for f in shown:
                lines.extend(_finding_lines(f, prov))
    return "\n".join(lines) + "\n"


def render_dml(report: Report, snapshot: Snapshot, command: str = "!vmxcheck") -> str:
    """WinDbg DML: the summary with a link per processor and per finding."""
    rows = summary_rows(report, snapshot)
    out = ["<b>" + html.escape("  ".join(t for _, t in _COLUMNS)) + "</b>"]
    for r in rows:
        cells = "  ".join(html.escape(r.get(k, "")) for k, _ in _COLUMNS[1:])
        out.append(f'<link cmd="{html.escape(command)} cpu {r["cpu"]}">{r["cpu"]}</link>  {cells}')
    for cpu, verdicts in sorted(report.processors.items()):
        for v in verdicts:
            for f in v.findings:
                if f.status == "unknown":
                    continue
                out.append(f'cpu {cpu} {v.instruction}: <link cmd="{html.escape(command)} rule {f.id}">'
                           f"{html.escape(f.id)}</link> {html.escape(f.message)}")
    return "\n".join(out) + "\n"


def render(report: Report, snapshot: Snapshot, fmt: str, *, verbose: bool = False) -> str:
    if fmt == "json":
        return dumps_report(report) + "\n"
    if fmt == "dml":
        return render_dml(report, snapshot)
    return render_text(report, snapshot, verbose=verbose)


__all__ = ["render", "render_text", "render_dml", "summary_rows", "cross_lines", "Verdict"]
