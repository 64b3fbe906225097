"""Faults injected through the debugger into a hypervisor vmxdbg does not control.

`--knob CPU:KNOB` breaks one thing on one processor at the first stop on the
instruction the knob belongs to, by writing target state through the backend
(the hypervisor's code is never changed). The stepper then reads the state,
predicts and steps as at any stop, so the prediction sees the fault exactly as
the processor does. Each write is a backend call, recorded and replayed like
every read.

| knob | at | what is written |
|---|---|---|
| vmxe_clear | VMXON | CR4 with VMXE (bit 13) cleared (Bochs: by executing MOV CR4) |
| wrong_revision | VMXON | the VMXON region's revision id (bits 30:0 of its first dword) + 1 |
| pin_reserved | VMLAUNCH | the pin-based controls (0x4000) with the lowest bit the capability MSR says must be 0 set |
| rflags_bit1 | VMLAUNCH | guest RFLAGS (0x6820) with reserved bit 1 cleared |
| fs_base_noncanonical | VMLAUNCH | guest FS base (0x680E) = 0x8000000000000000 |
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

from ..common.errors import InputError

CR4_VMXE = 1 << 13
PIN_CONTROLS, GUEST_RFLAGS, GUEST_FS_BASE = 0x4000, 0x6820, 0x680E
IA32_VMX_BASIC, IA32_VMX_PINBASED_CTLS, IA32_VMX_TRUE_PINBASED_CTLS = 0x480, 0x481, 0x48D


def _vmxon_region(backend: Any, cpu: int, site: Any) -> int:
    from .stepper import operand_address
    ea = operand_address(site, lambda name: backend.read_register(cpu, name))
    return int.from_bytes(backend.read_virtual(cpu, ea, 8), "little")


def _vmxe_clear(backend: Any, cpu: int, site: Any) -> None:
    backend.write_cr4(cpu, backend.read_register(cpu, "cr4") & ~CR4_VMXE)


def _wrong_revision(backend: Any, cpu: int, site: Any) -> None:
    region = _vmxon_region(backend, cpu, site)
    first = int.from_bytes(backend.read_physical(region, 4), "little")
    wrong = (first & 0x80000000) | ((first + 1) & 0x7FFFFFFF)
    backend.write_physical(region, wrong.to_bytes(4, "little"))


def _pin_reserved(backend: Any, cpu: int, site: Any) -> None:
    true_msrs = backend.read_msr(cpu, IA32_VMX_BASIC) >> 55 & 1
    caps = backend.read_msr(cpu, IA32_VMX_TRUE_PINBASED_CTLS if true_msrs else IA32_VMX_PINBASED_CTLS)
    allowed1 = caps >> 32
    bit = next((b for b in range(32) if not allowed1 >> b & 1), None)
    if bit is None:
        raise InputError("knob pin_reserved: every pin-based control may be 1 on this processor")
    backend.write_vmcs(cpu, PIN_CONTROLS, backend.read_vmcs(cpu, PIN_CONTROLS) | 1 << bit)


def _rflags_bit1(backend: Any, cpu: int, site: Any) -> None:
    backend.write_vmcs(cpu, GUEST_RFLAGS, backend.read_vmcs(cpu, GUEST_RFLAGS) & ~2)


def _fs_base_noncanonical(backend: Any, cpu: int, site: Any) -> None:
    backend.write_vmcs(cpu, GUEST_FS_BASE, 0x8000000000000000)


#: knob -> (the instruction it is applied before, what it does)
KNOBS: Dict[str, Tuple[Tuple[str, ...], Callable[[Any, int, Any], None]]] = {
    "vmxe_clear": (("vmxon",), _vmxe_clear),
    "wrong_revision": (("vmxon",), _wrong_revision),
    "pin_reserved": (("vmlaunch",), _pin_reserved),
    "rflags_bit1": (("vmlaunch",), _rflags_bit1),
    "fs_base_noncanonical": (("vmlaunch",), _fs_base_noncanonical),
}


def parse_knobs(specs: Sequence[str], cpus: Optional[int] = None) -> List[Tuple[int, str]]:
    """[(cpu, knob)] from `CPU:KNOB` strings; InputError names the bad one."""
    out = []
    for spec in specs:
        cpu_s, sep, name = spec.partition(":")
        if not sep or not cpu_s.isdigit():
            raise InputError(f"--knob {spec!r}: expected CPU:KNOB, e.g. 1:vmxe_clear")
        if name not in KNOBS:
            raise InputError(f"--knob {spec!r}: unknown knob {name!r}; known: {', '.join(sorted(KNOBS))}")
        cpu = int(cpu_s)
        if cpus is not None and cpu >= cpus:
            raise InputError(f"--knob {spec!r} names processor {cpu}, but the machine has {cpus} (--cpus)")
        out.append((cpu, name))
    return out


def injector(specs: Sequence[str]) -> Optional[Callable[[Any, int, Any], None]]:
    """The stepper's `prepare` hook for these knobs (None without knobs): each knob once, at its
    processor's first stop on its instruction."""
    knobs = parse_knobs(specs)
    if not knobs:
        return None
    done: Set[Tuple[int, str]] = set()

    def prepare(backend: Any, cpu: int, site: Any) -> None:
        for kcpu, name in knobs:
            at, apply = KNOBS[name]
            if kcpu == cpu and site.instruction in at and (kcpu, name) not in done:
                done.add((kcpu, name))
                apply(backend, cpu, site)
    return prepare


def unapplied(specs: Sequence[str], stops: Sequence[Tuple[int, str]]) -> List[str]:
    """One line per knob that never applied: its processor made no stop on its instruction in
    `stops` ((cpu, instruction) of each stop reached), so the trace shows no fault of it."""
    out = []
    for cpu, name in parse_knobs(specs):
        at = KNOBS[name][0]
        if not any(c == cpu and i in at for c, i in stops):
            out.append(f"knob {cpu}:{name} was not applied: processor {cpu} made no {'/'.join(at).upper()} "
                       "stop (the target did not run it, or the debugger missed that stop)")
    return out


__all__ = ["KNOBS", "parse_knobs", "injector", "unapplied"]
