"""Memory types from MTRRs, PAT and paging entries, against the SDM's tables."""
from __future__ import annotations

import pytest

from vmxdbg.state import memtype as mt


@pytest.mark.parametrize("pat,mtrr,want", [
    (mt.UC, mt.WB, mt.UC), (mt.UC_MINUS, mt.WB, mt.UC), (mt.UC_MINUS, mt.WC, mt.WC), (mt.WC, mt.WB, mt.WC),
    (mt.WT, mt.WB, mt.WT), (mt.WT, mt.WP, mt.WP), (mt.WT, mt.WC, mt.UC), (mt.WP, mt.WB, mt.WP),
    (mt.WP, mt.WT, mt.WP), (mt.WB, mt.WT, mt.WT), (mt.WB, mt.WB, mt.WB), (mt.WB, mt.UC, mt.UC),
])
def test_effective_type_table(pat, mtrr, want):
    assert mt.combine(pat, mtrr) == want


def msrs(extra=None):
    m = {mt.MTRRCAP: 0x502, mt.MTRR_DEF_TYPE: 0xC06, 0x250: 0x0606060606060606,
         0x200: 0x80000000, 0x201: 0x7F80000800,   # 2 GiB at 2 GiB: UC
         0x202: 0x0, 0x203: 0x0}
    m.update(extra or {})
    return m


def test_mtrr_variable_default_and_disabled():
    m = msrs()
    assert mt.mtrr_type(0x1a2b3000, m.__getitem__, 39) == mt.WB
    assert mt.mtrr_type(0x80001000, m.__getitem__, 39) == mt.UC
    m[mt.MTRR_DEF_TYPE] = 0x006
    assert mt.mtrr_type(0x1a2b3000, m.__getitem__, 39) == mt.UC


def test_mtrr_fixed_range_and_wt_beats_wb():
    m = msrs({0x250: 0x0606060606060400, 0x202: 0x1a200004, 0x203: 0x7FFFF00800})
    assert mt.mtrr_type(0x0, m.__getitem__, 39) == mt.UC
    assert mt.mtrr_type(0x10000, m.__getitem__, 39) == mt.WT
    m[0x200], m[0x201] = 0x1a200006, 0x7FFFF00800       # overlapping WB + WT -> WT
    assert mt.mtrr_type(0x1a2b3000, m.__getitem__, 39) == mt.WT


def test_missing_msr_propagates():
    with pytest.raises(KeyError):
        mt.mtrr_type(0x1000, {}.__getitem__, 39)


def test_walk_4k_and_2m_pages():
    mem = {}

    def put(addr, value):
        mem.update({addr + i: b for i, b in enumerate(value.to_bytes(8, "little"))})

    def read(addr, size):
        return bytes(mem[addr + i] for i in range(size))

    put(0x1000 + 8, 0x2003)
    put(0x2000, 0x3003)
    put(0x3000, 0x4003)
    put(0x4000 + 0x123 * 8, 0x1a2b3000 | 0x1B)
    assert mt.walk(0x8000123456, 0x1000, 0, read) == (0x1a2b3456, 0, 1, 1)
    put(0x3000 + 8, 0x40000000 | 0x1083)              # 2 MiB page with PAT bit (bit 12)
    assert mt.walk(0x8000200000 + 0x1234, 0x1000, 0, read) == (0x40001234, 1, 0, 0)
    put(0x2008, 0x0)                                   # PDPT entry 1 not present
    with pytest.raises(LookupError, match="not mapped"):
        mt.walk(0x8040000000, 0x1000, 0, read)
