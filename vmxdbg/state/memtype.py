"""The memory type a physical page is accessed with: MTRRs, PAT and the page tables.

Facts from SDM Vol.3A, chapter "Memory Cache Control": MTRR precedence
(fixed ranges below 1 MiB, then variable ranges: UC wins, WT beats WB, else
undefined), the PAT index of a paging entry (PAT, PCD, PWT), and the table of
effective page-level memory types for a PAT type combined with an MTRR type
(SDM 325462-080US, 2023). Every function raises `Missing` (through the
reader it is given) for an input it cannot read: unknown is not zero.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Tuple

UC, WC, WT, WP, WB, UC_MINUS = 0, 1, 4, 5, 6, 7
NAMES = {UC: "UC (uncacheable)", WC: "WC (write-combining)", WT: "WT (write-through)",
         WP: "WP (write-protected)", WB: "WB (write-back)", UC_MINUS: "UC- (uncached)"}
MTRRCAP, MTRR_DEF_TYPE = 0xFE, 0x2FF
FIXED_64K, FIXED_16K, FIXED_4K = 0x250, (0x258, 0x259), tuple(range(0x268, 0x270))

ReadMsr = Callable[[int], int]
ReadPhys = Callable[[int, int], bytes]


def type_name(t: Optional[int]) -> str:
    return "unknown" if t is None else NAMES.get(t, f"reserved type {t}")


def _fixed_type(address: int, msr: ReadMsr) -> int:
    """Type from the fixed-range MTRRs (address below 1 MiB)."""
    if address < 0x80000:
        return msr(FIXED_64K) >> (8 * (address >> 16)) & 0xFF
    if address < 0xC0000:
        off = address - 0x80000
        index = off >> 14
        return msr(FIXED_16K[index // 8]) >> (8 * (index % 8)) & 0xFF
    off = address - 0xC0000
    index = off >> 12
    return msr(FIXED_4K[index // 8]) >> (8 * (index % 8)) & 0xFF


def mtrr_type(address: int, msr: ReadMsr, maxphyaddr: int) -> int:
    """The MTRR memory type of a physical address."""
    default = msr(MTRR_DEF_TYPE)
    if not default >> 11 & 1:          # MTRRs disabled: everything is UC
        return UC
    cap = msr(MTRRCAP)
    if address < 0x100000 and cap >> 8 & 1 and default >> 10 & 1:
        return _fixed_type(address, msr)
    addr_mask = (1 << maxphyaddr) - 1
    hits: List[int] = []
    for n in range(cap & 0xFF):
        mask = msr(0x201 + 2 * n)
        if not mask >> 11 & 1:
            continue
        base = msr(0x200 + 2 * n)
        m = mask & addr_mask & ~0xFFF
        if address & m == base & m & ~0xFFF:
            hits.append(base & 0xFF)
    if not hits:
        return default & 0xFF
    if UC in hits:
        return UC
    if set(hits) == {WT, WB}:
        return WT
    if len(set(hits)) == 1:
        return hits[0]
    return UC  # overlapping ranges of other types are undefined; UC is the conservative reading


def pat_type(pat: int, pat_bit: int, pcd: int, pwt: int) -> int:
    """The PAT entry selected by a paging entry's PAT, PCD and PWT bits."""
    return pat >> (8 * (pat_bit << 2 | pcd << 1 | pwt)) & 0x7


def combine(pat: int, mtrr: int) -> int:
    """Effective memory type of a PAT type over an MTRR type."""
    if pat == UC or mtrr == UC:
        return UC
    if pat == UC_MINUS:
        return WC if mtrr == WC else UC
    if pat == WC:
        return WC
    if pat == WB:
        return mtrr
    if mtrr == WC:
        return UC
    if pat == WT:
        return WP if mtrr == WP else WT
    return WP  # pat == WP over WT, WP or WB


def walk(linear: int, cr3: int, cr4: int, read: ReadPhys) -> Tuple[int, int, int, int]:
    """4- or 5-level paging walk: (physical address, PAT bit, PCD, PWT) of the leaf entry."""
    levels = 5 if cr4 >> 12 & 1 else 4
    table = cr3 & 0x000FFFFFFFFFF000
    for level in range(levels, 0, -1):
        index = linear >> (12 + 9 * (level - 1)) & 0x1FF
        entry = int.from_bytes(read(table + 8 * index, 8), "little")
        if not entry & 1:
            raise LookupError(f"linear address {linear:#x} is not mapped (level {level} entry {entry:#x})")
        large = level in (2, 3) and entry >> 7 & 1
        if level == 1 or large:
            page_bits = 12 + 9 * (level - 1)
            frame = entry & 0x000FFFFFFFFFF000 & ~((1 << page_bits) - 1)
            pat_bit = entry >> (12 if large else 7) & 1
            return frame | linear & ((1 << page_bits) - 1), pat_bit, entry >> 4 & 1, entry >> 3 & 1
        table = entry & 0x000FFFFFFFFFF000
    raise LookupError("paging walk did not end")  # unreachable with well-formed levels


__all__ = ["mtrr_type", "pat_type", "combine", "walk", "type_name", "UC", "WC", "WT", "WP", "WB", "UC_MINUS"]
