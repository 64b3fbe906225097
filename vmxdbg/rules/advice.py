"""Advice the SDM gives but the processor does not enforce (status `advice`).

IA32_VMX_BASIC[53:50] names the memory type software should use for the VMCS,
the VMXON region and the structures the VMCS points to (SDM Vol.3D A.1,
"Basic VMX Information", SDM 325462-080US, 2023). VMXON and VM entry do not
check it; a region mapped with another type (the seed tutorial allocates it
MmNonCached) works on some processors and corrupts state on others. The
effective type is worked out from the MTRRs, IA32_PAT and the paging entry
that maps the region (vmxdbg/state/memtype.py); each input that is missing makes
the advice `unknown`, naming it.
"""
from __future__ import annotations

from typing import Optional

from ..state import memtype
from ..common.numbers import hexs
from .bits import reg_bit, reg_field
from .engine import SKIP, Context, Missing, Tier, Violation, bad, good, rule

BASIC_MEMORY_TYPE = reg_field("IA32_VMX_BASIC", "memory_type")
CR0_CD = reg_bit("CR0", "cd")

ED = "(SDM 325462-080US, 2023)"
SDM = f"Vol.3D A.1 Basic VMX Information; Vol.3A Memory Cache Control, effective page-level memory types {ED}"

# A 4-level mapping of linear 0x8000123000 -> physical 0x1a2b3000 (CR3 = 0x1000), with power-on MTRRs
# (default WB, enabled) and the power-on PAT, as example patches on the vmxon baseline.
_PAGING = {"registers/cr3": "0x1000", "msr/0xfe": "0x500", "msr/0x2ff": "0xc06", "msr/0x277": "0x7040600070406",
           "msr/0x250": "0x606060606060606", "linear/vmxon_region": "0x8000123000",
           "/memory/0x1008": "0320000000000000", "/memory/0x2000": "0330000000000000",
           "/memory/0x3000": "0340000000000000"}
_WB_PTE = {"/memory/0x4918": "03302b1a00000000"}   # PAT=0 PCD=0 PWT=0: PAT entry 0 (WB)
_UC_PTE = {"/memory/0x4918": "1b302b1a00000000"}   # PCD=1 PWT=1: PAT entry 3 (UC), what MmNonCached gives


def region_memory_type(ctx: Context, physical: int, linear_name: str) -> Optional[Violation]:
    """Advice when the region at `physical` is accessed with another type than IA32_VMX_BASIC[53:50]."""
    want = BASIC_MEMORY_TYPE(ctx.msr(0x480))
    linear = ctx.linear(linear_name)
    cr3, cr4, cr0 = ctx.reg("cr3"), ctx.reg("cr4"), ctx.reg("cr0")
    try:
        mapped, pat_bit, pcd, pwt = memtype.walk(linear, cr3, cr4, ctx.mem)
    except LookupError as exc:
        return Violation(f"cannot find the memory type: {exc}")
    if mapped & ~0xFFF != physical & ~0xFFF:
        return Violation(f"linear {hexs(linear)} maps physical {hexs(mapped)}, not the region at {hexs(physical)}: "
                         "the driver passes another page than the one it initialised")
    pat = memtype.pat_type(ctx.msr(0x277), pat_bit, pcd, pwt)
    mtrr = memtype.mtrr_type(physical, ctx.msr, ctx.maxphyaddr())
    effective = memtype.UC if cr0 & CR0_CD else memtype.combine(pat, mtrr)
    if effective == want:
        return None
    return Violation(
        f"the region at {hexs(physical)} (linear {hexs(linear)}) is accessed as {memtype.type_name(effective)}: "
        f"PAT entry {pat_bit << 2 | pcd << 1 | pwt} = {memtype.type_name(pat)}, MTRR {memtype.type_name(mtrr)}"
        + (", CR0.CD = 1" if cr0 & CR0_CD else "")
        + f"; IA32_VMX_BASIC[53:50] = {want} asks for {memtype.type_name(want)}")


@rule(id="ADV001", slug="vmxon-region-memory-type",
      title="Map the VMXON region with the memory type IA32_VMX_BASIC names", sdm=SDM,
      instructions=("vmxon",), tier=Tier.OPERAND, outcome="ok", status="advice",
      checks="The effective memory type of the VMXON region (MTRRs, PAT, the paging entry that maps it, CR0.CD) "
             "equals IA32_VMX_BASIC[53:50] (write-back on every processor so far).",
      broken="VMXON does not check it; the processor may read and write the region with the type it expects "
             "regardless, leaving the mapping incoherent.",
      fix="Allocate the region cached (MmAllocateContiguousMemorySpecifyCache(..., MmCached) or "
          "MmAllocateContiguousMemory), not MmNonCached.",
      examples=[bad({**_PAGING, **_UC_PTE}), good({**_PAGING, **_WB_PTE})])
def vmxon_region_type(ctx: Context) -> object:
    ptr = ctx.vmxon_pointer()
    if ptr & 0xFFF:
        return SKIP
    return region_memory_type(ctx, ptr, "vmxon_region")


@rule(id="ADV002", slug="vmcs-region-memory-type",
      title="Map the VMCS region with the memory type IA32_VMX_BASIC names", sdm=SDM,
      instructions=("vmlaunch", "vmresume"), tier=Tier.CURRENT_VMCS, outcome="ok", status="advice",
      checks="The effective memory type of the current VMCS region equals IA32_VMX_BASIC[53:50].",
      broken="VM entry does not check it; VMCS data may be cached inconsistently with the mapping.",
      fix="Allocate the VMCS region cached (MmCached), like the VMXON region.",
      examples=[bad({**_PAGING, **_UC_PTE, "linear/vmxon_region": None, "linear/vmcs_region": "0x8000123000",
                     "vmcs_pointer": "0x1a2b3000"}, "vmxroot"),
                good({**_PAGING, **_WB_PTE, "linear/vmxon_region": None, "linear/vmcs_region": "0x8000123000",
                      "vmcs_pointer": "0x1a2b3000"}, "vmxroot")])
def vmcs_region_type(ctx: Context) -> object:
    ptr = ctx.vmcs_pointer()
    if not ctx.has_current_vmcs() or ptr & 0xFFF:
        return SKIP
    return region_memory_type(ctx, ptr, "vmcs_region")


__all__ = ["region_memory_type", "Missing"]
