"""Checks VMXON makes before entering VMX operation.

Sources: SDM Vol.3C 31.3 "VMXON" (operation pseudo-code), 24.7 "Enabling and
Entering VMX Operation", 24.8 "Restrictions on VMX Operation", 25.11.5 "VMXON
Region", Vol.3D A.1 and A.7-A.8 (SDM 325462-080US, 2023). Order: the #UD
conditions, then a VM exit in non-root operation, then CPL, then VMX root
operation (error 15), then the other #GP(0) conditions, then the operand.
"""
from __future__ import annotations

from typing import Optional

from ..common.numbers import hexs
from ..decode import header
from .bits import BASIC_PHYS32, fixed0_message, fixed1_message, pointer_bits_beyond, reg_bit
from .engine import SKIP, Context, Missing, Tier, Violation, bad, good, rule

ED = "(SDM 325462-080US, 2023)"
INSN = f"Vol.3C 31.3 VMXON {ED}"
ENABLE = f"Vol.3C 24.7 Enabling and Entering VMX Operation {ED}"
RESTRICT = f"Vol.3C 24.8 Restrictions on VMX Operation {ED}"
# register bits by their structs/registers.yaml names, as in-place masks
CR4_VMXE, CR4_SMXE = reg_bit("CR4", "vmxe"), reg_bit("CR4", "smxe")
CR0_PE = reg_bit("CR0", "pe")
RFLAGS_VM = reg_bit("RFLAGS", "vm")
EFER_LMA = reg_bit("IA32_EFER", "lma")
AR_L = reg_bit("ACCESS_RIGHTS", "l")  # CS.L in the access-rights format
FC_LOCK, FC_INSIDE_SMX, FC_OUTSIDE_SMX = (reg_bit("IA32_FEATURE_CONTROL", n)
                                          for n in ("lock", "vmx_inside_smx", "vmx_outside_smx"))
VMXON_BIT31 = reg_bit("VMXON_HEADER", "must_be_zero")


def in_compatibility_mode(ctx: Context) -> bool:
    """IA32_EFER.LMA = 1 and CS.L = 0."""
    if not ctx.reg("efer") & EFER_LMA:
        return False
    return not ctx.seg("cs", "attributes") & AR_L


def in_smx_operation(ctx: Context) -> bool:
    """SMX operation starts with GETSEC[SENTER], which needs CR4.SMXE = 1.

    With no `state.smx`, CR4.SMXE = 0 proves the processor is outside SMX
    operation (state/evidence.py); CR4.SMXE = 1 leaves it unknown."""
    try:
        return bool(ctx.state("smx"))
    except Missing as exc:
        if "cr4" in ctx.p.registers:
            exc.what = "CR4.SMXE = 1: whether GETSEC[SENTER] ran cannot be seen by a debugger"
        raise


# ------------------------------------------------------------------- #UD

@rule(id="VMXON001", slug="vmxon-cpuid-vmx", title="The processor must support VMX (CPUID.1:ECX.VMX[5])",
      sdm=f"Vol.3C 24.6 Discovering Support for VMX; {INSN}", instructions=("vmxon",), tier=Tier.UD,
      outcome="#UD", catalog=("VMXON.CPUID_VMX",),
      checks="CPUID.01H:ECX bit 5 (VMX) is 1.",
      broken="Every VMX instruction is an invalid opcode (#UD), and setting CR4.VMXE faults.",
      fix="Use a processor (or a VM configured for nested virtualization) that reports VMX; "
          "in firmware, VT-x being disabled usually shows in IA32_FEATURE_CONTROL, not here.",
      examples=[bad({"cpuid/0x1": ["0x906ea", "0x100800", "0x7ffafb9f", "0xbfebfbff"]}),
                # an AMD processor as a kernel debugger shows it: no CPUID, no VMX MSRs, CR4.VMXE clear
                bad({"cpuid/0x1": None, "state/vendor": "AuthenticAMD", "registers/cr4": "0x3706f8",
                     **{f"msr/{m}": None for m in ("0x3a", "0x480", "0x486", "0x487", "0x488", "0x489")}}),
                good({})])
def cpuid_vmx(ctx: Context) -> Optional[Violation]:
    if not ctx.vmx_supported():
        if (1, 0) in ctx.p.cpuid:
            return Violation(f"CPUID.1:ECX = {hexs(ctx.cpuid(1)[2])}: bit 5 (VMX) is 0, the processor does not "
                             "report VMX")
        why = "; ".join(i.text() for i in ctx.inferences if i.slot.startswith("cpuid:0x1.ecx[5]"))
        return Violation(f"the processor has no VMX: {why}")
    return None


@rule(id="VMXON002", slug="vmxon-cr4-vmxe", title="CR4.VMXE must be 1 before VMXON",
      sdm=f"{INSN}; {ENABLE}", instructions=("vmxon",), tier=Tier.UD, outcome="#UD",
      catalog=("VMXON.CR4_VMXE",),
      checks="CR4 bit 13 (VMXE) is 1 when VMXON executes.",
      broken="VMXON raises #UD, before any privilege or operand check.",
      fix="Set CR4.VMXE on this processor before VMXON (e.g. __writecr4(__readcr4() | 0x2000)), "
          "on every processor: CR4 is per processor, so run it in a per-CPU DPC or IPI.",
      examples=[bad({"registers/cr4": "0x3706f8"}), good({})])
def cr4_vmxe(ctx: Context) -> Optional[Violation]:
    cr4 = ctx.reg("cr4")
    if not cr4 & CR4_VMXE:
        return Violation(f"CR4 = {hexs(cr4)}: VMXE (bit 13) is 0")
    return None


@rule(id="VMXON003", slug="vmxon-protected-mode", title="VMXON needs protected mode (CR0.PE = 1)",
      sdm=INSN, instructions=("vmxon",), tier=Tier.UD, outcome="#UD", catalog=("VMXON.CR0_PE",),
      checks="CR0 bit 0 (PE) is 1.",
      broken="VMXON in real-address mode raises #UD.",
      fix="Enter protected (or long) mode before VMXON.",
      examples=[bad({"registers/cr0": "0x80050032"}), good({})])
def protected_mode(ctx: Context) -> Optional[Violation]:
    cr0 = ctx.reg("cr0")
    if not cr0 & CR0_PE:
        return Violation(f"CR0 = {hexs(cr0)}: PE (bit 0) is 0, the processor is in real-address mode")
    return None


@rule(id="VMXON004", slug="vmxon-not-v86", title="VMXON is invalid in virtual-8086 mode (RFLAGS.VM = 0)",
      sdm=INSN, instructions=("vmxon",), tier=Tier.UD, outcome="#UD", catalog=("VMXON.NOT_V86",),
      checks="RFLAGS bit 17 (VM) is 0.",
      broken="VMXON in virtual-8086 mode raises #UD.",
      fix="Execute VMXON from protected-mode or 64-bit code, not a virtual-8086 task.",
      examples=[bad({"registers/rflags": "0x60246"}), good({})])
def not_v86(ctx: Context) -> Optional[Violation]:
    rflags = ctx.reg("rflags")
    if rflags & RFLAGS_VM:
        return Violation(f"RFLAGS = {hexs(rflags)}: VM (bit 17) is 1, the processor is in virtual-8086 mode")
    return None


@rule(id="VMXON005", slug="vmxon-not-compat-mode", title="VMXON is invalid in compatibility mode",
      sdm=INSN, instructions=("vmxon",), tier=Tier.UD, outcome="#UD", catalog=("VMXON.NOT_COMPAT_MODE",),
      checks="Not (IA32_EFER.LMA = 1 and CS.L = 0): with long mode active the code must be 64-bit.",
      broken="VMXON from 32-bit code under a 64-bit OS (compatibility mode) raises #UD.",
      fix="Execute VMXON from 64-bit code (CS.L = 1) when long mode is active.",
      examples=[bad({"registers/cs/attributes": "0xc09b"}), good({})])
def not_compat(ctx: Context) -> Optional[Violation]:
    if in_compatibility_mode(ctx):
        return Violation(f"EFER = {hexs(ctx.reg('efer'))} (LMA = 1) and CS attributes = "
                         f"{hexs(ctx.seg('cs', 'attributes'))} (L = 0): compatibility mode")
    return None


# ------------------------------------------------------ non-root, CPL, root

@rule(id="VMXON006", slug="vmxon-in-non-root", title="VMXON in VMX non-root operation causes a VM exit",
      sdm=INSN, instructions=("vmxon",), tier=Tier.NONROOT, outcome="vmexit:27", catalog=("VMXON.IN_NONROOT",),
      checks="The processor is not in VMX non-root operation (not a guest of another hypervisor's VMX).",
      broken="VMXON causes a VM exit (basic reason 27) to the hypervisor underneath, which decides what "
             "happens (nested virtualization, or an injected #UD).",
      fix="Nothing to fix in the driver if the outer hypervisor supports nested VMX; otherwise run on "
          "bare metal or enable nested virtualization.",
      examples=[bad({"state/vmx": "non-root"}), good({})])
def in_non_root(ctx: Context) -> Optional[Violation]:
    if ctx.vmx_mode() == "non-root":
        return Violation("the processor is in VMX non-root operation: VMXON exits to the outer VMM (reason 27)")
    return None


@rule(id="VMXON007", slug="vmxon-cpl0", title="VMXON requires CPL 0",
      sdm=INSN, instructions=("vmxon",), tier=Tier.CPL, outcome="#GP", catalog=("VMXON.CPL0",),
      checks="The current privilege level is 0.",
      broken="VMXON raises #GP(0).",
      fix="Execute VMXON in kernel mode (a driver), not from user mode.",
      examples=[bad({"state/cpl": 3}), good({})])
def cpl0(ctx: Context) -> Optional[Violation]:
    cpl = ctx.cpl()
    if cpl != 0:
        return Violation(f"CPL is {cpl}")
    return None


@rule(id="VMXON008", slug="vmxon-already-in-root", title="VMXON in VMX root operation fails (error 15)",
      sdm=f"{INSN}; Vol.3C 31.4 VM Instruction Error Numbers {ED}", instructions=("vmxon",),
      tier=Tier.IN_ROOT, outcome="VMfail:15", catalog=("VMXON.ALREADY_IN_VMX",),
      checks="The processor is not already in VMX root operation.",
      broken="VMXON fails with VM-instruction error 15 (VMfailValid if a VMCS is current, else "
             "VMfailInvalid); this outranks the fixed-bit and feature-control checks.",
      fix="Another VMM (or an earlier load of this driver that never ran VMXOFF) owns VMX on this "
          "processor: run VMXOFF on unload, and check whether Hyper-V/VBS or another hypervisor is active.",
      examples=[bad({"state/vmx": "root"}), good({})])
def already_root(ctx: Context) -> Optional[Violation]:
    if ctx.vmx_mode() == "root":
        return Violation("the processor is already in VMX root operation")
    return None


# --------------------------------------------------------------------- #GP

@rule(id="VMXON009", slug="vmxon-a20m", title="VMXON is not allowed in A20M mode",
      sdm=f"{INSN}; {RESTRICT}", instructions=("vmxon",), tier=Tier.GP, outcome="#GP", catalog=("VMXON.A20M",),
      checks="The A20M# pin (A20 masking) is not asserted.",
      broken="VMXON raises #GP(0).",
      fix="Unmask address line A20 (modern systems never mask it).",
      examples=[bad({"state/a20m": True}), good({})])
def a20m(ctx: Context) -> Optional[Violation]:
    if ctx.state("a20m"):
        return Violation("the processor is in A20M mode (A20 masked)")
    return None


def _fixed(ctx: Context, reg: str, msr: int, msr_name: str, zero_side: bool) -> Optional[Violation]:
    value, fixed = ctx.reg(reg), ctx.msr(msr)
    msg = fixed1_message(reg, value, msr_name, fixed) if zero_side else fixed0_message(reg, value, msr_name, fixed)
    return Violation(msg) if msg else None


@rule(id="VMXON010", slug="vmxon-cr0-fixed0", title="CR0 bits that IA32_VMX_CR0_FIXED0 sets must be 1",
      sdm=f"{RESTRICT}; Vol.3D A.7 VMX-Fixed Bits in CR0 {ED}", instructions=("vmxon",), tier=Tier.GP,
      outcome="#GP", catalog=("VMXON.CR0_FIXED0",),
      checks="(CR0 & IA32_VMX_CR0_FIXED0) == IA32_VMX_CR0_FIXED0 (MSR 0x486; typically PE, NE, PG).",
      broken="VMXON raises #GP(0).",
      fix="Set the named CR0 bits before VMXON (CR0 |= FIXED0); NE (bit 5) is the one usually missing.",
      examples=[bad({"registers/cr0": "0x80050013"}), good({})])
def cr0_fixed0(ctx: Context) -> Optional[Violation]:
    return _fixed(ctx, "cr0", 0x486, "IA32_VMX_CR0_FIXED0", False)


@rule(id="VMXON011", slug="vmxon-cr0-fixed1", title="CR0 bits that IA32_VMX_CR0_FIXED1 clears must be 0",
      sdm=f"{RESTRICT}; Vol.3D A.7 VMX-Fixed Bits in CR0 {ED}", instructions=("vmxon",), tier=Tier.GP,
      outcome="#GP", catalog=("VMXON.CR0_FIXED1",),
      checks="(CR0 & ~IA32_VMX_CR0_FIXED1) == 0 (MSR 0x487).",
      broken="VMXON raises #GP(0).",
      fix="Clear the named CR0 bits before VMXON (CR0 &= FIXED1).",
      examples=[bad({"msr/0x487": "0xfffeffff"}), good({})])
def cr0_fixed1(ctx: Context) -> Optional[Violation]:
    return _fixed(ctx, "cr0", 0x487, "IA32_VMX_CR0_FIXED1", True)


@rule(id="VMXON012", slug="vmxon-cr4-fixed0", title="CR4 bits that IA32_VMX_CR4_FIXED0 sets must be 1",
      sdm=f"{RESTRICT}; Vol.3D A.8 VMX-Fixed Bits in CR4 {ED}", instructions=("vmxon",), tier=Tier.GP,
      outcome="#GP", catalog=("VMXON.CR4_FIXED0",),
      checks="(CR4 & IA32_VMX_CR4_FIXED0) == IA32_VMX_CR4_FIXED0 (MSR 0x488; typically VMXE).",
      broken="VMXON raises #GP(0) (if VMXE itself is clear, #UD comes first).",
      fix="Set the named CR4 bits before VMXON (CR4 |= FIXED0).",
      examples=[bad({"msr/0x488": "0x2004"}), good({})])
def cr4_fixed0(ctx: Context) -> Optional[Violation]:
    return _fixed(ctx, "cr4", 0x488, "IA32_VMX_CR4_FIXED0", False)


@rule(id="VMXON013", slug="vmxon-cr4-fixed1", title="CR4 bits that IA32_VMX_CR4_FIXED1 clears must be 0",
      sdm=f"{RESTRICT}; Vol.3D A.8 VMX-Fixed Bits in CR4 {ED}", instructions=("vmxon",), tier=Tier.GP,
      outcome="#GP", catalog=("VMXON.CR4_FIXED1",),
      checks="(CR4 & ~IA32_VMX_CR4_FIXED1) == 0 (MSR 0x489).",
      broken="VMXON raises #GP(0).",
      fix="Clear the named CR4 bits before VMXON (CR4 &= FIXED1).",
      examples=[bad({"registers/cr4": "0x13726f8"}), good({})])
def cr4_fixed1(ctx: Context) -> Optional[Violation]:
    return _fixed(ctx, "cr4", 0x489, "IA32_VMX_CR4_FIXED1", True)


@rule(id="VMXON014", slug="vmxon-feature-control-lock", title="IA32_FEATURE_CONTROL must be locked (bit 0)",
      sdm=f"{ENABLE}; {INSN}", instructions=("vmxon",), tier=Tier.GP, outcome="#GP",
      catalog=("VMXON.FEATCTL_LOCK",),
      checks="IA32_FEATURE_CONTROL (MSR 0x3A) bit 0 (lock) is 1.",
      broken="VMXON raises #GP(0), even when the enable bits are set.",
      fix="Firmware normally locks it; if it is unlocked, write the enable bit(s) and the lock bit together "
          "with WRMSR 0x3A (bit 0 | bit 2) on every processor before VMXON.",
      examples=[bad({"msr/0x3a": "0x4"}), good({})])
def featctl_lock(ctx: Context) -> Optional[Violation]:
    fc = ctx.msr(0x3A)
    if not fc & FC_LOCK:
        return Violation(f"IA32_FEATURE_CONTROL = {hexs(fc)}: lock (bit 0) is 0")
    return None


@rule(id="VMXON015", slug="vmxon-feature-control-outside-smx",
      title="IA32_FEATURE_CONTROL must enable VMX outside SMX operation (bit 2)",
      sdm=f"{ENABLE}; {INSN}", instructions=("vmxon",), tier=Tier.GP, outcome="#GP",
      catalog=("VMXON.FEATCTL_OUTSIDE_SMX",),
      checks="Outside SMX operation, IA32_FEATURE_CONTROL bit 2 is 1. SMX operation begins only with "
             "GETSEC[SENTER]; CR4.SMXE = 1 alone does not put the processor in it.",
      broken="VMXON raises #GP(0): VT-x is disabled (usually in the firmware setup).",
      fix="Enable Intel VT-x in the BIOS/UEFI setup (the MSR is locked and cannot be changed until reset).",
      examples=[bad({"msr/0x3a": "0x3"}), good({})])
def featctl_outside_smx(ctx: Context) -> object:
    if in_smx_operation(ctx):
        return SKIP
    fc = ctx.msr(0x3A)
    if not fc & FC_OUTSIDE_SMX:
        return Violation(f"IA32_FEATURE_CONTROL = {hexs(fc)}: 'enable VMX outside SMX operation' (bit 2) is 0")
    return None


@rule(id="VMXON016", slug="vmxon-feature-control-inside-smx",
      title="IA32_FEATURE_CONTROL must enable VMX inside SMX operation (bit 1)",
      sdm=f"{ENABLE}; {INSN}", instructions=("vmxon",), tier=Tier.GP, outcome="#GP",
      catalog=("VMXON.FEATCTL_INSIDE_SMX",),
      checks="In SMX operation (after GETSEC[SENTER]), IA32_FEATURE_CONTROL bit 1 is 1.",
      broken="VMXON raises #GP(0).",
      fix="Enable VT-x for measured launch (TXT) in the firmware setup.",
      examples=[bad({"msr/0x3a": "0x5", "state/smx": True, "registers/cr4": "0x3766f8"}),
                good({"msr/0x3a": "0x7", "state/smx": True, "registers/cr4": "0x3766f8"})])
def featctl_inside_smx(ctx: Context) -> object:
    if not in_smx_operation(ctx):
        return SKIP
    fc = ctx.msr(0x3A)
    if not fc & FC_INSIDE_SMX:
        return Violation(f"IA32_FEATURE_CONTROL = {hexs(fc)}: 'enable VMX inside SMX operation' (bit 1) is 0 "
                         "and the processor is in SMX operation")
    return None


# ------------------------------------------------------- the VMXON operand

@rule(id="VMXON017", slug="vmxon-pointer-aligned", title="The VMXON pointer must be 4-KByte aligned",
      sdm=f"{INSN}; Vol.3C 25.11.5 VMXON Region {ED}", instructions=("vmxon",), tier=Tier.OPERAND,
      outcome="VMfailInvalid", catalog=("VMXON.PTR_ALIGN",),
      checks="Bits 11:0 of the VMXON pointer (a physical address) are 0.",
      broken="VMXON fails with VMfailInvalid (CF = 1).",
      fix="Allocate the region page-aligned (MmAllocateContiguousMemory returns page-aligned memory) and "
          "pass its physical address (MmGetPhysicalAddress), not a virtual address.",
      examples=[bad({"vmxon_pointer": "0x1a2b3010"}), good({})])
def pointer_aligned(ctx: Context) -> Optional[Violation]:
    ptr = ctx.vmxon_pointer()
    if ptr & 0xFFF:
        return Violation(f"VMXON pointer {hexs(ptr)} is not 4-KByte aligned (bits 11:0 = {hexs(ptr & 0xFFF)})")
    return None


@rule(id="VMXON018", slug="vmxon-pointer-width", title="The VMXON pointer must fit the physical-address width",
      sdm=f"{INSN}; Vol.3D A.1 Basic VMX Information {ED}", instructions=("vmxon",), tier=Tier.OPERAND,
      outcome="VMfailInvalid", catalog=("VMXON.PTR_WIDTH", "VMXON.PTR_32BIT_LIMIT"),
      checks="No bit of the VMXON pointer at or above MAXPHYADDR (CPUID.80000008H:EAX[7:0]) is set, "
             "nor above bit 31 when IA32_VMX_BASIC[48] = 1.",
      broken="VMXON fails with VMfailInvalid (CF = 1).",
      fix="Pass a physical address (a kernel virtual address such as 0xffff... is too wide).",
      examples=[bad({"vmxon_pointer": "0x8000001a2b3000"}), good({})])
def pointer_width(ctx: Context) -> Optional[Violation]:
    ptr = ctx.vmxon_pointer()
    if not ctx.physical_address_fits(ptr):
        basic = ctx.msr(0x480)
        if BASIC_PHYS32(basic):
            width, why = 32, "IA32_VMX_BASIC[48] = 1 limits VMX addresses to 32 bits"
        else:
            width = ctx.maxphyaddr() if (0x80000008, 0) in ctx.p.cpuid else 52
            why = f"MAXPHYADDR is {width}" if width != 52 else "no processor has more than 52 physical-address bits"
        return Violation(f"VMXON pointer {hexs(ptr)} sets bit(s) "
                         f"{', '.join(str(b) for b in pointer_bits_beyond(ptr, width))}; {why}")
    return None


@rule(id="VMXON019", slug="vmxon-revision-id", title="The VMXON region must start with the VMCS revision identifier",
      sdm=f"{INSN}; Vol.3C 25.11.5 VMXON Region; Vol.3D A.1 {ED}", instructions=("vmxon",), tier=Tier.OPERAND,
      outcome="VMfailInvalid", catalog=("VMXON.REVISION_ID",),
      checks="Bits 30:0 of the region's first dword equal IA32_VMX_BASIC[30:0].",
      broken="VMXON fails with VMfailInvalid (CF = 1).",
      fix="Write (ULONG)__readmsr(0x480) & 0x7fffffff to the first 4 bytes of the region before VMXON.",
      examples=[bad({"/memory/0x1a2b3000": "0500000000000000"}), good({})])
def revision_id(ctx: Context) -> object:
    ptr = ctx.vmxon_pointer()
    if ptr & 0xFFF:
        return SKIP  # the pointer check already fails; the region is not read
    first = int.from_bytes(ctx.mem(ptr, 4), "little")
    want = header.basic_revision(ctx.msr(0x480))
    if header.revision_id(first) != want:
        return Violation(f"the region at {hexs(ptr)} starts with revision id {hexs(header.revision_id(first))}, "
                         f"IA32_VMX_BASIC[30:0] = {hexs(want)}")
    return None


@rule(id="VMXON020", slug="vmxon-region-bit31", title="Bit 31 of the VMXON region's first dword must be 0",
      sdm=f"{INSN}; Vol.3C 25.11.5 VMXON Region {ED}", instructions=("vmxon",), tier=Tier.OPERAND,
      outcome="VMfailInvalid", catalog=("VMXON.REVISION_BIT31",),
      checks="Bit 31 of the region's first dword (the shadow-VMCS indicator in a VMCS) is 0.",
      broken="VMXON fails with VMfailInvalid (CF = 1).",
      fix="Write only the 31-bit revision identifier; do not copy IA32_VMX_BASIC[31] or mark the region as shadow.",
      examples=[bad({"/memory/0x1a2b3000": "0400008000000000"}), good({})])
def region_bit31(ctx: Context) -> object:
    ptr = ctx.vmxon_pointer()
    if ptr & 0xFFF:
        return SKIP
    first = int.from_bytes(ctx.mem(ptr, 4), "little")
    if first & VMXON_BIT31:
        return Violation(f"the region at {hexs(ptr)} starts with {hexs(first)}: bit 31 is 1")
    return None


__all__ = ["in_compatibility_mode", "in_smx_operation", "Missing"]
