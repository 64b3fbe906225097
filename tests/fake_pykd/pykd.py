"""A stand-in for pykd 0.3.x (see README.md beside this file).

Only what vmxdbg's WinDbg backend may call is here, with pykd's names,
parameter names, defaults, return types and exceptions. Anything else is
absent, as a typo would be on a real pykd. The module acts on one
FakeTarget, attached with `attach()`.
"""
from __future__ import annotations

import re
import time
from typing import Any, List, Optional

import fake_cpu
from fake_target import FakeTarget

version = __version__ = "0.3.4.15 (fake)"
STAND_IN = "the pykd stand-in of vmxdbg's tests (tests/fake_pykd), not a real WinDbg session"
TARGET: Optional[FakeTarget] = None


def attach(target: FakeTarget) -> FakeTarget:
    """Make `target` the machine every call acts on; returns it."""
    global TARGET
    TARGET = target
    return target


def _t(name: str) -> FakeTarget:
    if TARGET is None:
        raise DbgException("fake pykd: no target attached")
    TARGET.count(name)
    if TARGET.gone and name not in ("getExecutionStatus", "dprint", "dprintln", "getDebugOptions"):
        # dbgeng's calls fail once the kernel connection is lost; kdlib throws DbgException
        raise DbgException("IDebugControl::WaitForEvent failed (no debuggee)")
    return TARGET


# --------------------------------------------------------------- exceptions
class DbgException(Exception):
    """Pykd base exception class."""


class MemoryException(DbgException):
    """Target memory access exception class."""


class SymbolException(DbgException):
    """Symbol exception."""


class TypeException(SymbolException):
    """Type exception."""


class CallException(DbgException):
    """Function call exception."""


class CPUException(DbgException):
    """CPU exception."""


# --------------------------------------------------------------- enums
class _Enum(int):
    _names: dict = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}.{self._names.get(int(self), int(self))}"


def _enum(name: str, **values: int) -> type:
    cls = type(name, (_Enum,), {"_names": {v: k for k, v in values.items()}})
    for k, v in values.items():
        setattr(cls, k, cls(v))
    return cls


executionStatus = _enum("executionStatus", NoChange=0, Go=1, Break=6, NoDebuggee=7)
eventType = _enum("eventType", Breakpoint=1, Exception=2, CreateThread=4, ExitThread=8, CreateProcess=0x10,
                  ExitProcess=0x20, LoadModule=0x40, UnloadModule=0x80, SystemError=0x100,
                  SessionStatus=0x200, ChangeDebuggeeState=0x400, ChangeEngineState=0x800,
                  ChangeSymbolState=0x1000)
debugOptions = _enum("debugOptions", AllowNetworkPaths=4, DisallowNetworkPaths=8, InitialBreak=0x20,
                     FinalBreak=0x40, FailIncompleteInformation=0x200, DisableModuleSymbolLoad=0x8000,
                     DisallowImageFileMapping=0x20000, PreferDml=0x40000)
breakpointAccess = _enum("breakpointAccess", Read=1, Write=2, Execute=4)
CPUType = _enum("CPUType", I386=0x14C, AMD64=0x8664, ARM=0x1C4, ARM64=0xAA64)


class debugEvent:
    """Debug event description: type, process and (engine) thread id."""

    def __init__(self, type: Any, process: int, thread: int) -> None:   # noqa: A002
        self.type, self.process, self.thread = type, process, thread


# --------------------------------------------------------------- output
def dprint(str: str, dml: bool = False) -> None:   # noqa: A002 (pykd's parameter name)
    """Print out string; dml=True renders DML."""
    _t("dprint").output.append((str, bool(dml)))


def dprintln(str: str, dml: bool = False) -> None:   # noqa: A002
    """Print out string and a line end."""
    _t("dprintln").output.append((str + "\n", bool(dml)))


def getDebugOptions() -> int:
    t = _t("getDebugOptions")
    return debugOptions.PreferDml if t.prefer_dml else 0


def isKernelDebugging() -> bool:
    """kdlib: GetDebuggeeType's class is DEBUG_CLASS_KERNEL (also for a kernel dump)."""
    return _t("isKernelDebugging").session in ("kernel", "dump")


def isDumpAnalyzing() -> bool:
    """kdlib: GetDebuggeeType's qualifier is a dump (>= DEBUG_DUMP_SMALL)."""
    return _t("isDumpAnalyzing").session == "dump"


def is64bitSystem() -> bool:
    _t("is64bitSystem")
    return True


def getCPUMode() -> Any:
    _t("getCPUMode")
    return CPUType.AMD64


# --------------------------------------------------------------- registers and MSRs
def reg(name: Any) -> int:
    """Return a CPU register value by the register's name (current processor)."""
    t = _t("reg")
    p = t.processors[t.current]
    key = str(name).lower()
    t.read("reg", key)
    if key not in p.regs:
        # kdlib throws CPUException, which pykd does not translate: Python sees DbgException
        raise DbgException(f"invalid register name {name}")
    return p.regs[key]


def setReg(name: Any, value: int) -> None:
    """Set a CPU register value by its name (current processor)."""
    t = _t("setReg")
    p = t.processors[t.current]
    key = str(name).lower()
    t.writes.append(("setReg", (t.current, key, value)))
    if t.last_event is not None and t.last_event[1] != t.current:
        # "you cannot change anything in the non-current processors" (WinDbg, Multiprocessor Syntax)
        raise DbgException(f"cannot set a register of processor {t.current}: the target stopped on {t.last_event[1]}")
    if key not in p.regs:
        raise DbgException(f"invalid register name {name}")
    p.regs[key] = int(value) & 0xFFFFFFFFFFFFFFFF


def rdmsr(msrIndex: int) -> int:
    """Return MSR value (current processor)."""
    t = _t("rdmsr")
    t.read("rdmsr", msrIndex)
    p = t.processors[t.current]
    if msrIndex not in p.msrs:
        raise DbgException("failed to read MSR")   # kdlib's CPUException, untranslated by pykd
    return p.msrs[msrIndex]


# --------------------------------------------------------------- memory
def _load(name: str, offset: int, count: int, phyAddr: bool, width: int) -> List[int]:
    t = _t(name)
    t.read(name, (offset, count, bool(phyAddr)))
    data = (t.physical if phyAddr else t.virtual).read(offset, count * width)
    if data is None:
        kind = "physical" if phyAddr else "virtual"
        raise MemoryException(f"Memory exception at 0x{offset:x} target {kind} address")
    return [int.from_bytes(data[i:i + width], "little") for i in range(0, len(data), width)]


def loadBytes(offset: int, count: int, phyAddr: bool = False) -> List[int]:
    return _load("loadBytes", offset, count, phyAddr, 1)


def loadWords(offset: int, count: int, phyAddr: bool = False) -> List[int]:
    return _load("loadWords", offset, count, phyAddr, 2)


def loadDWords(offset: int, count: int, phyAddr: bool = False) -> List[int]:
    return _load("loadDWords", offset, count, phyAddr, 4)


def loadQWords(offset: int, count: int, phyAddr: bool = False) -> List[int]:
    return _load("loadQWords", offset, count, phyAddr, 8)


def writeBytes(offset: int, values: Any, phyAddr: bool = False) -> None:
    """Write a list of bytes to the target's memory (virtual by default)."""
    t = _t("writeBytes")
    data = bytes(int(v) & 0xFF for v in values)
    t.writes.append(("writeBytes", (offset, len(data), bool(phyAddr))))
    mem = t.physical if phyAddr else t.virtual
    if mem.read(offset, len(data)) is None or \
            (not phyAddr and any(pg in t.debugger_readonly for pg in t.pages(offset, len(data)))):
        raise MemoryException(f"Memory exception at 0x{offset:x} target {'physical' if phyAddr else 'virtual'} address")
    mem.add(offset, data)
    if not phyAddr:
        t.written.append((offset, len(data)))


class module:
    """An executable module, found by an address inside it (pykd's module(offset))."""

    def __init__(self, offset: Any) -> None:
        t = _t("module")
        for name, base, size in t.modules:
            if base <= int(offset) < base + size:
                self._name, self._base, self._size = name, base, size
                return
        raise DbgException(f"module not found at 0x{int(offset):x}")

    def begin(self) -> int:
        return self._base

    def end(self) -> int:
        return self._base + self._size

    def size(self) -> int:
        return self._size

    def name(self) -> str:
        return self._name


# --------------------------------------------------------------- processors ("threads")
def getNumberThreads() -> int:
    """In a kernel session: one virtual thread per processor."""
    return len(_t("getNumberThreads").processors)


def getCurrentThreadId() -> int:
    t = _t("getCurrentThreadId")
    return t.thread_id(t.current)


def setCurrentThreadId(id: int) -> None:   # noqa: A002 (pykd's parameter name)
    t = _t("setCurrentThreadId")
    try:
        t.current = t.cpu_of_thread(id)
    except KeyError:
        raise DbgException(f"There is no target thread with Id = {id}") from None


def getLastEvent() -> debugEvent:
    t = _t("getLastEvent")
    if t.last_event is None:
        raise DbgException("IDebugControl::GetLastEventInformation failed")
    kind, cpu = t.last_event
    return debugEvent(getattr(eventType, kind), 0, t.thread_id(cpu))


_SWITCH = re.compile(r"^\s*~\s*(\d+)\s*s\s*$")


def dbgCommand(command: str, suppressOutput: bool = True, outputMask: int = 1) -> Optional[str]:
    """Run a debugger command; the fake knows only `~Ns` (change current processor)."""
    t = _t("dbgCommand")
    t.commands.append(command)
    m = _SWITCH.match(command)
    if not m:
        raise AssertionError(f"fake pykd: the backend used text command {command!r}")
    n = int(m.group(1))
    if n >= len(t.processors):
        return f"{n} is not a valid processor number\n"
    t.current = n
    return None


def expr(expression: str, cplusplus: bool = False) -> int:
    """Evaluate a debugger expression; the fake knows the symbols in TARGET.symbols."""
    t = _t("expr")
    if expression in t.symbols:
        return t.symbols[expression]
    raise DbgException(f"Couldn't resolve error at '{expression}'")


# --------------------------------------------------------------- breakpoints
class breakpoint:
    """A software (or hardware) breakpoint; removed when the object is destroyed."""

    def __init__(self, offset: int, size: Optional[int] = None, accessType: Any = None,
                 callback: Any = None) -> None:
        t = _t("breakpoint")
        self._target = t
        self._offset = offset
        self._callback = callback
        self._id: Optional[int] = t._next_bp
        t._next_bp += 1
        t.breakpoints[self._id] = offset

    def getId(self) -> int:
        if self._id is None:
            raise DbgException("breakpoint is removed")
        return self._id

    def getOffset(self) -> int:
        return self._offset

    def remove(self) -> None:
        self._target.count("breakpoint.remove")
        if self._id is None:
            raise DbgException("Cannot remove breakpoint, it is detached")
        self._target.breakpoints.pop(self._id, None)
        self._id = None

    def onHit(self) -> bool:
        return True

    def __del__(self) -> None:
        if getattr(self, "_id", None) is not None:
            self._target.breakpoints.pop(self._id, None)
            self._id = None


def setBp(offset: int, *args: Any) -> breakpoint:
    """setBp(offset, callback=None) or setBp(offset, size, accsessType, callback=None)."""
    if len(args) <= 1:
        return breakpoint(offset, callback=args[0] if args else None)
    return breakpoint(offset, args[0], args[1], args[2] if len(args) > 2 else None)


def getBp(index: int) -> Any:
    """The breakpoint with this index (of getNumberBreakpoints())."""
    t = _t("getBp")
    ids = sorted(t.breakpoints)
    if not 0 <= index < len(ids):
        raise IndexError("Index out of range")
    return _Listed(ids[index], t.breakpoints[ids[index]])


class _Listed:
    def __init__(self, id_: int, offset: int) -> None:
        self._id, self._offset = id_, offset

    def getId(self) -> int:
        return self._id

    def getOffset(self) -> int:
        return self._offset


def getNumberBreakpoints() -> int:
    return len(_t("getNumberBreakpoints").breakpoints)


def removeBp(index: int) -> None:
    t = _t("removeBp")
    ids = sorted(t.breakpoints)
    if index >= len(ids):
        raise IndexError("Index out of range")
    del t.breakpoints[ids[index]]


def removeAllBp() -> None:
    _t("removeAllBp").breakpoints.clear()


# --------------------------------------------------------------- execution
def _interrupted(t: FakeTarget) -> None:
    """Ctrl+Break under pykd-ext: its watch thread adds a pending call that raises
    SystemExit("CTRL+BREAK") (pykd-ext sources/windbgext.cpp, InterruptWatch::quit)."""
    t.status = "break"
    raise SystemExit("CTRL+BREAK")


def _stop_on(t: FakeTarget, kind: str, cpu: int) -> Any:
    t.current = cpu
    t.last_event = (kind, cpu)
    t.status = "break"
    return executionStatus.Break


def go() -> Any:
    """Run until a breakpoint (or breakin); no timeout, as pykd's.

    Processors whose RIP is in code written with writeBytes execute it (fake_cpu.py) until an
    INT3, an exception or a breakpoint; the scripted driver runs on the others."""
    t = _t("go")
    t.status = "go"
    active = set(t.breakpoints.values())
    while t.stops and t.stops[0].preempt:
        stop = t.stops.pop(0)
        if stop.interrupt:
            _interrupted(t)
        if stop.effect is not None:
            stop.effect(t, stop.cpu)
        if stop.address in active:
            t.processors[stop.cpu].regs["rip"] = stop.address
            return _stop_on(t, "Breakpoint", stop.cpu)
    for cpu, p in enumerate(t.processors):
        if t.is_written(p.regs.get("rip", 0)):
            kind, detail = fake_cpu.run(t, cpu)
            if kind == "int3":
                return _stop_on(t, "Exception", cpu)      # a break instruction exception
            if kind == "fault":
                t.faults.append((cpu, detail))
                return _stop_on(t, "Exception", cpu)      # first-chance exception at the instruction
            if kind == "breakpoint":
                return _stop_on(t, "Breakpoint", cpu)
            if kind == "running":
                raise AssertionError(f"fake pykd: cpu {cpu} {detail}")
    while t.stops:
        stop = t.stops.pop(0)
        if stop.interrupt:
            _interrupted(t)
        if stop.effect is not None:
            stop.effect(t, stop.cpu)
        if stop.address in active:
            t.processors[stop.cpu].regs["rip"] = stop.address
            return _stop_on(t, "Breakpoint", stop.cpu)
    # nothing left to reach: the target runs until someone breaks in
    deadline = time.monotonic() + t.running_forever_limit
    while not t.breakin_event.wait(0.01):
        if time.monotonic() > deadline:
            raise AssertionError("fake pykd: go() would run forever (no breakin)")
    t.breakin_event.clear()
    _stop_on(t, "Exception", t.current)
    if t.breakin_raises:
        # pykd-ext's watch thread sees the interrupt breakin() requested (GetInterrupt) and raises
        raise SystemExit("CTRL+BREAK")
    return executionStatus.Break


def breakin() -> None:
    """Break into the debugger (callable from any thread)."""
    t = TARGET
    if t is not None:
        t.calls["breakin"] += 1
        t.breakin_event.set()


def _one_step(t: FakeTarget) -> None:
    cpu = t.current
    if t.is_written(t.processors[cpu].regs.get("rip", 0)):
        try:
            fake_cpu.Cpu(t, cpu).step()
        except fake_cpu.CpuFault as exc:
            t.faults.append((cpu, str(exc)))
    elif t.on_step is not None:
        t.on_step(t, cpu)
    t.last_event = ("Exception", cpu)


def trace() -> Any:
    """Execute a single instruction on the current processor."""
    _one_step(_t("trace"))
    return executionStatus.Break


def step() -> Any:
    """Step over (a call is run to its return); the fake treats it as trace()."""
    _one_step(_t("step"))
    return executionStatus.Break


def getExecutionStatus() -> Any:
    t = _t("getExecutionStatus")
    if t.gone:
        return executionStatus.NoDebuggee
    return executionStatus.Break if t.status == "break" else executionStatus.Go
