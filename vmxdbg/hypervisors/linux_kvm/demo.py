"""Trace Linux KVM (kvm_intel, unmodified) through its VMX instructions on every core under Bochs.

1. Build (once, cached) the image of vmxdbg.hypervisors.linux_kvm.image and boot it headless.
2. The image's test program stops at Bochs' magic breakpoint after kvm_intel is
   loaded and before KVM's first VMXON; `/init` has printed the module's code
   section addresses on the serial console.
3. The VMX instructions are found by disassembling the module's .ko on the host
   (vmxdbg.trace.elfcode) at those addresses; their bytes are read back from the
   target (relocated, as the processor runs them) and must decode the same.
4. The stepper breaks on each (linear breakpoints), and at every VMXON,
   VMCLEAR, VMPTRLD, VMLAUNCH and VMRESUME on every processor predicts, steps and
   compares; knobs (vmxdbg.trace.faults) inject faults through the debugger.
"""
from __future__ import annotations

import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from ...common.errors import InputError, VmxdbgError
from ...trace.stepper import StepResult, find_vmx_instructions

#: Linux's boot code enables the A20 gate and nothing in it asserts A20M# afterwards.
ASSUME = {"a20m": False}
MEGS = 512
IPS = 10_000_000          # ips=4M and 10M boot equally fast; 50M is slower (docs/kvm.md)
BOOT_TIMEOUT = 1200.0


def machine(iso: Path, serial: Path, cpus: int) -> object:
    from ...backends.bochs_process import BochsMachine
    # Linux reads MSRs Bochs does not model (0x1a0, 0xe7, ...) before it has a #GP handler:
    # Bochs must answer them with 0 (ignore_bad_msrs), as on the machine the figures come from.
    return BochsMachine(floppy="", cdrom=str(iso), serial=str(serial), cpus=cpus, megs=MEGS, ips=IPS,
                        ignore_bad_msrs=True, magic_break=True)


def serial_tail(serial: Path, lines: int = 5) -> str:
    try:
        text = serial.read_text(errors="replace")
    except OSError:
        return "(no serial output)"
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:]) or "(no serial output)"


#: KVM's emulation of VMX for its guests (nested VMX) runs only when a guest itself uses VMX,
#: which the test program's guest never does: its sites are left out, so the others fit in
#: Bochs' 16 linear breakpoints (with physical ones added past 16, Linux crashed; docs/kvm.md).
NESTED_ONLY = re.compile(r"nested|vmcs12|^handle_vm|^enter_vmx_operation$|^vmx_emergency_disable$")


def module_code(backend: object, cpu: int, ko: Path, sections: Dict[str, int],
                skip: Optional["re.Pattern[str]"] = NESTED_ONLY) -> Dict[int, bytes]:
    """address -> bytes of each VMX instruction of the module, found in the .ko and read back
    from the target at the section addresses it reported (`skip`: functions left out)."""
    from ...trace.elfcode import module_vmx_sites
    sites = [s for s in module_vmx_sites(ko.read_bytes(), str(ko), sections=list(sections))
             if skip is None or not skip.search(s.function)]
    if not sites:
        raise VmxdbgError(f"{ko}: no VMX instruction in sections {sorted(sections)}")
    code: Dict[int, bytes] = {}
    for s in sites:
        address = sections[s.section] + s.offset
        data = backend.read_virtual(cpu, address, s.length)  # type: ignore[attr-defined]
        found = find_vmx_instructions(data, address)
        if not found or found[0].instruction != s.instruction or found[0].length != s.length:
            raise VmxdbgError(f"{ko.name} {s.section}+0x{s.offset:x} ({s.function}): the module file has "
                              f"{s.instruction}, the loaded module has {data.hex()}: the image and the "
                              "file disagree")
        code[address] = data
    return code


def go_flag(backend: object, cpu: int, test_program: Path) -> int:
    """Physical address of the test program's `vmxdbg_go`, through the page tables of `cpu`
    (stopped at the program's magic breakpoint)."""
    from ...trace.elfcode import symbol_value
    go = symbol_value(test_program.read_bytes(), "vmxdbg_go", str(test_program))
    return backend.translate(cpu, go)  # type: ignore[attr-defined,no-any-return]


def stop_in_kernel(backend: object, cpus: int, tries: int = 100) -> None:
    """Run on and interrupt until every processor is at CPL 0 (the test program sleeps between its
    magic stops, so most interrupts find the processors idle in the kernel).

    Breakpoints set while a processor was stopped in user mode crashed Linux at the next
    `c`: that processor went on in user code with the kernel's CS (docs/kvm.md)."""
    for _ in range(tries):
        ev = backend.go(timeout=0.3)  # type: ignore[attr-defined]
        if ev.kind == "exited":
            raise VmxdbgError("Bochs exited while vmxdbg waited for a stop in the kernel")
        if all(backend.read_register(c, "cpl") == 0 for c in range(cpus)):  # type: ignore[attr-defined]
            return
    raise VmxdbgError(f"no stop with every processor in the kernel in {tries} tries")


def release(backend: object, flag: int) -> None:
    """Let the test program go on to KVM: 1 into its `vmxdbg_go` (its registers are left alone)."""
    backend.write_physical(flag, (1).to_bytes(8, "little"))  # type: ignore[attr-defined]


def kvm_trace(*, cpus: int = 2, knobs: Sequence[str] = (), record: Optional[Path] = None,
              timeout: float = 60.0, argv: Optional[List[str]] = None, boot_timeout: float = BOOT_TIMEOUT,
              log: Callable[[str], None] = lambda line: None,
              timings: Optional[Dict[str, float]] = None) -> List[StepResult]:
    """Boot Linux with kvm_intel on `cpus` processors under Bochs and trace KVM's VMX instructions."""
    from . import image as kvm_image
    from ...backends.registry import backend_class
    from ...trace.faults import parse_knobs
    from ...trace.session import run_trace

    if not 1 <= cpus <= 4:
        raise InputError(f"--cpus {cpus}: the KVM image runs on 1 to 4 processors")
    parse_knobs(knobs, cpus)
    if shutil.which("bochs-bin") is None:
        raise VmxdbgError("bochs-bin is not installed; install it with: apt-get install bochs bochsbios vgabios")
    t0 = time.monotonic()
    image = kvm_image.build(log=log)
    work = Path(tempfile.mkdtemp(prefix="vmxdbg-kvm-"))
    serial = work / "serial.txt"
    try:
        t_boot = time.monotonic()
        log(f"booting Linux under Bochs ({cpus} processors; minutes)")
        # one injection per value: a read stub stepped over many instructions was carried out of its
        # range by the running Linux kernel (the live test showed it), two-step injections are not
        backend = backend_class("bochs")(machine(image.iso, serial, cpus), batched=False)  # type: ignore[arg-type]
        try:
            first = backend.go(timeout=boot_timeout)
            if first.kind != "magic" or first.cpu is None:
                raise VmxdbgError(f"Linux did not reach the test program's stop ({first.kind}); serial "
                                  f"console: {serial_tail(serial)}")
            sections = kvm_image.parse_sections(serial.read_text(errors="replace"), image.traced_module)
            if not sections:
                raise VmxdbgError(f"the image printed no section of {image.traced_module}; serial console: "
                                  f"{serial_tail(serial)}")
            cpu = first.cpu
            if timings is not None:
                timings["boot_to_ready"] = time.monotonic() - t_boot
            code = module_code(backend, cpu, image.module, sections)
            flag = go_flag(backend, cpu, image.test_program)
            stop_in_kernel(backend, cpus)
            release(backend, flag)
            log(f"{len(code)} VMX instructions in {image.module.name} "
                f"({', '.join(f'{k} 0x{v:x}' for k, v in sorted(sections.items()))})")
            results = run_trace(backend, code, physical=False, timeout=timeout, record=record, argv=argv,
                                source=f"Linux {image.kernel_release} kvm_intel on Bochs, {cpus} cpus, "
                                       f"knobs {list(knobs)}", assume=ASSUME, knobs=knobs)
            if timings is not None:
                timings["total"] = time.monotonic() - t0
            console = serial.read_text(errors="replace").split(kvm_image.READY_TAG, 1)[-1]
            for line in console.strip().splitlines()[-40:]:
                log(f"console: {line.rstrip()}")
            return results
        finally:
            backend.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


__all__ = ["kvm_trace", "module_code", "ASSUME"]
