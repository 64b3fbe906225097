"""The layout probe's tags and dumps, and learning a VMCS layout from a dump.

The probe (docs/vmcs-layouts.md; vmxdbg/hypervisors/minihv/layout_probe.inc) runs
once on the machine whose layout is unknown: it VMWRITEs `tag(E)` to every
field E, VMCLEARs the VMCS and dumps the region. Each tag names its field in
every part of it:

    t16(E)  = 0xC000 | E >> 1                       (unique per full encoding E)
    tag(E)  = (0xC1DE0000 | t16) << 32 | 0xC0DE0000 | t16

VMWRITE keeps the low 16 bits for a 16-bit field and the low 32 for a 32-bit
one (Vol.3C 31.3 VMWRITE, SDM 325462-080US, 2023), so whatever width the
field has, the bytes that reach memory identify it.

Dump formats `learn` reads:
- text, one record a line, anything before "vmxprobe " ignored (so E9 lines
  "[cpu0] vmxprobe ..." and DbgPrint lines both work):
      vmxprobe begin revision=0x2b
      vmxprobe fail 0x2030 err=12        VMWRITE of that field failed
      vmxprobe data 0x0000 2b000000...   hex bytes at that region offset
      vmxprobe end
  Several processors' blocks may interleave; they are told apart by what
  precedes "vmxprobe " and the block that began first is used.
- or the raw region bytes (e.g. WinDbg `.writemem`), first byte = revision id.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

from ..common.errors import InputError
from .header import first_dword, revision_id
from .layouts import DEFAULT_SIZE, MAX_REGION, TRANSFORMS, Layout, Slot, field_width

MAGIC = "vmxprobe "
MAX_DUMP_BYTES = 1 << 20
_LINE = re.compile(r"vmxprobe (begin|fail|data|end)\b(.*)$")


def t16(encoding: int) -> int:
    """The 16-bit tag of full encoding `encoding`."""
    return 0xC000 | (encoding >> 1) & 0x3FFF


def tag(encoding: int) -> int:
    """The 64-bit value the probe VMWRITEs to field `encoding`."""
    low = t16(encoding)
    return (0xC1DE0000 | low) << 32 | 0xC0DE0000 | low


def tag_for_width(encoding: int) -> int:
    """What VMREAD gives back after the probe: the tag cut to the field's width."""
    return tag(encoding) & ((1 << (8 * DEFAULT_SIZE[field_width(encoding)])) - 1)


@dataclass
class Dump:
    """A probe dump: region bytes, revision id, fields whose VMWRITE failed (None = not said)."""

    data: bytes
    revision_id: int
    failed: Optional[Dict[int, str]] = None
    source: str = ""
    blocks: int = 1
    stream: str = ""        # what preceded "vmxprobe " on its lines, e.g. "[cpu0]"
    begin_line: int = 0


def parse_dump(raw: bytes, source: str = "<dump>", stream: Optional[str] = None) -> Dump:
    """A Dump from text or raw region bytes; InputError names the file and line.

    A text dump with several blocks gives the one whose lines start with
    `stream` (e.g. "[cpu0]"), else the one that began first.
    """
    if len(raw) > MAX_DUMP_BYTES:
        raise InputError(f"{len(raw)} bytes: more than a probe dump has", source=source)
    if MAGIC.encode() in raw[:MAX_DUMP_BYTES]:
        blocks = parse_blocks(raw.decode("latin-1"), source)
        if stream is not None:
            chosen = [b for b in blocks if b.stream == stream.strip()]
            if not chosen:
                have = ", ".join(repr(b.stream) for b in blocks)
                raise InputError(f"no probe block from {stream!r} (the dump has: {have})", source=source)
        else:
            chosen = blocks
        first = min(chosen, key=lambda b: b.begin_line)
        first.blocks = len(blocks)
        return first
    if len(raw) < 8:
        raise InputError(f"{len(raw)} bytes: too short for a VMCS region (or a text dump without "
                         f"'{MAGIC.strip()}' lines)", source=source)
    if len(raw) > MAX_REGION:
        raise InputError(f"{len(raw)} bytes: a VMCS region has at most {MAX_REGION}", source=source)
    return Dump(bytes(raw), revision_id(first_dword(raw)), None, source)


def parse_blocks(text: str, source: str) -> List[Dump]:
    """Every complete block of a text dump, in the order they ended. Blocks are told apart by what precedes "vmxprobe " (e.g. "[cpu1] "): processors interleave lines."""
    blocks: List[Dump] = []
    open_blocks: Dict[str, Dict[str, object]] = {}
    for n, line in enumerate(text.splitlines(), 1):
        at = line.find(MAGIC)
        if at < 0:
            continue
        stream = line[:at].strip()
        m = _LINE.match(line[at:].rstrip())
        if not m:
            raise InputError(f"not a probe record: {line[at:].strip()[:60]!r}", source=source, line=n)
        kind, rest = m.group(1), m.group(2).split()
        if kind == "begin":
            open_blocks[stream] = {"revision": _kv(rest, "revision", source, n), "failed": {}, "data": {}, "line": n}
            continue
        cur = open_blocks.get(stream)
        if cur is None:
            raise InputError(f"'{kind}' before 'vmxprobe begin'", source=source, line=n)
        if kind == "fail":
            if not rest:
                raise InputError("expected 'fail ENCODING [why]'", source=source, line=n)
            cur["failed"][_int(rest[0], source, n)] = " ".join(rest[1:])  # type: ignore[index]
        elif kind == "data":
            if len(rest) < 2:
                raise InputError("expected 'data OFFSET HEXBYTES'", source=source, line=n)
            off = _int(rest[0], source, n)
            try:
                chunk = bytes.fromhex("".join(rest[1:]))
            except ValueError:
                raise InputError("data: not hex bytes", source=source, line=n) from None
            if off + len(chunk) > MAX_REGION:
                raise InputError(f"data at 0x{off:x} runs past {MAX_REGION} bytes", source=source, line=n)
            cur["data"][off] = chunk  # type: ignore[index]
        else:  # end
            block = _finish(open_blocks.pop(stream), source)
            block.stream = stream
            blocks.append(block)
    if not blocks:
        where = "no 'vmxprobe end' after 'vmxprobe begin'" if open_blocks else "no 'vmxprobe begin' line"
        raise InputError(f"not a complete probe dump: {where}", source=source)
    return blocks


def _finish(cur: Dict[str, object], source: str) -> Dump:
    chunks: Dict[int, bytes] = cur["data"]  # type: ignore[assignment]
    if not chunks:
        raise InputError("probe block without data lines", source=source, line=cur["line"])  # type: ignore[arg-type]
    size = max(o + len(c) for o, c in chunks.items())
    buf = bytearray(size)
    have = bytearray(size)
    for o, c in chunks.items():
        buf[o:o + len(c)] = c
        have[o:o + len(c)] = b"\1" * len(c)
    if 0 in have:
        gap = have.index(0)
        raise InputError(f"probe block has no bytes at region offset 0x{gap:x}", source=source,
                         line=cur["line"])  # type: ignore[arg-type]
    return Dump(bytes(buf), revision_id(int(cur["revision"])), dict(cur["failed"]), source,  # type: ignore[arg-type]
                begin_line=int(cur["line"]))  # type: ignore[call-overload]


def _int(text: str, source: str, line: int) -> int:
    try:
        return int(text, 16)          # "0x2b" and "2b" alike
    except ValueError:
        raise InputError(f"{text!r} is not a hex number", source=source, line=line) from None


def _kv(parts: Sequence[str], key: str, source: str, line: int) -> int:
    for p in parts:
        k, _, v = p.partition("=")
        if k == key and v:
            return _int(v, source, line)
    raise InputError(f"expected {key}=0x...", source=source, line=line)


def read_dump(path: Path, stream: Optional[str] = None) -> Dump:
    """parse_dump of a file; InputError names it when it cannot be read."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_DUMP_BYTES + 1)
    except OSError as exc:
        raise InputError(exc.strerror or str(exc), source=str(path)) from None
    return parse_dump(raw, str(path), stream)


# ------------------------------------------------------------------ learning

@dataclass
class Learned:
    """What a dump taught: the layout, and the fields it could not place, with why."""

    layout: Layout
    unsupported: Dict[int, str] = field(default_factory=dict)    # VMWRITE failed
    not_found: List[int] = field(default_factory=list)           # written, tag not in the dump
    ambiguous: Dict[int, List[int]] = field(default_factory=dict)  # tag found at several offsets


def _find_all(data: bytes, needle: bytes, taken: Set[int]) -> List[int]:
    out, i = [], data.find(needle, 8)
    while i >= 0:
        if not taken.intersection(range(i, i + len(needle))):
            out.append(i)
        i = data.find(needle, i + 1)
    return out


def _candidates(encoding: int) -> List[Tuple[int, Optional[str], int]]:
    """(size, transform, stored integer) the field's tag may take in memory, likeliest first."""
    width = DEFAULT_SIZE[field_width(encoding)]
    value = tag_for_width(encoding)
    out: List[Tuple[int, Optional[str], int]] = [(width, None, value)]
    if width == 4:   # transformed forms before plain narrower ones: a rotated tag holds t16 bytes too
        out += [(t.size, t.name, t.encode(value)) for t in TRANSFORMS.values()]
    if width == 8:
        out.append((4, None, value & 0xFFFFFFFF))          # stored in 32 bits
    if width >= 4:
        out.append((2, None, value & 0xFFFF))              # stored in 16 bits
    return out


def learn(dump: Dump, fields: Iterable[Tuple[int, str]], *, name: Optional[str] = None,
          sources: Sequence[str] = ()) -> Learned:
    """Place each (encoding, name) field by finding its tag in the dump.

    A field is placed where exactly one candidate form of its tag occurs (the
    full width first); fields the probe reported as failed are `unsupported`,
    fields whose tag is absent are `not_found`, and several equally likely
    places make a field `ambiguous`. Nothing is guessed.
    """
    failed = dump.failed or {}
    data = dump.data
    taken: Set[int] = set(range(8))
    slots: List[Slot] = []
    result = Learned(layout=None)  # type: ignore[arg-type]
    pending = [(e, n) for e, n in fields]
    # wider fields first: a 16-bit tag must not claim the low half of a 32-bit one
    pending.sort(key=lambda f: -DEFAULT_SIZE[field_width(f[0])])
    for enc, fname in pending:
        if enc in failed:
            result.unsupported[enc] = failed[enc]
            continue
        placed = False
        for size, transform, stored in _candidates(enc):
            hits = _find_all(data, stored.to_bytes(size, "little"), taken)
            if len(hits) == 1:
                off = hits[0]
                slots.append(Slot(enc, fname, off, size, transform))
                taken.update(range(off, off + size))
                placed = True
                break
            if len(hits) > 1:
                result.ambiguous[enc] = hits
                placed = True
                break
        if not placed:
            result.not_found.append(enc)
    slots.sort(key=lambda s: s.offset)
    rev = dump.revision_id
    result.layout = Layout(name=name or f"learned-0x{rev:x}", revision_id=rev, size=max(len(data), 8),
                           slots=tuple(slots), doc="learned with the vmxdbg layout probe",
                           sources=tuple(sources) or (f"vmxdbg layout learn {dump.source}",),
                           path=dump.source)
    return result


def probe_dump_text(region: bytes, revision_id: int, failed: Optional[Dict[int, str]] = None,
                    prefix: str = "", width: int = 32) -> str:
    """The text dump the probe prints for `region` (used by tests and docs)."""
    lines = [f"{prefix}vmxprobe begin revision=0x{revision_id:x}"]
    lines += [f"{prefix}vmxprobe fail 0x{e:04x} {why}".rstrip() for e, why in sorted((failed or {}).items())]
    for off in range(0, len(region), width):
        lines.append(f"{prefix}vmxprobe data 0x{off:04x} {region[off:off + width].hex()}")
    lines.append(f"{prefix}vmxprobe end")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------ the field list

VM_INSTRUCTION_ERROR = 0x4400


def probe_encodings() -> List[int]:
    """Every full field encoding of structs/vmcs_fields.yaml, in the order the probe VMWRITEs them.

    The VM-instruction error field comes last: each VMWRITE that fails (an
    unsupported field, VMfailValid 12) stores its error number there (Vol.3C
    31.2, SDM 325462-080US, 2023) and would overwrite the tag written before.
    """
    from . import defs
    encs = [f.encoding for f in defs.vmcs_fields() if f.encoding != VM_INSTRUCTION_ERROR]
    return encs + [VM_INSTRUCTION_ERROR]


def field_table(language: str) -> str:
    """The probe's field list as a nasm include ("nasm") or a C array ("c")."""
    encs = probe_encodings()
    rows = [encs[i:i + 8] for i in range(0, len(encs), 8)]
    if language == "nasm":
        head = ["; probe_fields.inc: every VMCS field encoding the layout probe writes, 0xFFFF last.",
                "; Generated by `vmxdbg layout fields --nasm` from structs/vmcs_fields.yaml; do not edit.",
                "probe_fields:"]
        body = ["        dw " + ", ".join(f"0x{e:04X}" for e in row) for row in rows]
        return "\n".join(head + body + ["        dw 0xFFFF", ""])
    if language == "c":
        head = ["/* Every VMCS field encoding the layout probe writes (vmxdbg layout fields --c). */",
                f"static const unsigned short probe_fields[{len(encs)}] = {{"]
        body = ["    " + ", ".join(f"0x{e:04X}" for e in row) + "," for row in rows]
        return "\n".join(head + body + ["};", ""])
    raise InputError(f"field table language {language!r}: say nasm or c")
