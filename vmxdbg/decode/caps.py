"""What a processor's VMX capability MSRs allow, bit by bit (in the spirit of QEMU's vmxcap).

capability_report(msrs) -> sections. A control section lists every named bit
of a VMX control field (and every default1 or unnamed bit the MSR mentions)
with whether it may be 0 and may be 1. Rules (Vol.3D Appendix A, SDM
325462-080US, 2023):

- 32-bit controls: bit X may be 0 iff allowed-0 bit X (MSR bit X) is 0, and
  may be 1 iff allowed-1 bit X (MSR bit 32+X) is 1.
- When IA32_VMX_BASIC[55] = 1 the TRUE_ MSR (0x48D-0x490) governs; when it is
  0 the default1 bits must be 1 (the non-TRUE MSR reads them as 1) (A.2).
  Bits outside the default1 class read the same in either MSR, and so do the
  allowed-1 settings, so the non-TRUE MSR still answers those.
- 64-bit controls (tertiary, secondary VM-exit, VM functions): every bit may
  be 0; bit X may be 1 iff MSR bit X is 1.
- A capability MSR that exists only if another MSR allows its activating bit
  (A.3.3, A.3.4, A.4.2, A.10, A.11) reports "not supported" when that bit says
  no; when it cannot be told, the section is unknown.
An absent MSR is unknown (None), never 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Mapping, Optional, Tuple

from . import defs
from .model import ControlDef, DecodedField, reserved_label

BASIC = 0x480
CR_FIXED = {"CR0": (0x486, 0x487, "Vol.3D A.7"), "CR4": (0x488, 0x489, "Vol.3D A.8")}

# control or MSR -> (MSR whose allowed-1 bit must be set for it to exist, that bit, what it is)
_GATES = {
    "secondary": (0x482, 63, "IA32_VMX_PROCBASED_CTLS[63] (activate secondary controls may be 1)"),
    "tertiary": (0x482, 49, "IA32_VMX_PROCBASED_CTLS[49] (activate tertiary controls may be 1)"),
    "secondary_exit": (0x483, 63, "IA32_VMX_EXIT_CTLS[63] (activate secondary VM-exit controls may be 1)"),
    "vm_functions": (0x48B, 45, "IA32_VMX_PROCBASED_CTLS2[45] (enable VM functions may be 1)"),
}
_MSR_GATES = {
    0x48B: _GATES["secondary"],
    0x492: _GATES["tertiary"],
    0x493: _GATES["secondary_exit"],
    0x491: _GATES["vm_functions"],
}
REGISTER_SECTIONS = (0x3A, 0x480, 0x485, 0x48A, 0x48C)


@dataclass(frozen=True)
class BitCapability:
    """One control bit: may it be 0, may it be 1 (None = unknown)."""

    bit: int
    name: str
    may_be_0: Optional[bool]
    may_be_1: Optional[bool]
    default1: bool = False

    @property
    def verdict(self) -> str:
        """"free", "must be 1", "must be 0", "impossible" or "unknown"."""
        if self.may_be_0 is None or self.may_be_1 is None:
            if self.may_be_1 is False:
                return "must be 0"
            if self.may_be_0 is False:
                return "must be 1"
            return "unknown"
        if self.may_be_0 and self.may_be_1:
            return "free"
        if self.may_be_1:
            return "must be 1"
        if self.may_be_0:
            return "must be 0"
        return "impossible"


@dataclass(frozen=True)
class Section:
    """A block of the report: a control field's bits, or a decoded MSR.

    status: "known", "unknown" (an MSR it needs is absent) or "unsupported"
    (the processor says the MSR or control field does not exist).
    """

    title: str
    kind: str                      # "control" | "register"
    status: str
    source: str                    # which MSR(s) the answers come from
    note: str = ""
    bits: Tuple[BitCapability, ...] = ()
    fields: Tuple[DecodedField, ...] = ()
    value: Optional[int] = None    # register sections: the MSR value


def _bit(v: Optional[int], n: int) -> Optional[bool]:
    return None if v is None else bool(v >> n & 1)


def _msr_name(index: int) -> str:
    r = defs.msr_or_none(index)
    return f"{r.name} ({index:#x})" if r else f"MSR {index:#x}"


def _gate(msrs: Mapping[int, int], gate: Optional[Tuple[int, int, str]]) -> Optional[bool]:
    """Whether the gating allowed-1 bit says the thing exists (None: cannot tell)."""
    if gate is None:
        return True
    index, bit, _ = gate
    value = msrs.get(index)
    if value is None and index == 0x482:
        value = msrs.get(0x48E)  # allowed-1 settings read the same in the TRUE MSR
    return _bit(value, bit)


def control_section(c: ControlDef, msrs: Mapping[int, int]) -> Section:
    """Which settings of control field `c` the capability MSRs allow."""
    title = c.doc or c.name
    cap = msrs.get(c.capability_msr)
    exists = True if cap is not None else _gate(msrs, _GATES.get(c.name))
    if exists is False:
        gate = _GATES[c.name]
        bits = tuple(BitCapability(b, n, True, False) for b, n in c.bits.items())
        return Section(title, "control", "unsupported", _msr_name(c.capability_msr),
                       f"not supported: {gate[2]} is 0", bits)
    true_flag = _bit(msrs.get(BASIC), 55)
    true_val = msrs.get(c.true_msr) if c.true_msr is not None else None
    use_true = c.true_msr is not None and true_val is not None and true_flag is not False
    note = ""
    if c.true_msr is not None:
        if use_true:
            note = "IA32_VMX_BASIC[55]=1: TRUE MSR used" if true_flag else \
                "IA32_VMX_BASIC unknown; TRUE MSR present, used"
        elif true_flag:
            note = f"IA32_VMX_BASIC[55]=1 but {_msr_name(c.true_msr)} is unknown: default1 bits' 0-setting unknown"
        elif true_flag is None:
            note = "IA32_VMX_BASIC unknown: default1 bits' 0-setting unknown"
        else:
            note = "IA32_VMX_BASIC[55]=0: default1 bits must be 1"
    source = _msr_name(c.true_msr) if use_true and c.true_msr is not None else _msr_name(c.capability_msr)
    value = true_val if use_true else cap
    positions = set(c.bits) | set(c.default1)
    if value is not None:
        positions |= {b for b in range(c.width) if value >> b & 1}
        if c.width == 32:
            positions |= {b for b in range(32) if value >> (32 + b) & 1}
    rows = []
    for b in sorted(positions):
        d1 = b in c.default1
        if c.width == 64:
            may0, may1 = (True, _bit(value, b))
        else:
            allowed0 = _bit(value, b)
            may0 = None if allowed0 is None else not allowed0
            may1 = _bit(value, 32 + b)
            if d1 and not use_true and true_flag is not False:
                may0 = None  # only the TRUE MSR can say whether a default1 bit may be 0
        rows.append(BitCapability(b, c.name_of(b), may0, may1, d1))
    status = "known" if value is not None else "unknown"
    if value is None:
        note = f"{_msr_name(c.capability_msr)} unknown" + (f"; {note}" if note else "")
    return Section(title, "control", status, source, note, tuple(rows))


def fixed_section(cr: str, msrs: Mapping[int, int]) -> Section:
    """Which CR0/CR4 bits VMX operation fixes (FIXED0 bit 1: must be 1; FIXED1 bit 0: must be 0)."""
    f0, f1, sdm = CR_FIXED[cr]
    v0, v1 = msrs.get(f0), msrs.get(f1)
    reg = defs.register(cr)
    rows = []
    positions = {f.lo for f in reg.fields}  # plus reserved bits only where FIXED0 forces them to 1
    positions |= {b for b in range(64) if v0 is not None and v0 >> b & 1}
    names = {f.lo: f.name for f in reg.fields}
    for b in sorted(positions):
        f0b = _bit(v0, b)
        rows.append(BitCapability(b, names.get(b, f"bit {b} {reserved_label(False)}"), None if f0b is None else not f0b,
                                  _bit(v1, b)))
    known = v0 is not None and v1 is not None
    missing = [_msr_name(i) for i, v in ((f0, v0), (f1, v1)) if v is None]
    status = "known" if known else "unknown"
    return Section(f"{cr} in VMX operation", "control", status, f"{_msr_name(f0)} / {_msr_name(f1)}",
                   f"{' and '.join(missing)} unknown" if missing else f"{sdm}", tuple(rows))


def register_section(index: int, msrs: Mapping[int, int]) -> Section:
    """An MSR decoded field by field (unknown when absent)."""
    reg = defs.msr(index)
    value = msrs.get(index)
    if value is None:
        exists = _gate(msrs, _MSR_GATES.get(index)) if index in _MSR_GATES else None
        if index == 0x48C:
            exists = _ept_vpid_exists(msrs)
        if exists is False:
            return Section(reg.doc, "register", "unsupported", _msr_name(index), "not supported by this processor")
        return Section(reg.doc, "register", "unknown", _msr_name(index), f"{_msr_name(index)} unknown")
    return Section(reg.doc, "register", "known", _msr_name(index), "", fields=tuple(reg.decode(value)), value=value)


def _ept_vpid_exists(msrs: Mapping[int, int]) -> Optional[bool]:
    """A.10: IA32_VMX_EPT_VPID_CAP exists iff secondary controls exist and EPT or VPID may be 1."""
    sec = msrs.get(0x48B)
    if sec is None:
        return False if _gate(msrs, _GATES["secondary"]) is False else None
    return bool(sec >> 33 & 1 or sec >> 37 & 1)


def capability_report(msrs: Mapping[int, int]) -> List[Section]:
    """Every section for one processor's MSRs (index -> value; absent = unknown)."""
    out = [register_section(i, msrs) for i in REGISTER_SECTIONS[:2]]
    out += [control_section(c, msrs) for c in defs.controls().values()]
    out += [fixed_section(cr, msrs) for cr in CR_FIXED]
    out += [register_section(i, msrs) for i in REGISTER_SECTIONS[2:]]
    return out
