"""`vmxdbg replay FILE`: browse a recording (or a snapshot, or any input vmxdbg reads) at a kd prompt."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Tuple

from ..backends.registry import for_file
from ..console.prompt import Console
from .live import parse_cpu
from ..record.recorded import collect_args
from ..inputs.kdlog import KdLog, print_warnings
from ..record.recording import Recording
from ..console.kdcmds import KdState

NAME = "replay"
HELP = "browse a recording, snapshot or kd log at a kd-style prompt (r, rdmsr, !dq, !vmxcheck, t/p/g and back)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="*.vmxrec.jsonl (or .partial), *.vmxsnap.json or a kd log")
    parser.add_argument("--partial", action="store_true", help="accept a recording that did not complete")
    parser.add_argument("-c", dest="commands", metavar="CMDS", default=None,
                        help="run these commands (separated by ;) and exit, as cdb -c does")
    parser.add_argument("--cpu", default=None, metavar="N", help="start on processor N")
    parser.add_argument("--history", metavar="FILE", default=None, help="keep the command history in FILE")


def open_state(path: Path, partial: bool = False) -> Tuple[KdState, str]:
    """A KdState over the file (the backend its content calls for) and a banner line describing it."""
    backend, source = for_file(path, partial=partial)
    if isinstance(source, Recording):
        vmxon = collect_args(source.params, source.path).get("vmxon_pointers", {})
        state = KdState(backend, vmxon_pointers=vmxon, source=str(path))
        stops = backend.stop_count()  # type: ignore[attr-defined]
        moves = f"; {stops} recorded stops (t/p/g forward, t-/p-/g- back, !stops)" if stops else ""
        return state, f"{source.describe()}{moves}"
    if isinstance(source, KdLog):
        print_warnings(source)
    snap = source.snapshot if isinstance(source, KdLog) else source
    state = KdState(backend, snapshot_of=lambda _state: snap, source=str(path))
    kind = "kd log" if isinstance(source, KdLog) else "snapshot"
    return state, f"{path}: {kind}, {len(snap.processors)} processor(s), no recorded execution"


def run(args: argparse.Namespace) -> int:
    state, banner = open_state(args.file, args.partial)
    if args.cpu is not None:
        state.cpu = parse_cpu(args.cpu, state.backend.processors())
    if args.commands is not None:
        return Console(state).run_script(c for c in args.commands.split(";") if c.strip())
    console = Console(state, history_file=args.history, banner=f"{banner}\ntype help for the commands, q to quit")
    if not sys.stdin.isatty():      # a pipe or a file: read commands without a line editor
        return console.run_piped(sys.stdin)
    return console.run()
