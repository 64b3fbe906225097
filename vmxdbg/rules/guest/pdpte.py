"""Guest-state checks of SDM Vol.3C 27.3.1.6: guest PDPTEs (exit qualification 2) (SDM 325462-080US, 2023)."""
from __future__ import annotations

from typing import List, Sequence

from ...common.numbers import hexs
from ..bits import reg_bit, reg_field, reg_reserved
from ..engine import CheckResult, Context, Missing, SKIP, Violation
from ..entrystate import field_label, ia32e_guest
from ..vmcsctl import on as control_on
from .common import B, CR0_PG, CR4_PAE, ED, EFER_LMA, G, Q2, QUAL, S6, V86, grule

PDPTE_P = reg_bit("PAE_PDPTE", "p")
PDPTE_RESERVED = reg_reserved("PAE_PDPTE")  # bits 2:1 and 8:5; 63:MAXPHYADDR are added per processor
CR3_PDPT = reg_field("CR3_PAE", "pdpt_address").mask


def _pae_paging(ctx: Context) -> bool:
    """Whether the guest will use PAE paging: CR0.PG = 1, CR4.PAE = 1, "IA-32e mode guest" = 0."""
    return bool(ctx.vmcs("GUEST_CR0") & CR0_PG and ctx.vmcs("GUEST_CR4") & CR4_PAE) and not ia32e_guest(ctx)


def pdpte_reserved(pdpte: int, maxphyaddr: int) -> int:
    """Reserved bits set in a present PAE PDPTE: 2:1, 8:5 and 63:MAXPHYADDR (Vol.3A 4.4.1 Table 4-8)."""
    if not pdpte & PDPTE_P:
        return 0
    mask = PDPTE_RESERVED | ((1 << 64) - 1) >> maxphyaddr << maxphyaddr
    return pdpte & mask


def _pdpte_violations(ctx: Context, entries: Sequence[int], where: Sequence[str]) -> List[Violation]:
    width = ctx.maxphyaddr()
    out = []
    for i, (e, w) in enumerate(zip(entries, where)):
        r = pdpte_reserved(e, width)
        if r:
            out.append(Violation(f"PDPTE{i} ({w}) = {hexs(e)} is present and sets reserved bits {hexs(r)} "
                                 f"(2:1, 8:5, 63:{width})"))
    return out


@grule(id="GUEST601", slug="guest-pdpte-memory", title="PAE guest without EPT: the PDPTEs at guest CR3 must be valid",
       sdm=f"{S6}; Vol.3A 4.4.1 {ED}; {QUAL}", catalog=("GUEST.PDPTE.FROM_CR3",), outcome=Q2,
       checks="If the guest will use PAE paging (GUEST_CR0.PG = 1, GUEST_CR4.PAE = 1, \"IA-32e mode guest\" = 0) "
              "and \"enable EPT\" is 0, the four PDPTEs at GUEST_CR3 bits 31:5 (physical memory, from the "
              "snapshot) have no reserved bit set when present. The check is certain when PAE paging was not in "
              "use before the VM entry (processor CR0/CR4/EFER) or CR3 changes; otherwise the processor may make "
              "it (reported as \"may fail\"). Without the memory the rule is unknown and names the address.",
       broken="VM entry fails: exit reason 33, exit qualification 2 (PDPTE loading).",
       fix="Point GUEST_CR3 at a valid, 32-byte aligned page-directory-pointer table; clear bits 2:1 and 8:5 of "
           "present PDPTEs.",
       examples=[B({"vmcs/0x6804": "0x3526f8", "vmcs/0x401e": "0x101028",
                    "/memory/0x185000": "0100190000000000" + "03" + "00" * 23}, V86),
                 G({"vmcs/0x6804": "0x3526f8", "vmcs/0x401e": "0x101028",
                    "/memory/0x185000": "0100190000000000" + "00" * 24}, V86)])
def pdpte_memory(ctx: Context) -> CheckResult:
    if not _pae_paging(ctx) or control_on(ctx, "secondary", "enable_ept"):
        return SKIP
    cr3 = ctx.vmcs("GUEST_CR3")
    table_addr = cr3 & CR3_PDPT
    raw = ctx.mem(table_addr, 32)
    entries = [int.from_bytes(raw[8 * i:8 * i + 8], "little") for i in range(4)]
    found = _pdpte_violations(ctx, entries, [f"at {hexs(table_addr + 8 * i)}" for i in range(4)])
    if found and not _pdptes_must_be_checked(ctx, cr3):
        for v in found:
            v.certain = False
            v.message += ("; the processor already uses PAE paging with this CR3, so checking the PDPTEs is "
                          "optional (implementation-specific)")
    return found or None


def _pdptes_must_be_checked(ctx: Context, guest_cr3: int) -> bool:
    """27.3.1.6: without EPT the PDPTEs are checked if PAE paging was not in use before the VM entry or
    CR3 changes; otherwise the processor may check them. Unknown processor registers leave it open."""
    try:
        cr0, cr4, efer = ctx.reg("cr0"), ctx.reg("cr4"), ctx.reg("efer")
        pae_before = bool(cr0 & CR0_PG and cr4 & CR4_PAE and not efer & EFER_LMA)
        return not pae_before or ctx.reg("cr3") != guest_cr3
    except Missing:
        return False


@grule(id="GUEST602", slug="guest-pdpte-fields", title="PAE guest with EPT: the guest PDPTE fields must be valid",
       sdm=f"{S6}; {QUAL}", catalog=("GUEST.PDPTE.FROM_VMCS",), outcome=Q2,
       checks="If the guest will use PAE paging and \"enable EPT\" is 1, GUEST_PDPTR0-3 (0x280A-0x2810) have no "
              "reserved bit set when present.",
       broken="VM entry fails: exit reason 33, exit qualification 2.",
       fix="Load the guest PDPTE fields from the guest's page-directory-pointer table, with reserved bits clear.",
       examples=[B({"vmcs/0x6804": "0x3526f8", "vmcs/0x280a": "0x1000003"}, V86),
                 G({"vmcs/0x6804": "0x3526f8", "vmcs/0x280a": "0x1000001"}, V86)])
def pdpte_fields(ctx: Context) -> CheckResult:
    if not _pae_paging(ctx) or not control_on(ctx, "secondary", "enable_ept"):
        return SKIP
    names = [f"GUEST_PDPTR{i}" for i in range(4)]
    return _pdpte_violations(ctx, [ctx.vmcs(n) for n in names], [field_label(n) for n in names]) or None
