"""Whole-trace timings: minihv under Bochs on 1, 2 and 4 (or more) processors.

    PYTHONPATH=. python bench/bench_trace.py [--cpus 1 2 4] [--runs 3]

For each processor count, boots the test hypervisor (every core healthy, a
planned stop before each VMX instruction) and runs the same trace as
`vmxdbg trace --bochs`, timing it from outside:
  boot        bochs-bin start to the first stop (cfg_stop: BIOS + image + long mode)
  trace       the whole trace: boot, every stop on every core, Bochs' exit
  per core    a full check of one core = its stops at VMXON, VMCLEAR, VMPTRLD and
              VMLAUNCH: debugger round trips (the backend's `stats["round_trips"]`:
              exchanges with Bochs, a batch of commands sent together counting once),
              debugger commands (`stats["commands"]`), injections, and wall time spent
              at those stops (read state, predict, step, read the outcome), the mean
              over cores
Each figure is the median over --runs runs. Needs bochs-bin and nasm.

--profile also prints, for processor 0 of the last run, each stop: its wall time, the
exchanges with Bochs and the time spent waiting for their answers, and the exchanges by
kind (the first word of each command), so what is left is where the Python side went.

The last line compares the core check of the largest machine with the bare
debugger's full stop, measured on that same machine at its first stop: switch
processor, GPRs, CRs, DRs, the 8 segments, GDTR/IDTR, the VMX state, the MSR
group, 4 KiB of memory and one step (bench/bench_bochs.py's "full stop"):
    core check: X ms, Y round trips; bare full stop: Z ms; ratio R
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from vmxdbg.backends.base import SEGMENT_NAMES, TABLE_NAMES  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vmxdbg.backends.bochs import BochsBackend  # noqa: E402
from vmxdbg.backends.bochs_process import BochsMachine  # noqa: E402
from vmxdbg.hypervisors.minihv.demo import ASSUME, build_image, require_tools, vmx_code  # noqa: E402
from vmxdbg.trace.stepper import Stepper, find_vmx_instructions  # noqa: E402


def one_run(cpus: int, profile: Optional[List[str]] = None) -> Dict[str, float]:
    """Boot, trace and time one machine; every stop must match its prediction. With `profile`
    (a list), lines saying where processor 0's stops spent their time are appended to it."""
    work = Path(tempfile.mkdtemp(prefix="vmxdbg-bench-trace-"))
    try:
        built = build_image(work, cpus, [])
        t0 = time.perf_counter()
        backend = BochsBackend(BochsMachine(floppy=str(built["image"]), cpus=cpus, magic_break=True))
        try:
            first = backend.go(timeout=60)
            boot = time.perf_counter() - t0
            assert first.kind == "magic", first
            code = vmx_code(backend, built["symbols"])  # type: ignore[arg-type]
            bare = bare_full_stop_ms(backend, cpus)     # at cfg_stop, before the trace (Bochs exits at its end)
            sites = [s for a, b in sorted(code.items()) for s in find_vmx_instructions(b, a)]
            stepper = Stepper(backend, sites, physical=True, breakpoints=False, assume=ASSUME)
            per_core: Dict[int, List[float]] = {}      # cpu -> [seconds, commands]
            plain = stepper.handle_stop
            exchanges: List[Tuple[str, float]] = []    # (kind, seconds waiting) at the stop being handled
            if profile is not None:
                _record_exchanges(backend, exchanges)

            def timed(event):  # type: ignore[no-untyped-def]
                c0, r0, s0 = backend.stats["commands"], backend.stats["round_trips"], time.perf_counter()
                exchanges.clear()
                got = plain(event)
                if profile is not None and got is not None and got.cpu == 0:
                    profile.append(_stop_profile(got.instruction, time.perf_counter() - s0, exchanges))
                if got is not None:
                    acc = per_core.setdefault(got.cpu, [0.0, 0.0, 0.0])
                    acc[0] += time.perf_counter() - s0
                    acc[1] += backend.stats["commands"] - c0
                    acc[2] += backend.stats["round_trips"] - r0
                return got
            stepper.handle_stop = timed  # type: ignore[assignment]
            results = stepper.run(timeout=60)
            total = time.perf_counter() - t0
        finally:
            backend.close()
        bad = [r for r in results if r.match is not True]
        assert not bad and len(per_core) == cpus, (bad, sorted(per_core))
        return {"boot": boot, "trace": total, "stops": len(results),
                "core_s": statistics.mean(v[0] for v in per_core.values()),
                "core_cmds": statistics.mean(v[1] for v in per_core.values()),
                "core_rt": statistics.mean(v[2] for v in per_core.values()),
                "injections": backend.stats["injections"] / cpus, "bare_ms": bare}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _record_exchanges(backend: BochsBackend, into: List[Tuple[str, float]]) -> None:
    """Wrap the backend's process so each exchange with Bochs is noted (kind, seconds). A batch
    (commands()) and a sourced file (source()) are one exchange each: the `source` command they
    send is not noted again."""
    proc = backend.proc
    one, many, sourced = proc.command, proc.commands, proc.source
    inside = [False]

    def command(cmd: str, timeout: Optional[float] = None) -> str:
        t = time.perf_counter()
        out = one(cmd, timeout)
        if not inside[0]:
            into.append((cmd.split()[0], time.perf_counter() - t))
        return out

    def batch(kind: str, run):  # type: ignore[no-untyped-def]
        t = time.perf_counter()
        inside[0] = True
        try:
            return run()
        finally:
            inside[0] = False
            into.append((kind, time.perf_counter() - t))

    def commands(cmds: List[str], timeout: Optional[float] = None) -> List[str]:
        kind = "+".join(sorted({c.split()[0] for c in cmds})) + f"({len(cmds)})"
        return batch(kind, lambda: many(cmds, timeout))  # type: ignore[no-any-return]

    def source(cmds: List[str], timeout: Optional[float] = None) -> str:
        return batch(f"source({len(cmds)})", lambda: sourced(cmds, timeout))  # type: ignore[no-any-return]
    proc.command, proc.commands, proc.source = command, commands, source  # type: ignore[method-assign]


def _stop_profile(insn: str, seconds: float, exchanges: List[Tuple[str, float]]) -> str:
    waiting = sum(t for _, t in exchanges)
    kinds: Dict[str, List[float]] = {}
    for kind, t in exchanges:
        acc = kinds.setdefault(kind, [0, 0.0])
        acc[0] += 1
        acc[1] += t
    top = sorted(kinds.items(), key=lambda kv: -kv[1][1])[:6]
    return (f"  cpu0 {insn:9} {seconds * 1000:6.1f} ms: {len(exchanges)} "
            f"exchanges, {waiting * 1000:5.1f} ms waiting for Bochs, {(seconds - waiting) * 1000:5.1f} ms else; "
            + ", ".join(f"{k} x{n:.0f} {t * 1000:.1f} ms" for k, (n, t) in top))


REGS = (["rax", "rip", "rflags", "cr0", "cr3", "cr4", "efer", "dr7"]
        + [f"{s}.{p}" for s in SEGMENT_NAMES for p in ("selector", "base", "limit", "attributes")]
        + [f"{t}.{p}" for t in TABLE_NAMES for p in ("base", "limit")])


def bare_full_stop_ms(backend: BochsBackend, cpus: int, n: int = 20) -> float:
    """Median ms of the bare debugger's full stop of one processor (no rules, no injection)."""
    times: List[float] = []
    for _ in range(n):
        t = time.perf_counter()
        cpu = 0
        backend._invalidate()
        backend.select(cpu)
        backend.read_registers(cpu, REGS)
        backend.vmx_state(cpu)
        backend._show(cpu, "MSR")
        backend.read_physical(0x100000, 4096)
        backend.step(cpu)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpus", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="where processor 0's stops spent their time")
    args = ap.parse_args()
    profile: Optional[List[str]] = [] if args.profile else None
    require_tools()
    print(f"{'cpus':>4}  {'boot s':>7}  {'trace s':>7}  {'stops':>5}  {'per core: round trips':>21}  "
          f"{'commands':>8}  {'injections':>10}  {'ms':>6}")
    for cpus in args.cpus:
        if profile is not None:
            profile.clear()
        runs = [one_run(cpus, profile) for _ in range(args.runs)]
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(f"{cpus:>4}  {med['boot']:7.2f}  {med['trace']:7.2f}  {med['stops']:5.0f}  {med['core_rt']:21.0f}  "
              f"{med['core_cmds']:8.0f}  {med['injections']:10.0f}  {med['core_s'] * 1000:6.0f}")
        if profile:
            print("\n".join(profile[-4:]))
    core_ms, bare = med["core_s"] * 1000, med["bare_ms"]
    print(f"core check: {core_ms:.1f} ms, {med['core_rt']:.0f} round trips; bare full stop: {bare:.1f} ms; "
          f"ratio {core_ms / bare:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
