"""Findings, verdicts and the report format (`vmxdbg check --format json`).

The JSON form is specified in docs/formats.md (its structure:
vmxdbg/schemas/report.schema.json); `report_to_json` and `report_from_json`
are its only writer and reader.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from ..common.jsonfile import read_json_file
from ..common.schema import validate

FORMAT = "vmxdbg-report"
VERSION = 1
MAX_FILE_BYTES = 64 * 1024 * 1024
STATUSES = ("fail", "unknown", "advice")


@dataclass
class Finding:
    id: str
    status: str            # fail | unknown | advice
    sdm: str
    inputs: List[str]
    message: str
    fix: str
    title: str = ""
    outcome: str = ""      # what this finding alone would make the instruction do
    certain: bool = True
    cpus: List[int] = field(default_factory=list)  # cross-processor findings: who is involved
    advisory: bool = False  # from an advice rule: never changes an outcome, even when unknown
    missing: str = ""       # unknown findings: the input key that was missing
    inferred: List[str] = field(default_factory=list)    # inferences it rests on ("X, inferred from Y")
    regardless: List[str] = field(default_factory=list)  # missing inputs that could not change it

    def to_json(self) -> dict:
        out = {"id": self.id, "status": self.status, "sdm": self.sdm, "inputs": list(self.inputs),
               "message": self.message, "fix": self.fix}
        if self.inferred:
            out["inferred"] = list(self.inferred)
        if self.regardless:
            out["regardless"] = list(self.regardless)
        return out


@dataclass
class Verdict:
    instruction: str
    outcome: str
    possible: List[str]
    findings: List[Finding]
    #: every inference the verdict rests on, including those of rules that held
    inferred: List[str] = field(default_factory=list)
    #: input keys this verdict rests on whose values were assumed (--assume), not read
    assumed: List[str] = field(default_factory=list)

    def to_json(self) -> dict:
        out = {"instruction": self.instruction, "outcome": self.outcome,
               "possible": list(self.possible), "findings": [f.to_json() for f in self.findings]}
        if self.inferred:
            out["inferred"] = list(self.inferred)
        if self.assumed:
            out["assumed"] = list(self.assumed)
        return out


@dataclass
class Report:
    processors: Dict[int, List[Verdict]] = field(default_factory=dict)
    source: str = ""
    #: per processor, the instructions its state says it runs next (all when unknown)
    next: Dict[int, List[str]] = field(default_factory=dict)
    #: per processor, what its state proves (state/evidence.py): inferences, contradictions,
    #: the hypervisor it runs under, what only --assume can decide
    evidence: Dict[int, Dict[str, Any]] = field(default_factory=dict)

    def relevant(self, cpu: int) -> List[Verdict]:
        """The verdicts of the instructions this processor is about to run."""
        wanted = self.next.get(cpu)
        return [v for v in self.processors.get(cpu, []) if wanted is None or v.instruction in wanted]

    def verdict(self, cpu: int, instruction: str) -> Optional[Verdict]:
        for v in self.processors.get(cpu, []):
            if v.instruction == instruction:
                return v
        return None

    def any_failed(self) -> bool:
        """True when a verdict of an instruction some processor is about to run is
        not `ok` or has a failed finding (CLI exit status 1). VMLAUNCH's #UD on a
        processor that has yet to run VMXON is a verdict, not a failure; advice
        (problems no instruction checks, such as a shared VMXON region) is shown,
        and never changes the exit status."""
        if any(e.get("contradictions") for e in self.evidence.values()):
            return True   # inputs that disagree are never settled silently
        return any(v.outcome != "ok" or any(f.status == "fail" for f in v.findings)
                   for cpu in self.processors for v in self.relevant(cpu))


def report_to_json(report: Report) -> dict:
    out = {"format": FORMAT, "version": VERSION,
           "processors": {str(cpu): [v.to_json() for v in vs]
                          for cpu, vs in sorted(report.processors.items())}}
    evidence = {str(cpu): e for cpu, e in sorted(report.evidence.items()) if any(e.values())}
    if evidence:
        out["evidence"] = evidence
    return out


def dumps_report(report: Report) -> str:
    return json.dumps(report_to_json(report), indent=1)


def report_from_json(data: Any, source: str = "<report>") -> Report:
    """Read a report back (expected reports next to recordings use this); the schema
    checks keys and types, so this only builds the objects."""
    validate(data, "report", source)
    rep = Report(source=source)
    for cpu_s, verdicts in data["processors"].items():
        rep.processors[int(cpu_s)] = [
            Verdict(v["instruction"], v["outcome"], list(v.get("possible", [v["outcome"]])),
                    [Finding(f["id"], f["status"], f.get("sdm", ""), list(f.get("inputs", [])),
                             f.get("message", ""), f.get("fix", "")) for f in v.get("findings", [])])
            for v in verdicts]
    return rep


def load_report(path: Union[str, os.PathLike]) -> Report:
    """Read a report file (e.g. the NAME.expected.json next to a recording); InputError names
    the file and the line or key of any problem. Bounded: MAX_FILE_BYTES, JSON nesting."""
    p = Path(path)
    data = read_json_file(p, "report", MAX_FILE_BYTES)
    return report_from_json(data, source=str(p))
