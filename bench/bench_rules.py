"""Benchmark: the whole rule set on one snapshot, per processor.

Runs `check_snapshot` (every registered rule, every instruction verdict) on
each baseline in vmxdbg/examples/, and on a copy of the VM-entry baseline
with N processors, and prints the median time per processor together with
the ratio to the 1 ms target. Not a test: nothing here asserts a time.

    python bench/bench_rules.py [--repeat 200] [--cpus 8]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vmxdbg.rules.engine import all_rules  # noqa: E402
from vmxdbg.rules.evaluate import check_snapshot  # noqa: E402
from vmxdbg.rules.examples import baseline_names, baseline_tree  # noqa: E402
from vmxdbg.state.snapshot import snapshot_from_json  # noqa: E402

TARGET_MS = 1.0


def with_cpus(tree: Dict[str, Any], n: int) -> Dict[str, Any]:
    """The tree with processor 0 copied to processors 0..n-1, each with its own VMXON region and VMCS
    (processors sharing them would be a cross-processor finding, not a typical snapshot)."""
    out = copy.deepcopy(tree)
    cpu0 = out["processors"]["0"]
    out["processors"] = {}
    memory = out.setdefault("memory", {})
    for i in range(n):
        p = copy.deepcopy(cpu0)
        for key in ("vmxon_pointer", "vmcs_pointer"):
            if key in p and int(p[key], 16) != 0xFFFFFFFFFFFFFFFF:
                old = int(p[key], 16)
                p[key] = hex(old + 0x100000 * i)
                if hex(old) in memory:
                    memory[p[key]] = memory[hex(old)]
        out["processors"][str(i)] = p
    return out


def per_cpu_ms(tree: Dict[str, Any], repeat: int) -> List[float]:
    snap = snapshot_from_json(tree, source="bench")
    ncpu = len(snap.processors)
    check_snapshot(snap)  # warm caches (structs/, rule registry)
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        check_snapshot(snap)
        samples.append((time.perf_counter() - t0) * 1000.0 / ncpu)
    return samples


def main(argv: List[str] = None) -> int:  # type: ignore[assignment]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=200, help="timed runs per snapshot (default 200)")
    ap.add_argument("--cpus", type=int, default=8, help="processors in the multi-processor run (default 8)")
    args = ap.parse_args(argv)
    print(f"{len(all_rules())} rules; median of {args.repeat} runs; target {TARGET_MS} ms per processor")
    print(f"{'snapshot':28} {'cpus':>4} {'median ms/cpu':>14} {'p90 ms/cpu':>11} {'ratio to target':>16}")
    rows = [(name, baseline_tree(name)) for name in baseline_names()]
    rows.append((f"vmentry x{args.cpus}", with_cpus(baseline_tree("vmentry"), args.cpus)))
    for name, tree in rows:
        s = per_cpu_ms(tree, args.repeat)
        med = statistics.median(s)
        p90 = sorted(s)[int(0.9 * (len(s) - 1))]
        print(f"{name:28} {len(tree['processors']):>4} {med:>14.3f} {p90:>11.3f} {med / TARGET_MS:>15.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
