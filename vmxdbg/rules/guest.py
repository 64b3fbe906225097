"""VM-entry checks on the guest-state area (exit reason 33), except the segment family.

Sources: SDM Vol.3C 27.3.1.1 (control registers, debug registers, MSRs),
27.3.1.3 (GDTR/IDTR), 27.3.1.4 (RIP, RFLAGS, SSP), 27.3.1.5 (non-register
state: activity, interruptibility, pending debug exceptions, VMCS link
pointer), 27.3.1.6 (PDPTEs) and 27.8 (exit qualifications 2, 3, 4), Intel SDM
Order 325462-080US (June 2023). FRED checks cite the FRED architecture
specification (346446), which that edition predates. The per-register rules of
27.3.1.2 are table-driven in guest_segments.py.

Order: these checks run after the VMX-control and host-state checks (27.2)
and "may be performed in any order" (27.3.1); a failure is a VM-entry failure
with exit reason 33 and exit qualification 0, except PDPTE problems (2), NMI
injection under blocking by STI (3, implementation-specific) and the VMCS
link pointer (4).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from ..decode import defs
from ..common.numbers import hexs
from . import msrvalues
from .bits import describe_bits
from .engine import ENTRY, SKIP, CheckResult, Context, Example, Missing, Tier, Violation, bad, good, rule
from ..state.evidence import flag
from .entrystate import field_label, high_bits_identical, ia32e_guest, intel64, show, unrestricted, v86_guest
from .vmcsctl import control_label, in_smm, is_canonical as canonical, linear_width, on as control_on

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

CR0_PE, CR0_WP, CR0_NW, CR0_CD, CR0_PG = 1, 1 << 16, 1 << 29, 1 << 30, 1 << 31
CR4_PAE, CR4_PCIDE, CR4_CET, CR4_FRED = 1 << 5, 1 << 17, 1 << 23, 1 << 32
EFER_LME, EFER_LMA = 1 << 8, 1 << 10
RFLAGS_TF, RFLAGS_IF, RFLAGS_VM = 1 << 8, 1 << 9, 1 << 17
AR_L = 1 << 13
NO_LINK = (1 << 64) - 1

# interruption types of the VM-entry interruption-information field (Vol.3C 25.8.3)
EXT_INT, NMI, HW_EXC, SW_INT, PRIV_SW_EXC, SW_EXC, OTHER = 0, 2, 3, 4, 5, 6, 7
# activity states (Vol.3C 25.4.2)
ACTIVE, HLT, SHUTDOWN, WAIT_SIPI = 0, 1, 2, 3
ACTIVITY_NAMES = {ACTIVE: "active", HLT: "HLT", SHUTDOWN: "shutdown", WAIT_SIPI: "wait-for-SIPI"}
# interruptibility-state bits (Vol.3C 25.4.2 Table 25-3)
BLK_STI, BLK_MOVSS, BLK_SMI, BLK_NMI, ENCLAVE_INT = 1, 2, 4, 8, 16


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
    if not info >> 31 & 1:
        return None
    return info >> 8 & 7, info & 0xFF


def _event_text(ctx: Context) -> str:
    return show(ctx, "VM_ENTRY_INTR_INFO_FIELD")


# =================================================================== 27.3.1.1

def _them(mask: int) -> str:
    return "them" if mask & (mask - 1) else "it"


def _cr0_exempt(ctx: Context) -> int:
    """CR0 bits the fixed-bit checks skip: NW and CD always; PE and PG with unrestricted guest."""
    exempt = CR0_NW | CR0_CD
    if unrestricted(ctx):
        exempt |= CR0_PE | CR0_PG
    return exempt


@grule(id="GUEST101", slug="guest-cr0-fixed0", title="Guest CR0 must set the bits IA32_VMX_CR0_FIXED0 requires",
       sdm=f"{S1}; Vol.3C 24.8 Restrictions on VMX Operation; Vol.3D A.7 {ED}", catalog=("GUEST.CR0.FIXED0",),
       checks="Every bit set in IA32_VMX_CR0_FIXED0 (MSR 0x486) is 1 in GUEST_CR0 (0x6800), except NW (29) "
              "and CD (30), which are never checked, and PE (0) and PG (31) when \"unrestricted guest\" is in "
              "effect (secondary control bit 7 with primary bit 31 = 1).",
       broken="VM entry fails: exit reason 33 (invalid guest state), qualification 0.",
       fix="Set the named bits in GUEST_CR0 (NE is the usual one); to run a real-mode or non-paged guest, enable "
           "\"unrestricted guest\" (needs EPT) and activate the secondary controls, or emulate real mode with "
           "virtual-8086 mode. Hide the forced bits from the guest with the CR0 guest/host mask and read shadow.",
       examples=[B({"vmcs/0x6800": "0x80050013"}), G({}), G({}, REAL), B({"vmcs/0x6800": "0x10"}, REAL)])
def cr0_fixed0(ctx: Context) -> Optional[Violation]:
    cr0, fixed0 = ctx.vmcs("GUEST_CR0"), ctx.msr(0x486)
    missing = fixed0 & ~cr0 & ~_cr0_exempt(ctx)
    if missing:
        return Violation(f"{show(ctx, 'GUEST_CR0')} has {describe_bits('CR0', missing)} clear, but "
                         f"IA32_VMX_CR0_FIXED0 (MSR 0x486) = {hexs(fixed0)} requires {_them(missing)} set"
                         + ("" if unrestricted(ctx) else " (PE and PG are exempt only with \"unrestricted guest\")"))
    return None


@grule(id="GUEST102", slug="guest-cr0-fixed1", title="Guest CR0 must clear the bits IA32_VMX_CR0_FIXED1 forbids",
       sdm=f"{S1}; Vol.3C 24.8; Vol.3D A.7 {ED}", catalog=("GUEST.CR0.FIXED1",),
       checks="Every bit clear in IA32_VMX_CR0_FIXED1 (MSR 0x487) is 0 in GUEST_CR0, except NW and CD "
              "(never checked); bits 63:32 are therefore 0.",
       broken="VM entry fails: exit reason 33, qualification 0.",
       fix="Clear the named bits in GUEST_CR0 (a 64-bit field: bits 63:32 must be 0).",
       examples=[B({"vmcs/0x6800": "0x180050033"}), G({})])
def cr0_fixed1(ctx: Context) -> Optional[Violation]:
    cr0, fixed1 = ctx.vmcs("GUEST_CR0"), ctx.msr(0x487)
    extra = cr0 & ~fixed1 & ~(CR0_NW | CR0_CD) & (1 << 64) - 1
    if extra:
        return Violation(f"{show(ctx, 'GUEST_CR0')} has {describe_bits('CR0', extra)} set, but "
                         f"IA32_VMX_CR0_FIXED1 (MSR 0x487) = {hexs(fixed1)} requires {_them(extra)} clear")
    return None


@grule(id="GUEST103", slug="guest-cr0-pg-requires-pe", title="Guest CR0.PG = 1 requires CR0.PE = 1",
       sdm=S1, catalog=("GUEST.CR0.PG_REQUIRES_PE",),
       checks="If bit 31 (PG) of GUEST_CR0 is 1, bit 0 (PE) is 1. Only reachable with \"unrestricted guest\": "
              "otherwise the fixed bits force both.",
       broken="VM entry fails: exit reason 33, qualification 0.",
       fix="Paging needs protected mode: set PE with PG, or clear PG for a real-mode guest.",
       examples=[B({"vmcs/0x6800": "0x80000030"}, REAL), G({}, REAL), G({})])
def cr0_pg_pe(ctx: Context) -> Optional[Violation]:
    cr0 = ctx.vmcs("GUEST_CR0")
    if cr0 & CR0_PG and not cr0 & CR0_PE:
        return Violation(f"{show(ctx, 'GUEST_CR0')}: PG (bit 31) is 1 but PE (bit 0) is 0")
    return None


@grule(id="GUEST104", slug="guest-cr4-fixed0", title="Guest CR4 must set the bits IA32_VMX_CR4_FIXED0 requires",
       sdm=f"{S1}; Vol.3C 24.8; Vol.3D A.8 {ED}", catalog=("GUEST.CR4.FIXED0",),
       checks="Every bit set in IA32_VMX_CR4_FIXED0 (MSR 0x488) is 1 in GUEST_CR4 (0x6804). This includes "
              "VMXE (bit 13), even for a guest that never uses VMX.",
       broken="VM entry fails: exit reason 33, qualification 0.",
       fix="Set VMXE (and any other named bit) in GUEST_CR4, and hide it from the guest with the CR4 "
           "guest/host mask (0x6002) and read shadow (0x6006).",
       examples=[B({"vmcs/0x6804": "0x3706f8"}), G({})])
def cr4_fixed0(ctx: Context) -> Optional[Violation]:
    cr4, fixed0 = ctx.vmcs("GUEST_CR4"), ctx.msr(0x488)
    missing = fixed0 & ~cr4
    if missing:
        return Violation(f"{show(ctx, 'GUEST_CR4')} has {describe_bits('CR4', missing)} clear, but "
                         f"IA32_VMX_CR4_FIXED0 (MSR 0x488) = {hexs(fixed0)} requires {_them(missing)} set")
    return None


@grule(id="GUEST105", slug="guest-cr4-fixed1", title="Guest CR4 must clear the bits IA32_VMX_CR4_FIXED1 forbids",
       sdm=f"{S1}; Vol.3C 24.8; Vol.3D A.8 {ED}", catalog=("GUEST.CR4.FIXED1",),
       checks="Every bit clear in IA32_VMX_CR4_FIXED1 (MSR 0x489) is 0 in GUEST_CR4: features this processor "
              "does not support (or does not allow in VMX operation) stay off.",
       broken="VM entry fails: exit reason 33, qualification 0.",
       fix="Clear the named bits in GUEST_CR4; virtualize a feature the processor lacks instead of setting it.",
       examples=[B({"vmcs/0x6804": "0x13726f8"}), G({})])
def cr4_fixed1(ctx: Context) -> Optional[Violation]:
    cr4, fixed1 = ctx.vmcs("GUEST_CR4"), ctx.msr(0x489)
    extra = cr4 & ~fixed1 & (1 << 64) - 1
    if extra:
        return Violation(f"{show(ctx, 'GUEST_CR4')} has {describe_bits('CR4', extra)} set, but "
                         f"IA32_VMX_CR4_FIXED1 (MSR 0x489) = {hexs(fixed1)} requires {_them(extra)} clear")
    return None


@grule(id="GUEST106", slug="guest-cr4-cet-requires-wp", title="Guest CR4.CET = 1 requires CR0.WP = 1",
       sdm=S1, catalog=("GUEST.CR4.CET_REQUIRES_WP",),
       checks="If bit 23 (CET) of GUEST_CR4 is 1, bit 16 (WP) of GUEST_CR0 is 1.",
       broken="VM entry fails: exit reason 33, qualification 0.",
       fix="Set CR0.WP in GUEST_CR0 whenever the guest enables CET.",
       examples=[B({"vmcs/0x6804": "0xb726f8", "vmcs/0x6800": "0x80040033"}),
                 G({"vmcs/0x6804": "0xb726f8"})])
def cr4_cet_wp(ctx: Context) -> Optional[Violation]:
    cr4, cr0 = ctx.vmcs("GUEST_CR4"), ctx.vmcs("GUEST_CR0")
    if cr4 & CR4_CET and not cr0 & CR0_WP:
        return Violation(f"{show(ctx, 'GUEST_CR4')} sets CET (bit 23) but {show(ctx, 'GUEST_CR0')} has WP "
                         "(bit 16) clear")
    return None


def _msr_field(ctx: Context, field_name: str, msr_name: str) -> Optional[Violation]:
    """Reserved bits of an MSR-valued guest field (structs/msr_values.yaml)."""
    r = msrvalues.by_name(msr_name)
    value = ctx.vmcs(field_name)
    badbits = msrvalues.reserved_bits(ctx, r, value)
    if badbits:
        return Violation(f"{show(ctx, field_name)} sets bits {hexs(badbits)}, reserved in {msr_name} "
                         f"(MSR {hexs(r.first)}) on this processor")
    return None


@grule(id="GUEST107", slug="guest-debugctl-reserved", title="Guest IA32_DEBUGCTL must not set reserved bits",
       sdm=f"{S1}; Vol.4 Table 2-2 IA32_DEBUGCTL {ED}", catalog=("GUEST.DEBUGCTL.RESERVED",),
       checks="If the \"load debug controls\" VM-entry control (bit 2) is 1, GUEST_IA32_DEBUGCTL (0x2802) sets "
              "no bit reserved in IA32_DEBUGCTL on this processor (5:3, 63:16; BUS_LOCK_DETECT, the BTS bits, "
              "FREEZE_WHILE_SMM and RTM_DEBUG only where CPUID / IA32_PERF_CAPABILITIES report them). "
              "Confidence medium for the feature-dependent bits.",
       broken="VM entry fails: exit reason 33, qualification 0.",
       fix="Write only the DEBUGCTL bits the processor implements (usually just LBR and BTF).",
       examples=[B({"vmcs/0x2802": "0x10000"}), G({"vmcs/0x2802": "0x1"})])
def debugctl(ctx: Context) -> CheckResult:
    if not _entry(ctx, "load_debug_controls"):
        return SKIP
    return _msr_field(ctx, "GUEST_IA32_DEBUGCTL", "IA32_DEBUGCTL")


@grule(id="GUEST108", slug="guest-ia32e-requires-pg", title="An IA-32e mode guest needs CR0.PG = 1",
       sdm=S1, catalog=("GUEST.IA32E.REQUIRES_PG",),
       checks="If the \"IA-32e mode guest\" VM-entry control (bit 9) is 1, bit 31 (PG) of GUEST_CR0 is 1.",
       broken="VM entry fails: exit reason 33, qualification 0.",
       fix="Enter a 64-bit guest with paging on, or clear \"IA-32e mode guest\" for a non-paged guest.",
       examples=[B({"vmcs/0x6800": "0x50033"}), G({})])
def ia32e_pg(ctx: Context) -> CheckResult:
    if not ia32e_guest(ctx):
        return SKIP
    if not ctx.vmcs("GUEST_CR0") & CR0_PG:
        return Violation(f"\"IA-32e mode guest\" is 1 but {show(ctx, 'GUEST_CR0')} has PG (bit 31) clear")
    return None


@grule(id="GUEST109", slug="guest-ia32e-requires-pae", title="An IA-32e mode guest needs CR4.PAE = 1",
       sdm=S1, catalog=("GUEST.IA32E.REQUIRES_PAE",),
       checks="If \"IA-32e mode guest\" is 1, bit 5 (PAE) of GUEST_CR4 is 1.",
       broken="VM entry fails: exit reason 33, qualification 0.",
       fix="Set CR4.PAE in GUEST_CR4 for a 64-bit guest.",
       examples=[B({"vmcs/0x6804": "0x3726d8"}), G({})])
def ia32e_pae(ctx: Context) -> CheckResult:
    if not ia32e_guest(ctx):
        return SKIP
    if not ctx.vmcs("GUEST_CR4") & CR4_PAE:
        return Violation(f"\"IA-32e mode guest\" is 1 but {show(ctx, 'GUEST_CR4')} has PAE (bit 5) clear")
    return None


@grule(id="GUEST110", slug="guest-non-ia32e-no-pcide", title="Only an IA-32e mode guest may set CR4.PCIDE",
       sdm=S1, catalog=("GUEST.NON_IA32E.NO_PCIDE",),
       checks="If \"IA-32e mode guest\" is 0, bit 17 (PCIDE) of GUEST_CR4 is 0.",
       broken="VM entry fails: exit reason 33, qualification 0.",
       fix="Clear CR4.PCIDE for a 32-bit (or real-mode / virtual-8086) guest; PCIDs exist only in IA-32e mode.",
       examples=[B({"vmcs/0x6804": "0x3726d8"}, V86), G({}, V86)])
def non_ia32e_pcide(ctx: Context) -> CheckResult:
    if ia32e_guest(ctx):
        return SKIP
    if ctx.vmcs("GUEST_CR4") & CR4_PCIDE:
        return Violation(f"\"IA-32e mode guest\" is 0 but {show(ctx, 'GUEST_CR4')} sets PCIDE (bit 17)")
    return None


@grule(id="GUEST111", slug="guest-cr3-width", title="Guest CR3 must not set bits beyond the physical-address width",
       sdm=f"{S1}; Vol.3A 4.5 (LAM: CR3 bits 62:61) {ED}", catalog=("GUEST.CR3.RESERVED",),
       checks="Bits 63:52 of GUEST_CR3 (0x6802), and bits 51:32 at or above MAXPHYADDR (CPUID.80000008H:EAX[7:0]), "
              "are 0. Where the processor supports LAM (CPUID.(EAX=7,ECX=1):EAX[26]), bits 62:61 (LAM_U57, "
              "LAM_U48) are allowed.",
       broken="VM entry fails: exit reason 33, qualification 0.",
       fix="Give GUEST_CR3 a physical address the processor can address; do not put flags in bits 63:52.",
       examples=[B({"vmcs/0x6802": "0x8000001ad000"}), G({})])
def cr3_width(ctx: Context) -> CheckResult:
    if not intel64(ctx):
        return SKIP
    cr3, width = ctx.vmcs("GUEST_CR3"), ctx.maxphyaddr()
    beyond = cr3 >> width << width
    lam = beyond & (3 << 61)
    if lam and beyond == lam and ctx.cpuid_bit(7, 1, 0, 26):
        beyond = 0  # only LAM_U57/LAM_U48, which LAM allows (asked only when they are all that is set)
    if beyond:
        return Violation(f"{show(ctx, 'GUEST_CR3')} sets bits {hexs(beyond)} at or above bit {width} "
                         f"(MAXPHYADDR = {width}, CPUID.80000008H:EAX[7:0])")
    return None


@grule(id="GUEST112", slug="guest-dr7-high", title="Guest DR7 bits 63:32 must be 0",
       sdm=S1, catalog=("GUEST.DR7.HIGH",),
       checks="If \"load debug controls\" is 1, bits 63:32 of GUEST_DR7 (0x681A) are 0 (Intel 64 processors).",
       broken="VM entry fails: exit reason 33, qualification 0.",
       fix="Keep GUEST_DR7 a 32-bit value.",
       examples=[B({"vmcs/0x681a": "0x100000400"}), G({})])
def dr7_high(ctx: Context) -> CheckResult:
    if not _entry(ctx, "load_debug_controls") or not intel64(ctx):
        return SKIP
    if ctx.vmcs("GUEST_DR7") >> 32:
        return Violation(f"{show(ctx, 'GUEST_DR7')}: bits 63:32 are not 0")
    return None


def _canonical_field(ctx: Context, name: str) -> Optional[Violation]:
    value, width = ctx.vmcs(name), linear_width(ctx)
    if not canonical(value, width):
        return Violation(f"{show(ctx, name)} is not canonical: bits 63:{width - 1} differ "
                         f"({width}-bit linear addresses, CPUID.80000008H:EAX[15:8])")
    return None


def _register_canonical(rid: str, field_name: str, msr: str, catalog: str) -> None:
    enc = defs.vmcs_field(field_name).encoding

    @grule(id=rid, slug=f"guest-{msr.lower().replace('ia32_', '').replace('_', '-')}-canonical",
           title=f"Guest {msr} must be canonical", sdm=S1, catalog=(catalog,),
           checks=f"{field_label(field_name)} holds a canonical address (Intel 64 processors): bits 63:N-1 "
                  "are equal, N = CPUID.80000008H:EAX[15:8].",
           broken="VM entry fails: exit reason 33, qualification 0.",
           fix=f"Sign-extend the address in {field_name} (or load 0 if the guest does not use SYSENTER).",
           examples=[B({f"vmcs/{enc:#06x}": "0x800000000000"}), G({})])
    def check(ctx: Context) -> CheckResult:
        if not intel64(ctx):
            return SKIP
        return _canonical_field(ctx, field_name)

    check.__name__ = f"canonical_{rid.lower()}"


_register_canonical("GUEST113", "GUEST_SYSENTER_ESP", "IA32_SYSENTER_ESP", "GUEST.SYSENTER_ESP.CANONICAL")
_register_canonical("GUEST114", "GUEST_SYSENTER_EIP", "IA32_SYSENTER_EIP", "GUEST.SYSENTER_EIP.CANONICAL")


@grule(id="GUEST115", slug="guest-perf-global-ctrl-reserved",
       title="Guest IA32_PERF_GLOBAL_CTRL must not set reserved bits",
       sdm=f"{S1}; Vol.3B 20.2.2 Figure 20-3 {ED}", catalog=("GUEST.PERF_GLOBAL_CTRL.RESERVED",),
       checks="If \"load IA32_PERF_GLOBAL_CTRL\" (VM-entry bit 13) is 1, GUEST_IA32_PERF_GLOBAL_CTRL (0x2808) "
              "enables only counters that exist: general-purpose bits below CPUID.0AH:EAX[15:8], fixed bits "
              "32+i for i below CPUID.0AH:EDX[4:0] (or set in CPUID.0AH:ECX), bit 48 only with "
              "IA32_PERF_CAPABILITIES[15].",
       broken="VM entry fails: exit reason 33, qualification 0.",
       fix="Mask the value with the counters CPUID leaf 0AH reports.",
       examples=[B({"vmcs/0x4012": _entry_patch("load_ia32_perf_global_ctrl"), "vmcs/0x2808": "0x100000000000000"}),
                 G({"vmcs/0x4012": _entry_patch("load_ia32_perf_global_ctrl"), "vmcs/0x2808": "0x0"})])
def perf_global_ctrl(ctx: Context) -> CheckResult:
    if not _entry(ctx, "load_ia32_perf_global_ctrl"):
        return SKIP
    return _msr_field(ctx, "GUEST_IA32_PERF_GLOBAL_CTRL", "IA32_PERF_GLOBAL_CTRL")


@grule(id="GUEST116", slug="guest-pat-valid", title="Guest IA32_PAT entries must be valid memory types",
       sdm=f"{S1}; Vol.3A 13.12.2 {ED}", catalog=("GUEST.PAT.VALID",),
       checks="If \"load IA32_PAT\" (VM-entry bit 14) is 1, each byte of GUEST_IA32_PAT (0x2804) is 0 (UC), "
              "1 (WC), 4 (WT), 5 (WP), 6 (WB) or 7 (UC-).",
       broken="VM entry fails: exit reason 33, qualification 0.",
       fix="Load a PAT value WRMSR would accept (the power-up value is 0x0007040600070406).",
       examples=[B({"vmcs/0x2804": "0x7010600070102"}), G({})])
def pat_valid(ctx: Context) -> CheckResult:
    if not _entry(ctx, "load_ia32_pat"):
        return SKIP
    value = ctx.vmcs("GUEST_IA32_PAT")
    bad_entries = msrvalues.pat_problems(value)
    if bad_entries:
        listed = ", ".join(f"PA{i} = {value >> 8 * i & 0xFF:#x}" for i in bad_entries)
        return Violation(f"{show(ctx, 'GUEST_IA32_PAT')}: {listed} not a valid memory type")
    return None


@grule(id="GUEST117", slug="guest-efer-reserved", title="Guest IA32_EFER must not set reserved bits",
       sdm=f"{S1}; Vol.3A 2.2.1 {ED}", catalog=("GUEST.EFER.RESERVED",),
       checks="If \"load IA32_EFER\" (VM-entry bit 15) is 1, GUEST_IA32_EFER (0x2806) sets only SCE, LME, LMA "
              "and NXE, each only where CPUID.80000001H:EDX reports it (SYSCALL, LM, NX).",
       broken="VM entry fails: exit reason 33, qualification 0.",
       fix="Clear the other bits (AMD-only bits such as SVME are reserved on Intel).",
       examples=[B({"vmcs/0x2806": "0x1d01"}), G({})])
def efer_reserved(ctx: Context) -> CheckResult:
    if not _entry(ctx, "load_ia32_efer"):
        return SKIP
    return _msr_field(ctx, "GUEST_IA32_EFER", "IA32_EFER")


@grule(id="GUEST118", slug="guest-efer-lma", title="Guest EFER.LMA must equal \"IA-32e mode guest\"",
       sdm=S1, catalog=("GUEST.EFER.LMA_MATCHES_IA32E",),
       checks="If \"load IA32_EFER\" is 1, bit 10 (LMA) of GUEST_IA32_EFER equals the \"IA-32e mode guest\" "
              "VM-entry control.",
       broken="VM entry fails: exit reason 33, qualification 0.",
       fix="Set EFER.LMA (and LME) exactly when \"IA-32e mode guest\" is 1.",
       examples=[B({"vmcs/0x2806": "0x101"}), G({}), G({}, V86)])
def efer_lma(ctx: Context) -> CheckResult:
    if not _entry(ctx, "load_ia32_efer"):
        return SKIP
    lma = bool(ctx.vmcs("GUEST_IA32_EFER") & EFER_LMA)
    if lma != ia32e_guest(ctx):
        return Violation(f"{show(ctx, 'GUEST_IA32_EFER')}: LMA (bit 10) is {int(lma)} but \"IA-32e mode guest\" "
                         f"is {int(ia32e_guest(ctx))}")
    return None


@grule(id="GUEST119", slug="guest-efer-lme", title="With CR0.PG = 1, guest EFER.LME must equal EFER.LMA",
       sdm=S1, catalog=("GUEST.EFER.LME_MATCHES_LMA_IF_PG",),
       checks="If \"load IA32_EFER\" is 1 and bit 31 (PG) of GUEST_CR0 is 1, bit 8 (LME) of GUEST_IA32_EFER "
              "equals bit 10 (LMA).",
       broken="VM entry fails: exit reason 33, qualification 0.",
       fix="Set LME and LMA together for a 64-bit guest, clear both for a 32-bit paged guest.",
       examples=[B({"vmcs/0x2806": "0x401"}), G({})])
def efer_lme(ctx: Context) -> CheckResult:
    if not _entry(ctx, "load_ia32_efer"):
        return SKIP
    efer = ctx.vmcs("GUEST_IA32_EFER")
    if ctx.vmcs("GUEST_CR0") & CR0_PG and bool(efer & EFER_LME) != bool(efer & EFER_LMA):
        return Violation(f"{show(ctx, 'GUEST_IA32_EFER')}: LME (bit 8) differs from LMA (bit 10) while "
                         "GUEST_CR0.PG = 1")
    return None


@grule(id="GUEST120", slug="guest-bndcfgs-reserved", title="Guest IA32_BNDCFGS must not set reserved bits",
       sdm=S1, catalog=("GUEST.BNDCFGS.RESERVED",),
       checks="If \"load IA32_BNDCFGS\" (VM-entry bit 16) is 1, bits 11:2 of GUEST_BNDCFGS (0x2812) are 0.",
       broken="VM entry fails: exit reason 33, qualification 0.",
       fix="Keep only EN (bit 0), BNDPRESERVE (bit 1) and the 4-KByte aligned base.",
       examples=[B({"vmcs/0x4012": _entry_patch("load_ia32_bndcfgs"), "vmcs/0x2812": "0x4"}),
                 G({"vmcs/0x4012": _entry_patch("load_ia32_bndcfgs"), "vmcs/0x2812": "0x1001"})])
def bndcfgs_reserved(ctx: Context) -> CheckResult:
    if not _entry(ctx, "load_ia32_bndcfgs"):
        return SKIP
    return _msr_field(ctx, "GUEST_BNDCFGS", "IA32_BNDCFGS")


@grule(id="GUEST121", slug="guest-bndcfgs-canonical", title="Guest IA32_BNDCFGS base must be canonical",
       sdm=S1, catalog=("GUEST.BNDCFGS.CANONICAL",),
       checks="If \"load IA32_BNDCFGS\" is 1, the linear address in bits 63:12 of GUEST_BNDCFGS is canonical.",
       broken="VM entry fails: exit reason 33, qualification 0.",
       fix="Sign-extend the bound-directory base.",
       examples=[B({"vmcs/0x4012": _entry_patch("load_ia32_bndcfgs"), "vmcs/0x2812": "0x800000000001"}),
                 G({"vmcs/0x4012": _entry_patch("load_ia32_bndcfgs"), "vmcs/0x2812": "0xfffff80000000001"})])
def bndcfgs_canonical(ctx: Context) -> CheckResult:
    if not _entry(ctx, "load_ia32_bndcfgs"):
        return SKIP
    value, width = ctx.vmcs("GUEST_BNDCFGS"), linear_width(ctx)
    if not canonical(value & ~0xFFF, width):
        return Violation(f"{show(ctx, 'GUEST_BNDCFGS')}: the base in bits 63:12 is not canonical "
                         f"({width}-bit linear addresses)")
    return None


@grule(id="GUEST122", slug="guest-rtit-ctl-reserved", title="Guest IA32_RTIT_CTL must not set reserved bits",
       sdm=f"{S1}; Vol.3C 33.2.8.2 Table 33-6 {ED}", catalog=("GUEST.RTIT_CTL.RESERVED",),
       checks="If \"load IA32_RTIT_CTL\" (VM-entry bit 18) is 1, GUEST_IA32_RTIT_CTL (0x2814) sets no bit "
              "reserved in IA32_RTIT_CTL on this processor (18, 23, 31:28, 54:48, 63:56 always; the others as "
              "CPUID leaf 14H enumerates them). Confidence medium. Unsupported MTCFreq/CycThresh/PSBFreq "
              "encodings are not checked.",
       broken="VM entry fails: exit reason 33, qualification 0.",
       fix="Write only the trace controls CPUID leaf 14H reports.",
       examples=[B({"vmcs/0x4012": _entry_patch("load_ia32_rtit_ctl"), "vmcs/0x2814": "0x40000"}),
                 G({"vmcs/0x4012": _entry_patch("load_ia32_rtit_ctl"), "vmcs/0x2814": "0x2000"})])
def rtit_ctl(ctx: Context) -> CheckResult:
    if not _entry(ctx, "load_ia32_rtit_ctl"):
        return SKIP
    return _msr_field(ctx, "GUEST_IA32_RTIT_CTL", "IA32_RTIT_CTL")


@grule(id="GUEST123", slug="guest-s-cet-reserved", title="Guest IA32_S_CET: no reserved bits, not both SUPPRESS and TRACKER",
       sdm=S1, catalog=("GUEST.CET.S_CET_RESERVED",),
       checks="If \"load CET state\" (VM-entry bit 20) is 1, bits 9:6 of GUEST_S_CET (0x6828) are 0 and bits 10 "
              "(SUPPRESS) and 11 (TRACKER) are not both 1.",
       broken="VM entry fails: exit reason 33, qualification 0.",
       fix="Clear bits 9:6; never set SUPPRESS and TRACKER together.",
       examples=[B({"vmcs/0x4012": _entry_patch("load_cet_state"), "vmcs/0x6828": "0x40"}),
                 B({"vmcs/0x4012": _entry_patch("load_cet_state"), "vmcs/0x6828": "0xc00"}),
                 G({"vmcs/0x4012": _entry_patch("load_cet_state"), "vmcs/0x6828": "0x1"})])
def s_cet_reserved(ctx: Context) -> CheckResult:
    if not _entry(ctx, "load_cet_state"):
        return SKIP
    value = ctx.vmcs("GUEST_S_CET")
    out = []
    if value & 0x3C0:
        out.append(Violation(f"{show(ctx, 'GUEST_S_CET')}: reserved bits 9:6 are not 0"))
    if value & 0xC00 == 0xC00:
        out.append(Violation(f"{show(ctx, 'GUEST_S_CET')}: SUPPRESS (bit 10) and TRACKER (bit 11) are both 1"))
    return out or None


def _register_cet_canonical(rid: str, field_name: str, slug: str, title: str, catalog: str) -> None:
    enc = defs.vmcs_field(field_name).encoding

    @grule(id=rid, slug=slug, title=title, sdm=S1, catalog=(catalog,),
           checks=f"If \"load CET state\" is 1, {field_label(field_name)} holds a canonical address "
                  "(Intel 64 processors).",
           broken="VM entry fails: exit reason 33, qualification 0.",
           fix=f"Sign-extend the address in {field_name}.",
           examples=[B({"vmcs/0x4012": _entry_patch("load_cet_state"), f"vmcs/{enc:#06x}": "0x800000000000"}),
                     G({"vmcs/0x4012": _entry_patch("load_cet_state"), f"vmcs/{enc:#06x}": "0xfffff80000000000"})])
    def check(ctx: Context) -> CheckResult:
        if not _entry(ctx, "load_cet_state") or not intel64(ctx):
            return SKIP
        return _canonical_field(ctx, field_name)

    check.__name__ = f"cet_canonical_{rid.lower()}"


_register_cet_canonical("GUEST124", "GUEST_S_CET", "guest-s-cet-canonical", "Guest IA32_S_CET must be canonical",
                        "GUEST.CET.S_CET_CANONICAL")
_register_cet_canonical("GUEST125", "GUEST_INTR_SSP_TABLE", "guest-issp-table-canonical",
                        "Guest IA32_INTERRUPT_SSP_TABLE_ADDR must be canonical", "GUEST.CET.ISSP_TABLE_CANONICAL")


@grule(id="GUEST126", slug="guest-lbr-ctl-reserved", title="Guest IA32_LBR_CTL must not set reserved bits",
       sdm=f"{S1}; Vol.3B 19.1.2 {ED}", catalog=("GUEST.LBR_CTL.RESERVED",),
       checks="If \"load guest IA32_LBR_CTL\" (VM-entry bit 21) is 1, GUEST_IA32_LBR_CTL (0x2816) sets no bit "
              "reserved in IA32_LBR_CTL (15:4, 63:23; the filter bits as CPUID leaf 1CH enumerates them). "
              "Confidence medium.",
       broken="VM entry fails: exit reason 33, qualification 0.",
       fix="Write only the architectural-LBR controls CPUID leaf 1CH reports.",
       examples=[B({"vmcs/0x4012": _entry_patch("load_ia32_lbr_ctl"), "vmcs/0x2816": "0x10"}),
                 G({"vmcs/0x4012": _entry_patch("load_ia32_lbr_ctl"), "vmcs/0x2816": "0x1"})])
def lbr_ctl(ctx: Context) -> CheckResult:
    if not _entry(ctx, "load_ia32_lbr_ctl"):
        return SKIP
    return _msr_field(ctx, "GUEST_IA32_LBR_CTL", "IA32_LBR_CTL")


@grule(id="GUEST127", slug="guest-pkrs-reserved", title="Guest IA32_PKRS bits 63:32 must be 0",
       sdm=S1, catalog=("GUEST.PKRS.RESERVED",),
       checks="If \"load PKRS\" (VM-entry bit 22) is 1, bits 63:32 of GUEST_IA32_PKRS (0x2818) are 0.",
       broken="VM entry fails: exit reason 33, qualification 0.",
       fix="PKRS holds 16 two-bit keys: keep the value within 32 bits.",
       examples=[B({"vmcs/0x4012": _entry_patch("load_pkrs"), "vmcs/0x2818": "0x100000000"}),
                 G({"vmcs/0x4012": _entry_patch("load_pkrs"), "vmcs/0x2818": "0x55555554"})])
def pkrs(ctx: Context) -> CheckResult:
    if not _entry(ctx, "load_pkrs"):
        return SKIP
    if ctx.vmcs("GUEST_IA32_PKRS") >> 32:
        return Violation(f"{show(ctx, 'GUEST_IA32_PKRS')}: bits 63:32 are not 0")
    return None


@grule(id="GUEST128", slug="guest-uinv-reserved", title="Guest UINV bits 15:8 must be 0",
       sdm=f"{S5} (load UINV; confidence medium)", catalog=("GUEST.UINV.RESERVED",),
       checks="If \"load UINV\" (VM-entry bit 19) is 1, bits 15:8 of GUEST_UINV (0x0814) are 0: the "
              "user-interrupt notification vector is 8 bits.",
       broken="VM entry fails: exit reason 33, qualification 0.",
       fix="Store only the 8-bit vector in GUEST_UINV.",
       examples=[B({"vmcs/0x4012": _entry_patch("load_uinv"), "vmcs/0x0814": "0x1ec"}),
                 G({"vmcs/0x4012": _entry_patch("load_uinv"), "vmcs/0x0814": "0xec"})])
def uinv(ctx: Context) -> CheckResult:
    if not _entry(ctx, "load_uinv"):
        return SKIP
    if ctx.vmcs("GUEST_UINV") & 0xFF00:
        return Violation(f"{show(ctx, 'GUEST_UINV')}: bits 15:8 are not 0")
    return None


@grule(id="GUEST129", slug="guest-fred-config", title="Guest IA32_FRED_CONFIG: no reserved bits, canonical entry point",
       sdm=FRED, catalog=("GUEST.FRED.CONFIG_RESERVED",),
       checks="If \"load FRED\" (VM-entry bit 23) is 1, GUEST_IA32_FRED_CONFIG (0x281A) sets none of bits 2, "
              "5:4 and 11, and its bits 63:12 are a canonical address.",
       broken="VM entry fails: exit reason 33, qualification 0.",
       fix="Load the value WRMSR to IA32_FRED_CONFIG would accept.",
       examples=[B({"vmcs/0x4012": _entry_patch("load_fred"), "vmcs/0x281a": "0x4"}),
                 G({"vmcs/0x4012": _entry_patch("load_fred"), "vmcs/0x281a": "0xfffff80000001000"})])
def fred_config(ctx: Context) -> CheckResult:
    if not _entry(ctx, "load_fred"):
        return SKIP
    r = msrvalues.by_name("IA32_FRED_CONFIG")
    problems = msrvalues.wrmsr_problems(ctx, _field_only(r), r.first, ctx.vmcs("GUEST_IA32_FRED_CONFIG"))
    return [Violation(f"{field_label('GUEST_IA32_FRED_CONFIG')}: {p}") for p in problems] or None


def _field_only(r: msrvalues.MsrRule) -> msrvalues.MsrRule:
    """The rule without its existence test: a VMCS field exists when its control is allowed."""
    from dataclasses import replace
    return replace(r, exists=())


def _register_fred_stack(rid: str, fields: Sequence[str], msr_name: str, first_msr: int, align: int, slug: str,
                         catalog: str) -> None:
    encs = [defs.vmcs_field(f).encoding for f in fields]
    good_value = hex(0xFFFFF80000000000 | align)
    good_patch = {f"vmcs/{e:#06x}": good_value for e in encs}
    good_patch["vmcs/0x4012"] = _entry_patch("load_fred")

    @grule(id=rid, slug=slug, title=f"Guest {msr_name.replace('_', ' ')} values must be canonical and {align}-byte aligned",
           sdm=FRED, catalog=(catalog,),
           checks=f"If \"load FRED\" is 1, each of {', '.join(fields)} is canonical with its low "
                  f"{align.bit_length() - 1} bits 0.",
           broken="VM entry fails: exit reason 33, qualification 0.",
           fix="Load aligned, canonical stack pointers.",
           examples=[B({"vmcs/0x4012": _entry_patch("load_fred"), **{f"vmcs/{e:#06x}": "0x0" for e in encs},
                        f"vmcs/{encs[0]:#06x}": "0x4"}),
                     G(good_patch)])
    def check(ctx: Context) -> CheckResult:
        if not _entry(ctx, "load_fred"):
            return SKIP
        r = _field_only(msrvalues.by_name(msr_name))
        out = []
        for i, f in enumerate(fields):
            for p in msrvalues.wrmsr_problems(ctx, r, first_msr + i, ctx.vmcs(f)):
                out.append(Violation(f"{field_label(f)}: {p}"))
        return out or None

    check.__name__ = f"fred_stack_{rid.lower()}"


_register_fred_stack("GUEST130", ("GUEST_IA32_FRED_RSP1", "GUEST_IA32_FRED_RSP2", "GUEST_IA32_FRED_RSP3"),
                     "IA32_FRED_RSP0_3", 0x1CD, 64, "guest-fred-rsp", "GUEST.FRED.RSP_CANONICAL_ALIGNED")
_register_fred_stack("GUEST131", ("GUEST_IA32_FRED_SSP1", "GUEST_IA32_FRED_SSP2", "GUEST_IA32_FRED_SSP3"),
                     "IA32_FRED_SSP1_3", 0x1D1, 8, "guest-fred-ssp", "GUEST.FRED.SSP_CANONICAL_ALIGNED")


@grule(id="GUEST132", slug="guest-non-ia32e-no-fred", title="Only an IA-32e mode guest may set CR4.FRED",
       sdm=FRED, catalog=("GUEST.NON_IA32E.NO_FRED",),
       checks="If \"IA-32e mode guest\" is 0, bit 32 (FRED) of GUEST_CR4 is 0.",
       broken="VM entry fails: exit reason 33, qualification 0.",
       fix="FRED works only in IA-32e mode: clear CR4.FRED for other guests.",
       examples=[B({"vmcs/0x6804": "0x1003526d8"}, V86), G({}, V86)])
def non_ia32e_fred(ctx: Context) -> CheckResult:
    if ia32e_guest(ctx):
        return SKIP
    if ctx.vmcs("GUEST_CR4") & CR4_FRED:
        return Violation(f"\"IA-32e mode guest\" is 0 but {show(ctx, 'GUEST_CR4')} sets FRED (bit 32)")
    return None


@grule(id="GUEST133", slug="guest-spec-ctrl-reserved", title="Guest IA32_SPEC_CTRL must not set reserved bits",
       sdm="Vol.3C 27.3.1.1 in editions after 325462-080US (load guest IA32_SPEC_CTRL; confidence medium)",
       catalog=("GUEST.SPEC_CTRL.RESERVED",),
       checks="If \"load guest IA32_SPEC_CTRL\" (VM-entry bit 24) is 1, GUEST_IA32_SPEC_CTRL (0x282E) sets "
              "only the speculation controls CPUID leaf 7 enumerates (IBRS, STIBP, SSBD, IPRED/RRSBA/BHI/DDPD, "
              "PSFD).",
       broken="VM entry fails: exit reason 33, qualification 0.",
       fix="Mask the value with the controls the processor reports.",
       examples=[B({"vmcs/0x4012": _entry_patch("load_ia32_spec_ctrl"), "vmcs/0x282e": "0x800"}),
                 G({"vmcs/0x4012": _entry_patch("load_ia32_spec_ctrl"), "vmcs/0x282e": "0x1"})])
def spec_ctrl(ctx: Context) -> CheckResult:
    if not _entry(ctx, "load_ia32_spec_ctrl"):
        return SKIP
    return _msr_field(ctx, "GUEST_IA32_SPEC_CTRL", "IA32_SPEC_CTRL")


# =================================================================== 27.3.1.2 (FRED additions)

def _fred_on(ctx: Context) -> bool:
    return bool(ctx.vmcs("GUEST_CR4") & CR4_FRED)


def _ss_dpl(ctx: Context) -> int:
    return ctx.vmcs("GUEST_SS_AR_BYTES") >> 5 & 3


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
    if ctx.vmcs("GUEST_RFLAGS") >> 12 & 3:
        return Violation(f"CR4.FRED = 1, SS.DPL = 3 and {show(ctx, 'GUEST_RFLAGS')} has IOPL != 0", certain=False)
    return None


# =================================================================== 27.3.1.3

def _register_table(rid_base: int, table: str) -> None:
    up = table.upper()
    base_f, limit_f = f"GUEST_{up}_BASE", f"GUEST_{up}_LIMIT"
    base_e, limit_e = defs.vmcs_field(base_f).encoding, defs.vmcs_field(limit_f).encoding

    @grule(id=f"GUEST{rid_base}", slug=f"guest-{table}-base-canonical", title=f"Guest {up} base must be canonical",
           sdm=S3, catalog=(f"GUEST.{up}.BASE_CANONICAL",),
           checks=f"{field_label(base_f)} holds a canonical address (Intel 64 processors).",
           broken="VM entry fails: exit reason 33, qualification 0.",
           fix=f"Sign-extend the {up} base.",
           examples=[B({f"vmcs/{base_e:#06x}": "0x800000000000"}), G({})])
    def base_check(ctx: Context) -> CheckResult:
        if not intel64(ctx):
            return SKIP
        return _canonical_field(ctx, base_f)

    @grule(id=f"GUEST{rid_base + 1}", slug=f"guest-{table}-limit", title=f"Guest {up} limit bits 31:16 must be 0",
           sdm=S3, catalog=(f"GUEST.{up}.LIMIT_HIGH",),
           checks=f"Bits 31:16 of {field_label(limit_f)} are 0: descriptor-table limits are 16 bits.",
           broken="VM entry fails: exit reason 33, qualification 0.",
           fix=f"Store the 16-bit {up} limit.",
           examples=[B({f"vmcs/{limit_e:#06x}": "0x10057"}), G({})])
    def limit_check(ctx: Context) -> CheckResult:
        if ctx.vmcs(limit_f) >> 16:
            return Violation(f"{show(ctx, limit_f)}: bits 31:16 are not 0")
        return None


_register_table(301, "gdtr")
_register_table(303, "idtr")


# =================================================================== 27.3.1.4

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
    bad_bits = rflags & (~((1 << 22) - 1) | 1 << 15 | 1 << 5 | 1 << 3) & (1 << 64) - 1
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
    if not ctx.vmcs("GUEST_RFLAGS") & 2:
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


# =================================================================== 27.3.1.5: activity state

@grule(id="GUEST501", slug="guest-activity-supported", title="Guest activity state must be one the processor supports",
       sdm=f"{S5}; Vol.3D A.6 {ED}", catalog=("GUEST.ACTIVITY.SUPPORTED",),
       checks="GUEST_ACTIVITY_STATE (0x4826) is 0 (active), or 1 (HLT), 2 (shutdown), 3 (wait-for-SIPI) with "
              "IA32_VMX_MISC (MSR 0x485) bit 6, 7 or 8 respectively set.",
       broken="VM entry fails: exit reason 33, qualification 0.",
       fix="Use an activity state IA32_VMX_MISC reports, or emulate that state (e.g. HLT) in the VMM.",
       examples=[B({"vmcs/0x4826": "0x4"}), B({"vmcs/0x4826": "0x3", "msr/0x485": "0x7004c0e7"}), G({}),
                 G({"vmcs/0x4826": "0x3"})])
def activity_supported(ctx: Context) -> Optional[Violation]:
    state = ctx.vmcs("GUEST_ACTIVITY_STATE")
    if state == ACTIVE:
        return None
    if state > WAIT_SIPI:
        return Violation(f"{show(ctx, 'GUEST_ACTIVITY_STATE')} is not an activity state (0-3)")
    misc = ctx.msr(0x485)
    if not misc >> (5 + state) & 1:
        return Violation(f"{show(ctx, 'GUEST_ACTIVITY_STATE')} ({ACTIVITY_NAMES[state]}) but IA32_VMX_MISC "
                         f"(MSR 0x485) = {hexs(misc)} has bit {5 + state} clear: not supported")
    return None


@grule(id="GUEST502", slug="guest-activity-hlt-cpl0", title="The HLT activity state needs SS.DPL = 0",
       sdm=S5, catalog=("GUEST.ACTIVITY.HLT_REQUIRES_DPL0",),
       checks="GUEST_ACTIVITY_STATE is not 1 (HLT) if the DPL in GUEST_SS_AR_BYTES (the guest's CPL) is not 0.",
       broken="VM entry fails: exit reason 33, qualification 0.",
       fix="HLT executes only at CPL 0: resume a user-mode guest in the active state.",
       examples=[B({"vmcs/0x4826": "0x1", "vmcs/0x4818": "0x40f3"}), G({"vmcs/0x4826": "0x1"})])
def hlt_cpl0(ctx: Context) -> Optional[Violation]:
    if ctx.vmcs("GUEST_ACTIVITY_STATE") == HLT and _ss_dpl(ctx) != 0:
        return Violation(f"{show(ctx, 'GUEST_ACTIVITY_STATE')} (HLT) but {show(ctx, 'GUEST_SS_AR_BYTES')} has "
                         f"DPL {_ss_dpl(ctx)}")
    return None


@grule(id="GUEST503", slug="guest-activity-active-if-shadow",
       title="Blocking by STI or MOV SS requires the active state",
       sdm=S5, catalog=("GUEST.ACTIVITY.ACTIVE_IF_STI_MOVSS",),
       checks="If GUEST_INTERRUPTIBILITY_INFO (0x4824) bit 0 (STI) or bit 1 (MOV SS) is 1, GUEST_ACTIVITY_STATE "
              "is 0 (active).",
       broken="VM entry fails: exit reason 33, qualification 0.",
       fix="A halted guest is not in an instruction shadow: clear the blocking bits when entering HLT.",
       examples=[B({"vmcs/0x4824": "0x1", "vmcs/0x4826": "0x1"}), G({"vmcs/0x4824": "0x1"})])
def active_if_shadow(ctx: Context) -> Optional[Violation]:
    intr, state = ctx.vmcs("GUEST_INTERRUPTIBILITY_INFO"), ctx.vmcs("GUEST_ACTIVITY_STATE")
    if intr & (BLK_STI | BLK_MOVSS) and state != ACTIVE:
        return Violation(f"{show(ctx, 'GUEST_INTERRUPTIBILITY_INFO')} shows blocking by STI/MOV SS but "
                         f"{show(ctx, 'GUEST_ACTIVITY_STATE')} is not active")
    return None


def _activity_allows(state: int, etype: int, vector: int) -> bool:
    if state == HLT:
        return (etype in (EXT_INT, NMI) or (etype == HW_EXC and vector in (1, 18))
                or (etype == OTHER and vector == 0))
    if state == SHUTDOWN:
        return etype == NMI or (etype == HW_EXC and vector == 18)
    if state == WAIT_SIPI:
        return False
    return True


def _register_activity_injection(rid: str, state: int, slug: str, title: str, catalog: str, allowed: str,
                                 bad_info: str, good_info: Optional[str]) -> None:
    good_patch = {"vmcs/0x4826": hex(state)}
    if good_info:
        good_patch["vmcs/0x4016"] = good_info

    @grule(id=rid, slug=slug, title=title, sdm=S5, catalog=(catalog,),
           checks=f"If GUEST_ACTIVITY_STATE is {state} ({ACTIVITY_NAMES[state]}) and VM_ENTRY_INTR_INFO_FIELD is "
                  f"valid, the event is one that state does not block: {allowed}.",
           broken="VM entry fails: exit reason 33, qualification 0.",
           fix="Inject the event with the guest in the active state, or keep it pending in the VMM until the "
               "state allows it.",
           examples=[B({"vmcs/0x4826": hex(state), "vmcs/0x4016": bad_info}), G(good_patch)])
    def check(ctx: Context) -> CheckResult:
        if ctx.vmcs("GUEST_ACTIVITY_STATE") != state:
            return SKIP
        ev = _interruption(ctx)
        if ev is not None and not _activity_allows(state, *ev):
            return Violation(f"{_event_text(ctx)} (type {ev[0]}, vector {ev[1]}) cannot be injected in the "
                             f"{ACTIVITY_NAMES[state]} state; allowed: {allowed}")
        return None

    check.__name__ = f"activity_injection_{rid.lower()}"


_register_activity_injection("GUEST504", HLT, "guest-activity-hlt-injection", "Events injected into HLT must be ones HLT allows",
                             "GUEST.ACTIVITY.HLT_INJECTION",
                             "external interrupts, NMIs, #DB (vector 1) and #MC (vector 18) hardware exceptions, "
                             "and the pending MTF VM exit (type 7, vector 0)", "0x80000b0e", "0x80000020")
_register_activity_injection("GUEST505", SHUTDOWN, "guest-activity-shutdown-injection",
                             "Only NMI or #MC may be injected into the shutdown state",
                             "GUEST.ACTIVITY.SHUTDOWN_INJECTION", "NMIs and machine-check exceptions (type 3, vector 18)",
                             "0x80000020", "0x80000202")
_register_activity_injection("GUEST506", WAIT_SIPI, "guest-activity-wfs-injection",
                             "Nothing may be injected into the wait-for-SIPI state", "GUEST.ACTIVITY.WFS_NO_INJECTION",
                             "none", "0x80000202", None)


@grule(id="GUEST507", slug="guest-activity-wfs-smm", title="Wait-for-SIPI is not allowed with \"entry to SMM\"",
       sdm=S5, catalog=("GUEST.ACTIVITY.WFS_NOT_WITH_SMM_ENTRY",),
       checks="If the \"entry to SMM\" VM-entry control (bit 10) is 1, GUEST_ACTIVITY_STATE is not 3 (wait-for-SIPI).",
       broken="VM entry fails: exit reason 33, qualification 0.",
       fix="Return to SMM only in the active, HLT or shutdown state.",
       examples=[B({"vmcs/0x4826": "0x3", "vmcs/0x4012": _entry_patch("entry_to_smm")}),
                 G({"vmcs/0x4012": _entry_patch("entry_to_smm")})])
def wfs_smm(ctx: Context) -> CheckResult:
    if not _entry(ctx, "entry_to_smm"):
        return SKIP
    if ctx.vmcs("GUEST_ACTIVITY_STATE") == WAIT_SIPI:
        return Violation(f"\"entry to SMM\" is 1 and {show(ctx, 'GUEST_ACTIVITY_STATE')} is wait-for-SIPI")
    return None


# =================================================================== 27.3.1.5: interruptibility state

def _intr(ctx: Context) -> int:
    return ctx.vmcs("GUEST_INTERRUPTIBILITY_INFO")


@grule(id="GUEST508", slug="guest-intr-reserved", title="Guest interruptibility-state reserved bits must be 0",
       sdm=S5, catalog=("GUEST.INTR.RESERVED",),
       checks="Bits 31:5 of GUEST_INTERRUPTIBILITY_INFO (0x4824) are 0.",
       broken="VM entry fails: exit reason 33, qualification 0.",
       fix="Write only blocking by STI, MOV SS, SMI, NMI and enclave interruption (bits 4:0).",
       examples=[B({"vmcs/0x4824": "0x20"}), G({})])
def intr_reserved(ctx: Context) -> Optional[Violation]:
    if _intr(ctx) >> 5:
        return Violation(f"{show(ctx, 'GUEST_INTERRUPTIBILITY_INFO')} sets reserved bits 31:5")
    return None


@grule(id="GUEST509", slug="guest-intr-sti-and-movss", title="Blocking by STI and by MOV SS cannot both be 1",
       sdm=S5, catalog=("GUEST.INTR.STI_AND_MOVSS",),
       checks="Bits 0 (STI) and 1 (MOV SS) of GUEST_INTERRUPTIBILITY_INFO are not both 1.",
       broken="VM entry fails: exit reason 33, qualification 0.",
       fix="Keep at most one of the two shadows (the one the saved state really had).",
       examples=[B({"vmcs/0x4824": "0x3"}), G({})])
def sti_and_movss(ctx: Context) -> Optional[Violation]:
    if _intr(ctx) & 3 == 3:
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


# =================================================================== 27.3.1.5: pending debug exceptions

PD_BS, PD_RTM, PD_ENABLED_BP = 1 << 14, 1 << 16, 1 << 12


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
    bad_bits = _pending(ctx) & ((0xFF << 4) | 1 << 13 | 1 << 15 | ~((1 << 17) - 1)) & (1 << 64) - 1
    if bad_bits:
        return Violation(f"{show(ctx, 'GUEST_PENDING_DBG_EXCEPTIONS')} sets reserved bits {hexs(bad_bits)}")
    return None


def _bs_expected(ctx: Context) -> Optional[bool]:
    """What BS must be when the guest is in an STI/MOV SS shadow or HLT; None when not constrained."""
    if not (_intr(ctx) & (BLK_STI | BLK_MOVSS) or ctx.vmcs("GUEST_ACTIVITY_STATE") == HLT):
        return None
    tf = bool(ctx.vmcs("GUEST_RFLAGS") & RFLAGS_TF)
    btf = bool(ctx.vmcs("GUEST_IA32_DEBUGCTL") & 2)
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


# =================================================================== 27.3.1.5: VMCS link pointer

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
    width = 32 if ctx.msr(0x480) >> 48 & 1 else ctx.maxphyaddr()
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
    header, rev = _link_header(ctx, ptr), ctx.msr(0x480) & 0x7FFFFFFF
    if header & 0x7FFFFFFF != rev:
        return Violation(f"the VMCS at {show(ctx, 'VMCS_LINK_POINTER')} has revision {hexs(header & 0x7FFFFFFF)}, "
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
    shadow_bit = bool(_link_header(ctx, ptr) >> 31)
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


# =================================================================== 27.3.1.6: PDPTEs

def _pae_paging(ctx: Context) -> bool:
    """Whether the guest will use PAE paging: CR0.PG = 1, CR4.PAE = 1, "IA-32e mode guest" = 0."""
    return bool(ctx.vmcs("GUEST_CR0") & CR0_PG and ctx.vmcs("GUEST_CR4") & CR4_PAE) and not ia32e_guest(ctx)


def pdpte_reserved(pdpte: int, maxphyaddr: int) -> int:
    """Reserved bits set in a present PAE PDPTE: 2:1, 8:5 and 63:MAXPHYADDR (Vol.3A 4.4.1 Table 4-8)."""
    if not pdpte & 1:
        return 0
    mask = 0b110 | 0b1111 << 5 | ((1 << 64) - 1) >> maxphyaddr << maxphyaddr
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
    table_addr = cr3 & 0xFFFFFFE0
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
