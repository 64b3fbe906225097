"""Guest-state checks of SDM Vol.3C 27.3.1.5: guest pending debug exceptions (SDM 325462-080US, 2023)."""
from __future__ import annotations

from typing import Optional

from ...common.numbers import hexs
from ...state.evidence import flag
from ..bits import reg_bit, reg_reserved
from ..engine import CheckResult, Context, SKIP, Violation
from ..entrystate import show
from .common import B, BLK_MOVSS, BLK_STI, G, HLT, RFLAGS_TF, S5, grule
from .interruptibility import _intr


PD_BS, PD_RTM, PD_ENABLED_BP = (reg_bit("PENDING_DEBUG_EXCEPTIONS", n) for n in ("bs", "rtm", "enabled_breakpoint"))
# bits 11:4, 13, 15 and 63:17: the bits Table 25-4 does not define
PD_RESERVED = reg_reserved("PENDING_DEBUG_EXCEPTIONS")
DEBUGCTL_BTF = reg_bit("IA32_DEBUGCTL", "btf")


def _pending(ctx: Context) -> int:
    return ctx.vmcs("GUEST_PENDING_DBG_EXCEPTIONS")


@grule(id="GUEST520", slug="guest-pending-dbg-reserved", title="Guest pending debug exceptions: reserved bits must be 0",
       sdm=S5, catalog=("GUEST.PENDDBG.RESERVED",),
       checks="Bits 11:4, 13, 15 and 63:17 of GUEST_PENDING_DBG_EXCEPTIONS (0x6822) are 0 (bit 16, RTM, has its "
              "own rules).",
       broken="VM entry fails: exit reason 33, qualification 0.",
       fix="Keep only B3-B0 (3:0), enabled breakpoint (12), BS (14) and RTM (16).",
       examples=[B({"vmcs/0x6822": "0x10"}), G({})])
def pending_reserved(ctx: Context) -> Optional[Violation]:
    bad_bits = _pending(ctx) & PD_RESERVED
    if bad_bits:
        return Violation(f"{show(ctx, 'GUEST_PENDING_DBG_EXCEPTIONS')} sets reserved bits {hexs(bad_bits)}")
    return None


def _bs_expected(ctx: Context) -> Optional[bool]:
    """What BS must be when the guest is in an STI/MOV SS shadow or HLT; None when not constrained."""
    if not (_intr(ctx) & (BLK_STI | BLK_MOVSS) or ctx.vmcs("GUEST_ACTIVITY_STATE") == HLT):
        return None
    tf = bool(ctx.vmcs("GUEST_RFLAGS") & RFLAGS_TF)
    btf = bool(ctx.vmcs("GUEST_IA32_DEBUGCTL") & DEBUGCTL_BTF)
    return tf and not btf


def _bs_context(ctx: Context) -> str:
    return (f"{show(ctx, 'GUEST_RFLAGS')}, {show(ctx, 'GUEST_IA32_DEBUGCTL')}, "
            f"{show(ctx, 'GUEST_INTERRUPTIBILITY_INFO')}, {show(ctx, 'GUEST_ACTIVITY_STATE')}")


@grule(id="GUEST521", slug="guest-pending-dbg-bs-required",
       title="In a shadow or HLT with RFLAGS.TF = 1 and BTF = 0, pending BS must be 1",
       sdm=S5, catalog=("GUEST.PENDDBG.BS_REQUIRED",),
       checks="If blocking by STI or MOV SS is 1, or GUEST_ACTIVITY_STATE is HLT, and GUEST_RFLAGS.TF is 1 and "
              "GUEST_IA32_DEBUGCTL.BTF (bit 1) is 0, bit 14 (BS) of GUEST_PENDING_DBG_EXCEPTIONS is 1.",
       broken="VM entry fails: exit reason 33, qualification 0. Typical after single-stepping a guest across STI "
              "or exiting on HLT with TF set.",
       fix="Set BS in the pending debug exceptions field (the single-step trap is pending), or clear TF.",
       examples=[B({"vmcs/0x4824": "0x1", "vmcs/0x6820": "0x346"}),
                 G({"vmcs/0x4824": "0x1", "vmcs/0x6820": "0x346", "vmcs/0x6822": "0x4000"})])
def bs_required(ctx: Context) -> CheckResult:
    want = _bs_expected(ctx)
    if want is None:
        return SKIP
    if want and not _pending(ctx) & PD_BS:
        return Violation(f"BS (bit 14) of {show(ctx, 'GUEST_PENDING_DBG_EXCEPTIONS')} is 0 but TF = 1 and BTF = 0 "
                         f"in a shadow or HLT ({_bs_context(ctx)})")
    return None


@grule(id="GUEST522", slug="guest-pending-dbg-bs-forbidden",
       title="In a shadow or HLT with RFLAGS.TF = 0 or BTF = 1, pending BS must be 0",
       sdm=S5, catalog=("GUEST.PENDDBG.BS_FORBIDDEN",),
       checks="If blocking by STI or MOV SS is 1, or GUEST_ACTIVITY_STATE is HLT, and GUEST_RFLAGS.TF is 0 or "
              "GUEST_IA32_DEBUGCTL.BTF is 1, bit 14 (BS) of GUEST_PENDING_DBG_EXCEPTIONS is 0.",
       broken="VM entry fails: exit reason 33, qualification 0.",
       fix="Clear BS, or set TF (with BTF clear) if a single-step trap really is pending.",
       examples=[B({"vmcs/0x4824": "0x1", "vmcs/0x6822": "0x4000"}), G({"vmcs/0x4824": "0x1"})])
def bs_forbidden(ctx: Context) -> CheckResult:
    want = _bs_expected(ctx)
    if want is None:
        return SKIP
    if not want and _pending(ctx) & PD_BS:
        return Violation(f"BS (bit 14) of {show(ctx, 'GUEST_PENDING_DBG_EXCEPTIONS')} is 1 but TF = 0 or BTF = 1 "
                         f"in a shadow or HLT ({_bs_context(ctx)})")
    return None


@grule(id="GUEST523", slug="guest-pending-dbg-rtm-bits", title="A pending RTM debug exception has a fixed form",
       sdm=S5, catalog=("GUEST.PENDDBG.RTM_BITS",),
       checks="If bit 16 (RTM) of GUEST_PENDING_DBG_EXCEPTIONS is 1, bits 11:0, 15:13 and 63:17 are 0 and bit 12 "
              "(enabled breakpoint) is 1.",
       broken="VM entry fails: exit reason 33, qualification 0.",
       fix="Report an RTM debug exception as exactly bits 16 and 12.",
       examples=[B({"vmcs/0x6822": "0x10000"}), G({"vmcs/0x6822": "0x11000"})])
def rtm_bits(ctx: Context) -> CheckResult:
    pd = _pending(ctx)
    if not pd & PD_RTM:
        return SKIP
    if pd != PD_RTM | PD_ENABLED_BP:
        return Violation(f"{show(ctx, 'GUEST_PENDING_DBG_EXCEPTIONS')}: with RTM (bit 16) set the field must be "
                         "0x11000 (bit 12 set, bits 11:0, 15:13 and 63:17 clear)")
    return None


@grule(id="GUEST524", slug="guest-pending-dbg-rtm-supported", title="A pending RTM debug exception requires RTM",
       sdm=S5, catalog=("GUEST.PENDDBG.RTM_SUPPORTED",),
       checks="If bit 16 (RTM) of GUEST_PENDING_DBG_EXCEPTIONS is 1, the processor supports RTM "
              "(CPUID.(EAX=7,ECX=0):EBX[11]).",
       broken="VM entry fails: exit reason 33, qualification 0.",
       fix="Clear the RTM bit on processors without RTM.",
       examples=[B({"vmcs/0x6822": "0x11000"}),
                 G({"vmcs/0x6822": "0x11000", "cpuid/0x7": ["0x0", "0x29c6faf", "0x40000000", "0x9c002400"]})])
def rtm_supported(ctx: Context) -> CheckResult:
    if not _pending(ctx) & PD_RTM:
        return SKIP
    if not ctx.cpuid_bit(7, 0, 1, 11):
        return Violation(f"{show(ctx, 'GUEST_PENDING_DBG_EXCEPTIONS')} sets RTM (bit 16) but "
                         f"{flag('RTM').text(0)}: the processor has no RTM")
    return None


@grule(id="GUEST525", slug="guest-pending-dbg-rtm-movss", title="A pending RTM debug exception excludes MOV SS blocking",
       sdm=S5, catalog=("GUEST.PENDDBG.RTM_NO_MOVSS",),
       checks="If bit 16 (RTM) of GUEST_PENDING_DBG_EXCEPTIONS is 1, bit 1 (blocking by MOV SS) of "
              "GUEST_INTERRUPTIBILITY_INFO is 0.",
       broken="VM entry fails: exit reason 33, qualification 0.",
       fix="Clear blocking by MOV SS when an RTM debug exception is pending.",
       examples=[B({"vmcs/0x6822": "0x11000", "vmcs/0x4824": "0x2"}), G({"vmcs/0x6822": "0x11000"})])
def rtm_movss(ctx: Context) -> CheckResult:
    if not _pending(ctx) & PD_RTM:
        return SKIP
    if _intr(ctx) & BLK_MOVSS:
        return Violation(f"{show(ctx, 'GUEST_PENDING_DBG_EXCEPTIONS')} sets RTM and "
                         f"{show(ctx, 'GUEST_INTERRUPTIBILITY_INFO')} sets blocking by MOV SS")
    return None
