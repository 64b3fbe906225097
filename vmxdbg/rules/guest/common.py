"""What every guest-state rule module shares: SDM citations, field bits, example helpers.

The rules are in this package's modules, one per SDM subsection (see __init__).
A failure is a VM-entry failure with exit reason 33 and exit qualification 0,
except PDPTE problems (2), NMI injection under blocking by STI (3,
implementation-specific) and the VMCS link pointer (4): Vol.3C 27.8, SDM
325462-080US.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

from ...decode import defs
from ..bits import reg_bit, reg_field
from ..engine import ENTRY, Context, Example, Tier, bad, good, rule
from ..entrystate import show
from ..vmcsctl import on as control_on

ED = "(SDM 325462-080US, 2023)"
S1 = f"Vol.3C 27.3.1.1 Checks on Guest Control Registers, Debug Registers, and MSRs {ED}"
S3 = f"Vol.3C 27.3.1.3 Checks on Guest Descriptor-Table Registers {ED}"
S4 = f"Vol.3C 27.3.1.4 Checks on Guest RIP, RFLAGS, and SSP {ED}"
S5 = f"Vol.3C 27.3.1.5 Checks on Guest Non-Register State {ED}"
S6 = f"Vol.3C 27.3.1.6 Checks on Guest Page-Directory-Pointer-Table Entries {ED}"
QUAL = f"Vol.3C 27.8 VM-Entry Failures During or After Loading Guest State {ED}"
FRED = ("Flexible Return and Event Delivery (FRED) specification, Intel document 346446, 2023 edition, "
        "'VMX interactions' (not in SDM 325462-080US; confidence medium)")
FRED_LOW = ("Flexible Return and Event Delivery (FRED) specification, Intel document 346446, 2023 edition, "
            "'VMX interactions' (not in SDM 325462-080US; confidence low: taken from Bochs)")

Q0 = "entry-fail:33:0"
Q2 = "entry-fail:33:2"
Q3 = "entry-fail:33:3"
Q4 = "entry-fail:33:4"
BASE = "vmentry"
V86 = "vmentry-v86"
REAL = "vmentry-realmode"
URG = "vmentry-unrestricted"

# register bits by their structs/registers.yaml names, as in-place masks
CR0_PE, CR0_WP, CR0_NW, CR0_CD, CR0_PG = (reg_bit("CR0", n) for n in ("pe", "wp", "nw", "cd", "pg"))
CR4_PAE, CR4_PCIDE, CR4_CET, CR4_FRED = (reg_bit("CR4", n) for n in ("pae", "pcide", "cet", "fred"))
EFER_LME, EFER_LMA = reg_bit("IA32_EFER", "lme"), reg_bit("IA32_EFER", "lma")
RFLAGS_TF, RFLAGS_IF, RFLAGS_VM = (reg_bit("RFLAGS", n) for n in ("tf", "if", "vm"))
AR_L = reg_bit("ACCESS_RIGHTS", "l")
NO_LINK = (1 << 64) - 1

# interruption types of the VM-entry interruption-information field (Vol.3C 25.8.3)
EXT_INT, NMI, HW_EXC, SW_INT, PRIV_SW_EXC, SW_EXC, OTHER = 0, 2, 3, 4, 5, 6, 7
# activity states (Vol.3C 25.4.2)
ACTIVE, HLT, SHUTDOWN, WAIT_SIPI = 0, 1, 2, 3
ACTIVITY_NAMES = {ACTIVE: "active", HLT: "HLT", SHUTDOWN: "shutdown", WAIT_SIPI: "wait-for-SIPI"}
# interruptibility-state bits (Vol.3C 25.4.2 Table 25-3)
BLK_STI, BLK_MOVSS, BLK_SMI, BLK_NMI, ENCLAVE_INT = (
    reg_bit("INTERRUPTIBILITY_STATE", n)
    for n in ("blocking_by_sti", "blocking_by_mov_ss", "blocking_by_smi", "blocking_by_nmi", "enclave_interruption"))
# fields of the VM-entry interruption-information field (Vol.3C 25.8.3)
INFO_VALID = reg_field("INTERRUPTION_INFO", "valid")
INFO_TYPE = reg_field("INTERRUPTION_INFO", "type")
INFO_VECTOR = reg_field("INTERRUPTION_INFO", "vector")


def grule(**kw: Any):  # type: ignore[no-untyped-def]
    """`rule` with this module's defaults: VMLAUNCH/VMRESUME, tier GUEST, qualification 0."""
    kw.setdefault("instructions", ENTRY)
    kw.setdefault("tier", Tier.GUEST)
    kw.setdefault("outcome", Q0)
    return rule(**kw)


def B(patch: Dict[str, Any], baseline: str = BASE) -> Example:
    return bad(patch, baseline=baseline)


def G(patch: Dict[str, Any], baseline: str = BASE) -> Example:
    return good(patch, baseline=baseline)


def _entry(ctx: Context, bit: str) -> bool:
    """Whether VM-entry control `bit` is 1 (rules guarded by it SKIP otherwise)."""
    return control_on(ctx, "entry", bit)


def _entry_patch(*bits: str) -> str:
    """The baseline VM-entry controls (0xd3ff) plus `bits`, for examples."""
    value = 0xD3FF
    for b in bits:
        value |= 1 << defs.control("entry").bit(b)
    return hex(value)


def _interruption(ctx: Context) -> Optional[tuple]:
    """(type, vector) of the event VM entry injects, or None when the valid bit (31) is 0."""
    info = ctx.vmcs("VM_ENTRY_INTR_INFO_FIELD")
    if not INFO_VALID(info):
        return None
    return INFO_TYPE(info), INFO_VECTOR(info)


def _event_text(ctx: Context) -> str:
    return show(ctx, "VM_ENTRY_INTR_INFO_FIELD")
