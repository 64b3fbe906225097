"""Guest-state checks of SDM Vol.3C 27.3.1.4: guest RIP, RFLAGS and SSP (SDM 325462-080US, 2023)."""
from __future__ import annotations

from typing import Optional

from ...common.numbers import hexs
from ..bits import reg_bit, reg_reserved
from ..engine import CheckResult, Context, SKIP, Violation
from ..entrystate import high_bits_identical, ia32e_guest, show, v86_guest
from ..vmcsctl import linear_width
from .common import (AR_L, B, CR0_PE, EXT_INT, G, REAL, RFLAGS_IF, S4, V86, _entry, _entry_patch, _event_text,
                     _interruption, grule)

# bits 63:22, 15, 5 and 3; bit 1 is reserved too but must be 1 (its own rule)
RFLAGS_FIXED1 = reg_bit("RFLAGS", "fixed1")
RFLAGS_RESERVED = reg_reserved("RFLAGS") & ~RFLAGS_FIXED1


def _long_mode_guest(ctx: Context) -> bool:
    """IA-32e mode guest with CS.L = 1: the guest starts in 64-bit mode."""
    return ia32e_guest(ctx) and bool(ctx.vmcs("GUEST_CS_AR_BYTES") & AR_L)


@grule(id="GUEST401", slug="guest-rip-high", title="Outside 64-bit mode, guest RIP bits 63:32 must be 0",
       sdm=S4, catalog=("GUEST.RIP.HIGH",),
       checks="If \"IA-32e mode guest\" is 0 or the L bit of GUEST_CS_AR_BYTES is 0, bits 63:32 of GUEST_RIP "
              "(0x681E) are 0.",
       broken="VM entry fails: exit reason 33, qualification 0.",
       fix="Truncate RIP to 32 bits for a guest that does not start in 64-bit mode.",
       examples=[B({"vmcs/0x681e": "0x100000100"}, V86), G({}, V86)])
def rip_high(ctx: Context) -> CheckResult:
    if _long_mode_guest(ctx):
        return SKIP
    if ctx.vmcs("GUEST_RIP") >> 32:
        return Violation(f"{show(ctx, 'GUEST_RIP')}: bits 63:32 are not 0 and the guest does not start in "
                         "64-bit mode")
    return None


@grule(id="GUEST402", slug="guest-rip-canonical", title="In 64-bit mode, guest RIP bits 63:N must be identical",
       sdm=S4, catalog=("GUEST.RIP.CANONICAL",),
       checks="If \"IA-32e mode guest\" is 1 and CS.L is 1, bits 63:N of GUEST_RIP are identical, N = the "
              "linear-address width (CPUID.80000008H:EAX[15:8]). As the SDM words it this is one bit weaker "
              "than canonical: bit N-1 is not compared.",
       broken="VM entry fails: exit reason 33, qualification 0.",
       fix="Give the guest a canonical RIP.",
       examples=[B({"vmcs/0x681e": "0x1000000000000"}), G({}), G({"vmcs/0x681e": "0x800000000000"})])
def rip_canonical(ctx: Context) -> CheckResult:
    if not _long_mode_guest(ctx):
        return SKIP
    rip, width = ctx.vmcs("GUEST_RIP"), linear_width(ctx)
    if width < 64 and not high_bits_identical(rip, width):
        return Violation(f"{show(ctx, 'GUEST_RIP')}: bits 63:{width} are not all equal "
                         f"({width}-bit linear addresses)")
    return None


@grule(id="GUEST403", slug="guest-rflags-reserved", title="Guest RFLAGS reserved bits must be 0",
       sdm=S4, catalog=("GUEST.RFLAGS.RESERVED",),
       checks="Bits 63:22, 15, 5 and 3 of GUEST_RFLAGS (0x6820) are 0.",
       broken="VM entry fails: exit reason 33, qualification 0.",
       fix="Clear the reserved RFLAGS bits (save RFLAGS with PUSHFQ rather than building it by hand).",
       examples=[B({"vmcs/0x6820": "0x8246"}), G({})])
def rflags_reserved(ctx: Context) -> Optional[Violation]:
    rflags = ctx.vmcs("GUEST_RFLAGS")
    bad_bits = rflags & RFLAGS_RESERVED
    if bad_bits:
        return Violation(f"{show(ctx, 'GUEST_RFLAGS')} sets reserved bits {hexs(bad_bits)}")
    return None


@grule(id="GUEST404", slug="guest-rflags-bit1", title="Guest RFLAGS bit 1 must be 1",
       sdm=S4, catalog=("GUEST.RFLAGS.BIT1",),
       checks="Bit 1 of GUEST_RFLAGS is 1.",
       broken="VM entry fails: exit reason 33, qualification 0.",
       fix="Set bit 1 (RFLAGS is never 0: the reset value is 0x2).",
       examples=[B({"vmcs/0x6820": "0x244"}), G({})])
def rflags_bit1(ctx: Context) -> Optional[Violation]:
    if not ctx.vmcs("GUEST_RFLAGS") & RFLAGS_FIXED1:
        return Violation(f"{show(ctx, 'GUEST_RFLAGS')}: bit 1 is 0")
    return None


@grule(id="GUEST405", slug="guest-rflags-vm", title="Guest RFLAGS.VM must be 0 in IA-32e mode or real mode",
       sdm=S4, catalog=("GUEST.RFLAGS.VM",),
       checks="Bit 17 (VM) of GUEST_RFLAGS is 0 if \"IA-32e mode guest\" is 1 or bit 0 (PE) of GUEST_CR0 is 0.",
       broken="VM entry fails: exit reason 33, qualification 0.",
       fix="Virtual-8086 mode exists only in 32-bit protected mode: clear VM, or give the guest CR0.PE = 1 and "
           "\"IA-32e mode guest\" = 0.",
       examples=[B({"vmcs/0x6820": "0x20246"}), B({"vmcs/0x6820": "0x20002"}, REAL), G({}), G({}, V86)])
def rflags_vm(ctx: Context) -> Optional[Violation]:
    if not v86_guest(ctx):
        return None
    if ia32e_guest(ctx):
        return Violation(f"{show(ctx, 'GUEST_RFLAGS')} sets VM (bit 17) but \"IA-32e mode guest\" is 1")
    if not ctx.vmcs("GUEST_CR0") & CR0_PE:
        return Violation(f"{show(ctx, 'GUEST_RFLAGS')} sets VM (bit 17) but GUEST_CR0.PE = 0")
    return None


@grule(id="GUEST406", slug="guest-rflags-if-for-extint", title="Injecting an external interrupt needs RFLAGS.IF = 1",
       sdm=S4, catalog=("GUEST.RFLAGS.IF_FOR_EXTINT",),
       checks="If VM_ENTRY_INTR_INFO_FIELD (0x4016) is valid (bit 31) with type 0 (external interrupt), bit 9 (IF) "
              "of GUEST_RFLAGS is 1.",
       broken="VM entry fails: exit reason 33, qualification 0.",
       fix="Inject an external interrupt only when the guest has interrupts enabled; otherwise set "
           "\"interrupt-window exiting\" and inject on the resulting VM exit.",
       examples=[B({"vmcs/0x4016": "0x80000020", "vmcs/0x6820": "0x46"}), G({"vmcs/0x4016": "0x80000020"})])
def rflags_if(ctx: Context) -> Optional[Violation]:
    ev = _interruption(ctx)
    if ev is not None and ev[0] == EXT_INT and not ctx.vmcs("GUEST_RFLAGS") & RFLAGS_IF:
        return Violation(f"{_event_text(ctx)} injects an external interrupt but {show(ctx, 'GUEST_RFLAGS')} "
                         "has IF = 0")
    return None


def _ssp_rule(ctx: Context) -> Optional[int]:
    if not _entry(ctx, "load_cet_state"):
        return None
    return ctx.vmcs("GUEST_SSP")


@grule(id="GUEST407", slug="guest-ssp-align", title="Guest SSP must be 4-byte aligned",
       sdm=f"{S4} (confidence medium)", catalog=("GUEST.SSP.ALIGN",),
       checks="If \"load CET state\" is 1, bits 1:0 of GUEST_SSP (0x682A) are 0.",
       broken="VM entry fails: exit reason 33, qualification 0.",
       fix="Shadow-stack pointers are 4-byte aligned.",
       examples=[B({"vmcs/0x4012": _entry_patch("load_cet_state"), "vmcs/0x682a": "0x2"}),
                 G({"vmcs/0x4012": _entry_patch("load_cet_state"), "vmcs/0x682a": "0xfffff80000001000"})])
def ssp_align(ctx: Context) -> CheckResult:
    ssp = _ssp_rule(ctx)
    if ssp is None:
        return SKIP
    if ssp & 3:
        return Violation(f"{show(ctx, 'GUEST_SSP')}: bits 1:0 are not 0")
    return None


@grule(id="GUEST408", slug="guest-ssp-high", title="Outside 64-bit mode, guest SSP bits 63:32 must be 0",
       sdm=S4, catalog=("GUEST.SSP.HIGH",),
       checks="If \"load CET state\" is 1 and the guest does not start in 64-bit mode (\"IA-32e mode guest\" = 0 "
              "or CS.L = 0), bits 63:32 of GUEST_SSP are 0.",
       broken="VM entry fails: exit reason 33, qualification 0.",
       fix="Keep a 32-bit guest's SSP within 32 bits.",
       examples=[B({"vmcs/0x4012": hex(int(_entry_patch("load_cet_state"), 16) & ~0x200), "vmcs/0x682a": "0x100000000"}, V86),
                 G({"vmcs/0x4012": hex(int(_entry_patch("load_cet_state"), 16) & ~0x200), "vmcs/0x682a": "0x1000"}, V86)])
def ssp_high(ctx: Context) -> CheckResult:
    ssp = _ssp_rule(ctx)
    if ssp is None or _long_mode_guest(ctx):
        return SKIP
    if ssp >> 32:
        return Violation(f"{show(ctx, 'GUEST_SSP')}: bits 63:32 are not 0 and the guest does not start in "
                         "64-bit mode")
    return None


@grule(id="GUEST409", slug="guest-ssp-canonical", title="In 64-bit mode, guest SSP bits 63:N must be identical",
       sdm=S4, catalog=("GUEST.SSP.CANONICAL_N",),
       checks="If \"load CET state\" is 1 and the guest starts in 64-bit mode, bits 63:N of GUEST_SSP are "
              "identical (N = linear-address width).",
       broken="VM entry fails: exit reason 33, qualification 0.",
       fix="Give the guest a canonical shadow-stack pointer.",
       examples=[B({"vmcs/0x4012": _entry_patch("load_cet_state"), "vmcs/0x682a": "0x1000000000000"}),
                 G({"vmcs/0x4012": _entry_patch("load_cet_state"), "vmcs/0x682a": "0x0"})])
def ssp_canonical(ctx: Context) -> CheckResult:
    ssp = _ssp_rule(ctx)
    if ssp is None or not _long_mode_guest(ctx):
        return SKIP
    width = linear_width(ctx)
    if not high_bits_identical(ssp, width):
        return Violation(f"{show(ctx, 'GUEST_SSP')}: bits 63:{width} are not all equal")
    return None
