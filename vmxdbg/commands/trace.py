"""`vmxdbg trace`: step a hypervisor through VMXON / VMLAUNCH on every core and compare predictions."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from ..common.errors import InputError, refuse_existing
from .live import add_live_trace_arguments, is_live, live_backend, live_trace
from ..record.recording import read_recording
from ..trace.stepper import INTERRUPTED, NOT_REACHED, StepResult
from ..trace.session import TRACE, interruption, render_trace, replay_trace, trace_report_json

NAME = "trace"
HELP = "step every core through its VMX instructions (live Bochs, or a recorded trace) and compare predictions"
DESCRIPTION = (HELP + ". With --bochs, boots the bundled test hypervisor (vmxdbg/hypervisors/minihv) under Bochs, "
               "or with --hypervisor linux-kvm Linux with KVM (docs/kvm.md); --knob CPU:NAME breaks one thing on "
               "one core (minihv: see vmxdbg/hypervisors/minihv/README.md; linux-kvm: injected through the "
               "debugger, vmxdbg/trace/faults.py).")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    live = is_live(parser)     # on a live target (`!vmxcheck trace --code ...`) neither source is needed
    src = parser.add_mutually_exclusive_group(required=not live)
    src.add_argument("--bochs", action="store_true", help="boot the test hypervisor under a live Bochs")
    src.add_argument("--replay", type=Path, metavar="REC", help="replay a recorded trace (*.vmxrec.jsonl)")
    parser.add_argument("--hypervisor", choices=("minihv", "linux-kvm"), default="minihv",
                        help="--bochs: the bundled test hypervisor (default), or Debian's Linux kernel with "
                             "its unmodified kvm_intel module (an image built and cached on first use)")
    parser.add_argument("--cpus", type=int, default=None, help="processors for --bochs (default 2)")
    parser.add_argument("--knob", action="append", default=[], metavar="CPU:NAME[=VALUE]",
                        help="break something on one core of the test hypervisor (repeatable)")
    parser.add_argument("--record", type=Path, metavar="FILE", help="record the live session to FILE")
    parser.add_argument("--force", action="store_true", help="replace the --record FILE if it exists")
    parser.add_argument("--breakpoints", action="store_true",
                        help="--bochs: stop with code breakpoints, not the test hypervisor's magic breakpoints "
                             "(as for a hypervisor that has none; Bochs may miss one, and says so)")
    parser.add_argument("--cold-boot", action="store_true",
                        help="--hypervisor linux-kvm: boot Linux from its CD (minutes), not from the booted "
                             "machine saved next to the image on first use")
    parser.add_argument("--partial", action="store_true", help="accept an unfinished (.partial) recording")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each stop")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.add_argument("-v", "--verbose", action="store_true", help="also list unknown rules")
    if live:
        add_live_trace_arguments(parser)


def exit_status(results: List[StepResult]) -> int:
    """0 when every stop reached was predicted right and its instruction succeeded, and no
    planned stop was missed; else 1 (also when no stop was reached at all). A session that
    ended early is judged by the stops it reached."""
    bad = [r for r in results if r.match is False or (r.verdict is not None and r.actual != "ok")
           or (r.verdict is None and r.actual not in (INTERRUPTED, NOT_REACHED))]
    reached = [r for r in results if r.verdict is not None]
    return 1 if bad or not reached else 0


#: what `trace --replay` cannot take, and why
LIVE_ONLY = (("record", "--record", "a replay makes no new session to record"),
             ("knob", "--knob", "the knobs of a recorded trace are those it was recorded with"),
             ("cpus", "--cpus", "a recorded trace has the processors it was recorded with"))
#: what other files are, and which command reads them
READ_BY = {"snapshot": "a snapshot (*.vmxsnap.json): `vmxdbg check` or `vmxdbg replay` reads it",
           "kd log": "a kd log: `vmxdbg check` or `vmxdbg replay` reads it"}


def show_recorded_trace(path: Path, partial: bool, fmt: str, verbose: bool, *,
                        cpus: Optional[Sequence[int]] = None) -> int:
    """Replay a recorded trace and print it (shared by `trace --replay` and `check`):
    only the stops of `cpus` when given."""
    from ..inputs.sources import kind_of
    kind = kind_of(path)
    if kind != "recording":
        raise InputError(f"not a trace recording but {READ_BY[kind]}", source=str(path))
    rec = read_recording(path, partial=partial)
    if rec.command != TRACE:
        raise InputError(f"a recording of `{rec.command}`, not of a trace (use `vmxdbg check` on it)",
                         source=str(path))
    results = replay_trace(rec)
    if cpus:
        have = sorted({r.cpu for r in results if r.cpu >= 0})
        for c in cpus:
            if c not in have:
                raise InputError(f"--cpu {c}: the trace has no stop on that processor (it has: "
                                 f"{', '.join(map(str, have)) or 'none'})", source=str(path))
        results = [r for r in results if r.cpu in cpus or (r.cpu < 0 and r.actual == INTERRUPTED)]
    ended = rec.ended_early()
    if ended is not None and interruption(results) is None:
        print(f"vmxdbg: note: {path}: {ended}, but it holds the whole trace", file=sys.stderr)
    if fmt == "json":
        sys.stdout.write(json.dumps(trace_report_json(results), indent=1) + "\n")
    else:
        sys.stdout.write(render_trace(results, verbose=verbose))
    return exit_status(results)


def run(args: argparse.Namespace) -> int:
    if args.replay is not None:
        for attr, option, why in LIVE_ONLY:
            if getattr(args, attr, None) not in (None, []):
                raise InputError(f"{option} does not go with --replay: {why}")
        if args.cold_boot:
            raise InputError("--cold-boot does not go with --replay: a replay boots nothing")
        return show_recorded_trace(args.replay, args.partial, args.format, args.verbose)
    if args.cpus is None:
        args.cpus = 2
    refuse_existing(args.record, "the recording", args.force)
    if live_backend(args) is not None and not args.bochs:
        results = live_trace(args, live_backend(args))  # type: ignore[arg-type]
    elif args.hypervisor == "linux-kvm":
        from ..hypervisors.linux_kvm.demo import kvm_trace
        if args.breakpoints:
            raise InputError("--breakpoints is for minihv: KVM has no magic breakpoints, it is always "
                             "stepped with code breakpoints")
        results = kvm_trace(cpus=args.cpus, knobs=args.knob, record=args.record, timeout=args.timeout,
                            argv=sys.argv[1:], cold=args.cold_boot, log=lambda line: print(line, file=sys.stderr))
    else:
        if args.cold_boot:
            raise InputError("--cold-boot is for --hypervisor linux-kvm: minihv boots from its floppy in seconds")
        from ..hypervisors.minihv.demo import bochs_trace
        results = bochs_trace(cpus=args.cpus, knobs=args.knob, record=args.record, timeout=args.timeout,
                              magic=not args.breakpoints,
                              argv=sys.argv[1:])
    if args.format == "json":
        sys.stdout.write(json.dumps(trace_report_json(results), indent=1) + "\n")
    else:
        sys.stdout.write(render_trace(results, verbose=args.verbose))
    return exit_status(results)
