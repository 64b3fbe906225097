"""`vmxdbg trace`: step a hypervisor through VMXON / VMLAUNCH on every core and compare predictions."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List

from ..errors import InputError
from ..live import add_live_trace_arguments, is_live, live_backend, live_trace
from ..recording import read_recording
from ..stepper import StepResult
from ..trace import TRACE, render_trace, replay_trace, trace_report_json

NAME = "trace"
HELP = "step every core through its VMX instructions (live Bochs, or a recorded trace) and compare predictions"
DESCRIPTION = (HELP + ". With --bochs, boots the bundled test hypervisor (tests/fixtures/minihv) under Bochs, or "
               "with --hypervisor linux-kvm Linux with KVM (docs/kvm.md); --knob CPU:NAME breaks one thing on one "
               "core (minihv: see tests/fixtures/minihv/README.md; linux-kvm: injected through the debugger, "
               "vmxdbg/kvm_knobs.py).")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    live = is_live(parser)     # on a live target (`!vmxcheck trace --code ...`) neither source is needed
    src = parser.add_mutually_exclusive_group(required=not live)
    src.add_argument("--bochs", action="store_true", help="boot the test hypervisor under a live Bochs")
    src.add_argument("--replay", type=Path, metavar="REC", help="replay a recorded trace (*.vmxrec.jsonl)")
    parser.add_argument("--hypervisor", choices=("minihv", "linux-kvm"), default="minihv",
                        help="--bochs: the bundled test hypervisor (default), or Debian's Linux kernel with "
                             "its unmodified kvm_intel module (an image built and cached on first use)")
    parser.add_argument("--cpus", type=int, default=2, help="processors for --bochs (default 2)")
    parser.add_argument("--knob", action="append", default=[], metavar="CPU:NAME[=VALUE]",
                        help="break something on one core of the test hypervisor (repeatable)")
    parser.add_argument("--record", type=Path, metavar="FILE", help="record the live session to FILE")
    parser.add_argument("--breakpoints", action="store_true",
                        help="--bochs: stop with code breakpoints, not the test hypervisor's magic breakpoints "
                             "(as for a hypervisor that has none; Bochs may miss one, and says so)")
    parser.add_argument("--partial", action="store_true", help="accept an unfinished (.partial) recording")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each stop")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.add_argument("-v", "--verbose", action="store_true", help="also list unknown rules")
    if live:
        add_live_trace_arguments(parser)


def exit_status(results: List[StepResult]) -> int:
    """0 when every stop was predicted right and every instruction succeeded, else 1."""
    bad = [r for r in results if r.match is False or (r.verdict is not None and r.actual != "ok")]
    return 1 if bad else 0


def show_recorded_trace(path: Path, partial: bool, fmt: str, verbose: bool) -> int:
    """Replay a recorded trace and print it (shared by `trace --replay` and `check`)."""
    rec = read_recording(path, partial=partial)
    if rec.command != TRACE:
        raise InputError(f"a recording of `{rec.command}`, not of a trace (use `vmxdbg check` on it)",
                         source=str(path))
    results = replay_trace(rec)
    if fmt == "json":
        sys.stdout.write(json.dumps(trace_report_json(results), indent=1) + "\n")
    else:
        sys.stdout.write(render_trace(results, verbose=verbose))
    return exit_status(results)


def run(args: argparse.Namespace) -> int:
    if args.replay is not None:
        return show_recorded_trace(args.replay, args.partial, args.format, args.verbose)
    if live_backend(args) is not None and not args.bochs:
        results = live_trace(args, live_backend(args))  # type: ignore[arg-type]
    elif args.hypervisor == "linux-kvm":
        from ..kvm_demo import kvm_trace
        if args.breakpoints:
            raise InputError("--breakpoints is for minihv: KVM has no magic breakpoints, it is always "
                             "stepped with code breakpoints")
        results = kvm_trace(cpus=args.cpus, knobs=args.knob, record=args.record, timeout=args.timeout,
                            argv=sys.argv[1:], log=lambda line: print(line, file=sys.stderr))
    else:
        from ..minihv_demo import bochs_trace
        results = bochs_trace(cpus=args.cpus, knobs=args.knob, record=args.record, timeout=args.timeout,
                              magic=not args.breakpoints,
                              argv=sys.argv[1:])
    if args.format == "json":
        sys.stdout.write(json.dumps(trace_report_json(results), indent=1) + "\n")
    else:
        sys.stdout.write(render_trace(results, verbose=args.verbose))
    return exit_status(results)
