"""The live demo: boot the bundled test hypervisor under Bochs and trace every core.

The test hypervisor (this package: minihv.asm, assembled with nasm at each run) runs what a
hypervisor driver runs on each processor: VMXON, VMCLEAR, VMPTRLD, VMLAUNCH.
Knobs break one thing on one core. Its magic breakpoints (`xchg bx, bx`, 3
bytes before each VMX instruction) stop Bochs with RIP at the instruction on
every core, where code breakpoints can be silently missed (see
docs/bochs.md); the stepper then predicts, steps and compares.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ...common import interrupt, progress
from ...common.errors import InputError, VmxdbgError
from ...record.recording import RecordingWriter, new_header
from ...trace.stepper import StepResult, find_vmx_instructions

VMX_SYMBOLS = ("at_vmxon", "at_vmclear", "at_vmptrld", "at_vmlaunch")
#: What the test hypervisor itself guarantees and Bochs' debugger cannot show:
#: minihv opens the fast A20 gate (port 0x92) before it leaves real mode, and
#: nothing in it asserts A20M# afterwards (minihv.asm).
ASSUME = {"a20m": False}
INSTALL_HINT = "install it with: apt-get install bochs bochsbios vgabios nasm"


def require_tools() -> None:
    """A clear error when bochs-bin or nasm is missing."""
    for tool in ("bochs-bin", "nasm"):
        if shutil.which(tool) is None:
            raise VmxdbgError(f"{tool} is not installed; {INSTALL_HINT}")


def build_image(out_dir: Path, cpus: int, knobs: Sequence[str], magic: bool = True) -> Dict[str, object]:
    """Build minihv with the knobs (Bochs exits at the end); `magic`: a magic
    breakpoint before each VMX instruction on every core."""
    from . import build, knobs as knobmod

    specs = [f"{cpu}:stops" for cpu in range(cpus)] * magic + list(knobs)
    config = knobmod.from_specs(specs, shutdown=True, expect_cpus=cpus)
    for cpu in config.cores:
        if cpu >= cpus:
            raise InputError(f"--knob names processor {cpu}, but the machine has {cpus} (--cpus)")
    image = build.build(out_dir, config)
    return {"image": image, "symbols": build.symbols(out_dir)}


def vmx_code(backend: object, symbols: Dict[str, int], names: Sequence[str] = VMX_SYMBOLS) -> Dict[int, bytes]:
    """The bytes of each VMX instruction (`names`: their labels), read from the target once the
    image is loaded."""
    code: Dict[int, bytes] = {}
    for name in names:
        address = symbols[name]
        chunk = backend.read_physical(address, 16)  # type: ignore[attr-defined]
        first = find_vmx_instructions(chunk, address)[:1]
        if not first or first[0].address != address:
            raise VmxdbgError(f"no VMX instruction at {name} (0x{address:x}): the image and its map disagree")
        code[address] = chunk[:first[0].length]
    return code


def bochs_trace(*, cpus: int = 2, knobs: Sequence[str] = (), record: Optional[Path] = None,
                timeout: float = 60.0, argv: Optional[List[str]] = None,
                keep: Optional[Path] = None, instructions: Sequence[str] = (),
                magic: bool = True) -> List[StepResult]:
    """Boot minihv on `cpus` processors under Bochs and trace its VMX instructions on every core
    (`instructions`, e.g. ("vmlaunch",): only those; the others run without a check).

    `magic=False` steps it as a hypervisor without magic breakpoints is stepped:
    with code breakpoints, which Bochs can silently miss. Processors without a
    knob must stop at every instruction in order; the backend reports a stop they
    ran past as `missed` (a debugger miss, never a guest result)."""
    require_tools()
    if not 1 <= cpus <= 8:
        raise InputError(f"--cpus {cpus}: the test hypervisor runs on 1 to 8 processors")
    names = [f"at_{i}" for i in instructions] or list(VMX_SYMBOLS)
    unknown = [n for n in names if n not in VMX_SYMBOLS]
    if unknown:
        raise InputError(f"instructions {unknown}: the test hypervisor steps through {list(VMX_SYMBOLS)}")
    work = Path(tempfile.mkdtemp(prefix="vmxdbg-minihv-")) if keep is None else keep
    source = (f"minihv on Bochs, {cpus} cpus, knobs {list(knobs)}" + ("" if magic else ", code breakpoints"))
    # the recording exists from the start: a session killed while Bochs boots leaves a
    # .partial that says no stop was reached (the recorder replaces it once Bochs is up)
    early = booting_recording(record, argv, source)
    with progress.shown(f"vmxdbg trace: minihv on Bochs, {cpus} processor(s)"):
        return _bochs_trace(cpus, knobs, record, timeout, argv, keep, names, magic, work, source, early)


def _bochs_trace(cpus: int, knobs: Sequence[str], record: Optional[Path], timeout: float,
                 argv: Optional[List[str]], keep: Optional[Path], names: List[str], magic: bool, work: Path,
                 source: str, early: Optional[RecordingWriter]) -> List[StepResult]:
    from ...backends.bochs_process import BochsMachine
    from ...backends.registry import backend_class
    from ...trace.session import run_trace

    progress.phase("booting Bochs", total=1)
    try:
        with interrupt.doing("booting the test hypervisor under Bochs"):
            built = build_image(work, cpus, knobs, magic)
            backend = backend_class("bochs")(BochsMachine(floppy=str(built["image"]), cpus=cpus, magic_break=True))
        try:
            symbols: Dict[str, int] = built["symbols"]  # type: ignore[assignment]
            with interrupt.doing("booting the test hypervisor under Bochs"):
                first = backend.go(timeout=timeout)      # the image's cfg_stop: code and knobs are in memory
            if first.kind != "magic":
                raise VmxdbgError(f"Bochs did not reach the test hypervisor's first stop ({first.kind}: "
                                  f"{first.detail})")
            progress.advance("booting Bochs")
            for cpu in range(cpus):
                progress.phase(f"cpu {cpu}: stops", total=len(names))
            code = vmx_code(backend, symbols, names)
            if not magic:     # every core, knobbed or not: a stop not made is MISSED or not reached
                backend.plan_stops(sorted(code), range(cpus))
            if early is not None:
                early.abandon()
                early = None
            return run_trace(backend, code, physical=True, timeout=timeout, record=record,
                             argv=argv, source=source, breakpoints=not magic, assume=ASSUME)
        finally:
            backend.close()
            report = getattr(backend, "close_report", {})
            if report.get("errors"):
                interrupt.confirm(f"closing Bochs: {'; '.join(report['errors'])[:200]} (Bochs was killed)")
            else:
                interrupt.confirm(f"Bochs was quit cleanly ({len(report.get('breakpoints_removed', []))} "
                                  "breakpoint(s) of ours removed)")
    except BaseException as exc:
        if early is not None:     # ended before Bochs was up: close the recording saying so
            early.close(exception=f"{type(exc).__name__}: {exc}")
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                interrupt.confirm(f"the recording {record} says no stop was reached")
        raise
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)


def booting_recording(record: Optional[Path], argv: Optional[List[str]], source: str) -> Optional[RecordingWriter]:
    """A trace recording with only its header, written before Bochs boots (None without --record)."""
    if record is None:
        return None
    header = new_header({"kind": "bochs"}, [], command="trace", argv=argv or ["trace"],
                        params={"source": source, "stage": "booting"})
    return RecordingWriter(record, header)
