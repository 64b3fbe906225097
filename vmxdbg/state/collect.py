"""Read from a backend everything the rules need, into a Snapshot.

Each MSR, CPUID leaf and register is read at most once per processor per call
(a KD link pays a packet exchange for each). A value the backend cannot give
(NotAvailable) stays unknown; an MSR that may not exist on this processor
(its capability bit says so) is not read at all, since RDMSR of it would #GP
on a real machine.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional

from ..backends.base import CPUID, MSR, PHYSICAL, REGISTERS, SEGMENT_NAMES, TABLE_NAMES, VMCS, VMX_STATE, Backend
from ..common.statekeys import LAUNCH_STATE, STATES
from ..common.errors import NotAvailable
from .memtype import FIXED_4K, FIXED_16K, FIXED_64K, MTRR_DEF_TYPE, MTRRCAP
from ..common.statekeys import NO_VMCS
from .snapshot import Processor, Segment, Snapshot, Table

CPUID_LEAVES = ((0x0, 0), (0x1, 0), (0x7, 0), (0x80000000, 0), (0x80000001, 0), (0x80000008, 0))
PLAIN_REGISTERS = ("cr0", "cr3", "cr4", "rflags", "rip", "dr7", "efer", "cpl")
ALWAYS_MSRS = (0x3A, 0xC0000080, 0x277, 0x1D9, 0x174, 0x175, 0x176, 0xC0000100, 0xC0000101)
VMX_BASE_MSRS = tuple(range(0x480, 0x48B))  # BASIC .. VMCS_ENUM exist wherever VMX does
#: what a stop may read by RDMSR, for a backend's prefetch(): it reads those that exist
PREFETCH_MSRS = ALWAYS_MSRS + (MTRRCAP, MTRR_DEF_TYPE) + tuple(range(0x480, 0x494))


def leaf_has(p: Processor, leaf: int, reg: int, bit: int) -> bool:
    """True when CPUID(leaf) was read and has `bit` set in register `reg` (0=eax .. 3=edx)."""
    regs = p.cpuid.get((leaf, 0))
    return regs is not None and bool(regs[reg] >> bit & 1)


def _try(fn, *args):  # type: ignore[no-untyped-def]
    try:
        return fn(*args)
    except NotAvailable:
        return None


def _optional_vmx_msrs(msr: Dict[int, int]) -> List[int]:
    """The VMX capability MSRs past 0x48A that exist, per SDM Vol.3D A.1-A.3."""
    out: List[int] = []
    basic, proc, exit_ = msr.get(0x480), msr.get(0x482), msr.get(0x483)
    if basic is not None and basic >> 55 & 1:
        out += [0x48D, 0x48E, 0x48F, 0x490]
    if proc is not None and proc >> 63 & 1:          # activate secondary controls may be 1
        out.append(0x48B)
    if proc is not None and proc >> 49 & 1:          # activate tertiary controls may be 1
        out.append(0x492)
    if exit_ is not None and exit_ >> 63 & 1:        # activate secondary exit controls may be 1
        out.append(0x493)
    return sorted(out)


def _after_secondary(msr: Dict[int, int]) -> List[int]:
    sec = msr.get(0x48B)
    out = []
    if sec is not None and (sec >> 33 & 1 or sec >> 37 & 1):  # enable EPT / enable VPID may be 1
        out.append(0x48C)
    if sec is not None and sec >> 45 & 1:                     # enable VM functions may be 1
        out.append(0x491)
    return out


def vmcs_encodings() -> List[int]:
    """Every full-width VMCS field encoding of structs/vmcs_fields.yaml (no HIGH halves)."""
    from ..decode import defs
    return [f.encoding for f in defs.vmcs_fields() if not f.high]


def collect_processor(backend: Backend, cpu: int, snap: Snapshot,
                      vmxon_pointer: Optional[int] = None,
                      operands: Optional[Dict[str, int]] = None) -> Processor:
    """Fill snap.processors[cpu] from the backend; returns it.

    `vmxon_pointer` / `operands` are the operands of the instruction about to
    run (the stepper knows them). Physical memory the rules ask for later is
    read lazily from a backend that has it."""
    caps = backend.capabilities()
    p = snap.processor(cpu)
    if PHYSICAL in caps and snap.memory.fallback is None:
        snap.memory.fallback = lambda address, size: _try(backend.read_physical, address, size)
    if operands:
        p.operands.update(operands)
    prefetch = getattr(backend, "prefetch", None)
    if prefetch is not None and (CPUID in caps or MSR in caps):
        # a backend that injects code reads all of them with one stub (docs/bochs.md)
        prefetch(cpu, msrs=PREFETCH_MSRS if MSR in caps else (), leaves=CPUID_LEAVES if CPUID in caps else ())
    if CPUID in caps:
        for leaf, sub in CPUID_LEAVES:
            regs = _try(backend.cpuid, cpu, leaf, sub)
            if regs is not None:
                p.cpuid[(leaf, sub)] = tuple(regs)  # type: ignore[assignment]
    if MSR in caps:
        def read(indices: Iterable[int]) -> None:
            for i in indices:
                if i not in p.msr:
                    v = _try(backend.read_msr, cpu, i)
                    if v is not None:
                        p.msr[i] = v
        read(ALWAYS_MSRS)
        if leaf_has(p, 1, 3, 12):          # CPUID.1:EDX.MTRR: the memory-type advice reads the MTRRs
            read((MTRRCAP, MTRR_DEF_TYPE))
            cap = p.msr.get(MTRRCAP, 0)
            read(range(0x200, 0x200 + 2 * (cap & 0xFF)))
            if cap >> 8 & 1:
                read((FIXED_64K,) + FIXED_16K + FIXED_4K)
        leaf1 = p.cpuid.get((1, 0))
        if leaf1 is None or leaf1[2] >> 5 & 1:
            read(VMX_BASE_MSRS)
            read(_optional_vmx_msrs(p.msr))
            read(_after_secondary(p.msr))
    if REGISTERS in caps:
        names = list(PLAIN_REGISTERS)
        names += [f"{s}.{part}" for s in SEGMENT_NAMES for part in ("selector", "base", "limit", "attributes")]
        names += [f"{t}.{part}" for t in TABLE_NAMES for part in ("base", "limit")]
        values = backend.read_registers(cpu, names)
        for name, v in values.items():
            base, _, part = name.partition(".")
            if not part:
                if name == "cpl":
                    p.state["cpl"] = v
                else:
                    p.registers[name] = v
            elif base in SEGMENT_NAMES:
                setattr(p.segments.setdefault(base, Segment()), part, v)
            else:
                setattr(p.tables.setdefault(base, Table()), part, v)
        if "efer" not in p.registers and 0xC0000080 in p.msr:
            p.registers["efer"] = p.msr[0xC0000080]
    if VMX_STATE in caps:
        st = _try(backend.vmx_state, cpu) or {}
        for key in STATES:
            if st.get(key) is not None:
                p.state[key] = st[key]
        for k in ("vmcs_pointer", LAUNCH_STATE):
            if st.get(k) is not None:
                setattr(p, k, st[k])
        if st.get("vmx") in ("root", "non-root") and st.get("vmxon_pointer") is not None and vmxon_pointer is None:
            p.vmxon_pointer = int(st["vmxon_pointer"])  # type: ignore[arg-type]  # the VMXON that is in force
    if vmxon_pointer is not None:
        p.vmxon_pointer = vmxon_pointer
    if VMCS in caps and p.state.get("vmx") in ("root", "non-root") and p.vmcs_pointer not in (None, NO_VMCS):
        p.vmcs.update(backend.read_vmcs_fields(cpu, vmcs_encodings()))
    return p


def collect(backend: Backend, cpus: Optional[Iterable[int]] = None,
            vmxon_pointers: Optional[Dict[int, int]] = None, source: str = "") -> Snapshot:
    """A complete Snapshot of the chosen processors (all by default).

    The rules are run once while the backend is open, so that the physical
    memory they ask for (regions, MSR-load areas, PDPTEs) is read now; the
    snapshot returned no longer touches the backend."""
    snap = Snapshot(source=source or backend.name)
    for cpu in (backend.processors() if cpus is None else cpus):
        collect_processor(backend, cpu, snap, (vmxon_pointers or {}).get(cpu))
    from ..rules import check_snapshot
    check_snapshot(snap)
    return freeze(snap)


def freeze(snap: Snapshot) -> Snapshot:
    """Stop reading memory lazily: what was read stays, the rest is unknown."""
    snap.memory.fallback = None
    return snap
