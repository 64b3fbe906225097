"""How long Linux KVM under Bochs takes to reach KVM's first VMXON, booted from its CD (cold) and
restored from the saved booted machine, and how long the whole trace takes each way (docs/kvm.md).

    PYTHONPATH=. python bench/bench_kvm_boot.py [--cpus 2] [--runs 1] [--skip-cold]

Builds the image and the saved machine first when they are not cached (not timed). Then, for
each way of starting: (1) to the first VMXON: start Bochs, run to the test program's stop
(timestamping the serial console's landmarks on the way), find kvm_intel's VMX instructions,
break on its VMXON and run to the first processor's stop there; (2) the whole trace
(vmxdbg.hypervisors.linux_kvm.demo.kvm_trace, every VMX instruction on every processor).
Wall-clock seconds from Bochs' start, medians of --runs, with the load average before and
after each run: the machine may be shared, so compare the ways within one run of this script.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List

from vmxdbg.hypervisors.linux_kvm import image as kvm_image
from vmxdbg.hypervisors.linux_kvm.demo import (BOOT_TIMEOUT, boot, go_flag, kvm_trace, module_code, release,
                                               stop_in_kernel)

#: serial console text -> the phase that begins when it appears (a restored machine prints none)
LANDMARKS = {"KASLR disabled": "kernel decompressor runs", "BIOS-e820": "kernel runs",
             "vmxdbg-section": "init has loaded kvm_intel"}
READY = "test program's stop (before KVM)"
VMXON = "first VMXON"
TRACE = "whole trace"


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def watch(work: Path, t0: float, seen: Dict[str, float], stop: threading.Event) -> None:
    while not stop.is_set():
        text = ""
        for f in work.glob("*serial*.txt"):
            try:
                text += f.read_text(errors="replace")
            except OSError:
                pass
        for mark, phase in LANDMARKS.items():
            if phase not in seen and mark in text:
                seen[phase] = time.monotonic() - t0
        stop.wait(0.2)


def to_first_vmxon(cpus: int, cold: bool, boot_timeout: float) -> Dict[str, float]:
    image = kvm_image.build()
    with tempfile.TemporaryDirectory(prefix="vmxdbg-bench-kvm-") as tmp:
        work = Path(tmp)
        seen: Dict[str, float] = {}
        stop = threading.Event()
        t0 = time.monotonic()
        watcher = threading.Thread(target=watch, args=(work, t0, seen, stop), daemon=True)
        watcher.start()
        backend, cpu, sections = boot(image, work, cpus, cold=cold, boot_timeout=boot_timeout,
                                      log=lambda line: None)
        try:
            seen[READY] = time.monotonic() - t0
            code = module_code(backend, cpu, image.module, sections)
            flag = go_flag(backend, cpu, image.test_program)
            stop_in_kernel(backend, cpus)
            vmxon = [a for a, b in code.items() if b[:3] == b"\xf3\x0f\xc7" and (b[3] >> 3) & 7 == 6]
            if not vmxon:
                raise SystemExit("no VMXON among kvm_intel's VMX instructions")
            for a in vmxon:
                backend.set_breakpoint(a)  # type: ignore[attr-defined]
            release(backend, flag)
            hit = backend.go(timeout=BOOT_TIMEOUT)  # type: ignore[attr-defined]
            if hit.kind != "breakpoint" or hit.address not in vmxon:
                raise SystemExit(f"no stop at KVM's VMXON ({hit.kind} at {hit.address})")
            seen[VMXON] = time.monotonic() - t0
        finally:
            stop.set()
            backend.close()  # type: ignore[attr-defined]
    return seen


def whole_trace(cpus: int, cold: bool, boot_timeout: float) -> Dict[str, float]:
    timings: Dict[str, float] = {}
    results = kvm_trace(cpus=cpus, cold=cold, timings=timings, boot_timeout=boot_timeout)
    if not results or not all(r.match for r in results):
        raise SystemExit("the trace had a mismatch or no stop: not a run to time")
    return {TRACE: timings["total"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--skip-cold", action="store_true", help="time only the restored machine")
    ap.add_argument("--boot-timeout", type=float, default=BOOT_TIMEOUT, help="seconds a boot may take")
    args = ap.parse_args()
    ways = ([("cold", True)] if not args.skip_cold else []) + [("restored", False)]
    print(f"preparing: image and saved machine ({args.cpus} processors), built when not cached", file=sys.stderr)
    kvm_image.build(log=lambda line: print(line, file=sys.stderr))
    with tempfile.TemporaryDirectory(prefix="vmxdbg-bench-kvm-") as tmp:   # makes the saved machine if needed
        backend, _, _ = boot(kvm_image.build(), Path(tmp), args.cpus, cold=False, boot_timeout=args.boot_timeout,
                             log=lambda line: print(line, file=sys.stderr))
        backend.close()  # type: ignore[attr-defined]
    table: Dict[str, Dict[str, List[float]]] = {name: {} for name, _ in ways}
    loads: Dict[str, List[str]] = {name: [] for name, _ in ways}
    for _ in range(args.runs):
        for name, cold in ways:
            for measure in (to_first_vmxon, whole_trace):
                before = load()
                got = measure(args.cpus, cold, args.boot_timeout)
                loads[name].append(f"{before} -> {load()}")
                print(f"{name} {measure.__name__}: " + ", ".join(f"{k} {v:.1f}" for k, v in got.items()),
                      file=sys.stderr)
                for phase, t in got.items():
                    table[name].setdefault(phase, []).append(t)
    phases = list(LANDMARKS.values()) + [READY, VMXON, TRACE]
    print(f"| {args.cpus} processors, seconds from Bochs' start (median of {args.runs}) | "
          + " | ".join(name for name, _ in ways) + " |")
    print("|---|" + "---|" * len(ways))
    for phase in phases:
        cells = [f"{statistics.median(table[n][phase]):.1f}" if phase in table[n] else "-" for n, _ in ways]
        print(f"| {phase} | " + " | ".join(cells) + " |")
    if len(ways) == 2 and VMXON in table["cold"] and VMXON in table["restored"]:
        ratio = statistics.median(table["cold"][VMXON]) / statistics.median(table["restored"][VMXON])
        print(f"restored vs cold to the first VMXON: {ratio:.1f}x faster")
    for name, _ in ways:
        print(f"load average (1/5/15 min) before -> after, {name}: {'; '.join(loads[name])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
