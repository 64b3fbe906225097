"""`vmxdbg caps FILE`: what each processor's VMX capability MSRs allow, bit by bit.

For every VMX control bit: may it be 0, may it be 1 (TRUE_ MSRs used when
IA32_VMX_BASIC[55]=1, default1 bits handled), then the CR0/CR4 bits VMX
operation fixes, and IA32_FEATURE_CONTROL, BASIC, MISC, VMCS_ENUM and EPT/VPID
capabilities decoded. An MSR the input does not have prints as unknown, never
as 0. Processors with identical capability MSRs are shown once.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Tuple

from ..decode.caps import Section, capability_report
from ..inputs.sources import load_any
from ..common.numbers import windbg_hex
from .check import select_cpus

NAME = "caps"
HELP = "show what the VMX capability MSRs allow, control bit by control bit"
DESCRIPTION = __doc__

RELEVANT = (0x3A,) + tuple(range(0x480, 0x494))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("file", type=Path, help="*.vmxsnap.json (or any input `vmxdbg check` reads)")
    parser.add_argument("--cpu", action="append", default=None, metavar="N", help="only this processor (repeatable)")
    parser.add_argument("--partial", action="store_true", help="accept a recording that did not complete (.partial)")


def run(args: argparse.Namespace) -> int:
    snapshot = load_any(args.file, {"partial": args.partial})
    groups: Dict[Tuple[Tuple[int, int], ...], List[int]] = {}
    for cpu in select_cpus(snapshot, args.cpu):
        msrs = snapshot.processors[cpu].msr
        key = tuple(sorted((i, v) for i, v in msrs.items() if i in RELEVANT))
        groups.setdefault(key, []).append(cpu)
    out = []
    for key, cpus in groups.items():
        who = f"processor {cpus[0]}" if len(cpus) == 1 else \
            f"processors {', '.join(map(str, cpus))} (identical capability MSRs)"
        out.append(f"### {who}\n")
        out.append(render(capability_report(dict(key))))
    sys.stdout.write("\n".join(out))
    return 0


def _yes(v: object) -> str:
    return "?" if v is None else ("yes" if v else "no")


def render(sections: List[Section]) -> str:
    """The report as text: a header line per section, then its bits or fields."""
    lines: List[str] = []
    for s in sections:
        head = f"== {s.title}  [{s.source}]"
        if s.value is not None:
            head = f"== {s.title}  [{s.source} = {windbg_hex(s.value)}]"
        lines.append(head)
        if s.note:
            lines.append(f"   {s.note}")
        if s.status == "unsupported":
            lines.append("")
            continue
        if s.kind == "register":
            if s.status == "unknown":
                lines.append("   unknown")
            for f in s.fields:
                number = f"{f.value}" if f.hi == f.lo else f"0x{f.value:x}"
                meaning = "" if f.meaning in (number, f"{number} ({f.value})") else f.meaning
                lines.append(f"   {f.bits:<6} {f.name:<40} {number:<10} {meaning}".rstrip())
        else:
            lines.append(f"   {'bit':>3}  {'control':<40} {'may be 0':<9} {'may be 1':<9} verdict")
            for b in s.bits:
                lines.append(f"   {b.bit:>3}  {b.name:<40} {_yes(b.may_be_0):<9} {_yes(b.may_be_1):<9} {b.verdict}")
        lines.append("")
    return "\n".join(lines)

