"""Test helpers for recording/replay: snapshots to record and a tiny fake live target.

FakeLive is a two-processor target whose state changes as it runs: each
step() on a processor advances its RIP by 3 and counts; the third step on a
processor sets CR4.VMXE (bit 13); go() stops at the breakpoint set last, on
the other processor, with that processor's RIP at the breakpoint address.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Dict, FrozenSet, List, Tuple

from vmxdbg.backends.base import (CPUID, EXECUTION, MSR, PHYSICAL, REGISTERS, Backend, StopEvent)
from vmxdbg.common.errors import NotAvailable
from vmxdbg.state.snapshot import Snapshot, snapshot_from_json

BASELINE = Path(__file__).resolve().parent.parent / "vmxdbg" / "examples" / "vmxon.vmxsnap.json"


def two_cpu_tree() -> dict:
    """The shipped VMXON baseline with a second processor whose CR4 lacks VMXE."""
    tree = json.loads(BASELINE.read_text(encoding="utf-8"))
    p1 = copy.deepcopy(tree["processors"]["0"])
    p1["registers"]["cr4"] = "0x3706f8"          # CR4.VMXE (bit 13) clear
    p1["vmxon_pointer"] = "0x1a2b4000"
    tree["processors"]["1"] = p1
    tree["memory"]["0x1a2b4000"] = "0400000000000000"
    return tree


def two_cpu_snapshot() -> Snapshot:
    return snapshot_from_json(two_cpu_tree(), source="two-cpu test baseline")


POINTERS = {0: 0x1A2B3000, 1: 0x1A2B4000}


class FakeLive(Backend):
    """A live-looking target with execution events (see the module doc)."""

    name = "fake"

    def __init__(self) -> None:
        self.rip = {0: 0x1000, 1: 0x2000}
        self.cr4 = {0: 0x3706F8, 1: 0x3706F8}
        self.steps = {0: 0, 1: 0}
        self.breakpoints: Dict[int, int] = {}
        self.closed = False
        self.memory = bytearray(range(256)) * 16   # 4 KiB at physical 0x10000

    def capabilities(self) -> FrozenSet[str]:
        return frozenset({REGISTERS, MSR, CPUID, PHYSICAL, EXECUTION})

    def describe(self) -> Dict[str, str]:
        return {"kind": "fake", "version": "1"}

    def processors(self) -> List[int]:
        return [0, 1]

    def _cpu(self, cpu: int) -> None:
        if cpu not in self.rip:
            raise NotAvailable("no such processor", backend=self.name, cpu=cpu)

    def read_register(self, cpu: int, name: str) -> int:
        self._cpu(cpu)
        if name == "rip":
            return self.rip[cpu]
        if name == "cr4":
            return self.cr4[cpu]
        if name == "cr0":
            return 0x80050033
        raise NotAvailable("no such register", backend=self.name, cpu=cpu, what=f"register {name}")

    def read_msr(self, cpu: int, index: int) -> int:
        self._cpu(cpu)
        table = {0x3A: 0x5, 0x480: 0xDA040000000004 + cpu}
        if index not in table:
            raise NotAvailable("no such MSR", backend=self.name, cpu=cpu, what=f"MSR 0x{index:x}")
        return table[index]

    def cpuid(self, cpu: int, leaf: int, subleaf: int = 0) -> Tuple[int, int, int, int]:
        self._cpu(cpu)
        if leaf != 1:
            raise NotAvailable("no such leaf", backend=self.name, cpu=cpu, what=f"CPUID 0x{leaf:x}")
        return (0x906EA, 0x100800, 0x7FFAFBBF, 0xBFEBFBFF)

    def read_physical(self, address: int, size: int) -> bytes:
        off = address - 0x10000
        if off < 0 or off + size > len(self.memory):
            raise NotAvailable("unmapped", backend=self.name, what=f"physical 0x{address:x}")
        return bytes(self.memory[off:off + size])

    def set_breakpoint(self, address: int, physical: bool = False) -> int:
        bp = len(self.breakpoints)
        self.breakpoints[bp] = address
        return bp

    def remove_breakpoint(self, bp: int) -> None:
        del self.breakpoints[bp]

    def step(self, cpu: int) -> StopEvent:
        self._cpu(cpu)
        self.rip[cpu] += 3
        self.steps[cpu] += 1
        if self.steps[cpu] == 3:
            self.cr4[cpu] |= 1 << 13
        return StopEvent("step", cpu=cpu, address=self.rip[cpu])

    def go(self, timeout: float = 30.0) -> StopEvent:
        if not self.breakpoints:
            return StopEvent("timeout", detail="no breakpoint")
        bp = max(self.breakpoints)
        cpu = 1 if sum(self.steps.values()) % 2 else 0
        self.rip[cpu] = self.breakpoints[bp]
        return StopEvent("breakpoint", cpu=cpu, address=self.rip[cpu], breakpoint=bp, log=["hit"])

    def close(self) -> None:
        self.closed = True


def trace_session(backend: Backend) -> List[Tuple[int, int]]:
    """A deterministic little trace: read, set a breakpoint, go, then step cpu 0 four times,
    reading rip and cr4 after each stop. Returns the (rip, cr4) pairs it saw on cpu 0."""
    seen = []
    for cpu in backend.processors():
        backend.read_msr(cpu, 0x480)
    bp = backend.set_breakpoint(0x4000)
    ev = backend.go(5.0)
    seen.append((backend.read_register(ev.cpu, "rip"), backend.read_register(ev.cpu, "cr4")))
    for _ in range(4):
        backend.step(0)
        regs = backend.read_registers(0, ["rip", "cr4", "cr8"])
        seen.append((regs["rip"], regs["cr4"]))
    backend.read_physical(0x10010, 16)
    backend.remove_breakpoint(bp)
    return seen
