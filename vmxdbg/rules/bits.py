"""Helpers shared by rules: bit names from structs/, fixed-bit and allowed-setting checks."""
from __future__ import annotations

from typing import Dict, List, Optional

from ..common.numbers import bits_of, hexs


def bit_names(register: str) -> Dict[int, str]:
    """Single-bit field names of a register in structs/registers.yaml (bit -> NAME)."""
    try:
        from ..decode import defs
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


def physical_width(maxphyaddr: int, basic: int) -> int:
    """The width VMX structure addresses may use: 32 when IA32_VMX_BASIC[48] = 1."""
    return 32 if basic >> 48 & 1 else maxphyaddr


def pointer_bits_beyond(address: int, width: int) -> List[int]:
    return [b for b in bits_of(address) if b >= width]
