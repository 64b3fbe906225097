"""What is known about each processor, and its JSON form (`*.vmxsnap.json`).

The format is specified in docs/formats.md; its structure is checked against
vmxdbg/schemas/snapshot.schema.json. Integers are hex strings (JSON ints are
accepted), unknown keys are ignored, an unknown major version is refused.
Anything absent is unknown; nothing here ever fills in a default value.

Two optional keys of version 1 come from kd logs (docs/kdlog.md): a processor's
`virtual_memory` (`{"0xADDRESS": "hex bytes"}`, like the physical `memory` map,
in that processor's own address space) and `state.vendor` (the CPUID leaf 0
vendor string). A file without them reads as before; older readers skip them.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

from ..common.statekeys import BOOL_STATES, SEGMENT_PARTS, SEGMENTS, TABLE_PARTS, TABLES
from ..common.errors import InputError, one_line, refuse_special_output
from ..common.jsonfile import read_json_file
from ..common.numbers import hexs, parse_int, vmcs_field_bits
from ..common.schema import validate

FORMAT = "vmxdbg-snapshot"
VERSION = 1
MAX_FILE_BYTES = 256 * 1024 * 1024

#: widths of segment and table parts as the VMCS holds them (SDM Vol.3D B.1-B.4); bases are 64 bits
PART_BITS = {"selector": 16, "limit": 32, "attributes": 32}
MAX_CPU = 0xFFFFFFFF
MAX_TEXT = 4096                  # characters kept of a free-text value (source, provenance)
_DECIMAL = re.compile(r"[0-9]{1,10}")   # a processor number as a JSON key (ASCII, bounded)


@dataclass
class Segment:
    """A segment register; a part that is None is unknown."""

    selector: Optional[int] = None
    base: Optional[int] = None
    limit: Optional[int] = None
    attributes: Optional[int] = None  # VMCS access-rights format, bit 16 = unusable


@dataclass
class Table:
    """GDTR or IDTR; a part that is None is unknown."""

    base: Optional[int] = None
    limit: Optional[int] = None


@dataclass
class Processor:
    """Everything known about one logical processor. Absent means unknown."""

    cpuid: Dict[Tuple[int, int], Tuple[int, int, int, int]] = field(default_factory=dict)
    msr: Dict[int, int] = field(default_factory=dict)
    registers: Dict[str, int] = field(default_factory=dict)
    segments: Dict[str, Segment] = field(default_factory=dict)
    tables: Dict[str, Table] = field(default_factory=dict)
    state: Dict[str, Any] = field(default_factory=dict)
    vmxon_pointer: Optional[int] = None
    vmcs_pointer: Optional[int] = None
    vmcs_launch_state: Optional[str] = None
    vmcs: Dict[int, int] = field(default_factory=dict)
    operands: Dict[str, int] = field(default_factory=dict)  # vmclear/vmptrld operands
    linear: Dict[str, int] = field(default_factory=dict)    # linear addresses: vmxon_region, vmcs_region
    provenance: Dict[str, str] = field(default_factory=dict)  # input key -> where it came from
    # memory this processor's debugger showed at virtual addresses (its own address space)
    virtual_memory: "Memory" = field(default_factory=lambda: Memory())

    def copy(self) -> "Processor":
        """An independent copy (changing either never changes the other), made field by field:
        a deep copy would also visit every integer of the VMCS and MSR maps (the trace copies
        each processor at every stop)."""
        out = Processor.__new__(Processor)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, dict):
                value = {k: _copied(v) for k, v in value.items()}
            else:
                value = _copied(value)
            setattr(out, f.name, value)
        return out


_IMMUTABLE = (int, str, bytes, float, type(None))    # bool is an int


def _copied(value: Any) -> Any:
    """`value` itself when nothing in it can change, else a copy."""
    if isinstance(value, _IMMUTABLE) or (type(value) is tuple and all(isinstance(v, _IMMUTABLE) for v in value)):
        return value
    if isinstance(value, (Segment, Table)):
        return dataclasses.replace(value)
    if isinstance(value, Memory):
        return value.copy()
    return copy.deepcopy(value)


class Memory:
    """Sparse physical memory: known byte ranges, everything else unknown."""

    def __init__(self) -> None:
        self._ranges: Dict[int, bytes] = {}
        #: a live source asked for bytes not yet known: (address, size) -> bytes or None
        self.fallback: Optional[Callable[[int, int], Optional[bytes]]] = None

    def add(self, address: int, data: bytes) -> None:
        """Record bytes at `address`; new data overrides old where they overlap."""
        if not data:
            return
        start, end = address, address + len(data)
        touching = [(a, b) for a, b in self._ranges.items() if a <= end and a + len(b) >= start]
        for a, b in touching:
            start, end = min(start, a), max(end, a + len(b))
        merged = bytearray(end - start)
        for a, b in touching:
            merged[a - start:a - start + len(b)] = b
            del self._ranges[a]
        merged[address - start:address - start + len(data)] = data
        self._ranges[start] = bytes(merged)

    def read(self, address: int, size: int) -> Optional[bytes]:
        """The bytes at [address, address+size) if all are known, else None."""
        for a, b in self._ranges.items():
            if a <= address and address + size <= a + len(b):
                return b[address - a:address - a + size]
        if self.fallback is not None:
            data = self.fallback(address, size)
            if data is not None and len(data) == size:
                self.add(address, data)
                return data
        return None

    def copy(self) -> "Memory":
        """The same known ranges (bytes do not change) and the same fallback, in a new map."""
        out = Memory()
        out._ranges = dict(self._ranges)
        out.fallback = self.fallback
        return out

    def ranges(self) -> Iterator[Tuple[int, bytes]]:
        for a in sorted(self._ranges):
            yield a, self._ranges[a]

    def __bool__(self) -> bool:
        return bool(self._ranges)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Memory) and self._ranges == other._ranges

    __hash__ = None  # type: ignore[assignment]


@dataclass
class Snapshot:
    """Processors by number, plus known physical memory."""

    processors: Dict[int, Processor] = field(default_factory=dict)
    memory: Memory = field(default_factory=Memory)
    source: str = ""

    def processor(self, cpu: int) -> Processor:
        return self.processors.setdefault(cpu, Processor())


# ---------------------------------------------------------------- JSON reading

class _Reader:
    """Converts a schema-valid JSON tree, naming the key path of any value that does not convert."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, message: str) -> InputError:
        return InputError(message, source=self.source, key=key)

    def int(self, value: Any, key: str, what: str = "value", bits: Optional[int] = 64) -> int:
        try:
            return parse_int(value, what=what, bits=bits)
        except InputError as exc:
            raise self.fail(key, exc.detail) from None

    def put(self, table: Dict[Any, Any], index: Any, value: Any, key: str, raw_key: Any) -> None:
        """Store table[index]; two keys naming the same index by value (0x3a, 0x03a) are refused."""
        if index in table:
            raise self.fail(f"{key}.{raw_key}", "names the same entry as an earlier key (keys are compared by value)")
        table[index] = value

    def memory(self, mem: "Memory", addr_s: Any, hexbytes: str, key: str, what: str) -> None:
        """One `address: "hex bytes"` entry of a memory map (a string: the schema)."""
        addr = self.int(addr_s, f"{key}.{addr_s}", what)
        try:
            mem.add(addr, bytes.fromhex(hexbytes.replace(" ", "")))
        except ValueError:
            raise self.fail(f"{key}.{addr_s}", "not a string of hex bytes") from None

    def processor(self, raw: dict, key: str) -> Processor:
        p = Processor()
        for leaf_key, regs in raw.get("cpuid", {}).items():
            k = f"{key}.cpuid.{leaf_key}"
            leaf_s, _, sub_s = str(leaf_key).partition(".")
            leaf, sub = self.int(leaf_s, k, "CPUID leaf"), self.int(sub_s or "0", k, "CPUID subleaf")
            self.put(p.cpuid, (leaf, sub), tuple(self.int(v, k, "CPUID register", 32) for v in regs),
                     f"{key}.cpuid", leaf_key)
        for idx, val in raw.get("msr", {}).items():
            self.put(p.msr, self.int(idx, f"{key}.msr.{idx}", "MSR index"), self.int(val, f"{key}.msr.{idx}"),
                     f"{key}.msr", idx)
        for name, val in raw.get("registers", {}).items():
            lname = str(name).lower()
            k = f"{key}.registers.{name}"
            if lname in SEGMENTS:   # an object (the schema); "CS" as well as "cs"
                parts = val
                p.segments[lname] = Segment(**{part: self.int(parts[part], f"{k}.{part}", bits=PART_BITS.get(part, 64))
                                              for part in SEGMENT_PARTS if parts.get(part) is not None})
            elif lname in TABLES:
                parts = val
                p.tables[lname] = Table(**{part: self.int(parts[part], f"{k}.{part}", bits=PART_BITS.get(part, 64))
                                          for part in TABLE_PARTS if parts.get(part) is not None})
            elif val is not None:
                p.registers[lname] = self.int(val, k)
        for name, val in raw.get("state", {}).items():   # types and enums: the schema
            k = f"{key}.state.{name}"
            if val is None:
                continue
            if name == "cpl":
                cpl = self.int(val, k)
                if cpl > 3:   # a hex string: the schema bounds only JSON ints
                    raise self.fail(k, f"must be 0-3, got {cpl}")
                p.state["cpl"] = cpl
            elif name in BOOL_STATES or name == "vmx":
                p.state[name] = val
            elif name == "vendor":
                p.state["vendor"] = val
        for name in ("vmxon_pointer", "vmcs_pointer"):
            if raw.get(name) is not None:
                setattr(p, name, self.int(raw[name], f"{key}.{name}"))
        p.vmcs_launch_state = raw.get("vmcs_launch_state")
        for enc, val in raw.get("vmcs", {}).items():
            encoding = self.int(enc, f"{key}.vmcs.{enc}", "VMCS field encoding", 32)
            self.put(p.vmcs, encoding, self.int(val, f"{key}.vmcs.{enc}", bits=vmcs_field_bits(encoding)),
                     f"{key}.vmcs", enc)
        for name, val in raw.get("operands", {}).items():
            p.operands[str(name)] = self.int(val, f"{key}.operands.{name}")
        for name, val in raw.get("linear", {}).items():
            p.linear[str(name)] = self.int(val, f"{key}.linear.{name}")
        for addr_s, hexbytes in raw.get("virtual_memory", {}).items():
            self.memory(p.virtual_memory, addr_s, hexbytes, f"{key}.virtual_memory", "virtual address")
        p.provenance = {_text(k2): _text(v) for k2, v in raw.get("provenance", {}).items()}
        return p


def _text(value: Any) -> str:
    """Free text from a file as it may be printed: one line of printable characters, bounded."""
    return one_line(str(value) if not isinstance(value, str) else value)[:MAX_TEXT]


def _short(value: Any, n: int = 24) -> str:
    s = str(value)
    return s if len(s) <= n else s[:n - 3] + "..."


def snapshot_from_json(data: Any, source: str = "<snapshot>") -> Snapshot:
    """Build a Snapshot from parsed JSON; InputError names the key of any problem."""
    r = _Reader(source)
    validate(data, "snapshot", source)   # format, version, keys and types; what follows converts values
    snap = Snapshot(source=_text(data.get("source", "")))
    for cpu_s, raw in data.get("processors", {}).items():
        cpu = int(cpu_s) if _DECIMAL.fullmatch(str(cpu_s)) else r.int(cpu_s, "processors")
        if cpu > MAX_CPU:
            raise r.fail(f"processors.{_short(cpu_s)}", f"processor number out of range (at most {MAX_CPU})")
        r.put(snap.processors, cpu, r.processor(raw, f"processors.{cpu_s}"), "processors", cpu_s)
    for addr_s, hexbytes in data.get("memory", {}).items():
        r.memory(snap.memory, addr_s, hexbytes, "memory", "physical address")
    return snap


def load_snapshot(path: Union[str, os.PathLike]) -> Snapshot:
    """Read a `*.vmxsnap.json` file; InputError names the file and key on any problem."""
    p = Path(path)
    data = read_json_file(p, "snapshot", MAX_FILE_BYTES)
    return snapshot_from_json(data, source=str(p))


# ---------------------------------------------------------------- JSON writing

def _processor_json(p: Processor) -> dict:
    out: Dict[str, Any] = {}
    if p.cpuid:
        out["cpuid"] = {(hexs(leaf) if sub == 0 else f"{hexs(leaf)}.{sub:x}"): [hexs(v) for v in regs]
                        for (leaf, sub), regs in sorted(p.cpuid.items())}
    if p.msr:
        out["msr"] = {hexs(k): hexs(v) for k, v in sorted(p.msr.items())}
    regs: Dict[str, Any] = {k: hexs(v) for k, v in sorted(p.registers.items())}
    for name, seg in p.segments.items():
        regs[name] = {part: hexs(getattr(seg, part)) for part in SEGMENT_PARTS if getattr(seg, part) is not None}
    for name, tab in p.tables.items():
        regs[name] = {part: hexs(getattr(tab, part)) for part in TABLE_PARTS if getattr(tab, part) is not None}
    if regs:
        out["registers"] = regs
    if p.state:
        out["state"] = dict(p.state)
    for name in ("vmxon_pointer", "vmcs_pointer"):
        if getattr(p, name) is not None:
            out[name] = hexs(getattr(p, name))
    if p.vmcs_launch_state is not None:
        out["vmcs_launch_state"] = p.vmcs_launch_state
    if p.vmcs:
        out["vmcs"] = {f"0x{k:04x}": hexs(v) for k, v in sorted(p.vmcs.items())}
    if p.operands:
        out["operands"] = {k: hexs(v) for k, v in sorted(p.operands.items())}
    if p.linear:
        out["linear"] = {k: hexs(v) for k, v in sorted(p.linear.items())}
    if p.virtual_memory:
        out["virtual_memory"] = {hexs(a): b.hex() for a, b in p.virtual_memory.ranges()}
    if p.provenance:
        out["provenance"] = dict(sorted(p.provenance.items()))
    return out


def snapshot_to_json(snap: Snapshot, inferred: Optional[Dict[int, List[dict]]] = None) -> dict:
    """The JSON tree of the snapshot format (docs/formats.md). `inferred` (per processor) goes under
    each processor's own `inferred` key, apart from the values that were read: a reader
    takes none of it as input (unknown keys are ignored), a person sees what the state proves."""
    procs = {}
    for cpu, p in sorted(snap.processors.items()):
        out = _processor_json(p)
        if inferred and inferred.get(cpu):
            out["inferred"] = list(inferred[cpu])
        procs[str(cpu)] = out
    return {
        "format": FORMAT, "version": VERSION, "source": snap.source,
        "processors": procs,
        "memory": {hexs(a): b.hex() for a, b in snap.memory.ranges()},
    }


def save_snapshot(snap: Snapshot, path: Union[str, os.PathLike],
                  inferred: Optional[Dict[int, List[dict]]] = None) -> None:
    """Write `snap` as JSON (atomically: a temp file renamed into place); InputError names
    the file when it cannot be written, and no temp file is left behind."""
    p = Path(path)
    refuse_special_output(p, "snapshot")
    tmp = p.with_name(p.name + ".tmp")
    text = json.dumps(snapshot_to_json(snap, inferred), indent=1) + "\n"
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, p)
    except OSError as exc:   # no such directory, a directory of that name, no permission, disk full
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise InputError(f"cannot write the snapshot: {exc.strerror or exc}", source=str(p)) from None


def looks_like_snapshot(head: bytes) -> bool:
    """Cheap content probe used to recognise a snapshot file."""
    return b'"vmxdbg-snapshot"' in head[:4096]


def load_for_check(path: Path, options: Dict[str, Any]) -> Snapshot:
    """sources.py loader: a snapshot file needs no options. One without a processor is bad
    input: there is nothing to check, and an empty table would look like success."""
    snap = load_snapshot(path)
    if not snap.processors:
        raise InputError("the snapshot has no processor (`processors` is missing or empty): nothing to check",
                         source=str(path), key="processors")
    return snap
