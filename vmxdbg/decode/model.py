"""The definitions loaded from structs/, as immutable Python objects.

A RegisterDef is a bitfield register or MSR; it decodes a value into named
fields and compiles to a construct object that parses and builds its bytes.
A ControlDef names the bits of a VMX control field. A VmcsField is one VMCS
field encoding. A RegionDef is the byte layout of a VMXON/VMCS region header.
Instances are built and validated by vmxdbg.decode.loader; nothing here reads files.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ..common.errors import InputError

try:  # Python 3.8+: functools.cached_property writes the instance __dict__ directly
    from functools import cached_property
except ImportError:  # pragma: no cover
    cached_property = property  # type: ignore[misc,assignment]


def reserved_label(default1: bool) -> str:
    """The one wording of an unnamed control bit, in every command: `(reserved, default1)` for
    a bit the default1 class reads as 1 (SDM Vol.3D A.2), `(reserved)` otherwise."""
    return "(reserved, default1)" if default1 else "(reserved)"


def bit_range(hi: int, lo: int) -> str:
    """`"44:32"` or `"55"`: how the SDM writes a bit range."""
    return str(hi) if hi == lo else f"{hi}:{lo}"


@dataclass(frozen=True)
class FieldDef:
    """One field of a register: bits hi..lo (inclusive), lo counted from bit 0.

    `bit_names` (bit within the field -> name) is set for fields whose every
    bit is a VMX control bit, e.g. the allowed-0/allowed-1 halves of a
    capability MSR; `control` names that control.
    """

    name: str
    hi: int
    lo: int
    doc: str = ""
    enum: Mapping[int, str] = field(default_factory=dict)
    unit: Optional[str] = None
    reserved: bool = False
    control: Optional[str] = None
    bit_names: Mapping[int, str] = field(default_factory=dict)

    @property
    def width(self) -> int:
        return self.hi - self.lo + 1

    @property
    def mask(self) -> int:
        """The field's bits in place (e.g. 0x7FFFFFFF for bits 30:0)."""
        return ((1 << self.width) - 1) << self.lo

    def extract(self, value: int) -> int:
        """The field's value, shifted down to bit 0."""
        return (value >> self.lo) & ((1 << self.width) - 1)

    def meaning(self, v: int) -> str:
        """What the field value `v` means, in a few words for a person."""
        if self.reserved or self.name.startswith("reserved_"):
            return "reserved, set" if v else "reserved"
        if self.enum:
            return self.enum.get(v, f"reserved value {v}")
        if self.bit_names:
            names = [self.bit_names.get(i, f"bit {i} {reserved_label(False)}") for i in range(self.width) if v >> i & 1]
            return ", ".join(names) if names else "none"
        if self.unit:
            return f"{v} {self.unit}"
        if self.width == 1:
            return "yes" if v else "no"
        return f"0x{v:x}" if v < 10 else f"0x{v:x} ({v})"


@dataclass(frozen=True)
class DecodedField:
    """A field of a decoded value: its bits, its value and what that means."""

    name: str
    hi: int
    lo: int
    value: int
    meaning: str
    doc: str = ""
    reserved: bool = False

    @property
    def bits(self) -> str:
        return bit_range(self.hi, self.lo)


@dataclass(frozen=True)
class RegisterDef:
    """A bitfield register or MSR of `width` bits; `fields` sorted by lo.

    Bits no field covers are reserved; `layout` lists them as gap fields named
    `reserved_HI_LO` so that `struct` covers every bit and build(parse(b)) == b.
    """

    name: str
    msr: Optional[int]
    width: int
    sdm: str
    doc: str
    fields: Tuple[FieldDef, ...]

    @cached_property
    def layout(self) -> Tuple[FieldDef, ...]:
        """Every bit, lowest first: the declared fields plus reserved gaps."""
        out: List[FieldDef] = []
        nxt = 0
        for f in self.fields:
            if f.lo > nxt:
                out.append(FieldDef(f"reserved_{f.lo - 1}_{nxt}", f.lo - 1, nxt, reserved=True))
            out.append(f)
            nxt = f.hi + 1
        if nxt < self.width:
            out.append(FieldDef(f"reserved_{self.width - 1}_{nxt}", self.width - 1, nxt, reserved=True))
        return tuple(out)

    @cached_property
    def struct(self) -> Any:
        """The construct object: ByteSwapped(BitStruct(...)), fields from the MSB down."""
        from .compile import register_struct
        return register_struct(self)

    @cached_property
    def _by_name(self) -> Dict[str, FieldDef]:
        return {f.name: f for f in self.layout}

    @property
    def reserved_mask(self) -> int:
        """Bits that are reserved: not covered by a field, or covered by a reserved one."""
        return sum(f.mask for f in self.layout if f.reserved)

    @property
    def size(self) -> int:
        """Bytes in memory."""
        return self.width // 8

    def field(self, name: str) -> FieldDef:
        """The field called `name`; InputError naming the register if there is none."""
        try:
            return self._by_name[name]
        except KeyError:
            known = ", ".join(f.name for f in self.fields)
            raise InputError(f"{self.name} has no field {name!r} (fields: {known})") from None

    def mask(self, name: str) -> int:
        """The bits of field `name`, in place."""
        return self.field(name).mask

    def get(self, value: int, name: str) -> int:
        """Field `name` of `value`, shifted down to bit 0."""
        return self.field(name).extract(value)

    def check_value(self, value: int) -> int:
        """`value` if it fits in the register; InputError otherwise."""
        if not isinstance(value, int) or isinstance(value, bool) or value < 0 or value >> self.width:
            raise InputError(f"{self.name}: {value!r} does not fit in {self.width} bits")
        return value

    def decode(self, value: int) -> List[DecodedField]:
        """Each declared field of `value`, lowest first, plus any reserved bits that are set."""
        self.check_value(value)
        out = []
        for f in self.layout:
            v = f.extract(value)
            if f.name.startswith("reserved_") and not v:
                continue
            out.append(DecodedField(f.name, f.hi, f.lo, v, f.meaning(v), f.doc, f.reserved))
        return out

    def parse(self, data: bytes) -> Dict[str, int]:
        """Field values from the register's little-endian bytes (len(data) == size)."""
        if len(data) != self.size:
            raise InputError(f"{self.name}: {len(data)} bytes given, {self.size} needed")
        return {k: v for k, v in self.struct.parse(data).items() if not k.startswith("_")}

    def build(self, values: Mapping[str, int]) -> bytes:
        """Little-endian bytes from field values; every field of `layout` must be given."""
        return self.struct.build(dict(values))

    def to_bytes(self, value: int) -> bytes:
        return self.check_value(value).to_bytes(self.size, "little")


@dataclass(frozen=True)
class ControlDef:
    """A VMX control field: its VMCS encoding, capability MSRs and bit names.

    width 32: the capability MSR holds allowed-0 (31:0) and allowed-1 (63:32);
    width 64: the capability MSR is an allowed-1 mask and every bit may be 0.
    `default1` lists the bits the non-TRUE MSR always reports as must-be-1.
    """

    name: str
    vmcs: int
    width: int
    capability_msr: int
    true_msr: Optional[int]
    sdm: str
    doc: str
    bits: Mapping[int, str]
    default1: Tuple[int, ...]

    @cached_property
    def _by_name(self) -> Dict[str, int]:
        return {n: b for b, n in self.bits.items()}

    def bit(self, name: str) -> int:
        """The bit position of control `name`; InputError if this field has no such bit."""
        try:
            return self._by_name[name]
        except KeyError:
            raise InputError(f"{self.name} controls have no bit named {name!r}") from None

    def mask(self, *names: str) -> int:
        """The bits of the named controls, in place."""
        m = 0
        for n in names:
            m |= 1 << self.bit(n)
        return m

    def name_of(self, bit: int) -> str:
        """The name of `bit`, or `bit N (reserved, default1)` / `bit N (reserved)` for an unnamed one."""
        return self.bits[bit] if bit in self.bits else f"bit {bit} {reserved_label(bit in self.default1)}"

    def names(self, value: int) -> List[str]:
        """Names of the bits set in `value`, lowest first (see name_of for unnamed bits)."""
        return [self.name_of(b) for b in range(self.width) if value >> b & 1]


WIDTHS = ("16", "64", "32", "natural")          # encoding bits 14:13
TYPES = ("control", "exit_info", "guest", "host")  # encoding bits 11:10


@dataclass(frozen=True)
class VmcsField:
    """One VMCS field encoding (Vol.3D Appendix B).

    `width` and `type` are those the encoding carries (bits 14:13 and 11:10).
    `high` is True for the HIGH-half encoding (bit 0 = 1) of a 64-bit field,
    which accesses bits 63:32 of the field.
    """

    encoding: int
    name: str
    sdm_name: str
    width: str
    type: str
    sdm: str
    aliases: Tuple[str, ...] = ()
    high: bool = False

    @property
    def index(self) -> int:
        """Encoding bits 9:1."""
        return (self.encoding >> 1) & 0x1FF

    @property
    def bits(self) -> int:
        """Bits a VMREAD of this encoding returns in 64-bit mode (natural = 64)."""
        if self.high:
            return 32
        return 64 if self.width == "natural" else int(self.width)


@dataclass(frozen=True)
class RegionPart:
    """A piece of a region header: `size` bytes at `offset`, optionally in a register format."""

    offset: int
    size: int
    name: str
    register: Optional[str] = None
    doc: str = ""


@dataclass(frozen=True)
class RegionDef:
    """The architectural header of an in-memory VMX region (little-endian)."""

    name: str
    sdm: str
    doc: str
    size_from: Optional[str]
    layout: Tuple[RegionPart, ...]

    @property
    def header_size(self) -> int:
        last = self.layout[-1]
        return last.offset + last.size

    @cached_property
    def struct(self) -> Any:
        """The construct object for the header bytes."""
        from .compile import region_struct
        return region_struct(self)

    def parse(self, data: bytes) -> Dict[str, int]:
        """Each part's integer value from the first header_size bytes of `data`."""
        if len(data) < self.header_size:
            raise InputError(f"{self.name}: {len(data)} bytes given, the header needs {self.header_size}")
        parsed = self.struct.parse(data[:self.header_size])
        return {p.name: parsed[p.name] for p in self.layout}
