"""VMCS memory layouts: where each field lives in a VMCS region, keyed by revision id.

The SDM fixes only the first 8 bytes of a VMCS region (revision identifier with
the shadow-VMCS indicator in bit 31, then the VMX-abort indicator, Vol.3C 25.2
(SDM 325462-080US, 2023)); the rest is implementation-specific. Each
implementation we know is described by one YAML file in structs/vmcs_layouts/
(schema in kvm_vmcs12.yaml), validated on load and compiled to a construct
Struct that parses a region into {encoding: value} and builds one back.

    layout = layout_for_revision(0x2B)          # None when no layout is known
    values = layout.parse(region_bytes)         # {0x6800: guest CR0, ...}
    region = layout.build(values)               # bytes, revision id in front

A field whose bytes are not all present is left out of `parse`: unknown is not zero.
"""
from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import yaml
from construct import Bytes, ExprAdapter, Int16ul, Int32ul, Int64ul, Struct

from . import header
from ..common.errors import DefinitionError, InputError
from ..common.numbers import parse_int
from .loader import default_directory, load_yaml, read_yaml_text

LAYOUT_DIR_NAME = "vmcs_layouts"
#: extra directories (os.pathsep-separated) searched for learned layout files
PATH_ENV = "VMXDBG_LAYOUT_PATH"
HEADER_SIZE = 8                      # revision id + shadow bit, VMX-abort indicator
MAX_REGION = 0x1000                  # IA32_VMX_BASIC[44:32] is at most 4096 (Vol.3D A.1)
ENCODING_RESERVED = 0xFFFF9000       # bits 31:15 and 12 of an encoding are reserved (Vol.3D B)
WIDTHS = ("16", "64", "32", "natural")   # encoding bits 14:13
TYPES = ("control", "exit_info", "guest", "host")   # encoding bits 11:10
DEFAULT_SIZE = {"16": 2, "32": 4, "64": 8, "natural": 8}
_INTS = {2: Int16ul, 4: Int32ul, 8: Int64ul}
_UPPER = re.compile(r"^[A-Z][A-Z0-9_]*$")
_SNAKE = re.compile(r"^[a-z][a-z0-9_]*$")


def _rotl32(v: int, n: int) -> int:
    v &= 0xFFFFFFFF
    return ((v << n) | (v >> (32 - n))) & 0xFFFFFFFF


def _pack_ar(v: int) -> int:
    """Access rights in 16 bits: bits 7:0 and 15:12 kept, the unusable bit 16 moved to bit 11."""
    return (v & 0xF0FF) | ((v >> 16) & 1) << 11


def _unpack_ar(s: int) -> int:
    return (s & 0xF0FF) | ((s >> 11) & 1) << 16


@dataclass(frozen=True)
class Transform:
    """How a value is stored when not as-is: stored = encode(value), value = decode(stored)."""

    name: str
    size: int
    encode: Callable[[int], int]
    decode: Callable[[int], int]
    doc: str


#: the storage transforms a layout file may name
TRANSFORMS: Dict[str, Transform] = {t.name: t for t in (
    Transform("ar_rotate8", 4, lambda v: _rotl32(v, 8), lambda s: _rotl32(s, 24),
              "32 bits rotated left by 8 (Bochs VMCS_AR_ROTATE)"),
    Transform("ar_pack16", 2, _pack_ar, _unpack_ar,
              "16 bits: access-rights bits 7:0 and 15:12, the unusable bit 16 in bit 11"),
)}


def field_width(encoding: int) -> str:
    """"16", "64", "32" or "natural": bits 14:13 of a VMCS field encoding (Vol.3D B)."""
    return WIDTHS[(encoding >> 13) & 3]


@dataclass(frozen=True)
class Slot:
    """One VMCS field in a region: `size` bytes at `offset`, optionally transformed."""

    encoding: int
    name: str
    offset: int
    size: int
    transform: Optional[str] = None
    note: str = ""

    @property
    def end(self) -> int:
        return self.offset + self.size

    def decode(self, stored: int) -> int:
        """The field value from the stored little-endian integer."""
        return TRANSFORMS[self.transform].decode(stored) if self.transform else stored

    def encode(self, value: int) -> int:
        """The stored integer for a field value (truncated to what the slot holds)."""
        v = TRANSFORMS[self.transform].encode(value) if self.transform else value
        return v & ((1 << (8 * self.size)) - 1)

    def key(self) -> Tuple[int, int, Optional[str]]:
        """(offset, size, transform): what two layouts must agree on for this field."""
        return (self.offset, self.size, self.transform)


@dataclass(frozen=True)
class Extra:
    """Non-field data at a fixed offset (e.g. the launch state), with named values."""

    name: str
    offset: int
    size: int
    doc: str = ""
    values: Mapping[int, str] = field(default_factory=dict)

    @property
    def end(self) -> int:
        return self.offset + self.size

    def meaning(self, v: int) -> str:
        return self.values.get(v, f"0x{v:x} (not a value this layout names)")


@dataclass(frozen=True)
class Layout:
    """A VMCS memory layout: the fields of one revision id at their offsets."""

    name: str
    revision_id: int
    size: int
    slots: Tuple[Slot, ...]
    extras: Tuple[Extra, ...] = ()
    doc: str = ""
    sources: Tuple[str, ...] = ()
    path: str = ""

    @functools.cached_property
    def by_encoding(self) -> Dict[int, Slot]:
        return {s.encoding: s for s in self.slots}

    @functools.cached_property
    def span(self) -> int:
        """Bytes from the region start to the end of the last field or extra."""
        return max([HEADER_SIZE] + [s.end for s in self.slots] + [e.end for e in self.extras])

    @functools.cached_property
    def struct(self) -> Any:
        """The construct Struct of the region's first `span` bytes; gaps are raw bytes."""
        parts: List[Any] = ["header" / Int32ul, "abort_indicator" / Int32ul]
        items: List[Tuple[int, int, str, Any]] = []
        for s in self.slots:
            base = _INTS[s.size]
            if s.transform:
                t = TRANSFORMS[s.transform]
                base = ExprAdapter(base, lambda obj, ctx, t=t: t.decode(obj),
                                   lambda obj, ctx, t=t: t.encode(obj) & ((1 << (8 * t.size)) - 1))
            items.append((s.offset, s.size, s.name, base))
        items += [(e.offset, e.size, e.name, _INTS.get(e.size) or Bytes(e.size)) for e in self.extras]
        pos = HEADER_SIZE
        for off, size, name, con in sorted(items, key=lambda i: i[0]):
            if off > pos:
                parts.append(f"gap_{pos:x}" / Bytes(off - pos))
            parts.append(name / con)
            pos = off + size
        return Struct(*parts)

    def parse(self, data: bytes) -> Dict[int, int]:
        """{encoding: value} of every field whose bytes are all in `data` (region start first).

        Each slot is decoded straight from its bytes (what `struct` parses to, field for field;
        tests/test_layouts.py checks both agree): a fifth of the time of the construct parse,
        paid at every stop that reads a VMCS."""
        n = len(data)
        return {s.encoding: s.decode(int.from_bytes(data[s.offset:s.end], "little"))
                for s in self.slots if s.end <= n}

    def parse_extras(self, data: bytes) -> Dict[str, int]:
        """{extra name: value} of the extras whose bytes are in `data`."""
        return {e.name: int.from_bytes(data[e.offset:e.end], "little") for e in self.extras if e.end <= len(data)}

    def build(self, values: Mapping[int, int], *, shadow: bool = False, abort: int = 0,
              extras: Optional[Mapping[str, int]] = None) -> bytes:
        """A `size`-byte region holding `values` ({encoding: value}); every other byte 0.

        InputError for an encoding this layout does not place.
        """
        unknown = [e for e in values if e not in self.by_encoding]
        if unknown:
            raise InputError(f"layout {self.name} has no field 0x{unknown[0]:04x}")
        c: Dict[str, Any] = {"header": self.revision_id | (0x80000000 if shadow else 0),
                             "abort_indicator": abort}
        for s in self.slots:
            width = s.size if not s.transform else DEFAULT_SIZE[field_width(s.encoding)]
            c[s.name] = values.get(s.encoding, 0) & ((1 << (8 * width)) - 1)
        for e in self.extras:
            c[e.name] = (extras or {}).get(e.name, 0) if e.size in _INTS else bytes(e.size)
        for sub in self.struct.subcons:
            if sub.name.startswith("gap_"):
                c[sub.name] = bytes(sub.sizeof())
        data = self.struct.build(c)
        return data + bytes(self.size - len(data))

    def field_map(self) -> Dict[int, Tuple[int, int, Optional[str]]]:
        """{encoding: (offset, size, transform)}: the layout's facts, for comparisons."""
        return {s.encoding: s.key() for s in self.slots}


# ------------------------------------------------------------------- loading

class _File:
    """Validation helper: errors name the file and the key path."""

    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, key: str, message: str) -> DefinitionError:
        return DefinitionError(message, source=self.path, key=key)

    def int(self, raw: Any, key: str, lo: int = 0, hi: int = (1 << 64) - 1) -> int:
        try:
            v = parse_int(raw, what=key)
        except InputError as exc:
            raise self.fail(key, exc.detail) from None
        if not lo <= v <= hi:
            raise self.fail(key, f"0x{v:x} is outside 0x{lo:x}-0x{hi:x}")
        return v

    def mapping(self, raw: Any, key: str) -> Mapping[str, Any]:
        if not isinstance(raw, Mapping):
            raise self.fail(key, f"expected a mapping, got {type(raw).__name__}")
        return raw

    def text(self, raw: Any, key: str, pattern: Optional["re.Pattern[str]"] = None) -> str:
        if not isinstance(raw, str) or not raw.strip():
            raise self.fail(key, "expected a non-empty string")
        if pattern and not pattern.match(raw):
            raise self.fail(key, f"{raw!r} does not match {pattern.pattern}")
        return raw


def layout_from_data(data: Any, path: str = "<layout>") -> Layout:
    """Validate the parsed YAML of a layout file; DefinitionError names the file and key."""
    f = _File(path)
    top = f.mapping(data, "(top)")
    raw = f.mapping(top.get("layout"), "layout")
    name = f.text(raw.get("name"), "layout.name")
    revision = f.int(raw.get("revision_id"), "layout.revision_id", 0, 0x7FFFFFFF)
    size = f.int(raw.get("size", MAX_REGION), "layout.size", HEADER_SIZE, MAX_REGION)
    sources = raw.get("sources") or []
    if not isinstance(sources, list) or not sources or not all(isinstance(s, str) for s in sources):
        raise f.fail("layout.sources", "expected a list of strings saying where the facts come from")
    grid = None
    if raw.get("grid") is not None:
        g = f.mapping(raw["grid"], "layout.grid")
        grid = {k: f.int(g.get(k), f"layout.grid.{k}", 0 if k == "base" else 1, MAX_REGION)
                for k in ("base", "group_stride", "slot_stride", "slots")}
    taken: List[Tuple[int, int, str]] = [(0, HEADER_SIZE, "the revision id and VMX-abort indicator")]

    def place(off: int, n: int, what: str, key: str) -> None:
        if off + n > size:
            raise f.fail(key, f"{what} at 0x{off:x} (+{n}) ends past the region size 0x{size:x}")
        for a, m, other in taken:
            if off < a + m and a < off + n:
                raise f.fail(key, f"{what} at 0x{off:x} (+{n}) overlaps {other} at 0x{a:x} (+{m})")
        taken.append((off, n, what))

    extras = []
    raw_extras = raw.get("extras") or []
    if not isinstance(raw_extras, list):
        raise f.fail("layout.extras", f"expected a list of extras, got {type(raw_extras).__name__}")
    for i, e in enumerate(raw_extras):
        k = f"layout.extras[{i}]"
        e = f.mapping(e, k)
        ename = f.text(e.get("name"), f"{k}.name", _SNAKE)
        off = f.int(e.get("offset"), f"{k}.offset", 0, MAX_REGION)
        esize = f.int(e.get("size"), f"{k}.size", 1, 8)
        vals = {f.int(n, f"{k}.values"): str(m) for n, m in f.mapping(e.get("values") or {}, f"{k}.values").items()}
        place(off, esize, f"extra {ename}", k)
        extras.append(Extra(ename, off, esize, str(e.get("doc", "")), vals))
    fields = raw.get("fields")
    if not isinstance(fields, list) or not fields:
        raise f.fail("layout.fields", "expected a non-empty list of fields")
    slots: List[Slot] = []
    seen: Dict[int, int] = {}
    names: Dict[str, int] = {}
    for i, item in enumerate(fields):
        k = f"layout.fields[{i}]"
        item = f.mapping(item, k)
        enc = f.int(item.get("encoding"), f"{k}.encoding", 0, 0xFFFF)
        if enc & ENCODING_RESERVED or enc & 1:
            raise f.fail(f"{k}.encoding", f"0x{enc:04x} is not a full field encoding (bit 0, 12 and 15 must be 0)")
        if enc in seen:
            raise f.fail(f"{k}.encoding", f"0x{enc:04x} is already fields[{seen[enc]}]")
        seen[enc] = i
        fname = f.text(item.get("name"), f"{k}.name", _UPPER)
        if fname in names:
            raise f.fail(f"{k}.name", f"{fname} is already fields[{names[fname]}]")
        names[fname] = i
        transform = item.get("transform")
        if transform is not None and (not isinstance(transform, str) or transform not in TRANSFORMS):
            raise f.fail(f"{k}.transform", f"{transform!r} is not one of {', '.join(TRANSFORMS)}")
        natural = DEFAULT_SIZE[field_width(enc)]
        default = TRANSFORMS[transform].size if transform else natural
        fsize = f.int(item.get("size", default), f"{k}.size", 1, 8)
        if fsize not in _INTS or fsize > natural or (transform and fsize != TRANSFORMS[transform].size):
            raise f.fail(f"{k}.size", f"{fsize} bytes cannot hold field 0x{enc:04x} ({field_width(enc)}-bit)"
                         + (f" stored as {transform}" if transform else ""))
        if item.get("offset") is not None:
            off = f.int(item["offset"], f"{k}.offset", 0, MAX_REGION)
        elif grid is not None:
            slot = enc & 0x3FF
            if slot >= grid["slots"]:
                raise f.fail(f"{k}.encoding", f"0x{enc:04x}: slot 0x{slot:x} is beyond the grid's 0x{grid['slots']:x}")
            group = (enc >> 13 & 3) << 2 | (enc >> 10 & 3)
            off = grid["base"] + group * grid["group_stride"] + slot * grid["slot_stride"]
        else:
            raise f.fail(f"{k}.offset", "missing (and the layout has no grid to compute it)")
        place(off, fsize, f"field {fname}", k)
        slots.append(Slot(enc, fname, off, fsize, transform, str(item.get("note", ""))))
    return Layout(name=name, revision_id=revision, size=size, slots=tuple(slots), extras=tuple(extras),
                  doc=str(raw.get("doc", "")), sources=tuple(sources), path=path)


_SAFE = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_layout(path: Union[str, os.PathLike]) -> Layout:
    """Read and validate one layout file; DefinitionError (an InputError) names file and key."""
    p = Path(path)
    text = read_yaml_text(p, str(p), cannot="")
    return layout_from_data(load_yaml(text, str(p), _SAFE, "not YAML"), str(p))


def builtin_directory() -> Path:
    """structs/vmcs_layouts, next to the other hardware definitions."""
    return default_directory() / LAYOUT_DIR_NAME


def _search_dirs() -> List[Path]:
    extra = [Path(d) for d in os.environ.get(PATH_ENV, "").split(os.pathsep) if d]
    return [builtin_directory()] + extra


def _files() -> Tuple[Tuple[str, int], ...]:
    out = []
    for d in _search_dirs():
        if d.is_dir():
            out += [(str(p), p.stat().st_mtime_ns) for p in sorted(d.glob("*.yaml"))]
    return tuple(out)


@functools.lru_cache(maxsize=4)
def _known(files: Tuple[Tuple[str, int], ...]) -> Tuple[Layout, ...]:
    out: List[Layout] = []
    by_rev: Dict[int, Layout] = {}
    for path, _ in files:
        lay = load_layout(path)
        other = by_rev.get(lay.revision_id)
        if other is not None:
            raise DefinitionError(f"revision id 0x{lay.revision_id:x} is already described by {other.path}",
                                  source=lay.path, key="layout.revision_id")
        by_rev[lay.revision_id] = lay
        out.append(lay)
    return tuple(out)


def known_layouts() -> List[Layout]:
    """Every built-in layout, then those in $VMXDBG_LAYOUT_PATH; one per revision id."""
    return list(_known(_files()))


def layout_for_revision(revision_id: int) -> Optional[Layout]:
    """The layout of VMCS revision `revision_id` (bits 30:0), or None when none is known."""
    wanted = header.revision_id(revision_id)
    return next((lay for lay in known_layouts() if lay.revision_id == wanted), None)


def find_layout(name_or_path: str) -> Layout:
    """A layout by name ("bochs", "kvm-vmcs12"), revision id ("0x2b") or YAML file path."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.is_file():
        return load_layout(p)
    layouts = known_layouts()
    for lay in layouts:
        if lay.name.lower() == name_or_path.strip().lower():
            return lay
    try:
        found = layout_for_revision(parse_int(name_or_path, what="layout"))
    except InputError:
        found = None
    if found is not None:
        return found
    names = ", ".join(f"{lay.name} (0x{lay.revision_id:x})" for lay in layouts)
    raise InputError(f"--layout {name_or_path}: no such layout (known: {names}; or give a YAML file)")


def dump_layout(layout: Layout, comment: Iterable[str] = ()) -> str:
    """The YAML text of `layout` (explicit offsets), loadable by load_layout."""
    lines = [f"# {c}" if c else "#" for c in comment]
    lines += ["layout:", f"  name: {layout.name}", f"  revision_id: 0x{layout.revision_id:X}",
              f"  size: 0x{layout.size:X}"]
    if layout.doc:
        lines.append(f"  doc: {_q(layout.doc)}")
    lines.append("  sources:")
    lines += [f"    - {_q(s)}" for s in layout.sources]
    if layout.extras:
        lines.append("  extras:")
        for e in layout.extras:
            vals = ", ".join(f"{k}: {_q(v)}" for k, v in sorted(e.values.items()))
            lines.append(f"    - {{name: {e.name}, offset: 0x{e.offset:X}, size: {e.size}, doc: {_q(e.doc)}, "
                         f"values: {{{vals}}}}}")
    lines.append("  fields:")
    for s in sorted(layout.slots, key=lambda s: s.offset):
        extra = (f", size: {s.size}" if s.size != DEFAULT_SIZE[field_width(s.encoding)] and not s.transform else "")
        extra += f", transform: {s.transform}" if s.transform else ""
        extra += f", note: {_q(s.note)}" if s.note else ""
        lines.append(f"    - {{encoding: 0x{s.encoding:04X}, name: {s.name}, offset: 0x{s.offset:X}{extra}}}")
    return "\n".join(lines) + "\n"


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
