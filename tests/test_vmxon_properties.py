"""Property tests: random CR0/CR4/MSR values never crash the VMXON rules, and the
fixed-bit verdict agrees with a direct reading of SDM Vol.3C 24.8 / Vol.3D A.7-A.8."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from vmxdbg.rules.evaluate import check_snapshot
from vmxdbg.rules.examples import apply_patch, baseline_tree
from vmxdbg.state.snapshot import snapshot_from_json

u64 = st.integers(min_value=0, max_value=2**64 - 1)
u32 = st.integers(min_value=0, max_value=2**32 - 1)
BASE = baseline_tree("vmxon")


def verdict(cr0, cr4, f0, f1, g0, g1, fc):
    patch = {"registers/cr0": hex(cr0), "registers/cr4": hex(cr4), "msr/0x486": hex(f0), "msr/0x487": hex(f1),
             "msr/0x488": hex(g0), "msr/0x489": hex(g1), "msr/0x3a": hex(fc)}
    snap = snapshot_from_json(apply_patch(BASE, patch))
    return check_snapshot(snap).verdict(0, "vmxon")


@settings(max_examples=300, deadline=None)
@given(cr0=u64, cr4=u64, f0=u64, f1=u64, g0=u64, g1=u64, fc=st.sampled_from([0x0, 0x1, 0x4, 0x5, 0x7]))
def test_fixed_bits_agree_with_the_sdm(cr0, cr4, f0, f1, g0, g1, fc):
    v = verdict(cr0, cr4, f0, f1, g0, g1, fc)
    failed = {f.id for f in v.findings if f.status == "fail"}
    # the direct reading: a bit set in FIXED0 must be 1, a bit clear in FIXED1 must be 0
    ud = not cr4 >> 13 & 1 or not cr0 & 1   # CR4.VMXE = 0 or real mode: #UD first
    if ud:
        assert v.outcome == "#UD"
        return
    assert ("VMXON010" in failed) == bool(f0 & ~cr0)
    assert ("VMXON011" in failed) == bool(cr0 & ~f1)
    assert ("VMXON012" in failed) == bool(g0 & ~cr4)
    assert ("VMXON013" in failed) == bool(cr4 & ~g1)
    fc_bad = not fc & 1 or not fc & 4
    gp = bool(f0 & ~cr0 or cr0 & ~f1 or g0 & ~cr4 or cr4 & ~g1) or fc_bad
    assert v.outcome == ("#GP" if gp else "ok")


@settings(max_examples=200, deadline=None)
@given(cr0=u64, cr4=u64)
def test_seed_machine_fixed_msrs(cr0, cr4):
    """With the seed's real Skylake values (FIXED0/1 0x80000021/0xffffffff, 0x2000/0x3727ff)."""
    v = verdict(cr0 | 1, cr4 | 0x2000, 0x80000021, 0xFFFFFFFF, 0x2000, 0x3727FF, 0x5)
    expect_gp = bool(0x80000021 & ~(cr0 | 1) or (cr0 | 1) & ~0xFFFFFFFF or (cr4 | 0x2000) & ~0x3727FF)
    assert v.outcome == ("#GP" if expect_gp else "ok")
    for f in v.findings:
        if f.status == "fail":
            assert "bit" in f.message and f.sdm.endswith("(SDM 325462-080US, 2023)")
