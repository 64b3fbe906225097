"""The long fuzz run: at least 100,000 inputs through every reader vmxdbg has.

    python bench/fuzz_readers.py --inputs 100000

Every reader of tests/fuzzkit.py (snapshot, report, recording, partial
recording, trace replay, kd log, any input by content, VMCS region, structs/
definitions, layout file, probe dump, typed value, console command, CLI
arguments with their files) gets an equal share of the inputs: its real seed
files, then mutants of them (bit flips, truncation, duplicated and swapped
lines, splices with other real files, hostile tokens, re-encodings), mutants
that keep the format (values changed), and generated inputs. Each input runs
under a time bound (SIGALRM), a memory bound (RLIMIT_AS for the whole run,
peak-RSS growth per input) and a sandbox (an audit hook: no write outside the
input's directory, no process, no socket, no unpickling).

Prints, per reader: inputs tried, how many were read whole and how many
refused with a one-line error, crashes, and the slowest input's time; then
the totals. Exit status 1 when anything crashed (crashing inputs are kept
with --keep DIR). Speed is measured here, never in the unit tests.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

import fuzzkit  # noqa: E402


def _args(argv: List[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--inputs", type=int, default=100_000, help="inputs in all (default 100000)")
    p.add_argument("--seed", type=int, default=1, help="random seed (a run is reproducible)")
    p.add_argument("--readers", default=",".join(fuzzkit.READERS),
                   help=f"comma-separated readers (default all: {', '.join(fuzzkit.READERS)})")
    p.add_argument("--time-limit", type=float, default=fuzzkit.TIME_LIMIT, help="seconds one input may take")
    p.add_argument("--memory-limit", type=float, default=4.0, help="GiB of address space for the whole run")
    p.add_argument("--keep", type=Path, default=None, metavar="DIR", help="save crashing inputs here")
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the figures as JSON")
    return p.parse_args(argv)


def main(argv: List[str]) -> int:
    args = _args(argv)
    names = [n.strip() for n in args.readers.split(",") if n.strip()]
    unknown = [n for n in names if n not in fuzzkit.READERS]
    if unknown:
        print(f"fuzz_readers: unknown reader(s) {', '.join(unknown)}", file=sys.stderr)
        return 2
    limit = int(args.memory_limit * (1 << 30))
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    share = {n: args.inputs // len(names) + (1 if i < args.inputs % len(names) else 0) for i, n in enumerate(names)}
    t0 = time.perf_counter()
    fuzzkit.corpus()
    rows: List[Dict[str, object]] = []
    crashes_shown = 0
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"vmxdbg-fuzz-{name}-") as tmp:
            start = time.perf_counter()
            outcomes, crashes = fuzzkit.fuzz(name, share[name], args.seed, Path(tmp), time_limit=args.time_limit,
                                             keep=args.keep)
            spent = time.perf_counter() - start
        slow = max(outcomes, key=lambda o: o.seconds)
        row = {"reader": name, "inputs": len(outcomes), "read": sum(o.ok for o in outcomes),
               "refused": sum(1 for o in outcomes if o.error is not None and o.crash is None),
               "crashes": len(crashes), "slowest_s": round(slow.seconds, 4), "seconds": round(spent, 1)}
        rows.append(row)
        print(f"{name:<10} {row['inputs']:>7} inputs  {row['read']:>6} read  {row['refused']:>6} refused  "
              f"{row['crashes']:>3} crashes  slowest {slow.seconds:.3f} s  ({spent:.0f} s)", file=sys.stderr, flush=True)
        for data, o in crashes[:3]:
            crashes_shown += 1
            print(f"  CRASH: {o.crash.splitlines()[0][:200]}\n  input: {data[:160]!r}", file=sys.stderr)
    total = {"inputs": sum(r["inputs"] for r in rows), "read": sum(r["read"] for r in rows),
             "refused": sum(r["refused"] for r in rows), "crashes": sum(r["crashes"] for r in rows),
             "slowest_s": max(r["slowest_s"] for r in rows), "seconds": round(time.perf_counter() - t0, 1)}
    command = "python bench/fuzz_readers.py " + " ".join(argv) if argv else "python bench/fuzz_readers.py"
    print(f"\n{command}  (seed {args.seed}, time bound {args.time_limit} s per input, "
          f"{args.memory_limit:g} GiB address space; Python {platform.python_version()}, {platform.machine()})\n")
    print("| reader | inputs | read | refused (one-line error) | crashes | slowest input |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['reader']} | {r['inputs']} | {r['read']} | {r['refused']} | {r['crashes']} | {r['slowest_s']:.3f} s |")
    print(f"| **all** | **{total['inputs']}** | {total['read']} | {total['refused']} | **{total['crashes']}** | "
          f"**{total['slowest_s']:.3f} s** |")
    print(f"\n{total['inputs']} inputs in {total['seconds']:.0f} s, {total['crashes']} crashes, "
          f"slowest input {total['slowest_s']:.3f} s")
    if args.json is not None:
        args.json.write_text(json.dumps({"command": command, "seed": args.seed, "readers": rows, "total": total},
                                        indent=1) + "\n")
    return 1 if total["crashes"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
