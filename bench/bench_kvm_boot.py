"""How long Linux KVM under Bochs takes to reach KVM's first VMXON (docs/kvm.md).

Two ways to the test program's stop (after kvm_intel is loaded, before KVM's first VMXON):
  cold     boot the image from the CD (BIOS, isolinux, the kernel decompressing itself, init, insmod)
  restore  start Bochs from the machine state saved at that stop by an earlier cold boot (-r)
then, in both, a breakpoint on kvm_intel's VMXON and `c` until the first processor stops there.

    PYTHONPATH=. python bench/bench_kvm_boot.py [--cpus 2] [--runs 1] [--skip-cold]

Wall-clock seconds; the machine is shared, so run it when it is quiet and read the
ratio of the two, which the load moves less than the figures. A cold run saves the
state the restore runs use (the cached one is replaced).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from vmxdbg import kvm_image
from vmxdbg.backends.bochs import BochsBackend
from vmxdbg.kvm_demo import BOOT_TIMEOUT, machine, module_code, save_booted_state, saved_sections, state_dir


def to_first_vmxon(cpus: int, restore: bool) -> dict:
    image = kvm_image.build()
    state = state_dir(image.iso, cpus)
    with tempfile.TemporaryDirectory(prefix="vmxdbg-bench-kvm-") as tmp:
        serial = Path(tmp) / "serial.txt"
        sections = saved_sections(state) if restore else None
        if restore and sections is None:
            raise SystemExit("no saved state: run a cold boot first")
        t0 = time.monotonic()
        backend = BochsBackend(machine(image.iso, serial, cpus, state if restore else None))  # type: ignore[arg-type]
        try:
            first = backend.go(timeout=BOOT_TIMEOUT)
            assert first.kind == "magic" and first.cpu is not None, first
            t_ready = time.monotonic() - t0
            cpu = first.cpu
            if not restore:
                sections = kvm_image.parse_sections(serial.read_text(errors="replace"), image.traced_module)
                t_save = time.monotonic()
                cpu = save_booted_state(backend, state, sections, lambda line: None)
                t_save = time.monotonic() - t_save
            code = module_code(backend, cpu, image.module, sections)
            vmxon = [a for a, b in code.items() if b[:3] == b"\xf3\x0f\xc7"]
            backend.write_register(cpu, "rax", 1)
            bps = [backend.set_breakpoint(a) for a in vmxon]
            stop = backend.go(timeout=BOOT_TIMEOUT)
            t_vmxon = time.monotonic() - t0
            assert stop.kind == "breakpoint", stop
            for bp in bps:
                backend.remove_breakpoint(bp)
        finally:
            backend.close()
    out = {"ready": t_ready, "first_vmxon": t_vmxon - (0 if restore else t_save)}
    if not restore:
        out["save"] = t_save
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--skip-cold", action="store_true", help="only restore runs (a saved state must exist)")
    args = ap.parse_args()
    rows = {}
    if not args.skip_cold:
        rows["cold boot"] = [to_first_vmxon(args.cpus, False) for _ in range(args.runs)]
    rows["restore"] = [to_first_vmxon(args.cpus, True) for _ in range(args.runs)]
    print(f"| {args.cpus} processors | to the test program's stop (s) | to the first VMXON (s) |")
    print("|---|---|---|")
    for name, runs in rows.items():
        print(f"| {name} | {statistics.median(r['ready'] for r in runs):.1f} | "
              f"{statistics.median(r['first_vmxon'] for r in runs):.1f} |")
    if "cold boot" in rows:
        print(f"saving the state took {statistics.median(r['save'] for r in rows['cold boot']):.1f} s "
              "(not counted in the cold figure)")
        ratio = statistics.median(r["first_vmxon"] for r in rows["cold boot"]) / \
            statistics.median(r["first_vmxon"] for r in rows["restore"])
        print(f"restore is {ratio:.0f}x faster to the first VMXON")
    return 0


if __name__ == "__main__":
    sys.exit(main())
