"""Bochs backend timings: boot, debugger round trip, a full stop, RDMSR/CPUID injection.

    PYTHONPATH=. python bench/bench_bochs.py [--boots 3] [--n 200]

Boots minihv (2 processors) to its planned stop cfg_stop and measures, as
medians over N repetitions:
  boot        bochs-bin start to the first stop (BIOS + floppy + long mode)
  round trip  one trivial debugger command (`set $cpu = 0`) and `show "cpu0.VMX"`
  full stop   switch processor, read GPRs, CRs, DRs, all segments and tables,
              VMX state, the MSR group, 4 KiB of memory, then step once
  injection   one MSR by executing RDMSR (IA32_VMX_BASIC), first at a stop and
              the next ones (checks cached), and one CPUID leaf
and prints each as a ratio of the round trip.  Needs bochs-bin and nasm.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, List

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
sys.path.insert(0, str(ROOT))
from vmxdbg.hypervisors.minihv import build  # noqa: E402

from vmxdbg.backends.base import SEGMENT_NAMES  # noqa: E402
from vmxdbg.backends.bochs import BochsBackend  # noqa: E402
from vmxdbg.backends.bochs_process import BochsMachine  # noqa: E402

REGS = (["rip", "rflags", "rsp", "rax", "cr0", "cr3", "cr4", "efer", "dr7", "gdtr.base", "gdtr.limit",
         "idtr.base", "idtr.limit"] + [f"{s}.{p}" for s in SEGMENT_NAMES
                                       for p in ("selector", "base", "limit", "attributes")])


def median_ms(fn: Callable[[], object], n: int) -> float:
    times: List[float] = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boots", type=int, default=3)
    ap.add_argument("--n", type=int, default=200)
    args = ap.parse_args()
    image = build.build(tempfile.mkdtemp(prefix="minihv-bench-"))
    machine = BochsMachine(floppy=str(image), cpus=2)

    boots = []
    for _ in range(args.boots):
        t = time.perf_counter()
        with BochsBackend(machine) as b:
            ev = b.go(60)
            boots.append(time.perf_counter() - t)
            assert ev.kind == "magic", ev
    with BochsBackend(machine) as b:
        b.go(60)
        rt = median_ms(lambda: b.proc.command("set $cpu = 0"), args.n)
        show_vmx = median_ms(lambda: b.proc.command('show "cpu0.VMX"'), args.n)

        def full_stop() -> None:
            for cpu in (1, 0):               # a switch each time
                b._invalidate()
                b.select(cpu)
                b.read_registers(cpu, REGS)
                b.vmx_state(cpu)
                b._show(cpu, "MSR")
            b.read_physical(0x100000, 4096)
            b.step(0)
        stop = median_ms(full_stop, max(10, args.n // 10)) / 2

        def rdmsr() -> None:
            b._invalidate()
            b.read_msr_by_rdmsr(0, 0x480)

        def cpuid() -> None:
            b._invalidate()
            b.cpuid(0, 1)
        inj = median_ms(rdmsr, max(10, args.n // 10))
        warm = median_ms(lambda: b.read_msr_by_rdmsr(0, 0x481), max(10, args.n // 10))
        cid = median_ms(cpuid, max(10, args.n // 10))
        commands_per_injection = b.stats["commands"]
    print(f"boot to first stop   median {statistics.median(boots):.2f} s over {len(boots)} boots "
          f"({', '.join(f'{x:.2f}' for x in boots)})")
    print(f"round trip           median {rt:.3f} ms  (`set $cpu = 0`, n={args.n})")
    print(f"show \"cpu0.VMX\"      median {show_vmx:.3f} ms  = {show_vmx / rt:.1f} round trips")
    print(f"full stop            median {stop:.2f} ms  = {stop / rt:.0f} round trips "
          "(switch, GPRs, CRs, DRs, 8 segments, GDTR/IDTR, VMX, MSR group; 4 KiB + a step per pair)")
    print(f"RDMSR injection      median {inj:.2f} ms  = {inj / rt:.0f} round trips (first at a stop)")
    print(f"RDMSR injection      median {warm:.2f} ms  = {warm / rt:.0f} round trips (next ones at the same stop)")
    print(f"CPUID injection      median {cid:.2f} ms  = {cid / rt:.0f} round trips")
    print(f"(debugger commands sent in the session: {commands_per_injection})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
