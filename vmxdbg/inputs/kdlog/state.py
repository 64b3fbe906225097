"""What a kd log has shown so far: the snapshot being built, with provenance.

Every value set here records the log line it came from under its input key
(the input-key vocabulary of docs/formats.md: `msr:0x480`, `reg:cr0`, `reg:cs`, `cpuid:0x1`,
`state:cpl`, `mem:0x1a2b3000`, `state:vmxon_pointer`): as a line number while the
log is parsed, as `FILE:LINE` once `finish()` has run. A later value of the
same key replaces the earlier one. Register values from a context that is not
the processor's live state (`.cxr`, `.trap`, `!analyze -v`) are kept apart in
`contexts` and never reach the snapshot. Everything kept here is bounded by
what the log shows, not by its length: warnings, notes and contexts are capped.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Tuple

from ...common.errors import InputError, one_line
from ...state.snapshot import Memory, Processor, Segment, Snapshot, Table
from ...common.numbers import fits, hexs
from .pages import PageStore

MAX_WARNINGS = 1000
MAX_NOTES = 200
MAX_CONTEXTS = 64
MAX_CONTEXT_TEXT = 64 * 1024   # characters of a saved context's register lines kept to be read
MAX_MSRS = 65536           # distinct MSRs kept per processor
MAX_MEM_KEYS = 65536       # mem:<address> provenance keys
MAX_RUNS = 4096            # contiguous runs of dumped memory handed to the snapshot, per store
PAGE = 0x1000
MAX_CPU = 4096             # processor numbers kept: 0 .. MAX_CPU - 1

_SEGMENT_KEYS = {seg: f"reg:{seg}" for seg in ("cs", "ss", "ds", "es", "fs", "gs", "tr", "ldtr")}

MSR_EFER = 0xC0000080
MSR_FS_BASE = 0xC0000100
MSR_GS_BASE = 0xC0000101


@dataclass(frozen=True)
class KdWarning:
    """A line that looked like a known command's output but did not parse."""

    line: int
    message: str

    def format(self, source: str) -> str:
        """`FILE:LINE: message` as one printable line (a log's bytes may hold escapes)."""
        return one_line(f"{source}:{self.line}: {self.message}")


@dataclass
class NonLiveContext:
    """Registers shown for a saved context (`.cxr`, `.trap`, `.thread`, `!analyze -v`).

    While the log is parsed, `pending` holds the context's output lines that hold a `=`
    as (first line number, lines each ending in "\n"); they are read into `registers`
    when the parse ends, and only for the contexts kept (the last MAX_CONTEXTS), since
    no rule reads a saved context. `cut` is the line where more than MAX_CONTEXT_TEXT
    characters had been kept and the rest was dropped (0: nothing dropped)."""

    kind: str
    cpu: int
    line: int
    registers: Dict[str, int] = field(default_factory=dict)
    pending: List[Tuple[int, str]] = field(default_factory=list, compare=False, repr=False)
    cut: int = field(default=0, compare=False, repr=False)
    _kept: int = field(default=0, compare=False, repr=False)

    def keep(self, first: int, text: str) -> None:
        """Output lines `text` (each ending in "\n"), the first numbered `first`, to be read at the end."""
        if self.cut:
            return
        room = MAX_CONTEXT_TEXT - self._kept
        if len(text) > room:
            whole = text.rfind("\n", 0, room) + 1   # the lines that fit
            self.cut = first + text.count("\n", 0, whole)
            text = text[:whole]
        if text:
            self._kept += len(text)
            self.pending.append((first, text))


@dataclass
class Descriptor:
    """One `dg` row: selector, VMCS-format attributes, base and limit as shown."""

    selector: int
    attributes: int
    base: int
    limit: int
    line: int


@dataclass
class KdLog:
    """The result of parsing a log: the snapshot plus what was not live state."""

    snapshot: Snapshot
    source: str
    lines: int = 0
    prompts: int = 0          # kd prompts seen: 0 means no debugger session was found
    warnings: List[KdWarning] = field(default_factory=list)
    warnings_dropped: int = 0
    notes: List[Tuple[int, str]] = field(default_factory=list)
    contexts: List[NonLiveContext] = field(default_factory=list)
    identity: Dict[int, Dict[str, object]] = field(default_factory=dict)

    @property
    def virtual(self) -> Dict[int, Memory]:
        """Virtual memory the log dumped, by processor (kept in the snapshot's processors)."""
        return {cpu: p.virtual_memory for cpu, p in self.snapshot.processors.items() if p.virtual_memory}

    def where(self, line: int) -> str:
        return f"{self.source}:{line}"


class LogState:
    """Mutable state while parsing; `result` is the KdLog being filled in."""

    def __init__(self, source: str) -> None:
        self.result = KdLog(snapshot=Snapshot(source=f"kd log {source}"), source=source)
        self.descriptors: Dict[int, Dict[int, Descriptor]] = {}
        self.mem_provenance: Dict[str, int] = {}
        self.frozen_line: Optional[int] = None  # values on this line are refused (cut-off last line)
        self._frozen_warned = False
        self._processors = self.result.snapshot.processors
        self.physical = PageStore()
        self.virtual = PageStore()  # addresses are (cpu << 64) + virtual address
        self._capped: set = set()
        # the command that made virtual addresses refer to another address space
        # (`.process /p ADDR`), or None while they are the current processor's own
        self.foreign_space: Optional[str] = None
        self._vmem_keys = 0

    # ----------------------------------------------------------- bookkeeping
    def warn(self, line: int, message: str) -> None:
        r = self.result
        if len(r.warnings) < MAX_WARNINGS:
            r.warnings.append(KdWarning(line, message))
        else:
            r.warnings_dropped += 1

    def note(self, line: int, message: str) -> None:
        if len(self.result.notes) < MAX_NOTES:
            self.result.notes.append((line, message))

    def processor(self, cpu: int) -> Processor:
        p = self._processors.get(cpu)
        return p if p is not None else self.result.snapshot.processor(cpu)

    def accept(self, line: int) -> bool:
        """False (with one warning) for values on a cut-off last line."""
        if self.frozen_line is None or line != self.frozen_line:
            return True
        if not self._frozen_warned:
            self._frozen_warned = True
            self.warn(line, "the last line has no line end (the log may be cut off there); its values were not used")
        return False

    def _prov(self, p: Processor, key: str, line: int) -> None:
        p.provenance[key] = line  # type: ignore[assignment]  # a line number until finish()

    # ---------------------------------------------------------------- values
    def _fits(self, value: int, bits: int, what: str, line: int) -> int:
        """A value the log shows wider than its register: bad input naming the line."""
        try:
            return fits(value, bits, what)
        except InputError as exc:
            raise InputError(exc.detail, source=self.result.source, line=line) from None

    def set_msr(self, cpu: int, index: int, value: int, line: int) -> None:
        if self.frozen_line is not None and not self.accept(line):
            return
        if index >> 32 or value >> 64:
            self._fits(index, 32, "MSR index", line)
            self._fits(value, 64, f"MSR {hexs(index)}", line)
        p = self.processor(cpu)
        msr = p.msr
        if index not in msr and len(msr) >= MAX_MSRS:
            self._cap_warning(line, "msr", f"more than {MAX_MSRS} distinct MSRs on processor {cpu}; the rest are not kept")
            return
        msr[index] = value
        p.provenance[f"msr:0x{index:x}"] = line  # type: ignore[assignment]  # the key is msr:<hexs(index)>
        if index == MSR_EFER:
            p.registers["efer"] = value
            self._prov(p, "reg:efer", line)
        elif index in (MSR_FS_BASE, MSR_GS_BASE):
            # IA32_FS_BASE / IA32_GS_BASE are the hidden base of FS / GS (Vol.3A 3.4.4, SDM 325462-080US, 2023).
            self._set_segment_part(p, "fs" if index == MSR_FS_BASE else "gs", "base", value, line)

    def set_register(self, cpu: int, name: str, value: int, line: int) -> None:
        """A plain register (cr0, rflags, rip, dr7 ...); efer also sets MSR 0xC0000080."""
        if not self.accept(line):
            return
        self._fits(value, 64, name, line)
        p = self.processor(cpu)
        p.registers[name] = value
        self._prov(p, f"reg:{name}", line)
        if name == "efer":
            p.msr[MSR_EFER] = value
            self._prov(p, f"msr:{hexs(MSR_EFER)}", line)

    def set_selector(self, cpu: int, seg: str, selector: int, line: int) -> None:
        """A segment selector; applies a `dg` row already seen for it, and CPL for CS."""
        self.set_selectors(cpu, ((seg, selector),), line)

    def set_selectors(self, cpu: int, selectors: Iterable[Tuple[str, int]], line: int) -> None:
        """set_selector for each (segment, selector), in order, all shown on one line."""
        if self.frozen_line is not None and not self.accept(line):
            return
        p = self.processor(cpu)
        segments, provenance = p.segments, p.provenance
        descriptors = self.descriptors.get(cpu)
        for seg, selector in selectors:
            s = segments.get(seg)
            if s is None or (s.selector is not None and s.selector != selector):
                s = segments[seg] = Segment()  # the hidden part described the old selector
            s.selector = selector
            provenance[_SEGMENT_KEYS.get(seg) or f"reg:{seg}"] = line  # type: ignore[assignment]
            if seg == "cs":
                # CPL is CS.RPL (Vol.3A 5.5, SDM 325462-080US, 2023).
                p.state["cpl"] = selector & 3
                provenance["state:cpl"] = line  # type: ignore[assignment]
            if descriptors:
                desc = descriptors.get(selector & 0xFFFC)
                if desc is not None:
                    self._apply_descriptor(p, seg, desc)

    def set_table(self, cpu: int, table: str, part: str, value: int, line: int) -> None:
        if not self.accept(line):
            return
        self._fits(value, 64 if part == "base" else 32, f"{table}.{part}", line)
        p = self.processor(cpu)
        t = p.tables.setdefault(table, Table())
        setattr(t, part, value)
        self._prov(p, f"reg:{table}", line)

    def set_state(self, cpu: int, name: str, value: object, line: int) -> None:
        if not self.accept(line):
            return
        p = self.processor(cpu)
        p.state[name] = value
        self._prov(p, f"state:{name}", line)

    def set_operand(self, cpu: int, instruction: str, value: int, line: int) -> None:
        """The memory operand of a VMX instruction the debugger showed about to execute."""
        if not self.accept(line):
            return
        self._fits(value, 64, f"the {instruction} operand", line)
        p = self.processor(cpu)
        if instruction == "vmxon":
            p.vmxon_pointer = value
            self._prov(p, "state:vmxon_pointer", line)
        else:
            p.operands[instruction] = value
            self._prov(p, f"state:{instruction}_operand", line)

    def add_descriptor(self, cpu: int, desc: Descriptor) -> None:
        """A `dg` row: remembered, and applied to every segment register holding that selector."""
        if not self.accept(desc.line):
            return
        self.descriptors.setdefault(cpu, {})[desc.selector & 0xFFFC] = desc
        p = self.processor(cpu)
        for name, seg in list(p.segments.items()):
            if seg.selector is not None and seg.selector & 0xFFFC == desc.selector & 0xFFFC:
                self._apply_descriptor(p, name, desc)

    def add_memory(self, address: int, data: bytes, *, physical: bool, cpu: int) -> None:
        """Dumped bytes; physical ones go to the snapshot's memory, virtual ones to the per-cpu view."""
        if physical:
            self.physical.add(address, data)
        else:
            self.virtual.add((cpu << 64) + address, data)

    def memory_seen(self, address: int, size: int, line: int) -> None:
        """Provenance of physical memory: `mem:<address>` for a dump's start and
        for every page start it shows (rules name regions by their address)."""
        where: Any = line
        keys = [f"mem:{hexs(address)}"]
        first_page = (address + PAGE - 1) & ~(PAGE - 1)
        keys += [f"mem:{hexs(page)}" for page in range(first_page, address + size, PAGE)]
        for key in keys:
            if key in self.mem_provenance or len(self.mem_provenance) < MAX_MEM_KEYS:
                self.mem_provenance[key] = where

    def virtual_seen(self, cpu: int, address: int, line: int) -> None:
        """Provenance of a virtual dump's start on that processor: `vmem:<address>`."""
        p = self.processor(cpu)
        key = f"vmem:{hexs(address)}"
        if key in p.provenance or self._vmem_keys < MAX_MEM_KEYS:
            if key not in p.provenance:
                self._vmem_keys += 1
            p.provenance[key] = line  # type: ignore[assignment]

    def _cap_warning(self, line: int, what: str, message: str) -> None:
        if what not in self._capped:
            self._capped.add(what)
            self.warn(line, message)

    def add_context(self, ctx: NonLiveContext) -> None:
        """A saved context whose output is over; the oldest is dropped past MAX_CONTEXTS."""
        ctxs = self.result.contexts
        ctxs.append(ctx)
        if len(ctxs) > MAX_CONTEXTS:
            del ctxs[0]

    # --------------------------------------------------------------- helpers
    def _set_segment_part(self, p: Processor, seg: str, part: str, value: int, line: int) -> None:
        s = p.segments.setdefault(seg, Segment())
        setattr(s, part, value)
        self._prov(p, f"reg:{seg}", line)

    def _apply_descriptor(self, p: Processor, seg: str, desc: Descriptor) -> None:
        s = p.segments.setdefault(seg, Segment())
        if desc.selector & 0xFFFC == 0:
            # A null selector leaves the register unusable (bit 16, Vol.3C 25.4.1, SDM 325462-080US, 2023).
            s.attributes = 0x10000
        else:
            s.attributes = desc.attributes
            s.limit = desc.limit
            # In 64-bit mode FS/GS bases come from MSRs, and `dg` shows only the low
            # half of a 16-byte system descriptor's base (TR, LDTR): leave those unknown.
            if seg in ("cs", "ss", "ds", "es"):
                s.base = desc.base
        self._prov(p, f"reg:{seg}", desc.line)

    def finish(self, lines: int) -> KdLog:
        """Close the parse: dumped memory into the snapshot and the per-cpu views;
        memory provenance is shared by every processor."""
        r = self.result
        r.lines = lines
        for store, physical in ((self.physical, True), (self.virtual, False)):
            for n, (address, data) in enumerate(store.runs()):
                if n == MAX_RUNS:
                    self.warn(lines, f"more than {MAX_RUNS} separate {'physical' if physical else 'virtual'} "
                                     "memory ranges were dumped; the rest are not kept")
                    break
                if physical:
                    r.snapshot.memory.add(address, data)
                else:
                    self.processor(address >> 64).virtual_memory.add(address & (2 ** 64 - 1), data)
            if store.refused:
                self.warn(lines, f"{store.refused} bytes of {'physical' if physical else 'virtual'} memory "
                                 f"dumps past {store.max_pages} pages are not kept")
        source = r.source
        for p in r.snapshot.processors.values():
            p.provenance.update(self.mem_provenance)  # type: ignore[arg-type]
            p.provenance = {key: f"{source}:{line}" for key, line in p.provenance.items()}
        return r
