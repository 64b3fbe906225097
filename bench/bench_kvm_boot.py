"""How long Linux KVM under Bochs takes to reach KVM's first VMXON, and where the time goes (docs/kvm.md).

    PYTHONPATH=. python bench/bench_kvm_boot.py [--cpus 2] [--runs 1]

Boots the cached image (vmxdbg.hypervisors.linux_kvm.image) cold under Bochs, timestamps the serial
console's landmarks as they appear (the kernel's decompressor, the kernel itself,
the test program's stop), then breaks on kvm_intel's VMXON and runs to the first
processor's stop there. Wall-clock seconds, medians of --runs; the machine is
shared, so the figures move with its load: compare phases within one run.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict

from vmxdbg.hypervisors.linux_kvm import image as kvm_image
from vmxdbg.backends.bochs import BochsBackend
from vmxdbg.hypervisors.linux_kvm.demo import BOOT_TIMEOUT, go_flag, machine, module_code, release, stop_in_kernel

#: serial console text -> the phase that begins when it appears
LANDMARKS = {"KASLR disabled": "kernel decompressor runs", "BIOS-e820": "kernel runs",
             "vmxdbg-section": "init has loaded kvm_intel"}


def watch(serial: Path, t0: float, seen: Dict[str, float], stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            text = serial.read_text(errors="replace")
        except OSError:
            text = ""
        for mark, phase in LANDMARKS.items():
            if phase not in seen and mark in text:
                seen[phase] = time.monotonic() - t0
        stop.wait(0.2)


def to_first_vmxon(cpus: int) -> Dict[str, float]:
    image = kvm_image.build()
    with tempfile.TemporaryDirectory(prefix="vmxdbg-bench-kvm-") as tmp:
        serial = Path(tmp) / "serial.txt"
        seen: Dict[str, float] = {}
        stop = threading.Event()
        t0 = time.monotonic()
        watcher = threading.Thread(target=watch, args=(serial, t0, seen, stop), daemon=True)
        watcher.start()
        backend = BochsBackend(machine(image.iso, serial, cpus))  # type: ignore[arg-type]
        try:
            first = backend.go(timeout=BOOT_TIMEOUT)
            assert first.kind == "magic" and first.cpu is not None, first
            seen["test program stops (before KVM)"] = time.monotonic() - t0
            sections = kvm_image.parse_sections(serial.read_text(errors="replace"), image.traced_module)
            code = module_code(backend, first.cpu, image.module, sections)
            flag = go_flag(backend, first.cpu, image.test_program)
            stop_in_kernel(backend, cpus)
            release(backend, flag)
            bps = [backend.set_breakpoint(a) for a, b in code.items() if b[:3] == b"\xf3\x0f\xc7"]
            hit = backend.go(timeout=BOOT_TIMEOUT)
            assert hit.kind == "breakpoint", hit
            seen["first VMXON"] = time.monotonic() - t0
            for bp in bps:
                backend.remove_breakpoint(bp)
        finally:
            stop.set()
            backend.close()
    return seen


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--runs", type=int, default=1)
    args = ap.parse_args()
    runs = [to_first_vmxon(args.cpus) for _ in range(args.runs)]
    print(f"| {args.cpus} processors, cold boot | seconds from Bochs' start (median of {args.runs}) |")
    print("|---|---|")
    for phase in list(LANDMARKS.values()) + ["test program stops (before KVM)", "first VMXON"]:
        got = [r[phase] for r in runs if phase in r]
        print(f"| {phase} | {statistics.median(got):.1f} |" if got else f"| {phase} | not seen |")
    r = runs[0]
    if "kernel decompressor runs" in r and "kernel runs" in r:
        share = (r["kernel runs"] - r["kernel decompressor runs"]) / r["first VMXON"]
        print(f"the kernel decompressing itself: {100 * share:.0f}% of the time to the first VMXON")
    return 0


if __name__ == "__main__":
    sys.exit(main())
