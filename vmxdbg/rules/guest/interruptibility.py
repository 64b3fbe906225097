"""Guest-state checks of SDM Vol.3C 27.3.1.5: guest interruptibility state (SDM 325462-080US, 2023)."""
from __future__ import annotations

from typing import Optional

from ...state.evidence import flag
from ..engine import CheckResult, Context, SKIP, Violation
from ..entrystate import show
from ..vmcsctl import control_label, on as control_on, in_smm
from .common import (B, BLK_MOVSS, BLK_NMI, BLK_SMI, BLK_STI, ENCLAVE_INT, EXT_INT, FRED_LOW, G, NMI, Q3,
                     QUAL, RFLAGS_IF, S5, _entry, _entry_patch, _event_text, _interruption, grule)
from .segments_fred import _fred_on, _ss_dpl

# bits 31:5 (and anything above): every bit but the five Table 25-3 defines
INTR_RESERVED = ~(BLK_STI | BLK_MOVSS | BLK_SMI | BLK_NMI | ENCLAVE_INT)


def _intr(ctx: Context) -> int:
    return ctx.vmcs("GUEST_INTERRUPTIBILITY_INFO")


@grule(id="GUEST508", slug="guest-intr-reserved", title="Guest interruptibility-state reserved bits must be 0",
       sdm=S5, catalog=("GUEST.INTR.RESERVED",),
       checks="Bits 31:5 of GUEST_INTERRUPTIBILITY_INFO (0x4824) are 0.",
       broken="VM entry fails: exit reason 33, qualification 0.",
       fix="Write only blocking by STI, MOV SS, SMI, NMI and enclave interruption (bits 4:0).",
       examples=[B({"vmcs/0x4824": "0x20"}), G({})])
def intr_reserved(ctx: Context) -> Optional[Violation]:
    if _intr(ctx) & INTR_RESERVED:
        return Violation(f"{show(ctx, 'GUEST_INTERRUPTIBILITY_INFO')} sets reserved bits 31:5")
    return None


@grule(id="GUEST509", slug="guest-intr-sti-and-movss", title="Blocking by STI and by MOV SS cannot both be 1",
       sdm=S5, catalog=("GUEST.INTR.STI_AND_MOVSS",),
       checks="Bits 0 (STI) and 1 (MOV SS) of GUEST_INTERRUPTIBILITY_INFO are not both 1.",
       broken="VM entry fails: exit reason 33, qualification 0.",
       fix="Keep at most one of the two shadows (the one the saved state really had).",
       examples=[B({"vmcs/0x4824": "0x3"}), G({})])
def sti_and_movss(ctx: Context) -> Optional[Violation]:
    if _intr(ctx) & BLK_STI and _intr(ctx) & BLK_MOVSS:
        return Violation(f"{show(ctx, 'GUEST_INTERRUPTIBILITY_INFO')} sets both blocking by STI and by MOV SS")
    return None


@grule(id="GUEST510", slug="guest-intr-sti-requires-if", title="Blocking by STI requires RFLAGS.IF = 1",
       sdm=S5, catalog=("GUEST.INTR.STI_REQUIRES_IF",),
       checks="Bit 0 (blocking by STI) of GUEST_INTERRUPTIBILITY_INFO is 0 if bit 9 (IF) of GUEST_RFLAGS is 0.",
       broken="VM entry fails: exit reason 33, qualification 0.",
       fix="STI blocking only follows an STI that set IF: clear the bit when the guest's IF is 0.",
       examples=[B({"vmcs/0x4824": "0x1", "vmcs/0x6820": "0x46"}), G({"vmcs/0x4824": "0x1"})])
def sti_requires_if(ctx: Context) -> Optional[Violation]:
    if _intr(ctx) & BLK_STI and not ctx.vmcs("GUEST_RFLAGS") & RFLAGS_IF:
        return Violation(f"{show(ctx, 'GUEST_INTERRUPTIBILITY_INFO')} sets blocking by STI but "
                         f"{show(ctx, 'GUEST_RFLAGS')} has IF = 0")
    return None


@grule(id="GUEST511", slug="guest-intr-extint-no-shadow",
       title="An external interrupt cannot be injected in an STI or MOV SS shadow",
       sdm=S5, catalog=("GUEST.INTR.EXTINT_NO_STI_MOVSS",),
       checks="If VM_ENTRY_INTR_INFO_FIELD injects an external interrupt (valid, type 0), bits 0 and 1 of "
              "GUEST_INTERRUPTIBILITY_INFO are 0.",
       broken="VM entry fails: exit reason 33, qualification 0.",
       fix="Wait for the shadow to end (\"interrupt-window exiting\") before injecting.",
       examples=[B({"vmcs/0x4016": "0x80000020", "vmcs/0x4824": "0x1"}), G({"vmcs/0x4016": "0x80000020"})])
def extint_no_shadow(ctx: Context) -> Optional[Violation]:
    ev = _interruption(ctx)
    if ev is not None and ev[0] == EXT_INT and _intr(ctx) & (BLK_STI | BLK_MOVSS):
        return Violation(f"{_event_text(ctx)} injects an external interrupt while "
                         f"{show(ctx, 'GUEST_INTERRUPTIBILITY_INFO')} shows blocking by STI/MOV SS")
    return None


@grule(id="GUEST512", slug="guest-intr-nmi-no-movss", title="An NMI cannot be injected in a MOV SS shadow",
       sdm=S5, catalog=("GUEST.INTR.NMI_NO_MOVSS",),
       checks="If VM_ENTRY_INTR_INFO_FIELD injects an NMI (valid, type 2), bit 1 (blocking by MOV SS) of "
              "GUEST_INTERRUPTIBILITY_INFO is 0.",
       broken="VM entry fails: exit reason 33, qualification 0.",
       fix="Use \"NMI-window exiting\" and inject the NMI after the MOV SS shadow ends.",
       examples=[B({"vmcs/0x4016": "0x80000202", "vmcs/0x4824": "0x2"}), G({"vmcs/0x4016": "0x80000202"})])
def nmi_no_movss(ctx: Context) -> Optional[Violation]:
    ev = _interruption(ctx)
    if ev is not None and ev[0] == NMI and _intr(ctx) & BLK_MOVSS:
        return Violation(f"{_event_text(ctx)} injects an NMI while {show(ctx, 'GUEST_INTERRUPTIBILITY_INFO')} "
                         "shows blocking by MOV SS")
    return None


@grule(id="GUEST513", slug="guest-intr-nmi-with-sti", title="An NMI injected in an STI shadow may fail (qualification 3)",
       sdm=f"{S5}; {QUAL}", catalog=("GUEST.INTR.NMI_WITH_STI",), outcome=Q3,
       checks="If VM_ENTRY_INTR_INFO_FIELD injects an NMI (valid, type 2) and bit 0 (blocking by STI) of "
              "GUEST_INTERRUPTIBILITY_INFO is 1, some processors fail the VM entry and others deliver the NMI: "
              "the SDM leaves it to the implementation. Both outcomes are listed as possible.",
       broken="On processors that make the check, VM entry fails with exit reason 33 and exit qualification 3; "
              "on the others the NMI is delivered.",
       fix="Do not inject an NMI in an STI shadow: request \"NMI-window exiting\" and inject on that VM exit.",
       examples=[B({"vmcs/0x4016": "0x80000202", "vmcs/0x4824": "0x1"}), G({"vmcs/0x4016": "0x80000202"})])
def nmi_with_sti(ctx: Context) -> Optional[Violation]:
    ev = _interruption(ctx)
    if ev is not None and ev[0] == NMI and _intr(ctx) & BLK_STI:
        return Violation(f"{_event_text(ctx)} injects an NMI while {show(ctx, 'GUEST_INTERRUPTIBILITY_INFO')} "
                         "shows blocking by STI: implementation-specific, this processor may fail the entry "
                         "with exit qualification 3", certain=False)
    return None


@grule(id="GUEST514", slug="guest-intr-smi-outside-smm", title="Blocking by SMI must be 0 outside SMM",
       sdm=S5, catalog=("GUEST.INTR.SMI_OUTSIDE_SMM",),
       checks="If the VM entry does not start in SMM (state.smm), bit 2 (blocking by SMI) of "
              "GUEST_INTERRUPTIBILITY_INFO is 0.",
       broken="VM entry fails: exit reason 33, qualification 0.",
       fix="Clear blocking by SMI; only the SMM monitor (dual-monitor treatment) uses it.",
       examples=[B({"vmcs/0x4824": "0x4"}), G({}), G({"vmcs/0x4824": "0x4", "state/smm": True})])
def smi_outside_smm(ctx: Context) -> Optional[Violation]:
    if _intr(ctx) & BLK_SMI and not in_smm(ctx):
        return Violation(f"{show(ctx, 'GUEST_INTERRUPTIBILITY_INFO')} sets blocking by SMI but the processor is "
                         "not in SMM")
    return None


@grule(id="GUEST515", slug="guest-intr-smi-for-smm-entry", title="\"Entry to SMM\" requires blocking by SMI",
       sdm=S5, catalog=("GUEST.INTR.SMI_FOR_SMM_ENTRY",),
       checks="If the \"entry to SMM\" VM-entry control is 1, bit 2 (blocking by SMI) of "
              "GUEST_INTERRUPTIBILITY_INFO is 1.",
       broken="VM entry fails: exit reason 33, qualification 0.",
       fix="Set blocking by SMI when returning to SMM.",
       examples=[B({"vmcs/0x4012": _entry_patch("entry_to_smm")}),
                 G({"vmcs/0x4012": _entry_patch("entry_to_smm"), "vmcs/0x4824": "0x4", "state/smm": True})])
def smi_for_smm_entry(ctx: Context) -> CheckResult:
    if not _entry(ctx, "entry_to_smm"):
        return SKIP
    if not _intr(ctx) & BLK_SMI:
        return Violation(f"\"entry to SMM\" is 1 but {show(ctx, 'GUEST_INTERRUPTIBILITY_INFO')} has blocking by "
                         "SMI clear")
    return None


@grule(id="GUEST516", slug="guest-intr-vnmi-blocking", title="With virtual NMIs, an NMI cannot be injected under NMI blocking",
       sdm=S5, catalog=("GUEST.INTR.VNMI_BLOCKING_ON_NMI_INJECT",),
       checks="If the \"virtual NMIs\" pin-based control (bit 5) is 1 and VM_ENTRY_INTR_INFO_FIELD injects an NMI, "
              "bit 3 (blocking by NMI) of GUEST_INTERRUPTIBILITY_INFO is 0. There is no such rule when virtual "
              "NMIs is 0.",
       broken="VM entry fails: exit reason 33, qualification 0.",
       fix="Wait for the guest's IRET (\"NMI-window exiting\") before injecting the next virtual NMI.",
       examples=[B({"vmcs/0x4000": "0x3e", "vmcs/0x4016": "0x80000202", "vmcs/0x4824": "0x8"}),
                 G({"vmcs/0x4000": "0x3e", "vmcs/0x4016": "0x80000202"})])
def vnmi_blocking(ctx: Context) -> CheckResult:
    if not control_on(ctx, "pin_based", "virtual_nmis"):
        return SKIP
    ev = _interruption(ctx)
    if ev is not None and ev[0] == NMI and _intr(ctx) & BLK_NMI:
        return Violation(f"{control_label('pin_based', 'virtual_nmis')} is 1, {_event_text(ctx)} injects an NMI "
                         f"and {show(ctx, 'GUEST_INTERRUPTIBILITY_INFO')} shows blocking by NMI")
    return None


@grule(id="GUEST517", slug="guest-intr-enclave-no-movss", title="Enclave interruption excludes blocking by MOV SS",
       sdm=S5, catalog=("GUEST.INTR.ENCLAVE_NO_MOVSS",),
       checks="If bit 4 (enclave interruption) of GUEST_INTERRUPTIBILITY_INFO is 1, bit 1 (blocking by MOV SS) is 0.",
       broken="VM entry fails: exit reason 33, qualification 0.",
       fix="Clear blocking by MOV SS when resuming an enclave.",
       examples=[B({"vmcs/0x4824": "0x12"}), G({"vmcs/0x4824": "0x10"})])
def enclave_movss(ctx: Context) -> Optional[Violation]:
    if _intr(ctx) & ENCLAVE_INT and _intr(ctx) & BLK_MOVSS:
        return Violation(f"{show(ctx, 'GUEST_INTERRUPTIBILITY_INFO')} sets enclave interruption and blocking by "
                         "MOV SS")
    return None


@grule(id="GUEST518", slug="guest-intr-enclave-sgx", title="Enclave interruption requires SGX",
       sdm=S5, catalog=("GUEST.INTR.ENCLAVE_REQUIRES_SGX",),
       checks="If bit 4 (enclave interruption) of GUEST_INTERRUPTIBILITY_INFO is 1, the processor supports SGX "
              "(CPUID.(EAX=7,ECX=0):EBX[2]).",
       broken="VM entry fails: exit reason 33, qualification 0.",
       fix="Clear enclave interruption on processors without SGX.",
       examples=[B({"vmcs/0x4824": "0x10", "cpuid/0x7": ["0x0", "0x29c67ab", "0x40000000", "0x9c002400"]}),
                 G({"vmcs/0x4824": "0x10"})])
def enclave_sgx(ctx: Context) -> CheckResult:
    if not _intr(ctx) & ENCLAVE_INT:
        return SKIP
    if not ctx.cpuid_bit(7, 0, 1, 2):
        return Violation(f"{show(ctx, 'GUEST_INTERRUPTIBILITY_INFO')} sets enclave interruption but "
                         f"{flag('SGX').text(0)}: the processor has no SGX")
    return None


@grule(id="GUEST519", slug="guest-intr-fred-sti-cpl3", title="With CR4.FRED = 1 at CPL 3, blocking by STI must be 0",
       sdm=FRED_LOW, catalog=("GUEST.INTR.FRED_STI_CPL3",),
       checks="If GUEST_CR4.FRED is 1 and SS.DPL is 3, bit 0 (blocking by STI) of GUEST_INTERRUPTIBILITY_INFO "
              "is 0. Reported as \"may fail\" (from a peer, not an SDM edition).",
       broken="VM entry may fail with exit reason 33, qualification 0.",
       fix="Clear blocking by STI for a FRED guest at CPL 3.",
       examples=[B({"vmcs/0x6804": "0x1003726f8", "vmcs/0x4818": "0x40f3", "vmcs/0x4824": "0x1"}),
                 G({"vmcs/0x6804": "0x1003726f8", "vmcs/0x4818": "0x40f3"})])
def fred_sti_cpl3(ctx: Context) -> CheckResult:
    if not _fred_on(ctx) or _ss_dpl(ctx) != 3:
        return SKIP
    if _intr(ctx) & BLK_STI:
        return Violation(f"CR4.FRED = 1, SS.DPL = 3 and {show(ctx, 'GUEST_INTERRUPTIBILITY_INFO')} sets blocking "
                         "by STI", certain=False)
    return None
