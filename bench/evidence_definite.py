"""How many VMXON and VMLAUNCH/VMRESUME verdicts are definite when no CPUID leaf is known.

A kernel debugger cannot execute CPUID, so a live WinDbg session shows no CPUID
leaf. This takes every shipped input (the example snapshots, recordings/snapshots,
the Bochs and WinDbg recordings, the kd logs), removes every CPUID leaf, runs the
checks and counts, per input, the verdicts that are not `unknown`:

    python bench/evidence_definite.py                # this checkout
    python bench/evidence_definite.py --with-cpuid   # the same inputs, CPUID kept
    python bench/evidence_definite.py --assume vmx=off

`vmxon` counts processors whose VMXON verdict is definite; `entry` counts the
VMLAUNCH and VMRESUME verdicts (two per processor). Only the public API is used
(load_any, check_snapshot), so the same script measures an older checkout with
PYTHONPATH pointing at it (that is how the "before" column of docs/evidence.md
was made).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Tuple

ROOT = Path(__file__).resolve().parent.parent
INPUTS = ("vmxdbg/examples/*.vmxsnap.json", "recordings/snapshots/*.vmxsnap.json",
          "recordings/bochs/*.vmxrec.jsonl", "recordings/windbg/*.vmxrec.jsonl", "recordings/kdlogs/*.log")


def inputs(root: Path) -> List[Path]:
    out: List[Path] = []
    for pattern in INPUTS:
        out += sorted(root.glob(pattern))
    return out


def measure(path: Path, keep_cpuid: bool, assume: List[str]) -> Tuple[int, int, int, int]:
    """(processors, definite VMXON, entry verdicts, definite entry verdicts) of one input."""
    from vmxdbg.inputs.sources import load_any
    from vmxdbg.rules import check_snapshot
    from vmxdbg.state.assume import apply_assumptions, parse_assumptions
    snap = load_any(path, {"partial": False})
    if not keep_cpuid:
        for p in snap.processors.values():
            p.cpuid.clear()
    apply_assumptions(snap, parse_assumptions(assume))
    report = check_snapshot(snap)
    n = vmxon = entries = entry_def = 0
    for cpu, verdicts in report.processors.items():
        n += 1
        for v in verdicts:
            if v.instruction == "vmxon" and v.outcome != "unknown":
                vmxon += 1
            if v.instruction in ("vmlaunch", "vmresume"):
                entries += 1
                entry_def += v.outcome != "unknown"
    return n, vmxon, entries, entry_def


def main(argv: List[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--with-cpuid", action="store_true", help="keep the CPUID leaves the inputs have")
    ap.add_argument("--assume", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--root", type=Path, default=ROOT, help="where the inputs are (default: this checkout)")
    args = ap.parse_args(argv)
    rows = []
    tot = [0, 0, 0, 0]
    for path in inputs(args.root):
        got = measure(path, args.with_cpuid, args.assume)
        rows.append((str(path.relative_to(args.root)), *got))
        tot = [a + b for a, b in zip(tot, got)]
    width = max(len(r[0]) for r in rows)
    import vmxdbg
    print(f"# vmxdbg from {Path(vmxdbg.__file__).resolve().parent.parent}; CPUID "
          f"{'kept' if args.with_cpuid else 'removed'}; assumed: {', '.join(args.assume) or 'nothing'}")
    print(f"{'input':{width}}  cpus  vmxon definite  entry definite")
    for name, n, vx, e, ed in rows:
        print(f"{name:{width}}  {n:4}  {vx:6}/{n:<7}  {ed:6}/{e:<7}")
    print(f"{'total':{width}}  {tot[0]:4}  {tot[1]:6}/{tot[0]:<7}  {tot[3]:6}/{tot[2]:<7}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
