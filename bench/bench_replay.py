"""Replay and check a recording of 100,000 events (not a test).

    python bench/bench_replay.py [--events N] [--repeat R]

Records, once, a deterministic session of N events (default 100,000) on a
four-processor target made from vmxdbg's VMXON baseline: single steps on
each processor, the registers and MSRs a debugger reads after each stop, a
physical read now and then, and a full collect() of every processor at the
end (what `vmxdbg check` replays). Then it times, R times each (fastest run):

  read      read_recording(): parse and validate every line
  replay    the same session program against the strict ReplayBackend
  direct    the same session program against the target itself (the baseline
            that makes the replay figure comparable across machines)
  check     `vmxdbg check` of the recording: keyed replay to the last stop,
            collect() and the rules, end to end from the file

and prints events per second and the ratios replay/direct and read/direct.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vmxdbg.backends.base import EXECUTION, Backend, StopEvent  # noqa: E402
from vmxdbg.record.recorder import Recorder  # noqa: E402
from vmxdbg.record.replay import ReplayBackend  # noqa: E402
from vmxdbg.backends.snapshot_backend import SnapshotBackend  # noqa: E402
from vmxdbg.state.collect import collect  # noqa: E402
from vmxdbg.record.recorded import snapshot_of  # noqa: E402
from vmxdbg.record.recording import read_recording  # noqa: E402
from vmxdbg.rules import check_snapshot  # noqa: E402
from vmxdbg.state.snapshot import snapshot_from_json  # noqa: E402

CPUS = 4
POINTERS = {c: 0x1A2B3000 + 0x1000 * c for c in range(CPUS)}
MSRS = (0x480, 0x486, 0x487, 0x488, 0x489, 0xC0000080)
AFTER_STOP = ["rip", "rflags", "cr0", "cr3", "cr4", "cs.selector", "cs.attributes", "ss.selector"]


class SteppingTarget(SnapshotBackend):
    """The baseline on four processors; step() advances RIP and flips RFLAGS.ZF."""

    name = "bench"

    def __init__(self) -> None:
        tree = json.loads((ROOT / "vmxdbg" / "examples" / "vmxon.vmxsnap.json").read_text(encoding="utf-8"))
        base = tree["processors"]["0"]
        base["registers"].update({"rip": "0xfffff80000001000", "cr3": "0x1ad000"})
        tree["processors"] = {str(c): json.loads(json.dumps(base)) for c in range(CPUS)}
        for c, p in POINTERS.items():
            tree["processors"][str(c)]["vmxon_pointer"] = hex(p)
            tree["memory"][hex(p)] = "0400000000000000"
        super().__init__(snapshot_from_json(tree))

    def capabilities(self):  # type: ignore[no-untyped-def]
        return super().capabilities() | {EXECUTION}

    def step(self, cpu: int) -> StopEvent:
        regs = self.snapshot.processors[cpu].registers
        regs["rip"] += 3
        regs["rflags"] ^= 0x40
        return StopEvent("step", cpu=cpu, address=regs["rip"])


def session(backend: Backend, events: int) -> int:
    """The session program: steps and reads until about `events` calls, then collect(). Returns calls made."""
    calls = 0
    i = 0
    budget = events - 40 * CPUS   # what the final collect() makes, about
    while calls < budget:
        cpu = i % CPUS
        backend.step(cpu)
        backend.read_registers(cpu, AFTER_STOP)
        backend.read_msr(cpu, 0x3A)
        backend.read_msr(cpu, MSRS[i % len(MSRS)])
        calls += 4
        if i % 50 == 0:
            backend.read_physical(POINTERS[cpu], 8)
            calls += 1
        i += 1
    collect(backend, vmxon_pointers=POINTERS)
    return calls


def timed(fn: Callable[[], object], repeat: int) -> float:
    """The fastest of `repeat` runs: on a shared machine, the run least slowed by others."""
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return min(out)


def main(argv: List[str] = None) -> int:  # type: ignore[assignment]
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.vmxrec.jsonl"
        with Recorder(SteppingTarget(), path, command="trace",
                      params={"vmxon_pointers": {str(c): hex(p) for c, p in POINTERS.items()}}) as rec:
            session(rec, args.events)
        size = path.stat().st_size
        results: Dict[str, float] = {}
        results["read"] = timed(lambda: read_recording(path), args.repeat)
        rec_obj = read_recording(path)
        n = len(rec_obj.records)
        results["replay"] = timed(lambda: session(ReplayBackend(rec_obj), args.events), args.repeat)
        results["direct"] = timed(lambda: session(SteppingTarget(), args.events), args.repeat)

        def check() -> None:
            check_snapshot(snapshot_of(read_recording(path)))
        results["check"] = timed(check, args.repeat)
    print(f"recording: {n} events, {size / 1e6:.1f} MB, {CPUS} processors (fastest of {args.repeat} runs)")
    for step in ("read", "replay", "direct", "check"):
        print(f"  {step:7s} {results[step]:7.3f} s  {n / results[step]:>10,.0f} events/s")
    print(f"  ratio replay/direct  {results['replay'] / results['direct']:.2f}")
    print(f"  ratio read/direct    {results['read'] / results['direct']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
