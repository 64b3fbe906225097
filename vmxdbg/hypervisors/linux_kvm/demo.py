"""Trace Linux KVM (kvm_intel, unmodified) through its VMX instructions on every core under Bochs.

1. Build (once, cached) the image of vmxdbg.hypervisors.linux_kvm.image and boot it headless:
   the first run boots it from its CD and saves the booted machine next to the image
   (vmxdbg.hypervisors.linux_kvm.booted), later runs restore that (seconds, not minutes);
   `cold=True` (`--cold-boot`) boots from the CD every time.
2. The image's test program stops at Bochs' magic breakpoint after kvm_intel is
   loaded and before KVM's first VMXON; `/init` has printed the module's code
   section addresses on the serial console (kept with the saved machine).
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
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ...common.errors import InputError, VmxdbgError
from ...trace.stepper import StepResult, find_vmx_instructions

#: Linux's boot code enables the A20 gate and nothing in it asserts A20M# afterwards.
ASSUME = {"a20m": False}
MEGS = 512
IPS = 10_000_000          # ips=4M and 10M boot equally fast; 50M is slower (docs/kvm.md)
BOOT_TIMEOUT = 1200.0
#: a restored machine is at the test program's next stop within milliseconds of emulated time
RESTORE_TIMEOUT = 120.0
#: a cold boot whose serial console has said nothing new for this long has hung (one cold boot in four
#: was seen to hang after the serial driver started, docs/kvm.md); the longest silence of a good boot
#: is the kernel decompressing itself, 78 s on a quiet machine and about 3.5 min on a loaded one
STALL = 420.0
#: how often a cold boot is interrupted to look at the serial console
STALL_POLL = 30.0


class BootStalled(VmxdbgError):
    """A cold boot whose serial console stopped moving long before its timeout."""


def machine(iso: Path, serial: Path, cpus: int, restore: Optional[Path] = None) -> object:
    from ...backends.bochs_process import BochsMachine
    # Linux reads MSRs Bochs does not model (0x1a0, 0xe7, ...) before it has a #GP handler:
    # Bochs must answer them with 0 (ignore_bad_msrs), as on the machine the figures come from.
    return BochsMachine(floppy="", cdrom=str(iso), serial=str(serial), cpus=cpus, megs=MEGS, ips=IPS,
                        ignore_bad_msrs=True, magic_break=True, restore=str(restore or ""))


def serial_text(serial: Path) -> str:
    """The serial console's text. On a restored machine Linux's console tty echoes NUL bytes it
    reads from the serial port as `^@` (thousands per run; a cold boot has none): left out."""
    return serial.read_text(errors="replace").replace("^@", "").replace("\0", "")


def serial_tail(serial: Path, lines: int = 5) -> str:
    try:
        text = serial_text(serial)
    except OSError:
        return "(no serial output)"
    said = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(said[-lines:]) or "(no serial output)"


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


def module_approaches(backend: object, cpu: int, ko: Path, sections: Dict[str, int],
                      skip: Optional["re.Pattern[str]"] = NESTED_ONLY) -> Dict[int, bytes]:
    """address -> bytes of each instruction leading straight into a VMX instruction of the module
    (vmxdbg.trace.elfcode.approaches), read back from the target; one whose loaded bytes do not
    decode to the file's instruction is left out (the VMX instruction is still a stop)."""
    import iced_x86 as ix
    from ...trace.elfcode import approaches
    out: Dict[int, bytes] = {}
    for a in approaches(ko.read_bytes(), str(ko), sections=list(sections)):
        if skip is not None and skip.search(a.function):
            continue
        address = sections[a.section] + a.offset
        data = backend.read_virtual(cpu, address, a.length)  # type: ignore[attr-defined]
        ins = next(iter(ix.Decoder(64, data, ip=address)))
        if not ins.is_invalid and ins.len == a.length and \
                ix.Formatter(ix.FormatterSyntax.INTEL).format(ins).split()[0] == a.instruction:
            out[address] = data
    return out


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


def _open(image: object, serial: Path, cpus: int, restore: Optional[Path] = None) -> object:
    from ...backends.registry import backend_class
    # one injection per value: a read stub stepped over many instructions was carried out of its
    # range by the running Linux kernel (the live test showed it), two-step injections are not
    return backend_class("bochs")(machine(image.iso, serial, cpus, restore), batched=False)  # type: ignore[attr-defined,call-arg]


def _to_ready(backend: object, serial: Path, timeout: float, what: str, stall: Optional[float] = None) -> int:
    """Run to the test program's magic stop; the processor that stopped. With `stall`, BootStalled
    when the serial console has not grown for that many seconds (the target is interrupted every
    STALL_POLL s to look)."""
    start = time.monotonic()
    size, moved = -1, start
    while True:
        left = timeout - (time.monotonic() - start)
        first = backend.go(timeout=max(0.1, min(left, STALL_POLL) if stall else left))  # type: ignore[attr-defined]
        now = time.monotonic()
        if first.kind == "timeout" and stall is not None and now - start < timeout:
            grown = serial.stat().st_size if serial.exists() else 0
            if grown != size:
                size, moved = grown, now
            elif now - moved >= stall:
                raise BootStalled(f"{what} stopped booting: the serial console has said nothing new for "
                                  f"{now - moved:.0f} s; serial console: {serial_tail(serial)}")
            continue
        break
    if first.kind != "magic" or first.cpu is None:
        raise VmxdbgError(f"{what} did not reach the test program's stop ({first.kind}"
                          f"{': ' + first.detail if first.detail else ''}); serial console: {serial_tail(serial)}")
    return first.cpu  # type: ignore[no-any-return]


def cold_boot(image: object, serial: Path, cpus: int, boot_timeout: float,
              log: Callable[[str], None] = lambda line: None) -> Tuple[object, int, Dict[str, int]]:
    """Boot the image from its CD to the test program's stop: (backend, the stopped processor, sections).
    A boot that stalls (BootStalled) is said and started once more."""
    for attempt in (1, 2):
        try:
            return _cold_boot_once(image, serial, cpus, boot_timeout)
        except BootStalled as exc:
            if attempt == 2:
                raise
            log(f"{exc}; booting once more")
    raise AssertionError("unreachable")


def _cold_boot_once(image: object, serial: Path, cpus: int, boot_timeout: float) -> Tuple[object, int, Dict[str, int]]:
    from . import image as kvm_image
    backend = _open(image, serial, cpus)
    try:
        cpu = _to_ready(backend, serial, boot_timeout, "Linux", stall=STALL)
        sections = kvm_image.parse_sections(serial_text(serial), image.traced_module)  # type: ignore[attr-defined]
        if not sections:
            raise VmxdbgError(f"the image printed no section of {image.traced_module}; serial console: "  # type: ignore[attr-defined]
                              f"{serial_tail(serial)}")
    except BaseException:
        backend.close()  # type: ignore[attr-defined]
        raise
    return backend, cpu, sections


def boot(image: object, work: Path, cpus: int, *, cold: bool, boot_timeout: float,
         log: Callable[[str], None]) -> Tuple[object, int, Dict[str, int]]:
    """Linux at the test program's stop (kvm_intel loaded, no VMXON yet): (backend, the stopped
    processor, the module's sections). `cold`: from the CD. Else from the machine saved next to
    the image (vmxdbg.hypervisors.linux_kvm.booted), which a cold boot saves when there is none
    or it does not fit; a saved machine that does not come to the stop when restored is
    discarded and saved again once."""
    from . import booted
    from ...backends.bochs_process import find_bochs
    serial = work / "serial.txt"
    if cold:
        log(f"booting Linux under Bochs from its CD ({cpus} processors; minutes)")
        return cold_boot(image, serial, cpus, boot_timeout, log)
    key = booted.state_key(image.key, machine(image.iso, serial, cpus), find_bochs())  # type: ignore[attr-defined]
    folder = booted.state_dir(image.iso.parent, cpus, key)  # type: ignore[attr-defined]
    for attempt in (1, 2):
        sections = booted.find(folder.parent, key, cpus, image.traced_module, log=log)  # type: ignore[attr-defined]
        fresh = sections is None
        if sections is None:
            log(f"booting Linux under Bochs from its CD ({cpus} processors; minutes), once: the booted "
                f"machine is saved for the next runs")
            first, _, found = cold_boot(image, work / f"boot-serial-{attempt}.txt", cpus, boot_timeout, log)
            try:
                booted.save(first.proc, folder, key, cpus, {image.traced_module: found}, log=log)  # type: ignore[attr-defined]
            finally:
                first.proc.kill()      # it waits in Bochs' "continue?" dialog  # type: ignore[attr-defined]
                first.close()  # type: ignore[attr-defined]
            sections = booted.find(folder.parent, key, cpus, image.traced_module, log=log)  # type: ignore[attr-defined]
            if sections is None:
                raise VmxdbgError(f"the booted machine was saved but {folder} is not usable (see above)")
        log(f"restoring the booted machine from {folder}")
        try:
            backend = _open(image, serial, cpus, restore=folder)
        except VmxdbgError as exc:
            why = str(exc)
        else:
            try:
                return backend, _to_ready(backend, serial, RESTORE_TIMEOUT, f"the machine restored from {folder}"), \
                    sections
            except VmxdbgError as exc:
                backend.close()  # type: ignore[attr-defined]
                why = str(exc)
        booted.discard(folder)
        if fresh:
            raise VmxdbgError(f"the machine just saved in {folder} does not run when restored ({why}); "
                              "it was removed; --cold-boot boots from the CD every run")
        log(f"{why}: removed {folder}; booting cold to save it again")
    raise AssertionError("unreachable")


def kvm_trace(*, cpus: int = 2, knobs: Sequence[str] = (), record: Optional[Path] = None,
              timeout: float = 60.0, argv: Optional[List[str]] = None, boot_timeout: float = BOOT_TIMEOUT,
              log: Callable[[str], None] = lambda line: None, cold: bool = False,
              timings: Optional[Dict[str, float]] = None) -> List[StepResult]:
    """Boot Linux with kvm_intel on `cpus` processors under Bochs and trace KVM's VMX instructions.
    `cold`: boot from the CD, not from the booted machine saved next to the image."""
    from . import image as kvm_image
    from ...trace.faults import parse_knobs, unapplied
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
        backend, cpu, sections = boot(image, work, cpus, cold=cold, boot_timeout=boot_timeout, log=log)
        try:
            if timings is not None:
                timings["boot_to_ready"] = time.monotonic() - t0
            code = module_code(backend, cpu, image.module, sections)
            approaches = module_approaches(backend, cpu, image.module, sections)
            flag = go_flag(backend, cpu, image.test_program)
            stop_in_kernel(backend, cpus)
            release(backend, flag)
            log(f"{len(code)} VMX instructions and {len(approaches)} instruction(s) leading into one in "
                f"{image.module.name} ({', '.join(f'{k} 0x{v:x}' for k, v in sorted(sections.items()))})")
            results = run_trace(backend, code, physical=False, timeout=timeout, record=record, argv=argv,  # type: ignore[arg-type]
                                source=f"Linux {image.kernel_release} kvm_intel on Bochs, {cpus} cpus, "
                                       f"knobs {list(knobs)}", assume=ASSUME, knobs=knobs, approaches=approaches)
            if timings is not None:
                timings["total"] = time.monotonic() - t0
            for line in unapplied(knobs, [(r.cpu, r.instruction) for r in results if r.verdict is not None]):
                log(line)
            try:
                console = serial_text(serial).split(kvm_image.READY_TAG, 1)[-1]
            except OSError:
                console = ""
            for line in console.strip().splitlines()[-40:]:
                log(f"console: {line.rstrip()}")
            return results
        finally:
            backend.close()  # type: ignore[attr-defined]
    finally:
        shutil.rmtree(work, ignore_errors=True)


__all__ = ["kvm_trace", "module_code", "ASSUME"]
