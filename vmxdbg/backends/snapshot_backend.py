"""A snapshot file as a read-only backend."""
from __future__ import annotations

from typing import Dict, FrozenSet, List, Tuple

from ..common.statekeys import LAUNCH_STATE, VMX_POINTERS
from ..common.errors import NotAvailable
from ..state.snapshot import Snapshot
from .base import CPUID, MSR, PHYSICAL, REGISTERS, VIRTUAL, VMCS, VMX_STATE, Backend


class SnapshotBackend(Backend):
    """Answers queries from a Snapshot; what it lacks raises NotAvailable."""

    name = "snapshot"

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def capabilities(self) -> FrozenSet[str]:
        caps = {REGISTERS, MSR, CPUID, PHYSICAL, VMCS, VMX_STATE}
        if any(p.virtual_memory for p in self.snapshot.processors.values()):
            caps.add(VIRTUAL)  # a kd log's `dd`/`dq` dumps, exported per processor
        return frozenset(caps)

    def describe(self) -> Dict[str, str]:
        return {"kind": self.name, "source": self.snapshot.source}

    def processors(self) -> List[int]:
        return sorted(self.snapshot.processors)

    def _p(self, cpu: int):  # type: ignore[no-untyped-def]
        if cpu not in self.snapshot.processors:
            raise NotAvailable("no such processor", backend=self.name, cpu=cpu)
        return self.snapshot.processors[cpu]

    def _missing(self, cpu: int, what: str) -> NotAvailable:
        return NotAvailable("not in the snapshot", backend=self.name, cpu=cpu, what=what)

    def read_register(self, cpu: int, name: str) -> int:
        p = self._p(cpu)
        if name in p.registers:
            return p.registers[name]
        if name == "cpl" and "cpl" in p.state:
            return int(p.state["cpl"])
        base, _, part = name.partition(".")
        holder = p.segments.get(base) or p.tables.get(base)
        value = getattr(holder, part, None) if holder is not None and part else None
        if value is None:
            raise self._missing(cpu, f"register {name}")
        return value

    def read_msr(self, cpu: int, index: int) -> int:
        p = self._p(cpu)
        if index not in p.msr:
            raise self._missing(cpu, f"MSR 0x{index:x}")
        return p.msr[index]

    def cpuid(self, cpu: int, leaf: int, subleaf: int = 0) -> Tuple[int, int, int, int]:
        p = self._p(cpu)
        if (leaf, subleaf) not in p.cpuid:
            raise self._missing(cpu, f"CPUID 0x{leaf:x}.{subleaf:x}")
        return p.cpuid[(leaf, subleaf)]

    def read_physical(self, address: int, size: int) -> bytes:
        data = self.snapshot.memory.read(address, size)
        if data is None:
            raise NotAvailable("not in the snapshot", backend=self.name, what=f"physical 0x{address:x}+0x{size:x}")
        return data

    def read_virtual(self, cpu: int, address: int, size: int) -> bytes:
        data = self._p(cpu).virtual_memory.read(address, size)
        if data is None:
            raise self._missing(cpu, f"virtual 0x{address:x}+0x{size:x}")
        return data

    def read_vmcs(self, cpu: int, encoding: int) -> int:
        p = self._p(cpu)
        if encoding not in p.vmcs:
            raise self._missing(cpu, f"VMCS field 0x{encoding:04x}")
        return p.vmcs[encoding]

    def vmx_state(self, cpu: int) -> Dict[str, object]:
        p = self._p(cpu)
        out: Dict[str, object] = {}
        if "vmx" in p.state:
            out["vmx"] = p.state["vmx"]
        for k in VMX_POINTERS + (LAUNCH_STATE,):
            if getattr(p, k) is not None:
                out[k] = getattr(p, k)
        return out
