"""Helpers shared by rules: bit names from structs/, fixed-bit and allowed-setting checks.

Rules read register, MSR and VMCS-format fields by the names structs/registers.yaml
gives them, never by bit position:

    TRUE_CONTROLS = reg_field("IA32_VMX_BASIC", "true_controls")   # once, at import
    if TRUE_CONTROLS(ctx.msr(0x480)): ...                          # value >> 55 & 1
    CR0_PG = reg_bit("CR0", "pg")                                  # the mask 1 << 31
    field(value, "IA32_VMX_MISC", "max_msr_list")                  # ad hoc, cached lookup

Module-level constants keep rule evaluation as fast as the literal shifts were.
"""
from __future__ import annotations

import functools
from typing import Dict, List, Optional

from ..common.numbers import bits_of, hexs
from ..decode import defs


class RegField:
    """One field of a register in structs/, compiled for rules: calling it extracts the field."""

    __slots__ = ("register", "name", "lo", "hi", "ones", "mask")

    def __init__(self, register: str, name: str) -> None:
        f = defs.register(register).field(name)
        self.register, self.name, self.lo, self.hi = register, name, f.lo, f.hi
        self.ones = (1 << (f.hi - f.lo + 1)) - 1   # the field's value mask, at bit 0
        self.mask = self.ones << f.lo             # the field's bits, in place

    def __call__(self, value: int) -> int:
        return value >> self.lo & self.ones

    @property
    def bits(self) -> str:
        """`"55"` or `"10:8"`, as the SDM writes the field's position."""
        return str(self.lo) if self.hi == self.lo else f"{self.hi}:{self.lo}"

    def __repr__(self) -> str:
        return f"RegField({self.register}.{self.name}[{self.bits}])"


@functools.lru_cache(maxsize=None)
def reg_field(register: str, name: str) -> RegField:
    """Field `name` of `register` (structs/registers.yaml); InputError if either is unknown."""
    return RegField(register, name)


def reg_bit(register: str, name: str) -> int:
    """The in-place mask of the one-bit field `name` of `register` (e.g. CR0.pg -> 1 << 31)."""
    f = reg_field(register, name)
    if f.hi != f.lo:
        raise ValueError(f"{register}.{name} is bits {f.bits}, not one bit")
    return f.mask


def reg_reserved(register: str) -> int:
    """The reserved bits of `register` as structs/ draws them (undeclared gaps and reserved fields)."""
    return defs.register(register).reserved_mask


def field(value: int, register: str, name: str) -> int:
    """Field `name` of `register` in `value`, shifted down to bit 0."""
    return reg_field(register, name)(value)


def bit_names(register: str) -> Dict[int, str]:
    """Single-bit field names of a register in structs/registers.yaml (bit -> NAME)."""
    try:
        reg = defs.register(register)
    except Exception:  # structs not loadable: names are a nicety, bits still print
        return {}
    return {f.lo: f.name for f in reg.fields if f.hi == f.lo and not getattr(f, "reserved", False)}


def describe_bits(register: str, mask: int) -> str:
    """`VMXE (bit 13), PG (bit 31)` for the set bits of mask."""
    names = bit_names(register)
    parts = []
    for b in bits_of(mask):
        n = names.get(b)
        parts.append(f"{n.upper()} (bit {b})" if n else f"bit {b}")
    return ", ".join(parts)


def must_be_one(value: int, fixed0: int) -> int:
    """Bits that FIXED0 requires to be 1 but are 0 in value."""
    return fixed0 & ~value


def must_be_zero(value: int, fixed1: int, width: int = 64) -> int:
    """Bits that FIXED1 requires to be 0 but are 1 in value."""
    return value & ~fixed1 & ((1 << width) - 1)


def fixed0_message(register: str, value: int, fixed0_name: str, fixed0: int) -> Optional[str]:
    bad = must_be_one(value, fixed0)
    if not bad:
        return None
    return (f"{register.upper()} = {hexs(value)} has {describe_bits(register, bad)} clear, but "
            f"{fixed0_name} = {hexs(fixed0)} requires {'them' if bad & (bad - 1) else 'it'} set")


def fixed1_message(register: str, value: int, fixed1_name: str, fixed1: int) -> Optional[str]:
    bad = must_be_zero(value, fixed1)
    if not bad:
        return None
    return (f"{register.upper()} = {hexs(value)} has {describe_bits(register, bad)} set, but "
            f"{fixed1_name} = {hexs(fixed1)} requires {'them' if bad & (bad - 1) else 'it'} clear")


BASIC_PHYS32 = reg_field("IA32_VMX_BASIC", "physaddr_32bit")


def physical_width(maxphyaddr: int, basic: int) -> int:
    """The width VMX structure addresses may use: 32 when IA32_VMX_BASIC[48] = 1."""
    return 32 if BASIC_PHYS32(basic) else maxphyaddr


def pointer_bits_beyond(address: int, width: int) -> List[int]:
    return [b for b in bits_of(address) if b >= width]
