"""Load and validate the hardware definitions in structs/*.yaml.

Every malformed definition raises DefinitionError naming the file and the key
path, e.g. `structs/registers.yaml [IA32_VMX_BASIC.fields[2].bits]: overlaps
revision_id`. Unknown keys are errors too (a typo must not silently drop data).
YAML is read with a SafeLoader (no object construction) that also refuses
duplicate mapping keys, which plain safe_load would silently overwrite.

The data directory is `vmxdbg/_structs` in an installed wheel (pyproject maps
the package `vmxdbg._structs` to structs/), else the repository's structs/.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import yaml

from ..common.errors import DefinitionError
from .model import (TYPES, WIDTHS, ControlDef, FieldDef, RegionDef, RegionPart, RegisterDef, VmcsField,
                    reserved_label)

FILES = ("registers.yaml", "controls.yaml", "vmcs_fields.yaml", "regions.yaml")
REGISTER_WIDTHS = (8, 16, 32, 64)
CONTROL_WIDTHS = (32, 64)

_UPPER = re.compile(r"^[A-Z][A-Z0-9_]*$")
_SNAKE = re.compile(r"^[a-z][a-z0-9_]*$")
_BITS = re.compile(r"^\s*(\d{1,4})\s*(?::\s*(\d{1,4})\s*)?$", re.ASCII)   # bounded: int() of 5000 digits raises


def default_directory() -> Path:
    """Where the definitions are: the installed package data, else the repository's structs/."""
    import vmxdbg
    pkg = Path(vmxdbg.__file__).resolve().parent
    installed = pkg / "_structs"
    if (installed / FILES[0]).is_file():
        return installed
    return pkg.parent / "structs"


_SAFE_BASE = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's SafeLoader when built with it


class _SafeUniqueLoader(_SAFE_BASE):  # type: ignore[misc,valid-type]
    """A SafeLoader (no Python objects are built) that refuses a mapping key given twice."""


def _mapping_no_duplicates(loader: Any, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: Dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            first = seen.setdefault(key, key_node.start_mark.line + 1)
        except TypeError:
            continue  # unhashable key: construct_mapping reports it
        if first != key_node.start_mark.line + 1:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {first})", key_node.start_mark)
    return loader.construct_mapping(node, deep=deep)


_SafeUniqueLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_no_duplicates)


MAX_YAML_BYTES = 4 * 1024 * 1024     # a definition or layout file; structs/ files are ~30 KB
MAX_YAML_NODES = 1_000_000           # values once aliases are expanded: a "billion laughs" stops here


def read_yaml_text(path: Path, label: str, cannot: str = "cannot read: ") -> str:
    """The UTF-8 text of a definition file, read bounded (a FIFO or /dev/zero cannot fill memory);
    DefinitionError names `label` when it cannot be read, is too large or is not UTF-8."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_YAML_BYTES + 1)
    except OSError as exc:
        raise DefinitionError(f"{cannot}{exc.strerror or exc}", source=label) from None
    if len(raw) > MAX_YAML_BYTES:
        raise DefinitionError(f"more than the {MAX_YAML_BYTES} bytes a definition file may have", source=label)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DefinitionError(f"not UTF-8 text ({exc.reason})", source=label) from None


def load_yaml(text: str, label: str, loader: Any = _SafeUniqueLoader, bad: str = "malformed YAML") -> Any:
    """Parse a YAML definition with a safe loader (no Python objects are built) and bound it.

    DefinitionError names `label` (and the line) for malformed YAML, a tag
    asking for a Python object, a file over MAX_YAML_BYTES, an integer too
    long for Python, nesting too deep, or aliases that expand to more than
    MAX_YAML_NODES values or characters (anything walking the tree, or
    printing part of it in an error, stays bounded)."""
    if len(text) > MAX_YAML_BYTES:
        raise DefinitionError(f"more than the {MAX_YAML_BYTES} bytes a definition file may have", source=label)
    try:
        data = yaml.load(text, Loader=loader)  # a SafeLoader: no objects built
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise DefinitionError(f"{bad}: {problem}", source=label,
                              line=mark.line + 1 if mark else None) from None
    except RecursionError:
        raise DefinitionError(f"{bad}: nested too deeply", source=label) from None
    except ValueError as exc:  # an integer of more digits than Python converts (3.11+)
        raise DefinitionError(f"{bad}: {str(exc).split(':')[0]}", source=label) from None
    if _expanded_size(data, MAX_YAML_NODES) > MAX_YAML_NODES:
        raise DefinitionError(f"aliases expand to more than {MAX_YAML_NODES} values", source=label)
    return data


def _expanded_size(tree: Any, cap: int) -> int:
    """Values plus string characters in `tree` with every alias expanded, counted up to just past `cap`."""
    n = 0
    stack = [tree]
    while stack and n <= cap:
        node = stack.pop()
        n += 1
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, (str, bytes)):
            n += len(node)
    return n


@dataclass
class Definitions:
    """Everything in structs/, validated and cross-checked."""

    registers: Dict[str, RegisterDef] = field(default_factory=dict)
    by_msr: Dict[int, RegisterDef] = field(default_factory=dict)
    controls: Dict[str, ControlDef] = field(default_factory=dict)
    vmcs_fields: Dict[int, VmcsField] = field(default_factory=dict)
    vmcs_names: Dict[str, VmcsField] = field(default_factory=dict)  # upper-case name or alias
    regions: Dict[str, RegionDef] = field(default_factory=dict)
    directory: Optional[Path] = None


class _File:
    """One YAML file being validated: knows its label for error messages."""

    def __init__(self, directory: Path, name: str, label: str) -> None:
        self.path = directory / name
        self.label = label
        self._data: Any = None      # the file parsed, once: several top-level keys are read from it

    def fail(self, key: str, message: str) -> DefinitionError:
        return DefinitionError(message, source=self.label, key=key or None)

    def load(self, top: str) -> Any:
        if self._data is None:
            self._data = load_yaml(read_yaml_text(self.path, self.label), self.label)
        data = self._data
        if not isinstance(data, dict) or top not in data:
            raise self.fail(top, f"missing the top-level key '{top}'")
        return data[top]

    # -------------------------------------------------------------- field checks
    def mapping(self, value: Any, key: str, allowed: Tuple[str, ...], required: Tuple[str, ...]) -> dict:
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a mapping, got {_kind(value)}")
        for k in value:
            if k not in allowed:
                raise self.fail(f"{key}.{k}", f"unknown key (allowed: {', '.join(allowed)})")
        for k in required:
            if k not in value:
                raise self.fail(f"{key}.{k}", "missing")
        return value

    def integer(self, value: Any, key: str, lo: int = 0, hi: int = (1 << 64) - 1) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"expected an integer, got {_kind(value)}")
        if not lo <= value <= hi:
            raise self.fail(key, f"{value:#x} is out of range {lo:#x}..{hi:#x}")
        return value

    def text(self, value: Any, key: str, pattern: Optional["re.Pattern[str]"] = None, what: str = "") -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, f"expected a non-empty string, got {_kind(value)}")
        if pattern is not None and not pattern.match(value):
            raise self.fail(key, f"{value!r} is not {what}")
        return value

    def bits(self, value: Any, key: str, width: int) -> Tuple[int, int]:
        if isinstance(value, int) and not isinstance(value, bool):
            hi = lo = value
        elif isinstance(value, str) and _BITS.match(value):
            m = _BITS.match(value)
            assert m is not None
            hi = int(m.group(1))
            lo = int(m.group(2)) if m.group(2) is not None else hi
        else:
            raise self.fail(key, f"{value!r} is not a bit range like \"44:32\" or \"55\"")
        if lo > hi:
            raise self.fail(key, f"{value!r}: the high bit comes first (\"{lo}:{hi}\")")
        if hi >= width:
            hint = " (quote ranges: unquoted 30:0 is a base-60 number in YAML)" if hi > 255 else ""
            raise self.fail(key, f"bit {hi} is outside a {width}-bit register{hint}")
        return hi, lo


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


# ------------------------------------------------------------------ registers

def _load_registers(f: _File, raw: Any, controls: Mapping[str, ControlDef]) -> Dict[str, RegisterDef]:
    if not isinstance(raw, dict) or not raw:
        raise f.fail("registers", "expected a non-empty mapping of register names")
    out: Dict[str, RegisterDef] = {}
    msrs: Dict[int, str] = {}
    upper: Dict[str, str] = {}
    for name, body in raw.items():
        key = str(name)
        f.text(name, key, _UPPER, "an upper-case identifier (A-Z, 0-9, _)")
        if name.upper() in upper:
            raise f.fail(key, f"same name as {upper[name.upper()]}")
        upper[name.upper()] = name
        b = f.mapping(body, key, ("msr", "width", "sdm", "doc", "fields"), ("width", "sdm", "doc", "fields"))
        width = b["width"]
        if width not in REGISTER_WIDTHS or isinstance(width, bool):
            raise f.fail(f"{key}.width", f"{width!r} is not one of {', '.join(map(str, REGISTER_WIDTHS))}")
        msr = None
        if "msr" in b:
            msr = f.integer(b["msr"], f"{key}.msr", 0, 0xFFFFFFFF)
            if msr in msrs:
                raise f.fail(f"{key}.msr", f"MSR {msr:#x} is already defined by {msrs[msr]}")
            msrs[msr] = name
        fields = _load_fields(f, b["fields"], f"{key}.fields", width, controls)
        out[name] = RegisterDef(name, msr, width, f.text(b["sdm"], f"{key}.sdm"),
                                f.text(b["doc"], f"{key}.doc"), fields)
    return out


def _load_fields(f: _File, raw: Any, key: str, width: int,
                 controls: Mapping[str, ControlDef]) -> Tuple[FieldDef, ...]:
    if not isinstance(raw, list) or not raw:
        raise f.fail(key, "expected a non-empty list of fields")
    fields: List[Tuple[FieldDef, str]] = []
    names: Dict[str, int] = {}
    for i, item in enumerate(raw):
        k = f"{key}[{i}]"
        b = f.mapping(item, k, ("name", "bits", "doc", "enum", "unit", "reserved", "control"), ("name", "bits"))
        name = f.text(b["name"], f"{k}.name", _SNAKE, "a snake_case name")
        if name.startswith("reserved_"):
            raise f.fail(f"{k}.name", "names starting with 'reserved_' are kept for reserved gaps")
        if name in names:
            raise f.fail(f"{k}.name", f"{name!r} is already field [{names[name]}]")
        names[name] = i
        hi, lo = f.bits(b["bits"], f"{k}.bits", width)
        for other, _ in fields:
            if lo <= other.hi and other.lo <= hi:
                raise f.fail(f"{k}.bits", f"overlaps {other.name}")
        enum: Dict[int, str] = {}
        if "enum" in b:
            if not isinstance(b["enum"], dict) or not b["enum"]:
                raise f.fail(f"{k}.enum", "expected a non-empty mapping of value: meaning")
            for ev, meaning in b["enum"].items():
                ek = f"{k}.enum[{ev}]"
                f.integer(ev, ek, 0, (1 << (hi - lo + 1)) - 1)
                enum[ev] = f.text(meaning, ek)
        reserved = b.get("reserved", False)
        if not isinstance(reserved, bool):
            raise f.fail(f"{k}.reserved", f"expected true or false, got {_kind(reserved)}")
        control, bit_names = None, {}
        if "control" in b:
            control = f.text(b["control"], f"{k}.control")
            if control not in controls:
                raise f.fail(f"{k}.control", f"{control!r} is not a control of structs/controls.yaml")
            if hi - lo + 1 > controls[control].width:
                raise f.fail(f"{k}.control", f"the field is {hi - lo + 1} bits, {control} controls are "
                                             f"{controls[control].width}")
            ctl = controls[control]
            bit_names = {bit: f"bit {bit} {reserved_label(True)}" for bit in ctl.default1}
            bit_names.update(ctl.bits)
        unit = f.text(b["unit"], f"{k}.unit") if "unit" in b else None
        doc = f.text(b["doc"], f"{k}.doc") if "doc" in b else ""
        fields.append((FieldDef(name, hi, lo, doc, enum, unit, reserved, control, bit_names), k))
    return tuple(fd for fd, _ in sorted(fields, key=lambda t: t[0].lo))


# ------------------------------------------------------------------ controls

def _load_controls(f: _File, raw: Any) -> Dict[str, ControlDef]:
    if not isinstance(raw, dict) or not raw:
        raise f.fail("controls", "expected a non-empty mapping of control names")
    out: Dict[str, ControlDef] = {}
    for name, body in raw.items():
        key = str(name)
        f.text(name, key, _SNAKE, "a snake_case name")
        b = f.mapping(body, key, ("vmcs", "width", "capability_msr", "true_msr", "sdm", "doc", "bits", "default1"),
                      ("vmcs", "width", "capability_msr", "sdm", "bits", "default1"))
        width = b["width"]
        if width not in CONTROL_WIDTHS or isinstance(width, bool):
            raise f.fail(f"{key}.width", f"{width!r} is not 32 or 64")
        vmcs = f.integer(b["vmcs"], f"{key}.vmcs", 0, 0xFFFFFFFF)
        cap = f.integer(b["capability_msr"], f"{key}.capability_msr", 0, 0xFFFFFFFF)
        true_msr = f.integer(b["true_msr"], f"{key}.true_msr", 0, 0xFFFFFFFF) if "true_msr" in b else None
        if true_msr is not None and width != 32:
            raise f.fail(f"{key}.true_msr", "only 32-bit controls (allowed-0/allowed-1 MSRs) have TRUE MSRs")
        bits: Dict[int, str] = {}
        if not isinstance(b["bits"], dict) or not b["bits"]:
            raise f.fail(f"{key}.bits", "expected a non-empty mapping of bit: name")
        seen: Dict[str, int] = {}
        for bit, bname in b["bits"].items():
            bk = f"{key}.bits[{bit}]"
            f.integer(bit, bk, 0, width - 1)
            f.text(bname, bk, _SNAKE, "a snake_case name")
            if bname in seen:
                raise f.fail(bk, f"{bname!r} already names bit {seen[bname]}")
            seen[bname] = bit
            bits[bit] = bname
        d1 = b["default1"]
        if not isinstance(d1, list):
            raise f.fail(f"{key}.default1", f"expected a list of bit numbers, got {_kind(d1)}")
        for i, bit in enumerate(d1):
            f.integer(bit, f"{key}.default1[{i}]", 0, width - 1)
        if d1 and true_msr is None:
            raise f.fail(f"{key}.default1", "default1 bits need a true_msr that can release them")
        doc = f.text(b["doc"], f"{key}.doc") if "doc" in b else ""
        out[name] = ControlDef(name, vmcs, width, cap, true_msr, f.text(b["sdm"], f"{key}.sdm"), doc,
                               dict(sorted(bits.items())), tuple(sorted(set(d1))))
    return out


# ------------------------------------------------------------------ VMCS fields

def _load_vmcs_fields(f: _File, raw: Any) -> Tuple[Dict[int, VmcsField], Dict[str, VmcsField]]:
    if not isinstance(raw, list) or not raw:
        raise f.fail("vmcs_fields", "expected a non-empty list of fields")
    by_enc: Dict[int, VmcsField] = {}
    by_name: Dict[str, VmcsField] = {}
    for i, item in enumerate(raw):
        k = f"vmcs_fields[{i}]"
        b = f.mapping(item, k, ("encoding", "name", "aliases", "sdm_name", "width", "type", "sdm"),
                      ("encoding", "name", "sdm_name", "width", "type", "sdm"))
        name = f.text(b["name"], f"{k}.name", _UPPER, "an upper-case identifier")
        enc = f.integer(b["encoding"], f"{k}.encoding", 0, 0xFFFFFFFF)
        if enc >> 15 or enc & 0x1000:
            raise f.fail(f"{k}.encoding", f"{name}: {enc:#x}: bits 31:15 and 12 of an encoding are reserved (0)")
        if enc & 1:
            raise f.fail(f"{k}.encoding", f"{name}: {enc:#x} is a HIGH access; list the full (even) encoding")
        width, ftype = str(b["width"]), b["type"]
        if width not in WIDTHS:
            raise f.fail(f"{k}.width", f"{width!r} is not one of {', '.join(WIDTHS)}")
        if ftype not in TYPES:
            raise f.fail(f"{k}.type", f"{ftype!r} is not one of {', '.join(TYPES)}")
        if WIDTHS[(enc >> 13) & 3] != width:
            raise f.fail(f"{k}.width", f"{name}: {width} contradicts encoding {enc:#06x} (bits 14:13 say {WIDTHS[(enc >> 13) & 3]})")
        if TYPES[(enc >> 10) & 3] != ftype:
            raise f.fail(f"{k}.type", f"{name}: {ftype} contradicts encoding {enc:#06x} (bits 11:10 say {TYPES[(enc >> 10) & 3]})")
        if enc in by_enc:
            raise f.fail(f"{k}.encoding", f"{name}: {enc:#06x} is already {by_enc[enc].name}")
        aliases = b.get("aliases", [])
        if not isinstance(aliases, list):
            raise f.fail(f"{k}.aliases", f"expected a list of names, got {_kind(aliases)}")
        vf = VmcsField(enc, name, f.text(b["sdm_name"], f"{k}.sdm_name"), width, ftype,
                       f.text(b["sdm"], f"{k}.sdm"),
                       tuple(f.text(a, f"{k}.aliases[{j}]", _UPPER, "an upper-case identifier")
                             for j, a in enumerate(aliases)))
        spellings = [name] + list(vf.aliases)
        if width == "64":
            spellings.append(f"{name}_HIGH")
        for s in spellings:
            if s.upper() in by_name:
                raise f.fail(f"{k}.name", f"{s} already names encoding {by_name[s.upper()].encoding:#06x}")
            by_name[s.upper()] = vf
        if width == "64":
            by_name[f"{name}_HIGH"] = high_half(vf)
        by_enc[enc] = vf
    return by_enc, by_name


def high_half(vf: VmcsField) -> VmcsField:
    """The HIGH-access encoding (bit 0 = 1) of a 64-bit field: bits 63:32 of it."""
    return replace(vf, encoding=vf.encoding | 1, name=f"{vf.name}_HIGH", sdm_name=f"{vf.sdm_name} (high)",
                   aliases=tuple(f"{a}_HIGH" for a in vf.aliases), high=True)


# ------------------------------------------------------------------ regions

def _load_regions(f: _File, raw: Any, registers: Mapping[str, RegisterDef]) -> Dict[str, RegionDef]:
    if not isinstance(raw, dict) or not raw:
        raise f.fail("regions", "expected a non-empty mapping of region names")
    out: Dict[str, RegionDef] = {}
    for name, body in raw.items():
        key = str(name)
        f.text(name, key, _UPPER, "an upper-case identifier")
        b = f.mapping(body, key, ("sdm", "doc", "size_from", "layout"), ("sdm", "doc", "layout"))
        size_from = None
        if "size_from" in b:
            size_from = f.text(b["size_from"], f"{key}.size_from")
            reg, _, fld = size_from.partition(".")
            if reg not in registers or fld not in {x.name for x in registers[reg].fields}:
                raise f.fail(f"{key}.size_from", f"{size_from} is not a REGISTER.field of structs/registers.yaml")
        if not isinstance(b["layout"], list) or not b["layout"]:
            raise f.fail(f"{key}.layout", "expected a non-empty list of parts")
        parts: List[RegionPart] = []
        end = 0
        names = set()
        for i, item in enumerate(b["layout"]):
            k = f"{key}.layout[{i}]"
            p = f.mapping(item, k, ("offset", "size", "name", "register", "doc"), ("offset", "size", "name"))
            off = f.integer(p["offset"], f"{k}.offset", 0, 0xFFFF)
            size = p["size"]
            if size not in (1, 2, 4, 8) or isinstance(size, bool):
                raise f.fail(f"{k}.size", f"{size!r} is not 1, 2, 4 or 8 bytes")
            if off < end:
                raise f.fail(f"{k}.offset", f"{off:#x} overlaps or precedes {parts[-1].name}")
            pname = f.text(p["name"], f"{k}.name", _SNAKE, "a snake_case name")
            if pname in names:
                raise f.fail(f"{k}.name", f"{pname!r} is used twice")
            names.add(pname)
            reg = None
            if "register" in p:
                reg = f.text(p["register"], f"{k}.register")
                if reg not in registers:
                    raise f.fail(f"{k}.register", f"{reg} is not defined in structs/registers.yaml")
                if registers[reg].width != size * 8:
                    raise f.fail(f"{k}.register", f"{reg} is {registers[reg].width} bits, the part is {size * 8}")
            doc = f.text(p["doc"], f"{k}.doc") if "doc" in p else ""
            parts.append(RegionPart(off, size, pname, reg, doc))
            end = off + size
        out[name] = RegionDef(name, f.text(b["sdm"], f"{key}.sdm"), f.text(b["doc"], f"{key}.doc"),
                              size_from, tuple(parts))
    return out


# ------------------------------------------------------------------ cross-checks

def _cross_check(ctl_file: _File, d: Definitions) -> None:
    """Each control's capability MSRs and VMCS field must be defined, with matching widths."""
    for cname, c in d.controls.items():
        for attr in ("capability_msr", "true_msr"):
            msr = getattr(c, attr)
            if msr is not None and msr not in d.by_msr:
                raise ctl_file.fail(f"{cname}.{attr}", f"MSR {msr:#x} is not defined in structs/registers.yaml")
        vf = d.vmcs_fields.get(c.vmcs)
        if vf is None:
            raise ctl_file.fail(f"{cname}.vmcs", f"encoding {c.vmcs:#06x} is not in structs/vmcs_fields.yaml")
        if vf.width != str(c.width):
            raise ctl_file.fail(f"{cname}.width", f"{c.width} bits, but VMCS field {vf.name} is {vf.width}-bit")


def _label(directory: Path, name: str, default: bool) -> str:
    return f"structs/{name}" if default else str(directory / name)


def load_definitions(directory: Optional[Path] = None) -> Definitions:
    """Read and validate all of structs/ (or `directory`); DefinitionError on the first problem."""
    default = directory is None
    directory = default_directory() if directory is None else Path(directory)
    files = {n: _File(directory, n, _label(directory, n, default)) for n in FILES}
    d = Definitions(directory=directory)
    cf = files["controls.yaml"]
    d.controls = _load_controls(cf, cf.load("controls"))
    rf = files["registers.yaml"]
    d.registers = _load_registers(rf, rf.load("registers"), d.controls)
    d.by_msr = {r.msr: r for r in d.registers.values() if r.msr is not None}
    vf = files["vmcs_fields.yaml"]
    d.vmcs_fields, d.vmcs_names = _load_vmcs_fields(vf, vf.load("vmcs_fields"))
    gf = files["regions.yaml"]
    d.regions = _load_regions(gf, gf.load("regions"), d.registers)
    _cross_check(cf, d)
    return d
