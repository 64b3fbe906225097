"""Which VM-entry rules a traced hypervisor's VMCS exercises, from its trace recordings.

A rule is *exercised* at a VMLAUNCH/VMRESUME stop when it applied to the state
read there (it did not skip itself as not applicable, e.g. a check of a control
the VMCS leaves off) and decided pass or fail (no input missing). Replaying a
recording re-reads the same state, so this needs no target.

`exercised_by(paths)` gives rule id -> title for a set of recordings;
`python -m vmxdbg.trace.coverage KVM_RECS -- MINIHV_RECS` prints the rules the first
set exercises and the second never does (docs/kvm.md holds that list).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Dict, Iterable, List, Sequence

from ..record.replay import ReplayBackend
from ..record.recording import read_recording
from ..rules.engine import all_rules
from ..rules.evaluate import run_rule
from ..rules.engine import Context
from .stepper import Stepper
from .session import sites_from_params

ENTRY = ("vmlaunch", "vmresume")


class _Keeping(Stepper):
    """A stepper that keeps the snapshot of every VM-entry stop."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.entry_states: List = []

    def predict(self, snap, cpu, instruction):  # type: ignore[no-untyped-def,override]
        if instruction in ENTRY:
            self.entry_states.append((snap, cpu, instruction))
        return Stepper.predict(snap, cpu, instruction)


def exercised_by(paths: Iterable[Path]) -> Dict[str, str]:
    """rule id -> title of every VM-entry rule some VM-entry stop of these trace recordings exercised."""
    rules = [r for r in all_rules() if not r.cross]
    out: Dict[str, str] = {}
    for path in paths:
        rec = read_recording(path)
        args = sites_from_params(rec)
        stepper = _Keeping(ReplayBackend(rec, strict=True), args["sites"], physical=args["physical"],
                           breakpoints=args["breakpoints"], assume=args["assume"], prepare=args["prepare"],
                           approaches=args["approaches"])
        stepper.run(max_stops=args["max_stops"])
        for snap, cpu, instruction in stepper.entry_states:
            for r in rules:
                if instruction not in r.instructions:
                    continue
                findings, applied = run_rule(r, Context(snap, cpu, instruction))
                if applied and not any(f.status == "unknown" for f in findings):
                    out[r.id] = r.title
    return out


def only_in(first: Sequence[Path], second: Sequence[Path]) -> Dict[str, str]:
    """Rules the first recordings' VMCSs exercise and no stop of the second does."""
    a, b = exercised_by(first), exercised_by(second)
    return {k: v for k, v in sorted(a.items()) if k not in b}


def main(argv: Sequence[str]) -> int:
    if "--" not in argv:
        print("usage: python -m vmxdbg.trace.coverage REC... -- REC...", file=sys.stderr)
        return 2
    i = list(argv).index("--")
    first, second = [Path(p) for p in argv[:i]], [Path(p) for p in argv[i + 1:]]
    for rid, title in only_in(first, second).items():
        print(f"| {rid} | {title} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
