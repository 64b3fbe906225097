"""Guest-state checks of SDM Vol.3C 27.3.1.5: the VMCS link pointer (exit qualification 4) (SDM 325462-080US, 2023)."""
from __future__ import annotations

from typing import List, Optional

from ...common.numbers import hexs
from ...decode.header import basic_revision, revision_id, shadow_bit as shadow_bit_of
from ..bits import BASIC_PHYS32
from ..engine import CheckResult, Context, Example, SKIP, Violation
from ..entrystate import show
from ..vmcsctl import control_label, on as control_on, in_smm
from .common import B, G, NO_LINK, Q4, QUAL, S5, _entry, grule


LINK = "0x1a2b7000"
LINK_OK = {"vmcs/0x2800": LINK, f"/memory/{LINK}": "04000000"}


def _link(ctx: Context) -> Optional[int]:
    """The VMCS link pointer, or None when it is FFFFFFFF_FFFFFFFFH (no checks)."""
    ptr = ctx.vmcs("VMCS_LINK_POINTER")
    return None if ptr == NO_LINK else ptr


def _link_rule(rid: str, slug: str, title: str, catalog: str, checks: str, fix: str,
               examples: List[Example]):  # type: ignore[no-untyped-def]
    return grule(id=rid, slug=slug, title=title, sdm=f"{S5}; {QUAL}", catalog=(catalog,), outcome=Q4,
                 checks=checks + " Only when VMCS_LINK_POINTER (0x2800) is not FFFFFFFF_FFFFFFFFH.",
                 broken="VM entry fails: exit reason 33, exit qualification 4 (VMCS link pointer).",
                 fix=fix, examples=examples)


@_link_rule("GUEST530", "guest-link-align", "The VMCS link pointer must be 4-KByte aligned", "GUEST.LINKPTR.ALIGN",
            "Bits 11:0 of VMCS_LINK_POINTER are 0.",
            "Set the link pointer to FFFFFFFF_FFFFFFFFH unless you use VMCS shadowing; otherwise to the "
            "4-KByte aligned physical address of the shadow VMCS.",
            [B({"vmcs/0x2800": "0x1a2b7010"}), G(LINK_OK)])
def link_align(ctx: Context) -> CheckResult:
    ptr = _link(ctx)
    if ptr is None:
        return SKIP
    if ptr & 0xFFF:
        return Violation(f"{show(ctx, 'VMCS_LINK_POINTER')}: bits 11:0 are not 0")
    return None


@_link_rule("GUEST531", "guest-link-width", "The VMCS link pointer must fit the physical-address width",
            "GUEST.LINKPTR.WIDTH",
            "VMCS_LINK_POINTER sets no bit at or above the physical-address width (MAXPHYADDR, or 32 when "
            "IA32_VMX_BASIC[48] = 1).",
            "Use FFFFFFFF_FFFFFFFFH (no link) or a real physical address; a common bug is leaving the field 0 "
            "or a virtual address in it.",
            [B({"vmcs/0x2800": "0x80001a2b7000"}), G(LINK_OK)])
def link_width(ctx: Context) -> CheckResult:
    ptr = _link(ctx)
    if ptr is None:
        return SKIP
    width = 32 if BASIC_PHYS32(ctx.msr(0x480)) else ctx.maxphyaddr()
    if ptr >> width:
        return Violation(f"{show(ctx, 'VMCS_LINK_POINTER')} sets bits at or above bit {width}")
    return None


def _link_header(ctx: Context, ptr: int) -> int:
    return int.from_bytes(ctx.mem(ptr, 4), "little")


@_link_rule("GUEST532", "guest-link-revision", "The linked VMCS must carry this processor's VMCS revision",
            "GUEST.LINKPTR.REVISION",
            "Bits 30:0 of the first 4 bytes at VMCS_LINK_POINTER (physical memory) equal the VMCS revision "
            "identifier, IA32_VMX_BASIC[30:0]. The memory is read from the snapshot; without it the rule is "
            "unknown and names the address.",
            "Write IA32_VMX_BASIC[30:0] into the first dword of the shadow VMCS before linking it.",
            [B({"vmcs/0x2800": LINK, f"/memory/{LINK}": "05000000"}), G(LINK_OK)])
def link_revision(ctx: Context) -> CheckResult:
    ptr = _link(ctx)
    if ptr is None:
        return SKIP
    header, rev = _link_header(ctx, ptr), basic_revision(ctx.msr(0x480))
    if revision_id(header) != rev:
        return Violation(f"the VMCS at {show(ctx, 'VMCS_LINK_POINTER')} has revision {hexs(revision_id(header))}, "
                         f"IA32_VMX_BASIC[30:0] = {hexs(rev)}")
    return None


@_link_rule("GUEST533", "guest-link-shadow-bit", "The linked VMCS is a shadow VMCS exactly when VMCS shadowing is on",
            "GUEST.LINKPTR.SHADOW_BIT",
            "Bit 31 of the first 4 bytes at VMCS_LINK_POINTER equals the effective \"VMCS shadowing\" control "
            "(secondary bit 14).",
            "Mark the linked VMCS as a shadow VMCS (bit 31 of its revision dword) when using VMCS shadowing, and "
            "set the link pointer to FFFFFFFF_FFFFFFFFH when not.",
            [B({"vmcs/0x2800": LINK, f"/memory/{LINK}": "04000080"}),
             G({"vmcs/0x2800": LINK, f"/memory/{LINK}": "04000080", "vmcs/0x401e": "0x10502a"}),
             G(LINK_OK)])
def link_shadow(ctx: Context) -> CheckResult:
    ptr = _link(ctx)
    if ptr is None:
        return SKIP
    shadow_bit = shadow_bit_of(_link_header(ctx, ptr))
    shadowing = control_on(ctx, "secondary", "vmcs_shadowing")
    if shadow_bit != shadowing:
        return Violation(f"the VMCS at {show(ctx, 'VMCS_LINK_POINTER')} has the shadow bit (31) = {int(shadow_bit)} "
                         f"but {control_label('secondary', 'vmcs_shadowing')} is {int(shadowing)}")
    return None


@_link_rule("GUEST534", "guest-link-not-current", "The VMCS link pointer must not be the current VMCS",
            "GUEST.LINKPTR.NOT_CURRENT",
            "Outside SMM, or with \"entry to SMM\" = 1, VMCS_LINK_POINTER differs from the current-VMCS pointer.",
            "Link a separate shadow VMCS, never the VMCS being launched.",
            [B({"vmcs/0x2800": "0x1a2b4000"}), G(LINK_OK)])
def link_not_current(ctx: Context) -> CheckResult:
    ptr = _link(ctx)
    if ptr is None:
        return SKIP
    if in_smm(ctx) and not _entry(ctx, "entry_to_smm"):
        return SKIP
    current = ctx.vmcs_pointer()
    if ptr == current:
        return Violation(f"{show(ctx, 'VMCS_LINK_POINTER')} is the current VMCS pointer ({hexs(current)})")
    return None


@_link_rule("GUEST535", "guest-link-not-executive", "In SMM, the VMCS link pointer must not be the executive VMCS",
            "GUEST.LINKPTR.NOT_EXECUTIVE",
            "In SMM with \"entry to SMM\" = 0, VMCS_LINK_POINTER differs from EXECUTIVE_VMCS_POINTER (0x200C).",
            "Link a VMCS other than the executive VMCS.",
            [B({"state/smm": True, "vmcs/0x2800": LINK, "vmcs/0x200c": LINK, f"/memory/{LINK}": "04000000"}),
             G({"state/smm": True, **LINK_OK, "vmcs/0x200c": "0x1a2b8000"})])
def link_not_executive(ctx: Context) -> CheckResult:
    ptr = _link(ctx)
    if ptr is None or not in_smm(ctx) or _entry(ctx, "entry_to_smm"):
        return SKIP
    if ptr == ctx.vmcs("EXECUTIVE_VMCS_POINTER"):
        return Violation(f"{show(ctx, 'VMCS_LINK_POINTER')} equals {show(ctx, 'EXECUTIVE_VMCS_POINTER')}")
    return None
