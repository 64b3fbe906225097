"""Compile definitions into construct objects that both parse and build.

Registers are little-endian in memory and drawn MSB-first by the SDM, so a
register is `ByteSwapped(BitStruct(...))` with its fields from the most
significant bit down, reserved gaps included as named fields; multi-bit fields
are plain BitsInteger (never BitsSwapped). build(parse(b)) == b for every b.
"""
from __future__ import annotations

from typing import Any, List

from construct import BitsInteger, BitStruct, Bytes, ByteSwapped, Int8ul, Int16ul, Int32ul, Int64ul, Struct

from .model import RegionDef, RegisterDef

_INTS = {1: Int8ul, 2: Int16ul, 4: Int32ul, 8: Int64ul}


def register_struct(reg: RegisterDef) -> Any:
    """The construct object of a register: one BitsInteger per field of `reg.layout`, MSB first."""
    return ByteSwapped(BitStruct(*[f.name / BitsInteger(f.width) for f in reversed(reg.layout)]))


def region_struct(region: RegionDef) -> Any:
    """The construct object of a region header: little-endian integers, gaps kept as raw bytes."""
    parts: List[Any] = []
    pos = 0
    for p in region.layout:
        if p.offset > pos:
            parts.append(f"reserved_at_{pos:x}" / Bytes(p.offset - pos))
        parts.append(p.name / _INTS[p.size])
        pos = p.offset + p.size
    return Struct(*parts)
