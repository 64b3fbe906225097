"""`vmxdbg snapshot FILE -o out.vmxsnap.json`: export what vmxdbg understood of any input."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..state.evidence import evidence_of
from ..state.snapshot import save_snapshot
from ..inputs.sources import load_any
from ..common.errors import InputError, refuse_existing
from ..common.numbers import parse_count

NAME = "snapshot"
HELP = "export what was understood of a kd log, recording or snapshot as a *.vmxsnap.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="a kd log, *.vmxrec.jsonl or *.vmxsnap.json (recognised by content)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the snapshot file to write")
    parser.add_argument("--at", metavar="LINE", default=None, help="kd logs: the state as it stood at this line")
    parser.add_argument("--partial", action="store_true", help="accept a recording that did not complete (.partial)")
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--stop", metavar="N", default=None,
                        help="recordings: each processor as read at its last stop up to stop N (as `vmxdbg replay` "
                             "numbers them); default: each processor's last complete stop")


def run(args: argparse.Namespace) -> int:
    refuse_existing(args.output, "the output file", args.force)
    options = {"partial": args.partial}
    if args.at is not None:
        options["at_line"] = parse_count(args.at, what="--at")
    if args.stop is not None:
        from ..inputs.sources import kind_of
        if kind_of(args.file) != "recording":
            raise InputError("--stop N is for recordings (their stops); a kd log takes --at LINE",
                             source=str(args.file))
        options["stop"] = parse_count(args.stop, what="--stop")
    snapshot = load_any(args.file, options)
    for note in options.get("notes", []):
        print(f"vmxdbg: note: {note}", file=sys.stderr)
    inferred = {cpu: [i.to_json() for i in evidence_of(p).all_inferences()]
                for cpu, p in snapshot.processors.items()}
    save_snapshot(snapshot, args.output, inferred)
    cpus = ", ".join(str(c) for c in sorted(snapshot.processors)) or "none"
    n = sum(len(v) for v in inferred.values())
    note = f"; {n} value(s) inferred from the state, under each processor's \"inferred\" key, not read" if n else ""
    sys.stderr.write(f"vmxdbg: wrote {args.output} (processors: {cpus}{note})\n")
    return 0
