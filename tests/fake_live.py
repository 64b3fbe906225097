"""A tiny scripted live target for stepper tests: a few cores running the same
code, with just enough VMXON / VMLAUNCH semantics to give real outcomes.

It is a test double of a live backend, not a VMX model: each outcome below is
written from the SDM's operation sections so that the stepper has something
honest to compare with.
"""
from __future__ import annotations

import copy
from typing import Dict, FrozenSet, List, Tuple

from vmxdbg.backends.base import (CPUID, EXECUTION, MSR, PHYSICAL, REGISTERS, VIRTUAL, VMCS, VMX_STATE, Backend,
                                  StopEvent)
from vmxdbg.common.errors import NotAvailable
from vmxdbg.rules.examples import baseline_tree
from vmxdbg.state.snapshot import Table, snapshot_from_json

CODE = 0x401000
# vmxon [rsp+8] ; vmlaunch ; hlt
PROGRAM = bytes.fromhex("f30fc7742408") + bytes.fromhex("0f01c2") + bytes.fromhex("f4")
UD_HANDLER, GP_HANDLER, IDT = 0x500600, 0x500d00, 0x600000
STACK = 0x700000


class FakeLive(Backend):
    name = "fake-live"

    def __init__(self, cores: int = 2, baseline: str = "vmxon") -> None:
        snap = snapshot_from_json(baseline_tree(baseline))
        base = snap.processors[0]
        self.cpus = {}
        for i in range(cores):
            p = copy.deepcopy(base)
            p.registers.update({"rip": CODE, "rsp": STACK + i * 0x100})
            p.tables["idtr"] = type(p.tables.get("gdtr") or Table())(IDT, 0xfff)
            p.state["vmx"] = "off"
            self.cpus[i] = p
        self.memory: Dict[int, int] = {}
        self.write(CODE, PROGRAM)
        for i in range(cores):
            region = 0x1a2b3000 + i * 0x2000
            self.write(STACK + i * 0x100 + 8, region.to_bytes(8, "little"))
            self.write(region, (0x4).to_bytes(4, "little") + bytes(4))
        for vector, handler in ((6, UD_HANDLER), (13, GP_HANDLER)):
            gate = (handler & 0xFFFF).to_bytes(2, "little") + b"\x10\x00\x00\x8e" + \
                (handler >> 16 & 0xFFFF).to_bytes(2, "little") + (handler >> 32).to_bytes(4, "little") + bytes(4)
            self.write(IDT + vector * 16, gate)
        self.breakpoints: Dict[int, int] = {}
        self.next_bp = 1
        self.done: set = set()
        self.vmcs_fields: Dict[int, Dict[int, int]] = {i: {} for i in range(cores)}
        self.reads = 0

    def write(self, address: int, data: bytes) -> None:
        for i, b in enumerate(data):
            self.memory[address + i] = b

    def capabilities(self) -> FrozenSet[str]:
        return frozenset({REGISTERS, MSR, CPUID, PHYSICAL, VIRTUAL, VMCS, VMX_STATE, EXECUTION})

    def processors(self) -> List[int]:
        return sorted(self.cpus)

    def read_register(self, cpu: int, name: str) -> int:
        self.reads += 1
        p = self.cpus[cpu]
        if name in p.registers:
            return p.registers[name]
        if name == "cpl":
            return 0
        seg, _, part = name.partition(".")
        holder = p.segments.get(seg) or p.tables.get(seg)
        if holder is not None and getattr(holder, part, None) is not None:
            return getattr(holder, part)
        raise NotAvailable("no such register", backend=self.name, cpu=cpu, what=name)

    def read_msr(self, cpu: int, index: int) -> int:
        if index not in self.cpus[cpu].msr:
            raise NotAvailable("no such MSR", backend=self.name, cpu=cpu, what=hex(index))
        return self.cpus[cpu].msr[index]

    def cpuid(self, cpu: int, leaf: int, subleaf: int = 0) -> Tuple[int, int, int, int]:
        try:
            return self.cpus[cpu].cpuid[(leaf, subleaf)]
        except KeyError:
            raise NotAvailable("leaf", backend=self.name, cpu=cpu) from None

    def read_physical(self, address: int, size: int) -> bytes:
        if any(address + i not in self.memory for i in range(size)):
            raise NotAvailable("unmapped", backend=self.name, what=hex(address))
        return bytes(self.memory[address + i] for i in range(size))

    def read_virtual(self, cpu: int, address: int, size: int) -> bytes:
        return self.read_physical(address, size)

    def read_vmcs(self, cpu: int, encoding: int) -> int:
        if encoding not in self.vmcs_fields[cpu]:
            raise NotAvailable("no field", backend=self.name, cpu=cpu)
        return self.vmcs_fields[cpu][encoding]

    def vmx_state(self, cpu: int) -> Dict[str, object]:
        p = self.cpus[cpu]
        return {"vmx": p.state["vmx"], "vmcs_pointer": p.vmcs_pointer, "a20m": False}

    def set_breakpoint(self, address: int, physical: bool = False) -> int:
        bp = self.next_bp
        self.next_bp += 1
        self.breakpoints[bp] = address
        return bp

    def remove_breakpoint(self, bp: int) -> None:
        del self.breakpoints[bp]

    def go(self, timeout: float = 30.0) -> StopEvent:
        for cpu, p in sorted(self.cpus.items()):
            if cpu in self.done:
                continue
            while True:
                rip = p.registers["rip"]
                if rip in self.breakpoints.values() and not p.state.get("_resume"):
                    p.state["_resume"] = True
                    return StopEvent("breakpoint", cpu, rip)
                p.state.pop("_resume", None)
                if not self._execute(cpu):
                    self.done.add(cpu)
                    break
        return StopEvent("exited", detail="every core halted")

    def step(self, cpu: int) -> StopEvent:
        self.cpus[cpu].state.pop("_resume", None)
        self._execute(cpu)
        return StopEvent("step", cpu, self.cpus[cpu].registers["rip"])

    def _execute(self, cpu: int) -> bool:
        """Run one instruction; False at HLT or in a handler (the core stops)."""
        p = self.cpus[cpu]
        rip = p.registers["rip"]
        if rip == CODE:          # vmxon [rsp+8]
            if not p.registers["cr4"] & 0x2000:
                p.registers["rip"] = UD_HANDLER
                return True
            ptr = int.from_bytes(self.read_physical(p.registers["rsp"] + 8, 8), "little")
            rev = int.from_bytes(self.read_physical(ptr, 4), "little")
            p.registers["rip"] = rip + 6
            if rev != p.msr[0x480] & 0x7FFFFFFF:
                p.registers["rflags"] = (p.registers["rflags"] & ~0x8D5) | 1
            else:
                p.registers["rflags"] &= ~0x8D5
                p.state["vmx"] = "root"
            return True
        if rip == CODE + 6:      # vmlaunch
            if p.state["vmx"] == "off":
                p.registers["rip"] = UD_HANDLER
                return True
            p.registers["rip"] = rip + 3
            p.registers["rflags"] = (p.registers["rflags"] & ~0x8D5) | 1   # no current VMCS
            return True
        return False
