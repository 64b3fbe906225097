"""Guest-state checks of SDM Vol.3C 27.3.1.1: guest control registers, debug registers and MSRs (SDM 325462-080US, 2023)."""
from __future__ import annotations

from typing import Optional, Sequence

from .. import msrvalues
from ...common.numbers import hexs
from ...decode import defs
from ..bits import describe_bits, reg_bit, reg_reserved
from ..engine import CheckResult, Context, SKIP, Violation
from ..entrystate import field_label, ia32e_guest, intel64, show, unrestricted
from ..vmcsctl import is_canonical as canonical, linear_width
from .common import (B, CR0_CD, CR0_NW, CR0_PE, CR0_PG, CR0_WP, CR4_CET, CR4_FRED, CR4_PAE, CR4_PCIDE, ED,
                     EFER_LMA, EFER_LME, FRED, G, REAL, S1, S5, V86, _entry, _entry_patch, grule)

S_CET_RESERVED = reg_reserved("IA32_S_CET")  # bits 9:6
S_CET_SUPPRESS, S_CET_TRACKER = reg_bit("IA32_S_CET", "suppress"), reg_bit("IA32_S_CET", "tracker")


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
    if value & S_CET_RESERVED:
        out.append(Violation(f"{show(ctx, 'GUEST_S_CET')}: reserved bits 9:6 are not 0"))
    if value & S_CET_SUPPRESS and value & S_CET_TRACKER:
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
