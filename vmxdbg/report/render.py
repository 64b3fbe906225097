"""Render a report as text, WinDbg DML or JSON. Rows are built separately from how they print."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

from ..common.statekeys import STATES
from .model import Finding, Report, Verdict, dumps_report
from ..state.evidence import evidence_of
from ..state.snapshot import Processor, Snapshot
from ..common.numbers import hexs

SUMMARY_INSNS = ("vmxon", "vmlaunch", "vmresume")


def _known(v: Optional[int]) -> str:
    return "?" if v is None else hexs(v)


def vmx_column(p: Processor, leaf1: Optional[tuple]) -> str:
    """CPUID.1:ECX.VMX, or what the state proves of it without CPUID (a readable VMX
    capability MSR or CR4.VMXE = 1 proves VMX, an AMD vendor string its absence:
    state/evidence.py; the inference is listed under the processor's verdicts)."""
    if leaf1 is not None:
        return "yes" if leaf1[2] >> 5 & 1 else "no"
    inf = evidence_of(p).flag(1, 0, 2, 5)
    if inf is not None:
        return "yes" if inf.value else "no"
    return "?"


def summary_rows(report: Report, snapshot: Snapshot) -> List[Dict[str, str]]:
    """One row per processor: VMX support, feature control, CR0, CR4, VMXON pointer, outcomes."""
    rows = []
    for cpu, verdicts in sorted(report.processors.items()):
        p = snapshot.processors.get(cpu) or Processor()
        leaf1 = p.cpuid.get((1, 0))
        row = {
            "cpu": str(cpu),
            "vmx": vmx_column(p, leaf1),
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


class Markup:
    """How a document is marked up: plain text does nothing; DML escapes, links and colours."""

    def esc(self, text: str) -> str:
        return text

    def link(self, cmd: str, text: str) -> str:
        return self.esc(text)

    def bold(self, text: str) -> str:
        return self.esc(text)

    def col(self, color: str, text: str) -> str:
        return self.esc(text)


class Dml(Markup):
    """WinDbg Debugger Markup Language: <link cmd=...>, <b>, <col fg=...>, XML-style escapes."""

    def __init__(self, command: str = "!vmxcheck") -> None:
        self.command = command

    def esc(self, text: str) -> str:
        """DML documents four entities only: &amp; &lt; &gt; &quot; (no &#x27; for ')."""
        return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")

    def link(self, cmd: str, text: str) -> str:
        return f'<link cmd="{self.esc(self.command + " " + cmd)}">{self.esc(text)}</link>'

    def bold(self, text: str) -> str:
        return f"<b>{self.esc(text)}</b>"

    def col(self, color: str, text: str) -> str:
        return f'<col fg="{color}">{self.esc(text)}</col>'


PLAIN = Markup()


def _outcome_color(outcome: str) -> Optional[str]:
    if outcome in ("", "ok", "?"):
        return None
    return "warnfg" if outcome == "unknown" else "errfg"


def _table(rows: Sequence[Dict[str, str]], m: Markup = PLAIN) -> List[str]:
    """Columns padded on the plain text, so the DML table lines up as the text one does."""
    widths = {k: max([len(t)] + [len(r.get(k, "")) for r in rows]) for k, t in _COLUMNS}
    lines = [m.bold("  ".join(t.ljust(widths[k]) for k, t in _COLUMNS).rstrip()) if m is not PLAIN
             else "  ".join(t.ljust(widths[k]) for k, t in _COLUMNS).rstrip()]
    for r in rows:
        cells = []
        for i, (k, _) in enumerate(_COLUMNS):
            text = r.get(k, "")
            pad = " " * (widths[k] - len(text)) if i < len(_COLUMNS) - 1 else ""
            if k == "cpu":
                cell = m.link(f"cpu {text}", text)
            elif k in SUMMARY_INSNS and _outcome_color(text):
                cell = m.col(_outcome_color(text) or "", text)
            else:
                cell = m.esc(text)
            cells.append(cell + pad)
        lines.append("  ".join(cells).rstrip())
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


MAX_MISSING = 8
ASSUMABLE = STATES


def how_to_read(key: str) -> str:
    """The debugger command that shows a missing input (what a kd log would need)."""
    kind, _, what = key.partition(":")
    if kind == "msr":
        return f"rdmsr {what}"
    if kind == "reg":
        return f"r {what}" if "." not in what else f"r {what.split('.')[0]}"
    if kind == "cpuid":
        return "no kd command prints CPUID leaves: add them to a snapshot"
    if kind == "mem":
        return f"!dq {what}"
    if kind == "vmcs":
        return f"VMREAD {what} in the driver, or `vmxdbg vmcs` on the region"
    if what in ("vmxon_pointer", "vmcs_pointer") or what.endswith("_operand"):
        return "the instruction's operand: `vmxdbg trace` reads it at the instruction"
    return f"not visible to a debugger: --assume {what}=..." if what in ASSUMABLE else \
        "not visible to a debugger: give it in the snapshot"


def _assumable(key: str) -> bool:
    return key.startswith("state:") and key[6:] in ASSUMABLE


def missing_lines(v: Verdict) -> List[str]:
    """One line naming each missing input that leaves this verdict unknown, and how to read it.
    State only --assume can give is named once per processor instead (evidence_lines)."""
    keys: Dict[str, None] = {}
    for f in v.findings:
        if f.status == "unknown" and not f.advisory and f.missing and not _assumable(f.missing):
            keys.setdefault(f.missing, None)
    if not keys:
        return []
    shown = list(keys)[:MAX_MISSING]
    more = f", and {len(keys) - len(shown)} more (-v lists every rule)" if len(keys) > len(shown) else ""
    return ["  unknown: these inputs are missing: " + ", ".join(f"{k} ({how_to_read(k)})" for k in shown) + more]


def _finding_lines(f: Finding, provenance: Optional[Dict[str, str]] = None, m: Markup = PLAIN) -> List[str]:
    tag = {"fail": "FAIL", "unknown": "UNKNOWN", "advice": "ADVICE"}[f.status]
    if f.status == "fail" and not f.certain:
        tag = "MAY FAIL"
    color = {"fail": "errfg", "unknown": "warnfg"}.get(f.status)
    tag_text = m.col(color, f"[{tag}]") if color else m.esc(f"[{tag}]")
    title = f" {f.title}" if f.title else ""
    out = [f"  {tag_text} {m.link(f'rule {f.id}', f.id)}{m.esc(title)}".rstrip(),
           m.esc(f"      {f.message}"), m.esc(f"      SDM: {f.sdm}")]
    if f.inputs:
        out.append(m.esc(f"      inputs: {', '.join(f.inputs)}"))
    for key in f.inputs:
        if provenance and key in provenance:
            out.append(m.esc(f"      {key} from {provenance[key]}"))
    for text in f.inferred:
        out.append(m.esc(f"      inferred: {text}"))
    for text in f.regardless:
        out.append(m.esc(f"      regardless: {text}"))
    if f.fix and f.status != "unknown":
        out.append(m.esc(f"      fix: {f.fix}"))
    return out


def evidence_lines(report: Report, cpu: int) -> List[str]:
    """What one processor's state proves, once per processor: the hypervisor underneath,
    inputs that contradict each other, the inferences its verdicts rest on, and the
    state only --assume can decide."""
    ev = report.evidence.get(cpu) or {}
    out: List[str] = []
    hv = ev.get("hypervisor")
    if hv:
        out.append(f"cpu {cpu}: runs under a hypervisor ({hv['evidence']}): VMXON and VM entry cause a VM exit "
                   "to it, which emulates them (nested virtualization) or raises #UD where it hides VMX. "
                   "A driver that works on bare metal fails here for that reason.")
    for c in ev.get("contradictions") or []:
        out.append(f"cpu {cpu}: inputs disagree: {c['message']}")
    for i in ev.get("inferences") or []:
        out.append(f"cpu {cpu}: {i['conclusion']}, inferred from {i['evidence']} (SDM: {i['sdm']})")
    assume = ev.get("assume") or []
    if assume:
        out.append(f"cpu {cpu}: only --assume can decide {', '.join(assume)} (no debugger shows it): "
                   + " ".join(f"--assume {k}=..." for k in assume))
    return out


def _document(report: Report, snapshot: Snapshot, verbose: bool, m: Markup) -> str:
    """The per-processor summary table, cross-processor lines, then every finding."""
    lines = _table(summary_rows(report, snapshot), m)
    cross = cross_lines(report)
    if cross:
        lines.append("")
        lines.append("across processors:")
        lines.extend(m.esc(f"  {c}") for c in cross)
    for cpu, verdicts in sorted(report.processors.items()):
        prov = snapshot.processors[cpu].provenance if cpu in snapshot.processors else {}
        relevant = {v.instruction for v in report.relevant(cpu)}
        ev_lines = evidence_lines(report, cpu)
        if ev_lines:
            lines.append("")
            lines.extend(m.esc(line) for line in ev_lines)
        for v in verdicts:
            if v.instruction not in relevant and not verbose:
                continue
            shown = [f for f in v.findings if verbose or f.status != "unknown"]
            if not shown and v.outcome == "ok" and not v.assumed:
                continue
            possible = f" (possible: {', '.join(v.possible)})" if len(v.possible) > 1 else ""
            lines.append("")
            outcome = m.col(_outcome_color(v.outcome) or "", v.outcome) if _outcome_color(v.outcome) \
                else m.esc(v.outcome)
            lines.append(f"{m.link(f'cpu {cpu}', f'cpu {cpu}')} {m.esc(v.instruction)}: {outcome}{m.esc(possible)}"
                         + m.esc(assumed_mark(v, prov)))
            for f in shown:
                lines.extend(_finding_lines(f, prov, m))
            if not verbose and v.outcome == "unknown":
                lines.extend(m.esc(line) for line in missing_lines(v))
    return "\n".join(lines) + "\n"


def assumed_mark(v: Verdict, provenance: Optional[Dict[str, str]] = None) -> str:
    """What a verdict line adds when the verdict rests on assumed values ("" when none)."""
    if not v.assumed:
        return ""
    said = [provenance.get(k, k) if provenance else k for k in v.assumed]
    return "  [rests on an assumption: " + "; ".join(
        f"{k} {s.split(' ', 1)[1]}" if s.startswith("assumed ") else k for k, s in zip(v.assumed, said)) + "]"


def render_text(report: Report, snapshot: Snapshot, *, verbose: bool = False) -> str:
    """The per-processor summary table, cross-processor lines, then every finding."""
    return _document(report, snapshot, verbose, PLAIN)


def render_dml(report: Report, snapshot: Snapshot, command: str = "!vmxcheck", *, verbose: bool = False) -> str:
    """WinDbg DML: the text document with a link per processor (`COMMAND cpu N`) and per finding
    (`COMMAND rule ID`), outcomes coloured; stripped of its tags it is the text."""
    return _document(report, snapshot, verbose, Dml(command))


def render(report: Report, snapshot: Snapshot, fmt: str, *, verbose: bool = False) -> str:
    if fmt == "json":
        return dumps_report(report) + "\n"
    if fmt == "dml":
        return render_dml(report, snapshot, verbose=verbose)
    return render_text(report, snapshot, verbose=verbose)


__all__ = ["render", "render_text", "render_dml", "summary_rows", "cross_lines", "Markup", "Dml", "Verdict"]
