"""Instruction-level checks of VMCLEAR, VMPTRLD, VMLAUNCH and VMRESUME.

Sources: SDM Vol.3C 31.3 (the instructions' operation pseudo-code), 31.4
(VM-instruction error numbers), 27.1 "Basic VM-Entry Checks" (SDM
325462-080US, 2023). Order for each: #UD (outside VMX operation, v86 or
compatibility mode), a VM exit in non-root operation, #GP(0) for CPL > 0,
then the operand / current-VMCS checks with their error numbers.
"""
from __future__ import annotations

from typing import Optional, Tuple

from ..common.numbers import hexs
from ..decode import defs, header
from .bits import reg_field
from .engine import ENTRY, SKIP, Context, Tier, Violation, bad, good, rule
from .vmxon import RFLAGS_VM, in_compatibility_mode

ED = "(SDM 325462-080US, 2023)"
ERRORS = f"Vol.3C 31.4 VM Instruction Error Numbers {ED}"
BASIC_ENTRY = f"Vol.3C 27.1 Basic VM-Entry Checks {ED}"
EXIT_REASON = {"vmclear": 19, "vmlaunch": 20, "vmptrld": 21, "vmresume": 24}
# IA32_VMX_PROCBASED_CTLS2 bit 46: the allowed-1 bit of secondary control "VMCS shadowing" (bit 14)
VMCS_SHADOWING_ALLOWED1 = 1 << (reg_field("IA32_VMX_PROCBASED_CTLS2", "allowed1").lo
                                + defs.control("secondary").bit("vmcs_shadowing"))


def _sdm(insns: Tuple[str, ...]) -> str:
    names = "/".join(i.upper() for i in insns)
    return f"Vol.3C 31.3 {names} {ED}"


def _family(insns: Tuple[str, ...], prefix: str, first: int, ud_fix: str) -> None:
    """Register the #UD / non-root / CPL rules shared by these instructions."""
    label = "/".join(i.upper() for i in insns)
    base = "vmxroot"

    @rule(id=f"{prefix}{first:03d}", slug=f"{prefix.lower()}-in-vmx-operation",
          title=f"{label} is only valid in VMX operation", sdm=_sdm(insns), instructions=insns, tier=Tier.UD,
          outcome="#UD", catalog=tuple(f"{i.upper() if i in ('vmclear', 'vmptrld') else 'VMENTRY'}.UD_NOT_IN_VMX"
                                       for i in insns[:1]),
          checks="The processor is in VMX operation (VMXON succeeded and VMXOFF has not run).",
          broken=f"{label} raises #UD.", fix=ud_fix,
          examples=[bad({"state/vmx": "off"}, base), good({}, base)])
    def in_vmx(ctx: Context) -> Optional[Violation]:
        if ctx.vmx_mode() == "off":
            return Violation("the processor is not in VMX operation (VMXON has not succeeded on it)")
        return None

    @rule(id=f"{prefix}{first + 1:03d}", slug=f"{prefix.lower()}-mode",
          title=f"{label} is invalid in virtual-8086 and compatibility mode", sdm=_sdm(insns), instructions=insns,
          tier=Tier.UD, outcome="#UD",
          checks="RFLAGS.VM = 0, and not IA32_EFER.LMA = 1 with CS.L = 0.",
          broken=f"{label} raises #UD.",
          fix="Execute VMX instructions from 64-bit (or 32-bit protected-mode) kernel code.",
          examples=[bad({"registers/rflags": "0x60246"}, base), bad({"registers/cs/attributes": "0xc09b"}, base),
                    good({}, base)])
    def mode(ctx: Context) -> Optional[Violation]:
        rflags = ctx.reg("rflags")
        if rflags & RFLAGS_VM:
            return Violation(f"RFLAGS = {hexs(rflags)}: VM (bit 17) is 1 (virtual-8086 mode)")
        if in_compatibility_mode(ctx):
            return Violation("IA32_EFER.LMA = 1 and CS.L = 0: compatibility mode")
        return None

    reasons = ", ".join(f"{i.upper()} {EXIT_REASON[i]}" for i in insns)

    @rule(id=f"{prefix}{first + 2:03d}", slug=f"{prefix.lower()}-in-non-root",
          title=f"{label} in VMX non-root operation causes a VM exit", sdm=_sdm(insns), instructions=insns,
          tier=Tier.NONROOT, outcome=f"vmexit:{EXIT_REASON[insns[0]]}",
          checks="The processor is in VMX root operation, not non-root.",
          broken=f"The instruction causes a VM exit to the outer VMM (basic exit reason: {reasons}).",
          fix="Run on bare metal or under a VMM with nested VMX support.",
          examples=[bad({"state/vmx": "non-root"}, base), good({}, base)])
    def non_root(ctx: Context) -> Optional[Violation]:
        if ctx.vmx_mode() == "non-root":
            insn = ctx.instruction or insns[0]
            return Violation(f"the processor is in VMX non-root operation: {insn.upper()} exits to the outer VMM",
                             outcome=f"vmexit:{EXIT_REASON[insn]}")
        return None

    @rule(id=f"{prefix}{first + 3:03d}", slug=f"{prefix.lower()}-cpl0", title=f"{label} requires CPL 0",
          sdm=_sdm(insns), instructions=insns, tier=Tier.CPL, outcome="#GP",
          checks="The current privilege level is 0.", broken=f"{label} raises #GP(0).",
          fix="Execute VMX instructions in kernel mode only.",
          examples=[bad({"state/cpl": 3}, base), good({}, base)])
    def cpl0(ctx: Context) -> Optional[Violation]:
        cpl = ctx.cpl()
        if cpl != 0:
            return Violation(f"CPL is {cpl}")
        return None


_family(("vmclear",), "VMCLR", 1, "Run VMXON successfully on this processor before VMCLEAR.")
_family(("vmptrld",), "VMPTR", 1, "Run VMXON successfully on this processor before VMPTRLD.")
_family(ENTRY, "ENTRY", 1, "Run VMXON, VMCLEAR and VMPTRLD successfully on this processor before VMLAUNCH; "
        "all of them must run on the same processor (a DPC or thread may have moved to another core).")


def _pointer_problem(ctx: Context, ptr: int) -> Optional[str]:
    if ptr & 0xFFF:
        return f"{hexs(ptr)} is not 4-KByte aligned"
    if not ctx.physical_address_fits(ptr):
        return f"{hexs(ptr)} sets bits beyond the physical-address width"
    return None


# ------------------------------------------------------------------ VMCLEAR

@rule(id="VMCLR005", slug="vmclear-pointer-valid", title="The VMCLEAR operand must be an aligned, in-width address",
      sdm=f"{_sdm(('vmclear',))}; {ERRORS}", instructions=("vmclear",), tier=Tier.OPERAND, outcome="VMfail:2",
      catalog=("VMCLEAR.PTR_ALIGN", "VMCLEAR.PTR_WIDTH"),
      checks="The VMCS pointer operand is 4-KByte aligned and within MAXPHYADDR (32 bits if IA32_VMX_BASIC[48]).",
      broken="VMCLEAR fails with error 2 (VMfailValid with a current VMCS, else VMfailInvalid).",
      fix="Pass the physical address of the page-aligned VMCS region (MmGetPhysicalAddress).",
      examples=[bad({"operands/vmclear": "0x1a2b4008"}, "vmxroot"), good({}, "vmxroot")])
def vmclear_pointer(ctx: Context) -> Optional[Violation]:
    problem = _pointer_problem(ctx, ctx.operand("vmclear"))
    return Violation(f"VMCLEAR operand {problem}") if problem else None


@rule(id="VMCLR006", slug="vmclear-not-vmxon-pointer", title="The VMCLEAR operand must not be the VMXON pointer",
      sdm=f"{_sdm(('vmclear',))}; {ERRORS}", instructions=("vmclear",), tier=Tier.OPERAND, outcome="VMfail:3",
      catalog=("VMCLEAR.PTR_IS_VMXON",),
      checks="The VMCS pointer operand differs from this processor's VMXON pointer.",
      broken="VMCLEAR fails with error 3.",
      fix="Allocate a separate page for the VMCS; the VMXON region cannot double as a VMCS.",
      examples=[bad({"operands/vmclear": "0x1a2b3000"}, "vmxroot"), good({}, "vmxroot")])
def vmclear_not_vmxon(ctx: Context) -> Optional[Violation]:
    ptr = ctx.operand("vmclear")
    if ptr == ctx.vmxon_pointer():
        return Violation(f"VMCLEAR operand {hexs(ptr)} is the VMXON pointer")
    return None


# ------------------------------------------------------------------ VMPTRLD

@rule(id="VMPTR005", slug="vmptrld-pointer-valid", title="The VMPTRLD operand must be an aligned, in-width address",
      sdm=f"{_sdm(('vmptrld',))}; {ERRORS}", instructions=("vmptrld",), tier=Tier.OPERAND, outcome="VMfail:9",
      catalog=("VMPTRLD.PTR_ALIGN", "VMPTRLD.PTR_WIDTH"),
      checks="The VMCS pointer operand is 4-KByte aligned and within MAXPHYADDR (32 bits if IA32_VMX_BASIC[48]).",
      broken="VMPTRLD fails with error 9.",
      fix="Pass the physical address of the page-aligned VMCS region.",
      examples=[bad({"operands/vmptrld": "0x80001a2b4000"}, "vmxroot"), good({}, "vmxroot")])
def vmptrld_pointer(ctx: Context) -> Optional[Violation]:
    problem = _pointer_problem(ctx, ctx.operand("vmptrld"))
    return Violation(f"VMPTRLD operand {problem}") if problem else None


@rule(id="VMPTR006", slug="vmptrld-not-vmxon-pointer", title="The VMPTRLD operand must not be the VMXON pointer",
      sdm=f"{_sdm(('vmptrld',))}; {ERRORS}", instructions=("vmptrld",), tier=Tier.OPERAND, outcome="VMfail:10",
      catalog=("VMPTRLD.PTR_IS_VMXON",),
      checks="The VMCS pointer operand differs from this processor's VMXON pointer.",
      broken="VMPTRLD fails with error 10.",
      fix="Use a separate page for the VMCS.",
      examples=[bad({"operands/vmptrld": "0x1a2b3000"}, "vmxroot"), good({}, "vmxroot")])
def vmptrld_not_vmxon(ctx: Context) -> Optional[Violation]:
    ptr = ctx.operand("vmptrld")
    if ptr == ctx.vmxon_pointer():
        return Violation(f"VMPTRLD operand {hexs(ptr)} is the VMXON pointer")
    return None


def _vmptrld_region_dword(ctx: Context) -> Optional[int]:
    ptr = ctx.operand("vmptrld")
    if _pointer_problem(ctx, ptr) or ptr == ctx.vmxon_pointer():
        return None  # an earlier operand check fails; the region is never read
    return int.from_bytes(ctx.mem(ptr, 4), "little")


@rule(id="VMPTR007", slug="vmptrld-revision-id", title="The VMCS region must start with the VMCS revision identifier",
      sdm=f"{_sdm(('vmptrld',))}; Vol.3C 25.2 Format of the VMCS Region {ED}", instructions=("vmptrld",),
      tier=Tier.OPERAND, outcome="VMfail:11", catalog=("VMPTRLD.REVISION_ID",),
      checks="Bits 30:0 of the first dword of the referenced region equal IA32_VMX_BASIC[30:0].",
      broken="VMPTRLD fails with error 11.",
      fix="Write the revision identifier (IA32_VMX_BASIC[30:0]) to the VMCS region before VMCLEAR/VMPTRLD.",
      examples=[bad({"/memory/0x1a2b4000": "0000000000000000"}, "vmxroot"), good({}, "vmxroot")])
def vmptrld_revision(ctx: Context) -> object:
    first = _vmptrld_region_dword(ctx)
    if first is None:
        return SKIP
    want = header.basic_revision(ctx.msr(0x480))
    if header.revision_id(first) != want:
        return Violation(f"the region at {hexs(ctx.operand('vmptrld'))} starts with revision id "
                         f"{hexs(header.revision_id(first))}, IA32_VMX_BASIC[30:0] = {hexs(want)}")
    return None


@rule(id="VMPTR008", slug="vmptrld-shadow-unsupported",
      title="A shadow VMCS needs the VMCS-shadowing capability",
      sdm=f"{_sdm(('vmptrld',))}; Vol.3C 25.10 VMCS Types {ED}", instructions=("vmptrld",),
      tier=Tier.OPERAND, outcome="VMfail:11", catalog=("VMPTRLD.SHADOW_UNSUPPORTED",),
      checks="If bit 31 of the region's first dword is 1 (shadow VMCS), IA32_VMX_PROCBASED_CTLS2[46] "
             "(VMCS shadowing may be 1) is 1.",
      broken="VMPTRLD fails with error 11.",
      fix="Clear bit 31 of the first dword: write only the 31-bit revision identifier.",
      examples=[bad({"/memory/0x1a2b4000": "0400008000000000", "msr/0x48b": "0x5ffcbffe00000000"}, "vmxroot"),
                good({"/memory/0x1a2b4000": "0400008000000000"}, "vmxroot")])
def vmptrld_shadow(ctx: Context) -> object:
    first = _vmptrld_region_dword(ctx)
    if first is None or not header.shadow_bit(first):
        return SKIP
    if 0x48B not in ctx.p.msr:
        raise ctx.missing("msr:0x48b", "IA32_VMX_PROCBASED_CTLS2")
    if not ctx.msr(0x48B) & VMCS_SHADOWING_ALLOWED1:
        return Violation(f"the region's first dword {hexs(first)} marks a shadow VMCS, but "
                         f"IA32_VMX_PROCBASED_CTLS2 = {hexs(ctx.msr(0x48B))} does not allow VMCS shadowing")
    return None


# --------------------------------------------------------- VMLAUNCH/VMRESUME

@rule(id="ENTRY005", slug="entry-current-vmcs", title="VM entry needs a current VMCS",
      sdm=f"{_sdm(ENTRY)}; {BASIC_ENTRY}", instructions=ENTRY, tier=Tier.CURRENT_VMCS, outcome="VMfailInvalid",
      catalog=("VMENTRY.CURRENT_VMCS_VALID",),
      checks="The current-VMCS pointer is not FFFFFFFF_FFFFFFFFH (VMPTRLD succeeded on this processor).",
      broken="VMLAUNCH/VMRESUME fail with VMfailInvalid (CF = 1, no error number).",
      fix="VMPTRLD the VMCS on this processor before VMLAUNCH (and after any VMCLEAR of it).",
      examples=[bad({"vmcs_pointer": "0xffffffffffffffff"}, "vmxroot"), good({}, "vmxroot")])
def current_vmcs(ctx: Context) -> Optional[Violation]:
    if not ctx.has_current_vmcs():
        return Violation("no current VMCS (current-VMCS pointer is FFFFFFFF_FFFFFFFFH)")
    return None


@rule(id="ENTRY006", slug="entry-vmcs-not-shadow", title="The current VMCS must not be a shadow VMCS",
      sdm=f"{_sdm(ENTRY)}; {BASIC_ENTRY}", instructions=ENTRY, tier=Tier.CURRENT_VMCS, outcome="VMfailInvalid",
      catalog=("VMENTRY.CURRENT_VMCS_NOT_SHADOW",),
      checks="Bit 31 of the current VMCS region's first dword (shadow-VMCS indicator) is 0.",
      broken="VMLAUNCH/VMRESUME fail with VMfailInvalid.",
      fix="Load an ordinary VMCS (bit 31 clear) before VM entry.",
      examples=[bad({"/memory/0x1a2b4000": "0400008000000000"}, "vmxroot"), good({}, "vmxroot")])
def not_shadow(ctx: Context) -> object:
    if not ctx.has_current_vmcs():
        return SKIP
    ptr = ctx.vmcs_pointer()
    first = int.from_bytes(ctx.mem(ptr, 4), "little")
    if header.shadow_bit(first):
        return Violation(f"the current VMCS at {hexs(ptr)} starts with {hexs(first)}: it is a shadow VMCS")
    return None


@rule(id="ENTRY007", slug="entry-mov-ss-blocking", title="VM entry must not follow MOV SS / POP SS",
      sdm=f"{_sdm(ENTRY)}; {ERRORS}", instructions=ENTRY, tier=Tier.MOV_SS, outcome="VMfailValid:26",
      catalog=("VMENTRY.MOVSS_BLOCKING",),
      checks="Events are not blocked by MOV SS (the instruction does not directly follow MOV SS or POP SS).",
      broken="VMLAUNCH/VMRESUME fail with error 26.",
      fix="Do not place VMLAUNCH/VMRESUME right after an instruction that loads SS.",
      examples=[bad({"state/blocking_by_mov_ss": True}, "vmxroot"), good({}, "vmxroot")])
def mov_ss(ctx: Context) -> Optional[Violation]:
    if ctx.state("blocking_by_mov_ss"):
        return Violation("events are blocked by MOV SS on this instruction")
    return None


@rule(id="ENTRY008", slug="vmlaunch-launch-state-clear", title="VMLAUNCH needs a VMCS whose launch state is clear",
      sdm=f"{_sdm(('vmlaunch',))}; {ERRORS}", instructions=("vmlaunch",), tier=Tier.LAUNCH_STATE,
      outcome="VMfailValid:4", catalog=("VMLAUNCH.LAUNCH_STATE_CLEAR",),
      checks="The current VMCS's launch state is 'clear'.",
      broken="VMLAUNCH fails with error 4 (VMLAUNCH with non-clear VMCS).",
      fix="Use VMRESUME for a VMCS that was launched, or VMCLEAR + VMPTRLD it before VMLAUNCH.",
      examples=[bad({"vmcs_launch_state": "launched"}, "vmxroot"), good({}, "vmxroot")])
def launch_clear(ctx: Context) -> Optional[Violation]:
    if ctx.launch_state() != "clear":
        return Violation("the current VMCS has launch state 'launched'")
    return None


@rule(id="ENTRY009", slug="vmresume-launch-state-launched",
      title="VMRESUME needs a VMCS whose launch state is launched",
      sdm=f"{_sdm(('vmresume',))}; {ERRORS}", instructions=("vmresume",), tier=Tier.LAUNCH_STATE,
      outcome="VMfailValid:5", catalog=("VMRESUME.LAUNCH_STATE_LAUNCHED",),
      checks="The current VMCS's launch state is 'launched'.",
      broken="VMRESUME fails with error 5 (VMRESUME with non-launched VMCS).",
      fix="Use VMLAUNCH for the first entry with a VMCS (and after VMCLEAR).",
      examples=[bad({}, "vmxroot"), good({"vmcs_launch_state": "launched"}, "vmxroot")])
def resume_launched(ctx: Context) -> Optional[Violation]:
    if ctx.launch_state() != "launched":
        return Violation("the current VMCS has launch state 'clear'")
    return None
