"""The machine behind the fake pykd: processors as a kernel debugger sees them.

`FakeTarget.from_snapshot(snap)` turns a vmxdbg Snapshot into dbgeng's view of
an x64 kernel target: registers under dbgeng's AMD64 names (`efl`, `gdtr`,
`gdtl`, ...), segment selectors only (the base/limit/attributes a debugger
can learn only from the descriptor the selector points at, so they are
encoded into a GDT in virtual memory), MSRs (FS/GS bases in IA32_FS_BASE /
IA32_GS_BASE as in 64-bit mode) and the snapshot's physical memory.

Execution is scripted: `stops` is the sequence of (cpu, address) the target
reaches when it runs; `go()` runs until one of them hits an active
breakpoint. `on_step(target, cpu)` is what a single step does.
"""
from __future__ import annotations

import struct
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Set, Tuple

from vmxdbg.state.snapshot import Memory, Snapshot

# dbgeng register names of an AMD64 kernel target that the fake knows
AMD64_REGISTERS = (
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15", "rip", "efl", "cs", "ds", "es", "fs", "gs", "ss", "dr0", "dr1", "dr2", "dr3", "dr6",
    "dr7", "cr0", "cr2", "cr3", "cr4", "cr8", "gdtr", "gdtl", "idtr", "idtl", "tr", "ldtr")
SEGMENT_REGS = ("es", "cs", "ss", "ds", "fs", "gs", "ldtr", "tr")
DEFAULT_GDT_BASE = 0xFFFFF80000010000
DEFAULT_RIP = 0xFFFFF80000401000
THREAD_ID_BASE = 0x40   # engine thread ids are not processor numbers
RAM_TOP = 16 << 30      # physical memory below this reads as zeros where nothing was written


@dataclass
class FakeProcessor:
    regs: Dict[str, int] = field(default_factory=dict)
    msrs: Dict[int, int] = field(default_factory=dict)
    # what only executing an instruction reveals (fake_cpu.py)
    cpuid: Dict[Tuple[int, int], Tuple[int, int, int, int]] = field(default_factory=dict)
    vmx: str = "off"                               # "off", "root", "non-root"
    vmcs_pointer: Optional[int] = None             # the current VMCS (None: none)
    vmcs: Dict[int, int] = field(default_factory=dict)
    supported_fields: Set[int] = field(default_factory=set)   # VMCS fields this processor has
    non_root_answer: str = "#UD"                   # what the outer hypervisor makes of a VMX instruction


@dataclass
class Stop:
    """A place the running target reaches: processor `cpu` at `address`."""

    cpu: int
    address: int
    effect: Optional[Callable[["FakeTarget", int], None]] = None   # applied when reached
    interrupt: bool = False   # the person presses Ctrl+Break instead (pykd-ext: SystemExit("CTRL+BREAK"))
    preempt: bool = False     # reached before any written code runs (another processor is faster)


def encode_descriptor(base: int, limit: int, attributes: int) -> bytes:
    """An 8-byte (code/data) or 16-byte (system, S=0) descriptor for VMCS-format attributes."""
    g = attributes >> 15 & 1
    raw_limit = limit >> 12 if g else limit
    if raw_limit > 0xFFFFF or (g and limit & 0xFFF != 0xFFF):
        raise ValueError(f"limit 0x{limit:x} cannot be encoded with G={g}")
    low = (raw_limit & 0xFFFF) | (base & 0xFFFF) << 16
    high = (base >> 16 & 0xFF) | (attributes & 0xFF) << 8 | (raw_limit >> 16 & 0xF) << 16 \
        | (attributes >> 12 & 0xF) << 20 | (base >> 24 & 0xFF) << 24
    out = struct.pack("<II", low, high)
    if not attributes >> 4 & 1:   # system descriptor: 16 bytes in IA-32e mode
        out += struct.pack("<II", base >> 32 & 0xFFFFFFFF, 0)
    return out


class Ram(Memory):
    """Physical memory of a running machine: every address below RAM_TOP reads (zeros if unwritten)."""

    def read(self, address: int, size: int) -> Optional[bytes]:   # type: ignore[override]
        if address + size > RAM_TOP:
            return None
        out = bytearray(size)
        for a, b in self.ranges():
            lo, hi = max(a, address), min(a + len(b), address + size)
            if lo < hi:
                out[lo - address:hi - address] = b[lo - a:hi - a]
        return bytes(out)


class FakeTarget:
    """Processors, memory, breakpoints and a script of stops, with call accounting."""

    def __init__(self, processors: List[FakeProcessor]) -> None:
        self.processors = processors
        self.physical: Memory = Ram()
        self.virtual = Memory()
        self.current = 0
        self.stops: List[Stop] = []
        self.on_step: Optional[Callable[["FakeTarget", int], None]] = None
        self.breakpoints: Dict[int, int] = {}        # id -> address (active ones)
        self._next_bp = 0
        self.last_event: Optional[Tuple[str, int]] = None   # (event type, processor)
        self.prefer_dml = True
        self.output: List[Tuple[str, bool]] = []     # (text, dml) printed by dprint
        self.commands: List[str] = []                # dbgCommand strings
        self.calls: Counter = Counter()              # every pykd call by name
        self.reads: List[Tuple[str, int, object]] = []   # (call, processor, what) target reads
        self.running_forever_limit = 5.0            # seconds a scripted "run forever" may block
        self.breakin_event = threading.Event()
        self.status = "break"
        self.symbols: Dict[str, int] = {}             # what expr() resolves
        self.session = "kernel"                      # "kernel", "dump" (a crash dump), "user"
        self.gone = False                            # the target disconnected: every call fails
        self.written: List[Tuple[int, int]] = []     # (address, length) written with writeBytes
        self.writes: List[Tuple[str, object]] = []   # (call, what) every write to the target
        self.cpu_readonly: Set[int] = set()          # pages the processor may not write (code)
        self.debugger_readonly: Set[int] = set()     # pages the debugger cannot write (HVCI)
        self.modules: List[Tuple[str, int, int]] = []   # (name, base, size)
        self.faults: List[Tuple[int, str]] = []       # (cpu, exception) raised by executed code
        self.breakin_raises = True                   # pykd-ext turns our own breakin into CTRL+BREAK

    # ---------------------------------------------------------------- build
    @classmethod
    def from_snapshot(cls, snap: Snapshot, gdt_base: int = DEFAULT_GDT_BASE) -> "FakeTarget":
        """The kernel-debugger view of every processor of `snap` (see module doc)."""
        procs: List[FakeProcessor] = []
        target = cls(procs)
        for n in range(max(snap.processors) + 1 if snap.processors else 0):
            p = snap.processors.get(n)
            fp = FakeProcessor()
            procs.append(fp)
            if p is None:
                continue
            fp.msrs.update(p.msr)
            fp.cpuid.update(p.cpuid)
            basic = [leaf for leaf, _ in p.cpuid if leaf < 0x80000000]
            extended = [leaf for leaf, _ in p.cpuid if leaf >= 0x80000000]
            if basic:      # a CPUID table has its leaf 0 and 0x80000000 (max leaf, vendor)
                fp.cpuid.setdefault((0, 0), (max(basic), 0x756E6547, 0x6C65746E, 0x49656E69))
            if extended:
                fp.cpuid.setdefault((0x80000000, 0), (max(extended), 0, 0, 0))
            fp.vmx = str(p.state.get("vmx", "off"))
            fp.vmcs_pointer = p.vmcs_pointer if p.vmcs_pointer not in (None, 0xFFFFFFFFFFFFFFFF) else None
            fp.vmcs.update(p.vmcs)
            fp.supported_fields = set(p.vmcs) | {0x4400}
            for name, value in p.registers.items():
                if name == "rflags":
                    fp.regs["efl"] = value
                elif name in AMD64_REGISTERS:
                    fp.regs[name] = value
            gdt: Dict[int, bytes] = {}
            for seg_name, seg in p.segments.items():
                if seg.selector is None:
                    continue
                fp.regs[seg_name] = seg.selector
                if seg_name in ("fs", "gs") and seg.base is not None:
                    fp.msrs.setdefault(0xC0000100 if seg_name == "fs" else 0xC0000101, seg.base)
                index = seg.selector >> 3
                if index == 0 or None in (seg.base, seg.limit, seg.attributes):
                    continue
                base = 0 if seg_name in ("fs", "gs") else seg.base
                desc = encode_descriptor(base, seg.limit, seg.attributes)   # type: ignore[arg-type]
                if index in gdt and gdt[index] != desc:
                    other = encode_descriptor(seg.base, seg.limit, seg.attributes)   # type: ignore[arg-type]
                    if gdt[index] != other:
                        raise ValueError(f"cpu {n}: selector 0x{seg.selector:x} used by two different segments")
                    continue
                gdt[index] = desc
            table = p.tables.get("gdtr")
            base = table.base if table is not None and table.base is not None else gdt_base + n * 0x1000
            size = max([(i + len(d) // 8) * 8 for i, d in gdt.items()] + [8])
            image = bytearray(size)
            for i, d in gdt.items():
                image[i * 8:i * 8 + len(d)] = d
            target.virtual.add(base, bytes(image))
            fp.regs["gdtr"] = base
            fp.regs["gdtl"] = table.limit if table is not None and table.limit is not None else size - 1
            idt = p.tables.get("idtr")
            if idt is not None and idt.base is not None and idt.limit is not None:
                fp.regs["idtr"], fp.regs["idtl"] = idt.base, idt.limit
            if "cs" not in fp.regs:
                fp.regs["cs"] = 0x10
            # a debugger always sees a full register file; what the snapshot lacks is made up here
            for i, name in enumerate(AMD64_REGISTERS):
                fp.regs.setdefault(name, DEFAULT_RIP + n * 0x100 if name == "rip" else 0x1000 * i)
        for addr, data in snap.memory.ranges():
            target.physical.add(addr, data)
        return target

    # ------------------------------------------------------------ memory the processor executes and writes
    @staticmethod
    def pages(address: int, size: int) -> Iterable[int]:
        return range(address & ~0xFFF, address + max(size, 1), 0x1000)

    def is_written(self, address: int) -> bool:
        return any(a <= address < a + n for a, n in self.written)

    def read_code(self, address: int) -> Optional[bytes]:
        for n in range(15, 0, -1):
            data = self.virtual.read(address, n)
            if data is not None:
                return data
        return None

    def cpu_may_write(self, address: int, size: int) -> bool:
        return self.virtual.read(address, size) is not None and \
            not any(p in self.cpu_readonly for p in self.pages(address, size))

    def add_module(self, name: str, base: int, sections: Iterable[Tuple[str, int, bytes, int, int]]) -> None:
        """A PE image at `base`: headers, then each section (name, rva, bytes, virtual size,
        characteristics) mapped to the end of its last page (the tail reads as zeros).
        Executable sections' pages are not writable by the processor."""
        sections = list(sections)
        pe = 0x80
        head = bytearray(0x1000)
        head[0:2] = b"MZ"
        struct.pack_into("<I", head, 0x3C, pe)
        head[pe:pe + 4] = b"PE\0\0"
        struct.pack_into("<HH", head, pe + 4, 0x8664, len(sections))
        opt = 0xF0
        struct.pack_into("<H", head, pe + 20, opt)
        end = 0x1000
        for i, (sname, rva, data, vsize, chars) in enumerate(sections):
            at = pe + 24 + opt + 40 * i
            head[at:at + 8] = sname.encode()[:8].ljust(8, b"\0")
            struct.pack_into("<IIII", head, at + 8, vsize, rva, len(data), 0)
            struct.pack_into("<I", head, at + 36, chars)
            span = (vsize + 0xFFF) & ~0xFFF
            self.virtual.add(base + rva, bytes(data[:vsize]).ljust(span, b"\0"))
            if chars & 0x20000000:
                self.cpu_readonly.update(self.pages(base + rva, span))
            end = max(end, rva + span)
        self.virtual.add(base, bytes(head))
        self.cpu_readonly.update(self.pages(base, 0x1000))
        self.modules.append((name, base, end))

    # ------------------------------------------------------------ accounting
    def count(self, name: str) -> None:
        self.calls[name] += 1

    def read(self, name: str, what: object) -> None:
        self.reads.append((name, self.current, what))

    def reads_by_call(self) -> Counter:
        return Counter(r[0] for r in self.reads)

    # ------------------------------------------------------------ identity
    @staticmethod
    def thread_id(cpu: int) -> int:
        return THREAD_ID_BASE + cpu

    def cpu_of_thread(self, tid: int) -> int:
        cpu = tid - THREAD_ID_BASE
        if not 0 <= cpu < len(self.processors):
            raise KeyError(tid)
        return cpu
