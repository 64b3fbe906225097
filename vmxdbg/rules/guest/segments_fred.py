"""Guest-state checks of SDM Vol.3C 27.3.1.2, FRED additions: guest segment checks that FRED adds (SDM 325462-080US, 2023)."""
from __future__ import annotations

from ..bits import reg_field
from ..engine import CheckResult, Context, SKIP, Violation
from ..entrystate import show
from .common import AR_L, B, CR4_FRED, FRED_LOW, G, grule

AR_DPL = reg_field("ACCESS_RIGHTS", "dpl")
RFLAGS_IOPL = reg_field("RFLAGS", "iopl")


def _fred_on(ctx: Context) -> bool:
    return bool(ctx.vmcs("GUEST_CR4") & CR4_FRED)


def _ss_dpl(ctx: Context) -> int:
    return AR_DPL(ctx.vmcs("GUEST_SS_AR_BYTES"))


@grule(id="GUEST290", slug="guest-fred-ss-dpl", title="With CR4.FRED = 1, SS.DPL (the CPL) must be 0 or 3",
       sdm=FRED_LOW, catalog=("GUEST.FRED.SS_DPL_0_OR_3",),
       checks="If GUEST_CR4.FRED is 1, the DPL in GUEST_SS_AR_BYTES is 0 or 3. Reported as \"may fail\": the rule "
              "comes from one peer (Bochs), not from an edition of the SDM.",
       broken="VM entry may fail with exit reason 33, qualification 0.",
       fix="FRED has only rings 0 and 3: give SS a DPL of 0 or 3.",
       examples=[B({"vmcs/0x6804": "0x1003726f8", "vmcs/0x4818": "0x40b3"}), G({"vmcs/0x6804": "0x1003726f8"})])
def fred_ss_dpl(ctx: Context) -> CheckResult:
    if not _fred_on(ctx):
        return SKIP
    if _ss_dpl(ctx) not in (0, 3):
        return Violation(f"CR4.FRED = 1 and {show(ctx, 'GUEST_SS_AR_BYTES')} has DPL {_ss_dpl(ctx)}",
                         certain=False)
    return None


@grule(id="GUEST291", slug="guest-fred-cpl0-64bit", title="With CR4.FRED = 1 at CPL 0, CS.L must be 1",
       sdm=FRED_LOW, catalog=("GUEST.FRED.CPL0_REQUIRES_64BIT",),
       checks="If GUEST_CR4.FRED is 1 and SS.DPL is 0, the L bit (13) of GUEST_CS_AR_BYTES is 1 (no ring-0 "
              "compatibility mode under FRED). Reported as \"may fail\" (from a peer).",
       broken="VM entry may fail with exit reason 33, qualification 0.",
       fix="Enter a FRED guest's ring 0 in 64-bit code.",
       examples=[B({"vmcs/0x6804": "0x1003726f8", "vmcs/0x4816": "0xc09b"}), G({"vmcs/0x6804": "0x1003726f8"})])
def fred_cpl0_64(ctx: Context) -> CheckResult:
    if not _fred_on(ctx) or _ss_dpl(ctx) != 0:
        return SKIP
    if not ctx.vmcs("GUEST_CS_AR_BYTES") & AR_L:
        return Violation(f"CR4.FRED = 1, SS.DPL = 0 and {show(ctx, 'GUEST_CS_AR_BYTES')} has L = 0", certain=False)
    return None


@grule(id="GUEST292", slug="guest-fred-cpl3-iopl0", title="With CR4.FRED = 1 at CPL 3, RFLAGS.IOPL must be 0",
       sdm=FRED_LOW, catalog=("GUEST.FRED.CPL3_IOPL0",),
       checks="If GUEST_CR4.FRED is 1 and SS.DPL is 3, bits 13:12 (IOPL) of GUEST_RFLAGS are 0. Reported as "
              "\"may fail\" (from a peer).",
       broken="VM entry may fail with exit reason 33, qualification 0.",
       fix="Clear IOPL for a FRED guest entered at CPL 3.",
       examples=[B({"vmcs/0x6804": "0x1003726f8", "vmcs/0x4818": "0x40f3", "vmcs/0x6820": "0x3246"}),
                 G({"vmcs/0x6804": "0x1003726f8", "vmcs/0x4818": "0x40f3"})])
def fred_cpl3_iopl(ctx: Context) -> CheckResult:
    if not _fred_on(ctx) or _ss_dpl(ctx) != 3:
        return SKIP
    if RFLAGS_IOPL(ctx.vmcs("GUEST_RFLAGS")):
        return Violation(f"CR4.FRED = 1, SS.DPL = 3 and {show(ctx, 'GUEST_RFLAGS')} has IOPL != 0", certain=False)
    return None
