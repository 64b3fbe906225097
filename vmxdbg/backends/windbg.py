"""A live Windows kernel target seen through WinDbg and pykd 0.3.x.

This is the only module of vmxdbg that imports pykd, and it does so on first
use, so everything else installs and runs where pykd does not exist (pykd
0.3.4 ships Windows wheels for Python 2.7 and 3.5-3.9 only).

Every query uses pykd's typed calls: `reg(name)` for registers (dbgeng's
AMD64 names: `efl`, `gdtr`/`gdtl`, `idtr`/`idtl`, selectors `cs`...`tr`),
`rdmsr(index)`, `loadBytes(addr, count, phyAddr)` for memory, `setBp` /
`breakpoint.remove()` / `go()` / `trace()` / `breakin()` for execution,
`getNumberThreads()` for the processor count (in a kernel session dbgeng makes
one virtual thread per processor), `getLastEvent()` for the processor an event
stopped on. One thing has no typed call in pykd 0.3 and falls back to text:
switching the current processor, done with the documented kernel-mode command
`~Ns` through `dbgCommand` (its output is only checked for an error).

A KD link pays a packet exchange for each read, so the backend keeps what it
read until the target runs again (go, step): each register, MSR and GDT is
read at most once per processor per stop, each memory range once per stop,
and the processor is switched only when it changes. `reads` counts the target
reads made (reg, rdmsr, load*), for the stated cost of a full check
(docs/windbg.md). Physical memory is read by whole 4-KByte pages, each once
per stop, however many pieces of it the rules ask for.

What a debugger cannot see is NotAvailable, never guessed: CPUID (the
debugger cannot execute it on the target), the VMX state and the current VMCS
(no VMREAD from outside), physical-address breakpoints. With injection on
(`enable_injection()`, `--inject`), CPUID, VMPTRST and VMREAD are executed on
the processor the target stopped on (windbg_inject.py), VMX instructions only
where it is known to be in VMX root operation (`known_vmx_root`).

pykd translates only memory, symbol and type errors into their own classes; a
failed `reg` or `rdmsr` reaches Python as plain DbgException (kdlib's
CPUException is not translated, pykd/dbgexcept.h), and is NotAvailable here
unless the target is gone (getExecutionStatus() says NoDebuggee). Segment base, limit
and attributes are decoded from the descriptor the selector names in the GDT
(one read of the GDT per processor per stop); FS/GS bases in IA-32e mode come
from IA32_FS_BASE/IA32_GS_BASE. The processor's hidden copy can differ from
the table if the GDT was edited after the segment was loaded.
"""
from __future__ import annotations

import struct
import threading
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Optional, Tuple

from ..common.errors import BackendError, NotAvailable, TargetGone
from .base import CPUID, EXECUTION, MSR, PHYSICAL, REGISTERS, SEGMENT_NAMES, VIRTUAL, VMCS, VMX_STATE, Backend, \
    StopEvent

CTRL_BREAK = "CTRL+BREAK"   # pykd-ext raises SystemExit("CTRL+BREAK") on Ctrl+Break (sources/windbgext.cpp)


def is_ctrl_break(exc: BaseException) -> bool:
    """True for pykd-ext's Ctrl+Break (a SystemExit whose code is "CTRL+BREAK")."""
    return isinstance(exc, SystemExit) and str(exc.code) == CTRL_BREAK


def session_problem(pykd: Any) -> Optional[str]:
    """Why this debugger session cannot be checked, or None: vmxdbg needs a live kernel target."""
    exc = getattr(pykd, "DbgException", Exception)
    try:
        kernel = bool(pykd.isKernelDebugging())
        dump = bool(pykd.isDumpAnalyzing())
    except exc as e:   # type: ignore[misc]
        return f"the debugger has no target ({e}); attach to a kernel target and break in"
    if dump:
        return "this is a dump, not a live target: !vmxcheck reads and steps a live kernel target"
    if not kernel:
        return "this is a user-mode session: !vmxcheck needs a kernel debugging session (kd/WinDbg -k)"
    return None

NAME = "windbg"
PAGE = 0x1000
EFER, FS_BASE, GS_BASE = 0xC0000080, 0xC0000100, 0xC0000101
# vmxdbg register name -> dbgeng (AMD64 kernel) register name
_DBGENG = {"rflags": "efl"}
_PLAIN = frozenset({"cr0", "cr2", "cr3", "cr4", "cr8", "dr0", "dr1", "dr2", "dr3", "dr6", "dr7", "rip",
                    "rsp", "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11",
                    "r12", "r13", "r14", "r15", "rflags"})
_TABLE_REGS = {"gdtr.base": "gdtr", "gdtr.limit": "gdtl", "idtr.base": "idtr", "idtr.limit": "idtl"}
_SWITCH_ERRORS = ("not a valid", "invalid", "syntax error", "error", "^ ")


def _import_pykd() -> Any:
    try:
        import pykd  # type: ignore[import-not-found]  # noqa: PLC0415 (lazy on purpose)
    except ImportError as exc:
        raise NotAvailable(f"pykd cannot be imported here ({exc}); run inside WinDbg with pykd loaded "
                           "(docs/windbg.md)", backend=NAME) from None
    return pykd


def decode_descriptor(raw: bytes) -> Tuple[int, int, int]:
    """(base, limit, attributes in the VMCS access-rights format) of an 8- or 16-byte descriptor.

    Vol.3A 3.4.5 (segment descriptors) and 7.2.3 (16-byte system descriptors
    in IA-32e mode); Vol.3C 25.4.1 for the access-rights layout
    (SDM 325462-080US, 2023).
    """
    low, high = struct.unpack_from("<II", raw)
    base = (low >> 16) | (high & 0xFF) << 16 | (high >> 24) << 24
    raw_limit = (low & 0xFFFF) | (high >> 16 & 0xF) << 16
    attributes = (high >> 8 & 0xFF) | (high >> 20 & 0xF) << 12
    limit = (raw_limit << 12 | 0xFFF) if attributes >> 15 & 1 else raw_limit
    if not attributes >> 4 & 1 and len(raw) >= 16:   # system descriptor: base[63:32] follows
        base |= struct.unpack_from("<I", raw, 8)[0] << 32
    return base, limit, attributes


class WinDbgBackend(Backend):
    """The processors of the kernel target WinDbg is attached to (see the module doc)."""

    name = NAME

    def __init__(self, pykd_module: Any = None) -> None:
        """`pykd_module` replaces `import pykd` (tests pass a stand-in)."""
        self._pk = pykd_module
        self.reads = 0                      # target reads made (reg, rdmsr, load*)
        self._count: Optional[int] = None
        self._current: Optional[int] = None
        self._original_thread: Optional[int] = None
        self._thread_cpu: Dict[int, int] = {}
        self._regs: Dict[Tuple[int, str], Any] = {}     # value or the BackendError it raised
        self._msrs: Dict[Tuple[int, int], Any] = {}
        self._gdts: Dict[int, Any] = {}
        self._memory: Dict[Tuple[str, int, int], Any] = {}
        self._bps: Dict[int, Tuple[Any, int]] = {}       # our id -> (pykd breakpoint, address)
        self._next_bp = 1
        self.writes = 0                     # target writes made (writeBytes, setReg)
        self.notes: List[str] = []          # what the person should know that is no error (printed at the end)
        self._injector: Any = None          # windbg_inject.Injector once enable_injection() ran
        self._vmx_root: Dict[int, str] = {}              # cpu -> why it is known to be in VMX root operation
        self._batches: Dict[int, Any] = {}               # cpu -> stub.BatchResult of this stop
        self._event_cpu_now: Optional[int] = None
        self._queued: List[StopEvent] = []

    # ------------------------------------------------------------ plumbing
    @property
    def pykd(self) -> Any:
        if self._pk is None:
            self._pk = _import_pykd()
        return self._pk

    def _exc(self, name: str) -> type:
        return getattr(self.pykd, name, Exception)

    def _fail(self, exc: BaseException, cpu: Optional[int], what: str) -> BackendError:
        """The BackendError for a pykd exception, naming the processor and what was read."""
        text = str(exc) or type(exc).__name__
        if isinstance(exc, self._exc("CPUException")):
            return NotAvailable(f"the debugger could not read it ({text})", backend=self.name, cpu=cpu, what=what)
        if isinstance(exc, self._exc("MemoryException")):
            return NotAvailable(f"not readable ({text})", backend=self.name, cpu=cpu, what=what)
        lowered = text.lower()
        if "no debuggee" in lowered or "not connected" in lowered or self._gone():
            return TargetGone(text, backend=self.name, cpu=cpu, what=what)
        if what.startswith(("register ", "MSR ")):
            # kdlib's CPUException arrives as plain DbgException: this value is not readable here
            return NotAvailable(f"the debugger could not read it ({text})", backend=self.name, cpu=cpu, what=what)
        return BackendError(text, backend=self.name, cpu=cpu, what=what)

    def _gone(self) -> bool:
        """True when the debugger has no target any more (getExecutionStatus is NoDebuggee, or fails)."""
        pk = self.pykd
        try:
            status = int(pk.getExecutionStatus())
        except self._exc("DbgException"):   # type: ignore[misc]
            return True
        except AttributeError:
            return False
        return status == int(getattr(getattr(pk, "executionStatus", None), "NoDebuggee", -1))

    def _raise_if_gone(self, cpu: Optional[int], what: str) -> None:
        if self._gone():
            raise TargetGone("the target is gone (no debuggee)", backend=self.name, cpu=cpu, what=what)

    def _read(self, cache: Dict[Any, Any], key: Any, cpu: Optional[int], what: str,
              fn: Callable[[], Any]) -> Any:
        """fn() once per stop: cached with its error; counts a target read."""
        if key not in cache:
            self.reads += 1
            try:
                cache[key] = fn()
            except self._exc("DbgException") as exc:   # type: ignore[misc]
                cache[key] = self._fail(exc, cpu, what)
        value = cache[key]
        if isinstance(value, BackendError):
            raise value
        return value

    def invalidate(self) -> None:
        """Forget what was read: the target ran (go, step) or was changed."""
        self._regs.clear()
        self._msrs.clear()
        self._gdts.clear()
        self._memory.clear()

    def capabilities(self) -> FrozenSet[str]:
        caps = {REGISTERS, MSR, PHYSICAL, VIRTUAL, EXECUTION}
        if self._injector is not None:
            caps |= {CPUID, VMX_STATE, VMCS}
        return frozenset(caps)

    def describe(self) -> Dict[str, str]:
        out = {"kind": self.name, "version": str(getattr(self.pykd, "version", "?")),
               "debugger": "WinDbg (dbgeng) through pykd"}
        stand_in = getattr(self.pykd, "STAND_IN", None)    # only the tests' stand-in has it
        if stand_in:
            out["made_through"] = str(stand_in)
        return out

    # ------------------------------------------------------------ processors
    def processors(self) -> List[int]:
        if self._count is None:
            try:
                self._count = int(self.pykd.getNumberThreads())
            except self._exc("DbgException") as exc:   # type: ignore[misc]
                raise self._fail(exc, None, "processor count") from None
            if self._count <= 0:
                raise TargetGone("no processors: is WinDbg attached to a kernel target?", backend=self.name)
        return list(range(self._count))

    def _check_cpu(self, cpu: int, what: Optional[str] = None) -> None:
        n = len(self.processors())
        if not 0 <= cpu < n:
            raise NotAvailable(f"no such processor (the target has {n}: 0-{n - 1})", backend=self.name, cpu=cpu,
                               what=what)

    def select(self, cpu: int) -> None:
        """Make `cpu` the debugger's current processor (`~Ns`: pykd 0.3 has no typed switch)."""
        self._check_cpu(cpu)
        if self._current == cpu:
            return
        pk = self.pykd
        try:
            if self._original_thread is None:
                self._original_thread = int(pk.getCurrentThreadId())
            out = pk.dbgCommand(f"~{cpu}s")
        except self._exc("DbgException") as exc:   # type: ignore[misc]
            raise self._fail(exc, cpu, f"switching to the processor (~{cpu}s)") from None
        if out and any(e in out.lower() for e in _SWITCH_ERRORS):
            raise BackendError(f"~{cpu}s answered: {out.strip()}", backend=self.name, cpu=cpu)
        self._current = cpu

    # ------------------------------------------------------------ registers
    def _reg(self, cpu: int, dbgeng_name: str) -> int:
        def fn() -> int:
            self.select(cpu)
            return int(self.pykd.reg(dbgeng_name))
        return self._read(self._regs, (cpu, dbgeng_name), cpu, f"register {dbgeng_name}", fn)

    def _gdt(self, cpu: int) -> bytes:
        base, limit = self._reg(cpu, "gdtr"), self._reg(cpu, "gdtl")

        def fn() -> bytes:
            self.select(cpu)
            return bytes(self.pykd.loadBytes(base, limit + 1, False))
        return self._read(self._gdts, cpu, cpu, f"GDT at 0x{base:x}+0x{limit + 1:x}", fn)

    def _long_mode(self, cpu: int) -> bool:
        try:
            return bool(self.read_msr(cpu, EFER) >> 10 & 1)   # IA32_EFER.LMA
        except NotAvailable:
            return False

    def _segment_part(self, cpu: int, seg: str, part: str) -> int:
        selector = self._reg(cpu, seg)
        if part == "selector":
            return selector
        if seg in ("fs", "gs") and part == "base" and self._long_mode(cpu):
            return self.read_msr(cpu, FS_BASE if seg == "fs" else GS_BASE)
        what = f"register {seg}.{part} (selector 0x{selector:x})"
        if selector & 4:
            raise NotAvailable("the selector names the LDT, which vmxdbg does not read", backend=self.name,
                               cpu=cpu, what=what)
        index = selector >> 3
        if index == 0:
            if part == "attributes":
                return 1 << 16   # a null selector makes the segment unusable (Vol.3C 25.4.1)
            raise NotAvailable("null selector: the processor's hidden part is not visible to a debugger",
                               backend=self.name, cpu=cpu, what=what)
        table = self._gdt(cpu)
        size = 16 if seg in ("tr", "ldtr") else 8
        raw = table[index * 8:index * 8 + size]
        if len(raw) < 8:
            raise NotAvailable(f"the selector is past the GDT limit 0x{len(table) - 1:x}", backend=self.name,
                               cpu=cpu, what=what)
        base, limit, attributes = decode_descriptor(raw)
        return {"base": base, "limit": limit, "attributes": attributes}[part]

    def read_register(self, cpu: int, name: str) -> int:
        key = name.lower()
        self._check_cpu(cpu, f"register {name}")
        if key in _PLAIN:
            return self._reg(cpu, _DBGENG.get(key, key))
        if key in _TABLE_REGS:
            return self._reg(cpu, _TABLE_REGS[key])
        if key == "cpl":
            return self._reg(cpu, "cs") & 3   # CPL is CS.RPL (Vol.3A 5.5)
        if key == "efer":
            return self.read_msr(cpu, EFER)  # dbgeng has no EFER register; it is MSR 0xC0000080
        seg, _, part = key.partition(".")
        if seg in SEGMENT_NAMES and part in ("selector", "base", "limit", "attributes"):
            return self._segment_part(cpu, seg, part)
        if seg in SEGMENT_NAMES and not part:
            return self._reg(cpu, seg)
        raise self._unsupported(f"register {name}", cpu)

    # ------------------------------------------------------------ MSRs, CPUID, memory
    def read_msr(self, cpu: int, index: int) -> int:
        self._check_cpu(cpu, f"MSR 0x{index:x}")

        def fn() -> int:
            self.select(cpu)
            return int(self.pykd.rdmsr(index))
        return self._read(self._msrs, (cpu, index), cpu, f"MSR 0x{index:x}", fn)

    def cpuid(self, cpu: int, leaf: int, subleaf: int = 0) -> Tuple[int, int, int, int]:
        what = f"CPUID 0x{leaf:x}.{subleaf:x}"
        if self._injector is None:
            raise NotAvailable("a kernel debugger cannot execute CPUID on the target (pykd has no call for it; "
                               "--inject runs it on the stopped processor)", backend=self.name, cpu=cpu, what=what)
        self._check_cpu(cpu, what)
        batch = self._batch(cpu, extra_leaf=(leaf, subleaf))
        if (leaf, subleaf) not in batch.cpuid:
            batch = self._run_batch(cpu, [(leaf, subleaf)], [])
        return batch.cpuid[(leaf, subleaf)]

    # ------------------------------------------------------------ injection (--inject)
    def enable_injection(self) -> None:
        """Let CPUID, VMPTRST and VMREAD be executed on the stopped processor (docs/windbg.md)."""
        if self._injector is None:
            from .windbg_inject import Injector
            self._injector = Injector(self)

    @property
    def runs(self) -> int:
        """Times the target was resumed to run an injected stub."""
        return self._injector.runs if self._injector is not None else 0

    def known_vmx_root(self, cpu: int, why: str) -> None:
        """`cpu` is in VMX root operation until it runs again (a VMX instruction stop, --assume vmx=root)."""
        self._vmx_root[cpu] = why

    def _batch(self, cpu: int, extra_leaf: Optional[Tuple[int, int]] = None) -> Any:
        """This stop's batch for `cpu`: the CPUID leaves a check reads and, in VMX root operation,
        the current VMCS's fields, all in one run."""
        if cpu not in self._batches:
            from ..state.collect import CPUID_LEAVES, vmcs_encodings
            leaves = list(CPUID_LEAVES)
            if extra_leaf is not None and extra_leaf not in leaves:
                leaves.append(extra_leaf)
            fields = vmcs_encodings() if cpu in self._vmx_root else []
            self._run_batch(cpu, leaves, fields)
        return self._batches[cpu]

    def _run_batch(self, cpu: int, leaves: List[Tuple[int, int]], fields: List[int]) -> Any:
        result = self._injector.run(cpu, leaves, fields)
        old = self._batches.get(cpu)
        if old is not None:    # a later, smaller batch adds to what this stop already knows
            old.cpuid.update(result.cpuid)
            old.fields.update(result.fields)
            old.failed.update(result.failed)
            return old
        self._batches[cpu] = result
        return result

    def vmx_state(self, cpu: int) -> Dict[str, object]:
        if self._injector is None or cpu not in self._vmx_root:
            raise NotAvailable("a debugger cannot see whether a processor is in VMX operation"
                               + ("" if self._injector is None else " (--inject runs VMX instructions only where "
                                  "it is known: at a VMX instruction stop, or --assume vmx=root)"),
                               backend=self.name, cpu=cpu, what="VMX state")
        batch = self._batch(cpu)
        state: Dict[str, object] = {"vmx": "root"}
        if batch.vmcs_pointer is not None:
            state["vmcs_pointer"] = batch.vmcs_pointer
        return state

    def read_vmcs(self, cpu: int, encoding: int) -> int:
        what = f"VMCS field 0x{encoding:04x}"
        if self._injector is None or cpu not in self._vmx_root:
            raise NotAvailable("VMREAD runs only on the processor itself, in VMX root operation (--inject at a "
                               "VMX instruction stop)", backend=self.name, cpu=cpu, what=what)
        batch = self._batches.get(cpu)
        if batch is None or (encoding not in batch.fields and encoding not in batch.failed):
            batch = self._run_batch(cpu, [], [encoding])
        if encoding in batch.fields:
            return batch.fields[encoding]
        why = batch.failed.get(encoding, "")
        detail = {"VMfailInvalid": "VMREAD gave VMfailInvalid: no current VMCS",
                  "VMfailValid": "VMREAD gave VMfailValid: this processor does not support the field"}
        raise NotAvailable(detail.get(why, "not read: the field's index is above IA32_VMX_VMCS_ENUM"),
                           backend=self.name, cpu=cpu, what=what)

    def read_vmcs_fields(self, cpu: int, encodings: Iterable[int]) -> Dict[int, int]:
        if self._injector is None or cpu not in self._vmx_root:
            return {}
        batch = self._batch(cpu)
        return {e: batch.fields[e] for e in encodings if e in batch.fields}

    # helpers the injector uses (each counts as a target read or write)
    def event_processor(self) -> Optional[int]:
        """The processor the target stopped on (its last event), once per stop."""
        if self._event_cpu_now is None:
            try:
                self._event_cpu_now = self._event_cpu()
            except self._exc("DbgException"):   # type: ignore[misc]
                self._raise_if_gone(None, "last event")
                return None
        return self._event_cpu_now

    def _cache_of(self, cpu: int) -> Dict[str, Dict[Any, Any]]:
        return {"regs": {k: v for k, v in self._regs.items() if k[0] == cpu},
                "msrs": {k: v for k, v in self._msrs.items() if k[0] == cpu},
                "gdt": {cpu: self._gdts[cpu]} if cpu in self._gdts else {}}

    def _keep_cache(self, cpu: int, known: Dict[str, Dict[Any, Any]]) -> None:
        """After a run: the other processors ran, `cpu` is as it was (its values were put back)."""
        self.invalidate()
        self._regs.update(known["regs"])
        self._msrs.update(known["msrs"])
        self._gdts.update(known["gdt"])

    def _select_now(self, cpu: int) -> None:
        self._current = None
        self.select(cpu)

    def _set_reg(self, cpu: int, name: str, value: int) -> None:
        self.select(cpu)
        self.writes += 1
        try:
            self.pykd.setReg(name, value)
        except self._exc("DbgException") as exc:   # type: ignore[misc]
            raise self._fail(exc, cpu, f"setting register {name}") from None
        self._regs[(cpu, name)] = value

    def pykd_write(self, address: int, data: bytes) -> None:
        self.writes += 1
        self.pykd.writeBytes(address, list(data))

    def pykd_load(self, address: int, size: int) -> bytes:
        self.reads += 1
        return bytes(self.pykd.loadBytes(address, size, False))

    def pykd_reg(self, name: str) -> int:
        self.reads += 1
        return int(self.pykd.reg(name))

    def _queue_missed(self, run: Dict[str, Any], why: str) -> None:
        self._queued.append(StopEvent(kind="missed", cpu=run["cpu"], address=run["rip"], detail=why))

    def read_physical(self, address: int, size: int) -> bytes:
        """Whole 4-KByte pages, each read once per stop: the rules ask for a region a few bytes at a
        time (revision id, then fields), and a KD round trip costs more than the bytes."""
        what = f"physical memory 0x{address:x}+0x{size:x}"
        out = b""
        at, end = address, address + size
        while at < end:
            base = at & ~(PAGE - 1)
            try:
                page = self._read(self._memory, ("p", base, PAGE), None, f"physical page 0x{base:x}",
                                  lambda b=base: bytes(self.pykd.loadBytes(b, PAGE, True)))
            except NotAvailable:
                # the page as a whole is not readable (MMIO, a hole): ask for exactly what is wanted
                return self._read(self._memory, ("exact", address, size), None, what,
                                  lambda: bytes(self.pykd.loadBytes(address, size, True)))
            take = min(end, base + PAGE) - at
            out += page[at - base:at - base + take]
            at += take
        return out

    def read_virtual(self, cpu: int, address: int, size: int) -> bytes:
        self._check_cpu(cpu, f"virtual memory 0x{address:x}+0x{size:x}")

        def fn() -> bytes:
            self.select(cpu)
            return bytes(self.pykd.loadBytes(address, size, False))
        return self._read(self._memory, (f"v{cpu}", address, size), cpu,
                          f"virtual memory 0x{address:x}+0x{size:x}", fn)

    def evaluate(self, expression: str) -> int:
        """A debugger expression (`mydrv!InitVmx+0x10`, `@rip`) as a number: pykd's expr()."""
        try:
            return int(self.pykd.expr(expression))
        except self._exc("DbgException") as exc:   # type: ignore[misc]
            raise NotAvailable(f"the debugger cannot evaluate it ({exc})", backend=self.name,
                               what=f"expression {expression!r}") from None

    # ------------------------------------------------------------ execution
    def set_breakpoint(self, address: int, physical: bool = False) -> int:
        if physical:
            raise NotAvailable("WinDbg has no code breakpoints on physical addresses", backend=self.name,
                               what=f"breakpoint at physical 0x{address:x}")
        try:
            bp = self.pykd.setBp(address)
        except self._exc("DbgException") as exc:   # type: ignore[misc]
            raise self._fail(exc, None, f"breakpoint at 0x{address:x}") from None
        ours = self._next_bp
        self._next_bp += 1
        self._bps[ours] = (bp, address)   # pykd removes a breakpoint whose object dies: keep it
        return ours

    def remove_breakpoint(self, bp: int) -> None:
        if bp not in self._bps:
            raise NotAvailable("no such breakpoint set by vmxdbg", backend=self.name, what=f"breakpoint {bp}")
        obj, address = self._bps.pop(bp)
        try:
            obj.remove()
        except self._exc("DbgException") as exc:   # type: ignore[misc]
            raise self._fail(exc, None, f"removing the breakpoint at 0x{address:x}") from None

    def breakpoints(self) -> Dict[int, int]:
        """The breakpoints this backend has set and not removed: id -> address."""
        return {k: a for k, (_, a) in self._bps.items()}

    def _cpu_of_thread(self, tid: int) -> Optional[int]:
        """The processor whose virtual thread has engine id `tid` (learned by switching, once)."""
        if tid in self._thread_cpu:
            return self._thread_cpu[tid]
        pk = self.pykd
        for cpu in self.processors():   # switch until that thread is current; it stays selected
            self._current = None
            self.select(cpu)
            cur = int(pk.getCurrentThreadId())
            self._thread_cpu[cur] = cpu
            if cur == tid:
                return cpu
        return None

    def _event_cpu(self) -> Optional[int]:
        """The processor the last event happened on."""
        return self._cpu_of_thread(int(self.pykd.getLastEvent().thread))

    def current_processor(self) -> Optional[int]:
        """The processor the debugger has selected (the `N:` of the `N: kd>` prompt)."""
        if self._current is None:
            try:
                tid = int(self.pykd.getCurrentThreadId())
            except self._exc("DbgException") as exc:   # type: ignore[misc]
                raise self._fail(exc, None, "current processor") from None
            if self._original_thread is None:
                self._original_thread = tid
            self._current = self._cpu_of_thread(tid)
        return self._current

    def _run(self, timeout: float) -> Dict[str, Any]:
        """Resume every processor until a stop; after `timeout` seconds break in (pykd's go() has no
        timeout). pykd-ext may turn that breakin into SystemExit("CTRL+BREAK"): after the timer fired
        it is ours; before, it is the person's Ctrl+Break, raised on."""
        pk = self.pykd
        fired = threading.Event()

        def expire() -> None:
            fired.set()
            pk.breakin()
        timer = threading.Timer(timeout, expire)
        timer.daemon = True
        self.invalidate()
        self._current = None
        self._event_cpu_now = None
        timer.start()
        try:
            status = pk.go()
        except SystemExit as exc:
            if not (fired.is_set() and is_ctrl_break(exc)):
                raise
            status = None
        except self._exc("DbgException") as exc:   # type: ignore[misc]
            raise self._fail(exc, None, "go") from None
        finally:
            timer.cancel()
        if status is not None and int(status) == int(getattr(getattr(pk, "executionStatus", None),
                                                               "NoDebuggee", -1)):
            raise TargetGone("the target is gone (no debuggee)", backend=self.name)
        try:
            event = pk.getLastEvent()
            cpu = self._event_cpu()
        except self._exc("DbgException") as exc:   # type: ignore[misc]
            raise self._fail(exc, None, "the event that stopped the target") from None
        self._current = cpu
        self._event_cpu_now = cpu
        address = self.read_register(cpu, "rip") if cpu is not None else None
        is_bp = int(event.type) == int(pk.eventType.Breakpoint)
        return {"cpu": cpu, "rip": address, "breakpoint": is_bp, "fired": fired.is_set() and not is_bp,
                "timeout": timeout}

    def _stop_event(self, run: Dict[str, Any]) -> StopEvent:
        if run["fired"]:
            return StopEvent(kind="timeout", cpu=run["cpu"],
                             detail=f"still running after {run['timeout']:g} s; broke in")
        ours = next((k for k, (_, a) in self._bps.items() if a == run["rip"]), None)
        detail = "" if ours is not None else "a stop vmxdbg did not ask for"
        return StopEvent(kind="breakpoint", cpu=run["cpu"], address=run["rip"], breakpoint=ours, detail=detail)

    def go(self, timeout: float = 30.0) -> StopEvent:
        """Run every processor until a stop; after `timeout` seconds break in (pykd's go() has no timeout)."""
        self._vmx_root.clear()
        self._batches.clear()
        if self._queued:       # a processor that stopped while an injected stub ran
            return self._queued.pop(0)
        return self._stop_event(self._run(timeout))

    def step(self, cpu: int) -> StopEvent:
        """One instruction on `cpu` (`trace()`). KD resumes the other processors while it steps."""
        self.select(cpu)
        self.invalidate()
        self._vmx_root.clear()
        self._batches.clear()
        self._event_cpu_now = cpu
        try:
            self.pykd.trace()
        except self._exc("DbgException") as exc:   # type: ignore[misc]
            raise self._fail(exc, cpu, "single step") from None
        self._current = cpu
        return StopEvent(kind="step", cpu=cpu, address=self.read_register(cpu, "rip"))

    def stop(self) -> None:
        self.pykd.breakin()

    def close(self) -> None:
        """Remove every breakpoint this backend set and give back the processor that was current.

        Tries all of them; raises one BackendError naming those it could not remove.
        """
        failed = []
        if self._injector is not None and self._injector.pending:
            try:
                self._injector.restore()
            except BackendError as exc:
                failed.append(f"(injection: {exc})")
        for bp in list(self._bps):
            address = self._bps[bp][1]
            try:
                self.remove_breakpoint(bp)
            except BackendError:
                failed.append(f"0x{address:x}")
        if self._original_thread is not None and self._pk is not None:
            try:
                self.pykd.setCurrentThreadId(self._original_thread)
                self._current = None
            except self._exc("DbgException"):   # type: ignore[misc]
                pass
        self.invalidate()
        if failed:
            raise BackendError(f"could not remove breakpoint(s) at {', '.join(failed)}; remove them with bc",
                               backend=self.name)
