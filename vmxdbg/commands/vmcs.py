"""`vmxdbg vmcs ADDRESS --source FILE`: decode a VMCS region from memory, then check VM entry with it.

The region is read from the physical memory of a snapshot or recording, its
revision id picks the layout (or --layout), every field is printed by its SDM
name, grouped by field type as the SDM groups them (control, read-only data,
guest state, host state), controls with their bit names; then the VM-entry
checks run on the processor that uses it (or --cpu) with these field values.
`--as vmxon` reads the address as a VMXON region instead. On a live target
(`!vmxcheck vmcs ADDR`, vmxdbg/commands/live.py) --source is left out: the region is
read from the target's physical memory and the processors' state collected now.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..decode import defs
from ..decode.layouts import PATH_ENV, find_layout, known_layouts
from ..state.collect import collect
from ..common.errors import InputError
from .live import chosen_cpus, is_live, live_backend, page_reader
from ..decode.regions import Reader, Region, inspect, snapshot_reader
from ..report.render import render_text
from ..report.model import Report, report_to_json
from ..rules import check_snapshot
from ..state.snapshot import Snapshot
from ..inputs.sources import load_any
from ..common.numbers import hexs, parse_count, parse_int

NAME = "vmcs"
HELP = "decode a VMCS (or VMXON) region from memory by its revision id, then run the VM-entry checks on it"
GROUPS = (("control", "Control fields"), ("exit_info", "Read-only data fields (VM-exit information)"),
          ("guest", "Guest-state fields"), ("host", "Host-state fields"))
ENTRY_INSNS = ("vmlaunch", "vmresume")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("address", help="physical address of the region (0x1a2b3000, 1a2b3000, 00000000`1a2b3000)")
    parser.add_argument("--source", type=Path, required=not is_live(parser), metavar="FILE",
                        help="snapshot or recording holding the region's memory (recognised by content)"
                        + ("; left out: the live target" if is_live(parser) else ""))
    parser.add_argument("--layout", default=None, metavar="NAME|FILE",
                        help="layout to use instead of the one the revision id names (`vmxdbg layout list`)")
    parser.add_argument("--cpu", default=None, metavar="N", help="processor to run the VM-entry checks on")
    parser.add_argument("--as", dest="as_kind", choices=("vmcs", "vmxon"), default="vmcs",
                        help="read the address as a VMCS (default) or as a VMXON region")
    parser.add_argument("--no-check", action="store_true", help="only decode, do not run the VM-entry checks")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.add_argument("--partial", action="store_true", help="accept a recording that did not complete")
    parser.add_argument("-v", "--verbose", action="store_true", help="also list unknown rules and zero fields")


# ------------------------------------------------------------------ printing

def _value(enc: int, value: int) -> str:
    width = defs.vmcs_field(enc).width
    digits = {"16": 4, "32": 8}.get(width, 16)
    text = f"0x{value:0{digits}x}"
    ctl = defs.control_for_vmcs(enc)
    if ctl is not None:
        names = ctl.names(value)
        text += "  " + (", ".join(names) if names else "(none)")
    return text


def field_lines(region: Region, verbose: bool = False) -> List[str]:
    """The decoded fields, grouped by type, each as `encoding  SDM name  value [controls]`."""
    lines: List[str] = []
    if region.layout is None:
        return lines
    by_type: Dict[str, List[int]] = {}
    for s in region.layout.slots:
        by_type.setdefault(defs.vmcs_field(s.encoding).type, []).append(s.encoding)
    width = max(len(defs.vmcs_field(s.encoding).sdm_name) for s in region.layout.slots)
    for key, title in GROUPS:
        encs = sorted(by_type.get(key, []))
        if not encs:
            continue
        lines += ["", title]
        hidden = 0
        for enc in encs:
            name = defs.vmcs_field(enc).sdm_name
            if enc not in region.fields:
                lines.append(f"  0x{enc:04x}  {name:<{width}}  ? (memory not known)")
            elif region.fields[enc] == 0 and not verbose and defs.control_for_vmcs(enc) is None:
                hidden += 1
            else:
                lines.append(f"  0x{enc:04x}  {name:<{width}}  {_value(enc, region.fields[enc])}")
        if hidden:
            lines.append(f"  ({hidden} more fields are 0; -v lists them)")
    return lines


def header_lines(region: Region, source: str) -> List[str]:
    kind = {"vmcs": "VMCS region", "shadow-vmcs": "shadow VMCS region", "vmxon": "VMXON region",
            "unknown": "region"}[region.kind]
    lines = [f"{kind} at 0x{region.address:x} (read as {region.asked.upper()}, from {source})"]
    if region.dword0 is not None:
        bit31 = "shadow-VMCS indicator" if region.asked == "vmcs" else "bit 31 (must be 0)"
        lines.append(f"  revision id 0x{region.revision_id:x}, {bit31} {int(bool(region.bit31))}"
                     + (f", VMX-abort indicator 0x{region.abort:x}" if region.abort is not None else ""))
        if region.layout is not None:
            lines.append(f"  layout {region.layout.name}: {region.layout.doc} ({region.layout.path})")
            ls = region.launch_state()
            if ls:
                lines.append(f"  launch state {ls}")
            if region.missing:
                lines.append(f"  {len(region.missing)} fields unknown: their bytes are not in the input")
    for ref in region.references:
        lines.append(f"  cpu {ref.cpu}: {ref.describe()}")
    for note in region.notes:
        tag = "PROBLEM" if note.level == "problem" else "note"
        lines.append(f"  [{tag}] {note.text}" + (f" -- SDM {note.sdm}" if note.sdm else ""))
    return lines


def unknown_revision_message(region: Region) -> str:
    known = ", ".join(f"0x{lay.revision_id:x} ({lay.name})" for lay in known_layouts())
    return (f"no VMCS layout is known for revision id 0x{region.revision_id:x} (at 0x{region.address:x}); "
            f"known: {known}. Learn it once on that machine: run the layout probe "
            f"(docs/vmcs-layouts.md), then `vmxdbg layout learn DUMP -o layout.yaml` and pass "
            f"--layout layout.yaml (or put the file in a directory of ${PATH_ENV})")


# ------------------------------------------------------------------ checking

def checked_snapshot(snapshot: Snapshot, region: Region, cpu: int) -> Snapshot:
    """A copy of `snapshot` reduced to `cpu`, whose current VMCS is this region with its decoded fields.

    Fields the layout does not hold or whose bytes are unknown stay unknown.
    The processor is taken to be in VMX root operation (the checks are for a
    VM entry with this VMCS); the launch state comes from the region when its
    layout stores it, else from the snapshot when this VMCS is already current.
    """
    p = copy.deepcopy(snapshot.processors[cpu])
    was_current = p.vmcs_pointer == region.address
    p.vmcs = dict(region.fields)
    p.vmcs_pointer = region.address
    p.state["vmx"] = "root"
    p.operands = {}
    launch = region.launch_state()
    if launch is not None:
        p.vmcs_launch_state = launch
    elif not was_current:
        p.vmcs_launch_state = None
    where = f"VMCS region at 0x{region.address:x} ({region.layout.name if region.layout else '?'} layout)"
    for enc in region.fields:
        p.provenance[f"vmcs:0x{enc:x}"] = where
    return Snapshot(processors={cpu: p}, memory=snapshot.memory, source=snapshot.source)


def pick_cpu(snapshot: Snapshot, region: Region, asked: Optional[str]) -> Optional[int]:
    """--cpu, else the processor whose current VMCS (or VMPTRLD operand) this is, else the only one."""
    if asked is not None:
        n = parse_count(asked, what="--cpu")
        if n not in snapshot.processors:
            have = ", ".join(str(k) for k in sorted(snapshot.processors)) or "none"
            raise InputError(f"--cpu {asked}: no such processor (the input has: {have})")
        return n
    for role in ("current-vmcs", "vmptrld", "vmclear"):
        for ref in region.references:
            if ref.role == role:
                return ref.cpu
    return next(iter(snapshot.processors)) if len(snapshot.processors) == 1 else None


def entry_report(snapshot: Snapshot, region: Region, cpu: int) -> Tuple[Report, Snapshot]:
    """The VMLAUNCH/VMRESUME verdicts of `cpu` with this region as its current VMCS."""
    snap = checked_snapshot(snapshot, region, cpu)
    full = check_snapshot(snap, [cpu])
    report = Report(source=full.source)
    report.processors[cpu] = [v for v in full.processors[cpu] if v.instruction in ENTRY_INSNS]
    launch = snap.processors[cpu].vmcs_launch_state
    report.next[cpu] = [{"clear": "vmlaunch", "launched": "vmresume"}[launch]] if launch else list(ENTRY_INSNS)
    return report, snap


def show_region(address: int, read: Reader, snapshot: Snapshot, *, asked: str = "vmcs", layout_name: Optional[str] = None,
                cpu: Optional[str] = None, check: bool = True, fmt: str = "text", verbose: bool = False,
                source: str = "") -> Tuple[str, int]:
    """The command's output and exit status (0 fine, 1 a problem or failing check)."""
    layout = find_layout(layout_name) if layout_name else None
    region = inspect(address, read, asked=asked, snapshot=snapshot, layout=layout)
    problems = any(n.level == "problem" for n in region.notes)
    if region.dword0 is None:
        raise InputError(f"the memory at 0x{address:x} is not in the input: nothing to decode"
                         " (a snapshot needs it under \"memory\")", source=source)
    if asked == "vmcs" and region.layout is None and region.kind in ("vmcs", "shadow-vmcs"):
        raise InputError(unknown_revision_message(region), source=source)
    report = None
    rsnap = snapshot
    chosen = None
    if check and asked == "vmcs" and region.layout is not None and region.kind == "vmcs":
        chosen = pick_cpu(snapshot, region, cpu)
        if chosen is None:
            raise InputError("which processor should run the VM-entry checks? the input has several and none "
                             "uses this VMCS: give --cpu N (or --no-check)", source=source)
        report, rsnap = entry_report(snapshot, region, chosen)
    failed = report is not None and report.any_failed()
    status = 1 if problems or failed else 0
    if fmt == "json":
        return json.dumps(_json(region, report), indent=1) + "\n", status
    lines = header_lines(region, source) + field_lines(region, verbose)
    if report is not None:
        lines += ["", f"VM-entry checks on cpu {chosen} with this VMCS current (VMX root operation assumed):"]
        lines += ["  " + x if x else x for x in render_text(report, rsnap, verbose=verbose).rstrip("\n").split("\n")]
    return "\n".join(lines) + "\n", status


def _json(region: Region, report: Optional[Report]) -> dict:
    return {"format": "vmxdbg-region", "version": 1, "address": hexs(region.address),
            "read_as": region.asked, "kind": region.kind,
            "revision_id": None if region.dword0 is None else hexs(region.revision_id or 0),
            "bit31": region.bit31, "abort_indicator": None if region.abort is None else hexs(region.abort),
            "layout": region.layout.name if region.layout else None,
            "launch_state": region.launch_state(),
            "references": [{"cpu": r.cpu, "role": r.role} for r in region.references],
            "notes": [{"level": n.level, "text": n.text, "sdm": n.sdm} for n in region.notes],
            "fields": {hexs(e): hexs(v) for e, v in sorted(region.fields.items())},
            "unknown_fields": [hexs(e) for e in region.missing],
            "report": report_to_json(report) if report is not None else None}


def run(args: argparse.Namespace) -> int:
    address = parse_int(args.address, what="ADDRESS", bits=64)
    backend = live_backend(args)
    if backend is not None and args.source is None:
        snapshot = collect(backend, cpus=chosen_cpus(backend, [args.cpu] if args.cpu is not None else None))
        read, source = page_reader(backend), f"{backend.name} live"
    else:
        snapshot = load_any(args.source, {"partial": args.partial})
        read, source = snapshot_reader(snapshot), str(args.source)
    text, status = show_region(address, read, snapshot, asked=args.as_kind,
                               layout_name=args.layout, cpu=args.cpu, check=not args.no_check,
                               fmt=args.format, verbose=args.verbose, source=source)
    sys.stdout.write(text)
    return status
