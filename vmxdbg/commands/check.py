"""`vmxdbg check FILE`: predict VMXON / VM entry on every processor and explain each broken rule.

On a live target (a host attached a backend, see vmxdbg/commands/live.py) FILE is left
out and the state is read from the target now.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..state.assume import apply_assumptions, parse_assumptions
from ..common.errors import InputError
from ..common.numbers import parse_count
from .live import add_live_check_arguments, is_live, live_backend, live_check_snapshot
from ..report.render import render
from ..rules import check_snapshot
from ..state.snapshot import Snapshot
from ..inputs.sources import load_any

NAME = "check"
HELP = "check a snapshot, recording or kd log and explain every broken rule"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    live = is_live(parser)
    parser.add_argument("file", type=Path, nargs="?" if live else None,
                        help="*.vmxsnap.json, *.vmxrec.jsonl or a kd log (recognised by content)"
                        + ("; left out: the live target" if live else ""))
    parser.add_argument("--format", choices=("text", "json", "dml"), default="text")
    parser.add_argument("--cpu", action="append", default=None, metavar="N",
                        help="only this processor (repeatable)")
    parser.add_argument("--at", metavar="LINE", default=None, help="kd logs: the state as it stood at this line")
    parser.add_argument("--partial", action="store_true", help="accept a recording that did not complete (.partial)")
    parser.add_argument("-v", "--verbose", action="store_true", help="also list every unknown rule")
    parser.add_argument("--assume", action="append", default=[], metavar="KEY=VALUE",
                        help="state no debugger shows, e.g. vmx=off, a20m=0, smx=0, hypervisor=1 (fills only what is unknown; "
                        "a value that contradicts what the state proves is reported)")
    if live:
        add_live_check_arguments(parser)


def trace_recording(path: Path, partial: bool) -> bool:
    """A recording of `vmxdbg trace` (with the code it stepped through): checked stop
    by stop, as the trace it is. Other recordings are checked in their last state."""
    from ..record.recording import read_recording
    from ..inputs.sources import kind_of
    if kind_of(path) != "recording":
        return False
    rec = read_recording(path, partial=partial)
    return rec.command == "trace" and (isinstance(rec.params.get("code"), dict) or "stage" in rec.params)


def select_cpus(snapshot: Snapshot, cpus: object) -> list:
    """The processors asked for with --cpu (all by default); InputError for one that is not there."""
    if not cpus:
        return sorted(snapshot.processors)
    out = []
    for c in cpus:  # type: ignore[attr-defined]
        n = parse_count(str(c), what="--cpu")
        if n not in snapshot.processors:
            have = ", ".join(str(k) for k in sorted(snapshot.processors)) or "none"
            raise InputError(f"--cpu {c}: no such processor (the input has: {have})")
        out.append(n)
    return out


def check_trace(args: argparse.Namespace) -> int:
    """A recording of `vmxdbg trace` is checked as the trace it is: every stop, predicted
    vs actual. --cpu keeps those processors' stops; --at, --assume and --format dml are
    refused, each with its reason."""
    from .trace import show_recorded_trace
    if args.at is not None:
        raise InputError("--at LINE is for kd logs; a trace recording is checked stop by stop "
                         "(`vmxdbg snapshot REC --stop N` gives the state at one stop)", source=str(args.file))
    if args.assume:
        raise InputError("--assume: a trace recording replays with the assumptions it was recorded with "
                         "(another changes what the prediction reads, so the replay would diverge)",
                         source=str(args.file))
    if args.format == "dml":
        raise InputError("--format dml: a trace recording is shown as a table (text) or as json",
                         source=str(args.file))
    cpus = [parse_count(c, what="--cpu") for c in args.cpu or []]
    return show_recorded_trace(args.file, args.partial, args.format, args.verbose, cpus=cpus)


def run(args: argparse.Namespace) -> int:
    backend = live_backend(args)
    if backend is not None and args.file is None:
        snapshot = live_check_snapshot(args, backend)
        cpus = sorted(snapshot.processors)
    elif trace_recording(args.file, args.partial):
        return check_trace(args)
    else:
        options = {"partial": args.partial}
        if args.at is not None:
            options["at_line"] = parse_count(args.at, what="--at")
        snapshot = load_any(args.file, options)
        for note in options.get("notes", []):
            print(f"vmxdbg: note: {note}", file=sys.stderr)
        cpus = select_cpus(snapshot, args.cpu)
    for conflict in apply_assumptions(snapshot, parse_assumptions(args.assume)):
        print(f"vmxdbg: note: {conflict}", file=sys.stderr)
    report = check_snapshot(snapshot, cpus)
    sys.stdout.write(render(report, snapshot, args.format, verbose=args.verbose))
    return 1 if report.any_failed() else 0
