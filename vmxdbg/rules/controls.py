"""VM-entry checks on the VMX controls: VM-instruction error 7.

Sources: Vol.3C 27.2.1.1 "VM-Execution Control Fields", 27.2.1.2 "VM-Exit
Control Fields", 27.2.1.3 "VM-Entry Control Fields", and Vol.3D Appendix A
(capability MSRs), SDM 325462-080US (June 2023). These checks and the host
checks of host.py run in one tier: the SDM lets a processor make them in any
order, so a VMCS breaking both gives VMfailValid(7) or (8).

The repetitive families (allowed settings of each control field, control
addresses, control dependencies) are one check each, driven by
structs/vmentry_checks.yaml; the rest is code.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence

from ..common.numbers import bits_of, hexs
from .bits import physical_width, reg_bit, reg_field, reg_reserved
from .engine import SKIP, Context, Example, Tier, Violation, bad, good, rule
from .entry_tables import BASELINE, controls_patch, field_patch, table, table_row
from .vmcsctl import (ACTIVATED_BY, bit, control_def, control_label, is_active, label, on, qualified, raw, read,
                      shown, words)

ED = "(SDM 325462-080US, 2023)"
ENTRY = ("vmlaunch", "vmresume")
OUTCOME = "VMfailValid:7"
EXEC = f"Vol.3C 27.2.1.1 VM-Execution Control Fields {ED}"
EXITC = f"Vol.3C 27.2.1.2 VM-Exit Control Fields {ED}"
ENTRYC = f"Vol.3C 27.2.1.3 VM-Entry Control Fields {ED}"
IA32_VMX_BASIC = 0x480
IA32_VMX_MISC = 0x485
IA32_VMX_EPT_VPID_CAP = 0x48C

# fields read by name from structs/registers.yaml (computed once; calling one extracts the field)
BASIC_PHYS32 = reg_field("IA32_VMX_BASIC", "physaddr_32bit")
BASIC_TRUE_CONTROLS = reg_field("IA32_VMX_BASIC", "true_controls")
BASIC_NO_ERROR_CODE_CHECK = reg_field("IA32_VMX_BASIC", "no_error_code_check")
BASIC_NESTED_EXCEPTION = reg_field("IA32_VMX_BASIC", "nested_exception")
CTLS_ALLOWED0 = reg_field("IA32_VMX_PINBASED_CTLS", "allowed0")   # the same halves in every 32-bit control's MSR
CTLS_ALLOWED1 = reg_field("IA32_VMX_PINBASED_CTLS", "allowed1")
MISC_MAX_MSR_LIST = reg_field("IA32_VMX_MISC", "max_msr_list")
MISC_ZERO_LENGTH = reg_field("IA32_VMX_MISC", "zero_length_injection")
EPT_CAP_WALK5 = reg_field("IA32_VMX_EPT_VPID_CAP", "walk_length_5")
EPT_CAP_UC = reg_field("IA32_VMX_EPT_VPID_CAP", "memtype_uc")
EPT_CAP_WB = reg_field("IA32_VMX_EPT_VPID_CAP", "memtype_wb")
EPT_CAP_AD = reg_field("IA32_VMX_EPT_VPID_CAP", "accessed_dirty")
EPT_CAP_SSS = reg_field("IA32_VMX_EPT_VPID_CAP", "supervisor_shadow_stack")
EPT_CAP_HLAT_PREFIX = reg_field("IA32_VMX_EPT_VPID_CAP", "max_hlat_prefix_size")
EPTP_MEMTYPE = reg_field("EPTP", "memory_type")
EPTP_WALK = reg_field("EPTP", "walk_length")
EPTP_AD = reg_field("EPTP", "accessed_dirty")
EPTP_SSS = reg_field("EPTP", "supervisor_shadow_stack")
EPTP_RESERVED = reg_field("EPTP", "reserved_11_8")
INFO_VALID = reg_field("INTERRUPTION_INFO", "valid")
INFO_TYPE = reg_field("INTERRUPTION_INFO", "type")
INFO_VECTOR = reg_field("INTERRUPTION_INFO", "vector")
INFO_ERRCODE = reg_field("INTERRUPTION_INFO", "deliver_error_code")
INFO_NESTED = reg_bit("INTERRUPTION_INFO", "nested_exception")
INFO_RESERVED = reg_reserved("INTERRUPTION_INFO") | INFO_NESTED   # bits 30:12
CR0_PE = reg_bit("CR0", "pe")
TPR_THRESHOLD_VALUE = reg_field("TPR_THRESHOLD", "threshold")
TPR_THRESHOLD_RESERVED = reg_field("TPR_THRESHOLD", "must_be_zero")
TPR_CLASS = reg_field("APIC_TPR", "priority_class")
HLATP_RESERVED = reg_reserved("HLATP")  # bits 2:0 and 11:5
CR4_FRED = reg_bit("CR4", "fred")


def sdm(section: str) -> str:
    """`Vol.3C <section> (edition)`; a section naming its own edition keeps it."""
    return f"Vol.3C {section}" if "(SDM" in section or "spec" in section else f"Vol.3C {section} {ED}"


def B(patch: Dict[str, Any]) -> Example:
    return bad(patch, BASELINE)


def G(patch: Dict[str, Any]) -> Example:
    return good(patch, BASELINE)


def ctl(**kw: Any) -> Callable[[Callable[[Context], Any]], Callable[[Context], Any]]:
    """`rule` with this module's instructions, tier and outcome."""
    return rule(instructions=ENTRY, tier=Tier.CONTROLS_HOST, outcome=OUTCOME, **kw)


def msr_name(index: int) -> str:
    try:
        from ..decode import defs
        return f"{defs.msr(index).name} (MSR {hexs(index)})"
    except Exception:  # an MSR structs/ does not name still prints by number
        return f"MSR {hexs(index)}"


def addr_width(ctx: Context) -> int:
    """Physical-address width for VMCS-referenced structures (Vol.3D A.1)."""
    return physical_width(ctx.maxphyaddr(), ctx.msr(IA32_VMX_BASIC))


def width_why(ctx: Context, width: int) -> str:
    if BASIC_PHYS32(ctx.msr(IA32_VMX_BASIC)):
        return "IA32_VMX_BASIC[48] = 1 limits these addresses to 32 bits"
    return f"MAXPHYADDR (CPUID.80000008H:EAX[7:0]) is {width}"


# --------------------------------------------------- allowed settings (table)

def _governing_msr(ctx: Context, control: str) -> int:
    cd = control_def(control)
    if cd.width == 32 and cd.true_msr is not None and BASIC_TRUE_CONTROLS(ctx.msr(IA32_VMX_BASIC)):
        return cd.true_msr
    return cd.capability_msr


def allowed_settings(ctx: Context, control: str) -> object:
    """Vol.3D A.3-A.5, A.11: a 32-bit field's bit X must be 1 if MSR bit X is 1 and may be 1 only if
    MSR bit 32+X is 1 (TRUE_ MSR when IA32_VMX_BASIC[55] = 1); a 64-bit field's bit X may be 1 only
    if MSR bit X is 1."""
    if not is_active(ctx, control):
        return SKIP
    cd = control_def(control)
    v = ctx.vmcs(cd.vmcs)
    idx = _governing_msr(ctx, control)
    cap = ctx.msr(idx)
    if cd.width == 32:
        must1, may1, w = CTLS_ALLOWED0(cap), CTLS_ALLOWED1(cap), 32
    else:
        must1, may1, w = 0, cap, 64
    out = []
    cleared = must1 & ~v
    extra = v & ~may1 & ((1 << w) - 1)
    where = f"{msr_name(idx)} = {hexs(cap)}"

    def names(mask: int) -> str:
        return ", ".join(f'bit {b} "{words(cd.bits[b])}"' if b in cd.bits else f"bit {b} (reserved)"
                         for b in bits_of(mask))

    if cleared:
        out.append(Violation(
            f"{shown(cd.vmcs, v)} has {names(cleared)} clear, but {where} requires "
            f"{'them' if cleared & (cleared - 1) else 'it'} to be 1 (allowed-0 settings, bits 31:0 = {hexs(must1)})",
            f"Set {hexs(cleared)} in {label(cd.vmcs)}: compute the field as (wanted | allowed0) & allowed1 "
            f"from {msr_name(idx)}."))
    if extra:
        half = "bits 63:32" if w == 32 else "bits 63:0"
        out.append(Violation(
            f"{shown(cd.vmcs, v)} sets {names(extra)}, which {where} does not allow "
            f"(allowed-1 settings, {half} = {hexs(may1)})",
            f"Clear {hexs(extra)} in {label(cd.vmcs)}: this processor does not support "
            f"{'those controls' if extra & (extra - 1) else 'that control'}; test the capability MSR "
            f"before using a feature."))
    return out or None


def _register_allowed(row: Dict[str, Any]) -> None:
    control = row["control"]
    cd = control_def(control)
    true_note = (f" (or {msr_name(cd.true_msr)} when IA32_VMX_BASIC[55] = 1)" if cd.true_msr else "")
    activation = ""
    if control in ACTIVATED_BY:
        activation = f" Checked only when {control_label(*ACTIVATED_BY[control])} is 1; otherwise skipped."
    ctl(id=row["id"], defined_in=table_row("allowed_settings", row), slug=f"ctl-allowed-{control.replace('_', '-')}",
        title=f"{label(cd.vmcs)}: every bit must be an allowed setting",
        sdm=f"{sdm(row['sdm'])}; Vol.3D Appendix A {ED}", catalog=row["catalog"],
        checks=(f"Each bit of {label(cd.vmcs)} against {msr_name(cd.capability_msr)}{true_note}: "
                + ("bits set in the MSR's 31:0 must be 1, bits clear in its 63:32 must be 0."
                   if cd.width == 32 else "bits clear in the 64-bit MSR must be 0.") + activation),
        broken="VMLAUNCH/VMRESUME fail with VMfailValid(7): VM entry with invalid control field(s).",
        fix="Adjust the field to the capability MSR: value = (wanted | allowed0) & allowed1, and do not "
            "enable a control the processor does not report.",
        examples=[B(p) for p in row["bad"]] + [G(p) for p in row["good"]],
    )(lambda ctx, _c=control: allowed_settings(ctx, _c))


# ------------------------------------------------------- addresses (table)

def aligned_in_width(ctx: Context, guard: str, field: str, align: int) -> object:
    """When the guard control is 1: `field` is a multiple of `align` and sets no bit at or above
    the physical-address width."""
    if not on(ctx, *qualified(guard)):
        return SKIP
    addr = read(ctx, field)
    out = []
    if addr & (align - 1):
        out.append(Violation(
            f"{shown(field, addr)} is not {align}-byte aligned (bits {align.bit_length() - 2}:0 = "
            f"{hexs(addr & (align - 1))}) while {control_label(*qualified(guard))} is 1",
            f"Write the physical address of a {align}-byte aligned structure to {label(field)}."))
    width = addr_width(ctx)
    if addr >> width:
        out.append(Violation(
            f"{shown(field, addr)} sets bit(s) {', '.join(str(b) for b in bits_of(addr >> width << width))} "
            f"at or above the physical-address width ({width_why(ctx, width)})",
            f"Write a physical address to {label(field)} (a virtual address such as 0xffff... is too wide)."))
    return out or None


def _register_address(row: Dict[str, Any]) -> None:
    field, guard, align = row["field"], row["guard"], row["align"]
    g = qualified(guard)
    good_addr = 0x1A2B8000 if align >= 4096 else 0x1A2B8040
    ctl(id=row["id"], defined_in=table_row("control_addresses", row), slug=f"ctl-address-{field.lower().replace('_', '-')}",
        title=f"{label(field)} must be {align}-byte aligned and within the physical-address width",
        sdm=sdm(row.get("sdm", "27.2.1.1 VM-Execution Control Fields")), catalog=row["catalog"],
        checks=(f"If {control_label(*g)} is 1: bits {align.bit_length() - 2}:0 of {label(field)} are 0 and no "
                f"bit at or above the physical-address width (MAXPHYADDR, or 32 if IA32_VMX_BASIC[48] = 1) is set."),
        broken="VMLAUNCH/VMRESUME fail with VMfailValid(7).",
        fix=f"Allocate the structure {align}-byte aligned in physical memory and store its physical address.",
        examples=[B({**controls_patch((guard, 1)), **field_patch(field, good_addr + align // 2 if align > 1 else 1)}),
                  B({**controls_patch((guard, 1)), **field_patch(field, 1 << 45)}),
                  G({**controls_patch((guard, 1)), **field_patch(field, good_addr)})],
    )(lambda ctx, _g=guard, _f=field, _a=align: aligned_in_width(ctx, _g, _f, _a))


# ---------------------------------------------------- dependencies (table)

def dependency(ctx: Context, if_: str, then: str, must: int) -> object:
    """When control `if_` is 1, control `then` must be `must`."""
    if not on(ctx, *qualified(if_)):
        return SKIP
    got = int(on(ctx, *qualified(then)))
    if got != must:
        c, n = qualified(then)
        return Violation(
            f"{control_label(*qualified(if_))} is 1 but {control_label(c, n)} is {got} "
            f"({shown(control_def(c).vmcs, raw(ctx, c))}); it must be {must}",
            f"{'Set' if must else 'Clear'} {control_label(c, n)} in {label(control_def(c).vmcs)}, or clear "
            f"{control_label(*qualified(if_))}.")
    return None


def _register_dependency(row: Dict[str, Any]) -> None:
    if_, then, must = row["if"], row["then"], row["must"]
    ic, tc = qualified(if_), qualified(then)
    ctl(id=row["id"], defined_in=table_row("control_dependencies", row), slug=f"ctl-{ic[1].replace('_', '-')}-{'needs' if must else 'excludes'}-{tc[1].replace('_', '-')}",
        title=f'"{words(ic[1])}" {"requires" if must else "excludes"} "{words(tc[1])}"',
        sdm=sdm(row.get("sdm", "27.2.1.1 VM-Execution Control Fields")), catalog=row["catalog"],
        checks=f"If {control_label(*ic)} is 1, {control_label(*tc)} must be {must}.",
        broken="VMLAUNCH/VMRESUME fail with VMfailValid(7).",
        fix=f"{'Enable' if must else 'Disable'} {control_label(*tc)} together with {control_label(*ic)}.",
        examples=[B(controls_patch((if_, 1), (then, 1 - must))), G(controls_patch((if_, 1), (then, must)))],
    )(lambda ctx, _i=if_, _t=then, _m=must: dependency(ctx, _i, _t, _m))


def _register_tables() -> None:
    t = table()
    for row in t["allowed_settings"]:
        _register_allowed(row)
    for row in t["control_addresses"]:
        _register_address(row)
    for row in t["control_dependencies"]:
        _register_dependency(row)


_register_tables()


# ------------------------------------------------------------ CR3 targets

@ctl(id="CTL010", slug="ctl-cr3-target-count", title="CR3_TARGET_COUNT (0x400a) must not exceed 4",
     sdm=EXEC, catalog=("CTRL.CR3_TARGET_COUNT",),
     checks="The CR3-target count is at most 4 (IA32_VMX_MISC[24:16] reports how many targets exist).",
     broken="VMLAUNCH/VMRESUME fail with VMfailValid(7).",
     fix="Write 0-4 to CR3_TARGET_COUNT (0 when CR3-load exiting is used without targets).",
     examples=[B(field_patch("CR3_TARGET_COUNT", 5)), G(field_patch("CR3_TARGET_COUNT", 4))])
def cr3_target_count(ctx: Context) -> Optional[Violation]:
    n = read(ctx, "CR3_TARGET_COUNT")
    if n > 4:
        return Violation(f"{shown('CR3_TARGET_COUNT', n)}: more than 4 CR3-target values")
    return None


# ------------------------------------------------------------ TPR shadow

def _tpr_patch(**extra: int) -> Dict[str, str]:
    p = controls_patch(("primary.use_tpr_shadow", 1))
    p.update(field_patch("VIRTUAL_APIC_PAGE_ADDR", 0x1A2B9000))
    for k, v in extra.items():
        p.update(field_patch(k, v))
    return p


@ctl(id="CTL030", slug="ctl-tpr-threshold-reserved", title="TPR_THRESHOLD (0x401c) bits 31:4 must be 0",
     sdm=EXEC, catalog=("CTRL.TPR_SHADOW.THRESHOLD_RESERVED",),
     checks='If "use TPR shadow" is 1 and "virtual-interrupt delivery" is 0, bits 31:4 of the TPR threshold are 0.',
     broken="VMLAUNCH/VMRESUME fail with VMfailValid(7).",
     fix="Write a value 0-15 to TPR_THRESHOLD (the priority class, not the full TPR byte).",
     examples=[B(_tpr_patch(TPR_THRESHOLD=0x20)), G(_tpr_patch(TPR_THRESHOLD=0x2))])
def tpr_threshold_reserved(ctx: Context) -> object:
    if not on(ctx, "primary", "use_tpr_shadow") or on(ctx, "secondary", "virtual_interrupt_delivery"):
        return SKIP
    t = read(ctx, "TPR_THRESHOLD")
    if t & TPR_THRESHOLD_RESERVED.mask:
        return Violation(f"{shown('TPR_THRESHOLD', t)}: bits 31:4 = {hexs(TPR_THRESHOLD_RESERVED(t))} are not 0")
    return None


@ctl(id="CTL031", slug="ctl-tpr-threshold-vtpr", title="The TPR threshold must not exceed VTPR[7:4] on the virtual-APIC page",
     sdm=EXEC, catalog=("CTRL.TPR_SHADOW.THRESHOLD_VS_VTPR",),
     checks='If "use TPR shadow" is 1, "virtualize APIC accesses" is 0 and "virtual-interrupt delivery" is 0: '
            "TPR_THRESHOLD[3:0] <= bits 7:4 of the byte at offset 80H of the virtual-APIC page (physical memory).",
     broken="VMLAUNCH/VMRESUME fail with VMfailValid(7).",
     fix="Lower TPR_THRESHOLD to at most VTPR >> 4, or update the virtual-APIC page's TPR byte (offset 80H) first.",
     examples=[B({**_tpr_patch(TPR_THRESHOLD=0x5), "/memory/0x1a2b9080": "30"}),
               G({**_tpr_patch(TPR_THRESHOLD=0x3), "/memory/0x1a2b9080": "30"})])
def tpr_threshold_vtpr(ctx: Context) -> object:
    if (not on(ctx, "primary", "use_tpr_shadow") or on(ctx, "secondary", "virtualize_apic_accesses")
            or on(ctx, "secondary", "virtual_interrupt_delivery")):
        return SKIP
    t = TPR_THRESHOLD_VALUE(read(ctx, "TPR_THRESHOLD"))
    page = read(ctx, "VIRTUAL_APIC_PAGE_ADDR")
    vtpr = ctx.mem(page + 0x80, 1)[0]
    if t > TPR_CLASS(vtpr):
        return Violation(f"TPR_THRESHOLD[3:0] = {t} exceeds VTPR[7:4] = {TPR_CLASS(vtpr)} (VTPR = {hexs(vtpr)} at "
                         f"{hexs(page + 0x80)}, offset 80H of the page at {label('VIRTUAL_APIC_PAGE_ADDR')})")
    return None


# ----------------------------------------------- posted interrupts, VPID

@ctl(id="CTL070", slug="ctl-posted-interrupt-vector", title="POSTED_INTR_NV (0x0002) bits 15:8 must be 0",
     sdm=EXEC, catalog=("CTRL.POSTED_INT.VECTOR_RESERVED",),
     checks='If "process posted interrupts" is 1, bits 15:8 of the posted-interrupt notification vector are 0.',
     broken="VMLAUNCH/VMRESUME fail with VMfailValid(7).",
     fix="Write an 8-bit interrupt vector (0-255) to POSTED_INTR_NV.",
     examples=[B({**controls_patch(("pin_based.process_posted_interrupts", 1)), **field_patch("POSTED_INTR_NV", 0x1F2)}),
               G({**controls_patch(("pin_based.process_posted_interrupts", 1)), **field_patch("POSTED_INTR_NV", 0xF2)})])
def posted_vector(ctx: Context) -> object:
    if not on(ctx, "pin_based", "process_posted_interrupts"):
        return SKIP
    v = read(ctx, "POSTED_INTR_NV")
    if v >> 8:
        return Violation(f"{shown('POSTED_INTR_NV', v)}: bits 15:8 are not 0")
    return None


@ctl(id="CTL071", slug="ctl-vpid-nonzero", title="VIRTUAL_PROCESSOR_ID (0x0000) must not be 0 when VPIDs are enabled",
     sdm=EXEC, catalog=("CTRL.VPID.NONZERO",),
     checks='If "enable VPID" is 1, the VPID field is not 0000H (VPID 0 belongs to the VMM).',
     broken="VMLAUNCH/VMRESUME fail with VMfailValid(7).",
     fix="Give each virtual processor a VPID from 1 to 0xffff (e.g. the processor number + 1).",
     examples=[B(field_patch("VIRTUAL_PROCESSOR_ID", 0)), G(field_patch("VIRTUAL_PROCESSOR_ID", 7))])
def vpid_nonzero(ctx: Context) -> object:
    if not on(ctx, "secondary", "enable_vpid"):
        return SKIP
    if read(ctx, "VIRTUAL_PROCESSOR_ID") == 0:
        return Violation(f"{shown('VIRTUAL_PROCESSOR_ID', 0)} while {control_label('secondary', 'enable_vpid')} is 1")
    return None


# --------------------------------------------------------------- the EPTP

EPTP_SECTION = f"{EXEC}; Vol.3C 25.6.11 Extended-Page-Table Pointer (EPTP); Vol.3D A.10 {ED}"


def _eptp(ctx: Context) -> Optional[int]:
    return read(ctx, "EPT_POINTER") if on(ctx, "secondary", "enable_ept") else None


def _ept_cap(ctx: Context) -> int:
    return ctx.msr(IA32_VMX_EPT_VPID_CAP)


@ctl(id="CTL072", slug="ctl-eptp-memory-type", title="EPTP bits 2:0 must be a supported EPT memory type",
     sdm=EPTP_SECTION, catalog=("CTRL.EPTP.MEMTYPE",),
     checks='If "enable EPT" is 1: EPTP[2:0] is 0 (UC) with IA32_VMX_EPT_VPID_CAP[8] = 1, or 6 (WB) with [14] = 1.',
     broken="VMLAUNCH/VMRESUME fail with VMfailValid(7).",
     fix="Use EPTP = PML4 physical address | (3 << 3) | 6 (write-back, 4-level walk).",
     examples=[B(field_patch("EPT_POINTER", 0x1A2B5019)), B(field_patch("EPT_POINTER", 0x1A2B501D)),
               G(field_patch("EPT_POINTER", 0x1A2B5018 | 6)), G(field_patch("EPT_POINTER", 0x1A2B5018 | 0))])
def eptp_memtype(ctx: Context) -> object:
    eptp = _eptp(ctx)
    if eptp is None:
        return SKIP
    mt, cap = EPTP_MEMTYPE(eptp), _ept_cap(ctx)
    ok = (mt == 0 and EPT_CAP_UC(cap)) or (mt == 6 and EPT_CAP_WB(cap))
    if not ok:
        return Violation(f"{shown('EPT_POINTER', eptp)}: memory type {mt} is not supported "
                         f"({msr_name(IA32_VMX_EPT_VPID_CAP)} = {hexs(cap)}: UC {'allowed' if EPT_CAP_UC(cap) else 'not allowed'}"
                         f" (bit {EPT_CAP_UC.lo}), WB {'allowed' if EPT_CAP_WB(cap) else 'not allowed'} (bit {EPT_CAP_WB.lo}))")
    return None


# note: the baseline EPTP is 0x1a2b501e = WB | walk length 4; patches below keep WB
@ctl(id="CTL073", slug="ctl-eptp-walk-length", title="EPTP bits 5:3 must be a supported page-walk length minus 1",
     sdm=EPTP_SECTION, catalog=("CTRL.EPTP.WALK_LENGTH",),
     checks="If \"enable EPT\" is 1: EPTP[5:3] is 3 (4-level EPT), or 4 (5-level) when "
            "IA32_VMX_EPT_VPID_CAP[7] = 1.",
     broken="VMLAUNCH/VMRESUME fail with VMfailValid(7).",
     fix="Set EPTP bits 5:3 to 3 for a 4-level EPT hierarchy (EPTP |= 3 << 3).",
     examples=[B(field_patch("EPT_POINTER", 0x1A2B5026)), B(field_patch("EPT_POINTER", 0x1A2B5016)),
               G(field_patch("EPT_POINTER", 0x1A2B501E))])
def eptp_walk(ctx: Context) -> object:
    eptp = _eptp(ctx)
    if eptp is None:
        return SKIP
    wl, cap = EPTP_WALK(eptp), _ept_cap(ctx)
    if wl == 3 or (wl == 4 and EPT_CAP_WALK5(cap)):
        return None
    why = " (5-level EPT needs IA32_VMX_EPT_VPID_CAP[7] = 1)" if wl == 4 else ""
    return Violation(f"{shown('EPT_POINTER', eptp)}: bits 5:3 = {wl}, a page-walk length of {wl + 1}{why}; "
                     f"{msr_name(IA32_VMX_EPT_VPID_CAP)} = {hexs(cap)}")


@ctl(id="CTL074", slug="ctl-eptp-accessed-dirty", title="EPTP bit 6 (A/D flags) needs IA32_VMX_EPT_VPID_CAP[21]",
     sdm=EPTP_SECTION, catalog=("CTRL.EPTP.AD_ENABLE",),
     checks='If "enable EPT" is 1: EPTP[6] is 0 unless IA32_VMX_EPT_VPID_CAP[21] = 1.',
     broken="VMLAUNCH/VMRESUME fail with VMfailValid(7).",
     fix="Clear EPTP bit 6 on processors without EPT accessed/dirty flags.",
     examples=[B({"vmcs/0x201a": "0x1a2b505e", "msr/0x48c": "0xf0106534141"}),
               G({"vmcs/0x201a": "0x1a2b505e"})])
def eptp_ad(ctx: Context) -> object:
    eptp = _eptp(ctx)
    if eptp is None or not EPTP_AD(eptp):
        return None if eptp is not None else SKIP
    cap = _ept_cap(ctx)
    if not EPT_CAP_AD(cap):
        return Violation(f"{shown('EPT_POINTER', eptp)} sets bit 6 (accessed/dirty flags) but "
                         f"{msr_name(IA32_VMX_EPT_VPID_CAP)} = {hexs(cap)} has bit {EPT_CAP_AD.lo} clear")
    return None


@ctl(id="CTL075", slug="ctl-eptp-supervisor-shadow-stack",
     title="EPTP bit 7 (supervisor shadow-stack access rights) needs IA32_VMX_EPT_VPID_CAP[23]",
     sdm=EPTP_SECTION, catalog=("CTRL.EPTP.SSS_ENABLE",),
     checks='If "enable EPT" is 1: EPTP[7] is 0 unless IA32_VMX_EPT_VPID_CAP[23] = 1 (on other processors bit 7 '
            "is reserved).",
     broken="VMLAUNCH/VMRESUME fail with VMfailValid(7).",
     fix="Clear EPTP bit 7 unless the processor enumerates supervisor shadow-stack control.",
     examples=[B(field_patch("EPT_POINTER", 0x1A2B509E)),
               G({"vmcs/0x201a": "0x1a2b509e", "msr/0x48c": "0xf0106f34141"})])
def eptp_sss(ctx: Context) -> object:
    eptp = _eptp(ctx)
    if eptp is None:
        return SKIP
    if EPTP_SSS(eptp):
        cap = _ept_cap(ctx)
        if not EPT_CAP_SSS(cap):
            return Violation(f"{shown('EPT_POINTER', eptp)} sets bit 7 but {msr_name(IA32_VMX_EPT_VPID_CAP)} = "
                             f"{hexs(cap)} has bit {EPT_CAP_SSS.lo} clear")
    return None


@ctl(id="CTL076", slug="ctl-eptp-reserved", title="EPTP bits 11:8 and bits beyond MAXPHYADDR must be 0",
     sdm=EPTP_SECTION, catalog=("CTRL.EPTP.RESERVED",),
     checks='If "enable EPT" is 1: EPTP[11:8] are 0 and no bit at or above MAXPHYADDR is set.',
     broken="VMLAUNCH/VMRESUME fail with VMfailValid(7).",
     fix="Build EPTP from the PML4 table's physical address (4-KByte aligned) | walk length | memory type.",
     examples=[B(field_patch("EPT_POINTER", 0x1A2B511E)), B(field_patch("EPT_POINTER", (1 << 40) | 0x1E)),
               G(field_patch("EPT_POINTER", 0x7F_FFFF_F01E))])
def eptp_reserved(ctx: Context) -> object:
    eptp = _eptp(ctx)
    if eptp is None:
        return SKIP
    out = []
    if eptp & EPTP_RESERVED.mask:
        out.append(Violation(f"{shown('EPT_POINTER', eptp)}: bits 11:8 = {hexs(EPTP_RESERVED(eptp))} are reserved"))
    n = ctx.maxphyaddr()
    if eptp >> n:
        out.append(Violation(f"{shown('EPT_POINTER', eptp)} sets bit(s) "
                             f"{', '.join(str(b) for b in bits_of(eptp >> n << n))} at or above MAXPHYADDR ({n})",
                             "Store the PML4 table's physical address, not a virtual address."))
    return out or None


# ------------------------------------------------------------------- HLAT

def _hlat_patch(**fields: int) -> Dict[str, str]:
    p = {**controls_patch(("tertiary.enable_hlat", 1)), "msr/0x492": "0x1e"}
    for k, v in fields.items():
        p.update(field_patch(k, v))
    return p


@ctl(id="CTL077", slug="ctl-hlatp-reserved", title="HLATP must not set reserved bits",
     sdm=f"{EXEC}; Vol.3C 25.6.2 Table 25-7 (HLAT pointer) {ED}", catalog=("CTRL.HLAT.HLATP_RESERVED",),
     checks='If tertiary "enable HLAT" is 1: HLATP bits 2:0 and 11:5 are 0 (bits 4:3 are PWT/PCD) and no bit at or '
            "above MAXPHYADDR is set. The low-bit rule is reported as implementation-specific: the catalog rates "
            "its source as low confidence.",
     broken="VMLAUNCH/VMRESUME fail with VMfailValid(7).",
     fix="Store the 4-KByte aligned physical address of the HLAT root table in HLATP.",
     examples=[B(_hlat_patch(HLATP=1 << 44)), G(_hlat_patch(HLATP=0x1A2BA000))])
def hlatp_reserved(ctx: Context) -> object:
    if not on(ctx, "tertiary", "enable_hlat"):
        return SKIP
    p = read(ctx, "HLATP")
    out = []
    low = p & HLATP_RESERVED
    if low:
        out.append(Violation(f"{shown('HLATP', p)}: reserved bits {', '.join(str(b) for b in bits_of(low))} are set",
                             certain=False))
    n = ctx.maxphyaddr()
    if p >> n:
        out.append(Violation(f"{shown('HLATP', p)} sets bits at or above MAXPHYADDR ({n})"))
    return out or None


@ctl(id="CTL078", slug="ctl-hlat-prefix-size", title="The HLAT prefix size must not exceed IA32_VMX_EPT_VPID_CAP[53:48]",
     sdm=f"{EXEC}; Vol.3D A.10 {ED}", catalog=("CTRL.HLAT.PREFIX_SIZE",),
     checks='If "enable HLAT" is 1: HLAT_PREFIX_SIZE <= the maximum the processor enumerates in '
            "IA32_VMX_EPT_VPID_CAP[53:48] (low-confidence rule: reported as implementation-specific).",
     broken="VMLAUNCH/VMRESUME may fail with VMfailValid(7).",
     fix="Use a prefix size the processor reports (IA32_VMX_EPT_VPID_CAP[53:48]).",
     examples=[B(_hlat_patch(HLATP=0x1A2BA000, HLAT_PREFIX_SIZE=3)), G(_hlat_patch(HLATP=0x1A2BA000, HLAT_PREFIX_SIZE=0))])
def hlat_prefix(ctx: Context) -> object:
    if not on(ctx, "tertiary", "enable_hlat"):
        return SKIP
    size = read(ctx, "HLAT_PREFIX_SIZE")
    cap = _ept_cap(ctx)
    limit = EPT_CAP_HLAT_PREFIX(cap)
    if size > limit:
        return Violation(f"{shown('HLAT_PREFIX_SIZE', size)} exceeds {msr_name(IA32_VMX_EPT_VPID_CAP)}[53:48] = {limit}",
                         certain=False)
    return None


# ---------------------------------------------------- MSR-store/-load areas

def msr_area(ctx: Context, count_field: str, addr_field: str) -> object:
    """A non-zero count: address 16-byte aligned, and both ends within the physical-address width."""
    count = read(ctx, count_field)
    if count == 0:
        return SKIP
    addr = read(ctx, addr_field)
    width = addr_width(ctx)
    out = []
    if addr & 0xF:
        out.append(Violation(f"{shown(addr_field, addr)}: bits 3:0 are not 0 ({shown(count_field, count)})",
                             f"Align the MSR area on 16 bytes and store its physical address in {label(addr_field)}."))
    if addr >> width:
        out.append(Violation(f"{shown(addr_field, addr)} sets bits at or above the physical-address width "
                             f"({width_why(ctx, width)})",
                             f"Store the area's physical address in {label(addr_field)}."))
    else:
        last = addr + 16 * count - 1
        if last >> width:
            out.append(Violation(f"the last byte of the area, {label(addr_field)} + 16 * {label(count_field)} - 1 = "
                                 f"{hexs(addr)} + 16 * {count} - 1 = {hexs(last)}, is beyond the physical-address width "
                                 f"({width_why(ctx, width)})",
                                 f"Lower {label(count_field)} or move the area lower in physical memory."))
    return out or None


_AREAS = (
    ("CTL080", "exit-msr-store", "VM_EXIT_MSR_STORE_COUNT", "VM_EXIT_MSR_STORE_ADDR", EXITC,
     ("CTRL.EXIT.MSR_STORE_ALIGN", "CTRL.EXIT.MSR_STORE_WIDTH", "CTRL.EXIT.MSR_STORE_END_WIDTH")),
    ("CTL081", "exit-msr-load", "VM_EXIT_MSR_LOAD_COUNT", "VM_EXIT_MSR_LOAD_ADDR", EXITC,
     ("CTRL.EXIT.MSR_LOAD_ALIGN", "CTRL.EXIT.MSR_LOAD_WIDTH", "CTRL.EXIT.MSR_LOAD_END_WIDTH")),
    ("CTL082", "entry-msr-load", "VM_ENTRY_MSR_LOAD_COUNT", "VM_ENTRY_MSR_LOAD_ADDR", ENTRYC,
     ("CTRL.ENTRY.MSR_LOAD_ALIGN", "CTRL.ENTRY.MSR_LOAD_WIDTH", "CTRL.ENTRY.MSR_LOAD_END_WIDTH")),
)

for _id, _slug, _count, _addr, _sdm, _cat in _AREAS:
    ctl(id=_id, defined_in="vmxdbg/rules/controls.py, _AREAS and msr_area()", slug=f"ctl-{_slug}-area", title=f"{label(_addr)}: aligned, and the whole area within the address width",
        sdm=_sdm, catalog=_cat,
        checks=(f"If {label(_count)} is not 0: bits 3:0 of {label(_addr)} are 0, and neither the address nor the "
                "area's last byte (address + 16 * count - 1) sets a bit at or above the physical-address width."),
        broken="VMLAUNCH/VMRESUME fail with VMfailValid(7).",
        fix="Use a 16-byte aligned area in physical memory below the address width.",
        examples=[B({**field_patch(_count, 2), **field_patch(_addr, 0x1A2BB008)}),
                  B({**field_patch(_count, 2), **field_patch(_addr, 0x7F_FFFF_FFF0)}),
                  G({**field_patch(_count, 2), **field_patch(_addr, 0x1A2BB000)})],
        )(lambda ctx, _c=_count, _a=_addr: msr_area(ctx, _c, _a))


@ctl(id="CTL085", slug="ctl-msr-list-size", title="MSR lists should not exceed the recommended size",
     sdm=f"{EXITC}; {ENTRYC}; Vol.3D A.6 {ED}", catalog=("CTRL.MSR_LIST.COUNT_RECOMMENDED",), status="advice",
     checks="Each of the VM-exit MSR-store, VM-exit MSR-load and VM-entry MSR-load counts is at most "
            "512 * (IA32_VMX_MISC[27:25] + 1).",
     broken="Not a VM-entry check: beyond the recommended size the SDM says behaviour is undefined "
            "(a machine check may occur during the transition).",
     fix="Keep MSR lists short (a few entries); switch rarely used MSRs in software.",
     examples=[B(field_patch("VM_ENTRY_MSR_LOAD_COUNT", 513)), G(field_patch("VM_ENTRY_MSR_LOAD_COUNT", 512))])
def msr_list_size(ctx: Context) -> object:
    limit = 512 * (MISC_MAX_MSR_LIST(ctx.msr(IA32_VMX_MISC)) + 1)
    out = []
    for f in ("VM_EXIT_MSR_STORE_COUNT", "VM_EXIT_MSR_LOAD_COUNT", "VM_ENTRY_MSR_LOAD_COUNT"):
        n = read(ctx, f)
        if n > limit:
            out.append(Violation(f"{shown(f, n)} exceeds the recommended maximum {limit} "
                                 f"(512 * (IA32_VMX_MISC[27:25] + 1))"))
    return out or None


# ------------------------------------------------------ event injection

INJECT = f"{ENTRYC}; Vol.3C 25.8.3 VM-Entry Controls for Event Injection {ED}"
TYPE_NAMES = {0: "external interrupt", 1: "reserved", 2: "NMI", 3: "hardware exception", 4: "software interrupt",
              5: "privileged software exception", 6: "software exception", 7: "other event"}
ERROR_CODE_VECTORS = (8, 10, 11, 12, 13, 14, 17)
CP_VECTOR = 21


def _injection(ctx: Context) -> Optional[int]:
    """The VM-entry interruption-information field when its valid bit (31) is 1, else None."""
    info = read(ctx, "VM_ENTRY_INTR_INFO_FIELD")
    return info if INFO_VALID(info) else None


def _desc(info: int) -> str:
    t = INFO_TYPE(info)
    return f"{shown('VM_ENTRY_INTR_INFO_FIELD', info)} (type {t} {TYPE_NAMES[t]}, vector {INFO_VECTOR(info)})"


URG = controls_patch(("secondary.unrestricted_guest", 1))


def inj(info: int, **fields: int) -> Dict[str, str]:
    p = field_patch("VM_ENTRY_INTR_INFO_FIELD", info)
    for k, v in fields.items():
        p.update(field_patch(k, v))
    return p


def _inject_rule(id_: str, slug: str, title: str, catalog: Sequence[str], checks: str, fix: str,
                 examples: List[Example]) -> Callable[[Callable[[Context, int], Any]], Any]:
    """Register a rule that runs only when an event is injected (valid bit 31 = 1)."""
    def deco(fn: Callable[[Context, int], Any]) -> Any:
        def check(ctx: Context) -> object:
            info = _injection(ctx)
            if info is None:
                return SKIP
            return fn(ctx, info)
        check.__name__ = fn.__name__
        ctl(id=id_, slug=slug, title=title, sdm=INJECT, catalog=catalog,
            checks=f"If bit 31 (valid) of VM_ENTRY_INTR_INFO_FIELD (0x4016) is 1: {checks}",
            broken="VMLAUNCH/VMRESUME fail with VMfailValid(7); nothing is injected.", fix=fix,
            examples=examples)(check)
        return fn
    return deco


@_inject_rule("CTL090", "ctl-inject-type-reserved", "The injected event type must not be 1 (reserved)",
              ("CTRL.ENTRY.INTINFO_TYPE_RESERVED",), "the interruption type (bits 10:8) is not 1.",
              "Use type 0 (external interrupt), 2 (NMI), 3 (hardware exception), 4-6 (software) or 7.",
              [B(inj(0x80000120)), G(inj(0x80000020))])
def inject_type_reserved(ctx: Context, info: int) -> object:
    if INFO_TYPE(info) == 1:
        return Violation(f"{_desc(info)}: interruption type 1 is reserved")
    return None


@_inject_rule("CTL091", "ctl-inject-type-other", "Type 7 (other event) needs support for monitor trap flag",
              ("CTRL.ENTRY.INTINFO_TYPE_OTHER",),
              "type 7 is used only on processors that support the 1-setting of \"monitor trap flag\" "
              "(primary processor-based control bit 27, capability MSR bit 59).",
              "Do not inject a pending MTF VM exit on a processor without monitor trap flag.",
              [B({**inj(0x80000700), "msr/0x482": "0xf7f9fffe0401e172", "msr/0x48e": "0xf7f9fffe04006172"}),
               G(inj(0x80000700))])
def inject_type_other(ctx: Context, info: int) -> object:
    if INFO_TYPE(info) != 7:
        return None
    idx = _governing_msr(ctx, "primary")
    cap = ctx.msr(idx)
    mtf = bit("primary", "monitor_trap_flag")
    if not CTLS_ALLOWED1(cap) >> mtf & 1:
        return Violation(f"{_desc(info)}, but {msr_name(idx)} = {hexs(cap)} does not allow "
                         f"{control_label('primary', 'monitor_trap_flag')} (bit {CTLS_ALLOWED1.lo + mtf} is 0)")
    return None


@_inject_rule("CTL092", "ctl-inject-nmi-vector", "An injected NMI must have vector 2",
              ("CTRL.ENTRY.INTINFO_NMI_VECTOR",), "if the type is 2 (NMI), the vector (bits 7:0) is 2.",
              "Inject an NMI as 0x80000202.", [B(inj(0x80000203)), G(inj(0x80000202))])
def inject_nmi_vector(ctx: Context, info: int) -> object:
    if INFO_TYPE(info) == 2 and INFO_VECTOR(info) != 2:
        return Violation(f"{_desc(info)}: an NMI must use vector 2")
    return None


@_inject_rule("CTL093", "ctl-inject-exception-vector", "An injected hardware exception must have a vector <= 31",
              ("CTRL.ENTRY.INTINFO_HWEXC_VECTOR",), "if the type is 3 (hardware exception), the vector is at most 31.",
              "Inject vectors above 31 as external interrupts (type 0) or software interrupts (type 4).",
              [B(inj(0x80000320)), G(inj(0x80000306))])
def inject_exception_vector(ctx: Context, info: int) -> object:
    if INFO_TYPE(info) == 3 and INFO_VECTOR(info) > 31:
        return Violation(f"{_desc(info)}: hardware exceptions have vectors 0-31")
    return None


@_inject_rule("CTL094", "ctl-inject-other-vector", "Type 7 (other event) must have vector 0",
              ("CTRL.ENTRY.INTINFO_OTHER_VECTOR",),
              "if the type is 7 (other event), the vector is 0 (pending MTF VM exit); with guest CR4.FRED (bit 32) "
              "= 1, vectors 1 (SYSCALL) and 2 (SYSENTER) are allowed too (FRED architecture spec 346446).",
              "Inject a pending MTF VM exit as 0x80000700.",
              [B(inj(0x80000701)), G(inj(0x80000700)), G(inj(0x80000701, GUEST_CR4=0x1003726F8))])
def inject_other_vector(ctx: Context, info: int) -> object:
    if INFO_TYPE(info) != 7 or INFO_VECTOR(info) == 0:
        return None
    vector = INFO_VECTOR(info)
    if vector in (1, 2) and read(ctx, "GUEST_CR4") & CR4_FRED:
        return None
    return Violation(f"{_desc(info)}: type 7 needs vector 0 (or 1/2 with guest CR4.FRED = 1)")


def _protected_guest(ctx: Context) -> bool:
    """The injection rules' "protected-mode guest": not ("unrestricted guest" = 1 and GUEST_CR0.PE = 0).
    (PE = 0 without unrestricted guest fails the guest-state checks instead.)"""
    if not on(ctx, "secondary", "unrestricted_guest"):
        return True
    return bool(read(ctx, "GUEST_CR0") & CR0_PE)


@_inject_rule("CTL095", "ctl-inject-error-code-not-allowed",
              "No error code for non-exceptions or for a real-mode guest",
              ("CTRL.ENTRY.ERRCODE_NOT_ALLOWED",),
              "deliver-error-code (bit 11) is 0 if the type is not 3 (hardware exception), or if \"unrestricted "
              "guest\" is 1 and bit 0 (PE) of GUEST_CR0 is 0 (a real-mode guest).",
              "Clear bit 11 of VM_ENTRY_INTR_INFO_FIELD for this event.",
              [B(inj(0x80000820)), B({**inj(0x80000B0D, GUEST_CR0=0x30), **URG}), G(inj(0x80000B0D)),
               G(inj(0x80000B0D, GUEST_CR0=0x30))])
def inject_error_code_not_allowed(ctx: Context, info: int) -> object:
    if not INFO_ERRCODE(info):
        return None
    if INFO_TYPE(info) != 3:
        return Violation(f"{_desc(info)} sets deliver-error-code (bit 11): only hardware exceptions push error codes")
    if not _protected_guest(ctx):
        cr0 = read(ctx, "GUEST_CR0")
        return Violation(f"{_desc(info)} sets deliver-error-code (bit 11) but {shown('GUEST_CR0', cr0)} has PE = 0 "
                         f"with {control_label('secondary', 'unrestricted_guest')} = 1: a real-mode guest gets no "
                         "error code")
    return None


def _error_code_vectors(ctx: Context, vector: int) -> bool:
    if vector == CP_VECTOR:  # #CP pushes an error code on processors with CET
        return bool(ctx.cpuid_bit(7, 0, 2, 7))
    return vector in ERROR_CODE_VECTORS


@_inject_rule("CTL096", "ctl-inject-error-code-vector",
              "deliver-error-code must match the exception vector (unless IA32_VMX_BASIC[56] = 1)",
              ("CTRL.ENTRY.ERRCODE_VECTOR_MATCH",),
              "for a hardware exception to a protected-mode guest (not \"unrestricted guest\" with GUEST_CR0.PE = 0) "
              "and IA32_VMX_BASIC[56] = 0, deliver-error-code is 1 "
              "exactly for #DF, #TS, #NP, #SS, #GP, #PF, #AC (8, 10-14, 17; and #CP 21 on CET processors).",
              "Set bit 11 for vectors that push an error code (and write VM_ENTRY_EXCEPTION_ERROR_CODE); clear it "
              "for the others.",
              [B(inj(0x8000030D)), B(inj(0x80000B06)), G(inj(0x80000B0D)), G(inj(0x80000306))])
def inject_error_code_vector(ctx: Context, info: int) -> object:
    if INFO_TYPE(info) != 3 or not _protected_guest(ctx):
        return None
    basic = ctx.msr(IA32_VMX_BASIC)
    if BASIC_NO_ERROR_CODE_CHECK(basic):
        return None
    vector = INFO_VECTOR(info)
    wanted = _error_code_vectors(ctx, vector)
    has = bool(INFO_ERRCODE(info))
    if wanted != has:
        what = "pushes an error code, so bit 11 must be 1" if wanted else "has no error code, so bit 11 must be 0"
        return Violation(f"{_desc(info)}: exception {vector} {what} (IA32_VMX_BASIC = {hexs(basic)}, bit 56 = 0)")
    return None


@_inject_rule("CTL097", "ctl-inject-reserved-bits", "VM_ENTRY_INTR_INFO_FIELD bits 30:12 must be 0",
              ("CTRL.ENTRY.INTINFO_RESERVED",),
              "bits 30:12 are 0 (bit 13, 'nested exception', is allowed for type 3 when IA32_VMX_BASIC[58] = 1: "
              "FRED).",
              "Build the field as valid | (deliver-error-code << 11) | (type << 8) | vector.",
              [B(inj(0x80010306)), G(inj(0x80000306))])
def inject_reserved(ctx: Context, info: int) -> object:
    rsvd = info & INFO_RESERVED
    if rsvd == INFO_NESTED and INFO_TYPE(info) == 3 and BASIC_NESTED_EXCEPTION(ctx.msr(IA32_VMX_BASIC)):
        return None
    if rsvd:
        return Violation(f"{_desc(info)}: reserved bit(s) {', '.join(str(b) for b in bits_of(rsvd))} are set")
    return None


@_inject_rule("CTL098", "ctl-inject-error-code-reserved", "The injected error code's bits 31:16 must be 0",
              ("CTRL.ENTRY.ERRCODE_RESERVED",),
              "if deliver-error-code is 1, bits 31:16 of VM_ENTRY_EXCEPTION_ERROR_CODE (0x4018) are 0.",
              "Write a 16-bit error code.",
              [B(inj(0x80000B0D, VM_ENTRY_EXCEPTION_ERROR_CODE=0x10000)),
               G(inj(0x80000B0D, VM_ENTRY_EXCEPTION_ERROR_CODE=0xFFFF))])
def inject_error_code_reserved(ctx: Context, info: int) -> object:
    if not INFO_ERRCODE(info):
        return None
    ec = read(ctx, "VM_ENTRY_EXCEPTION_ERROR_CODE")
    if ec >> 16:
        return Violation(f"{shown('VM_ENTRY_EXCEPTION_ERROR_CODE', ec)}: bits 31:16 are not 0 ({_desc(info)})")
    return None


SOFTWARE_TYPES = (4, 5, 6)


@_inject_rule("CTL099", "ctl-inject-instruction-length", "Software events need an instruction length of at most 15",
              ("CTRL.ENTRY.INSTR_LEN_RANGE",),
              "for type 4, 5 or 6 (software interrupt, privileged software exception, software exception), "
              "VM_ENTRY_INSTRUCTION_LEN (0x401a) is at most 15.",
              "Write the length of the INT n / INT3 / INTO / INT1 instruction (1-15) to VM_ENTRY_INSTRUCTION_LEN.",
              [B(inj(0x80000403, VM_ENTRY_INSTRUCTION_LEN=16)), G(inj(0x80000403, VM_ENTRY_INSTRUCTION_LEN=2))])
def inject_length(ctx: Context, info: int) -> object:
    if INFO_TYPE(info) not in SOFTWARE_TYPES:
        return None
    n = read(ctx, "VM_ENTRY_INSTRUCTION_LEN")
    if n > 15:
        return Violation(f"{shown('VM_ENTRY_INSTRUCTION_LEN', n)} is above 15 ({_desc(info)})")
    return None


@_inject_rule("CTL100", "ctl-inject-instruction-length-zero",
              "An instruction length of 0 needs IA32_VMX_MISC[30]",
              ("CTRL.ENTRY.INSTR_LEN_ZERO",),
              "for type 4, 5 or 6, VM_ENTRY_INSTRUCTION_LEN is 0 only if IA32_VMX_MISC[30] = 1.",
              "Write the real instruction length (1-15).",
              [B({**inj(0x80000403, VM_ENTRY_INSTRUCTION_LEN=0), "msr/0x485": "0x3004c1e7"}),
               G(inj(0x80000403, VM_ENTRY_INSTRUCTION_LEN=0))])
def inject_length_zero(ctx: Context, info: int) -> object:
    if INFO_TYPE(info) not in SOFTWARE_TYPES:
        return None
    if read(ctx, "VM_ENTRY_INSTRUCTION_LEN") == 0:
        misc = ctx.msr(IA32_VMX_MISC)
        if not MISC_ZERO_LENGTH(misc):
            return Violation(f"VM_ENTRY_INSTRUCTION_LEN (0x401a) = 0x0 for {_desc(info)}, and "
                             f"{msr_name(IA32_VMX_MISC)} = {hexs(misc)} has bit 30 clear")
    return None


@_inject_rule("CTL101", "ctl-inject-fred-length", "FRED SYSCALL/SYSENTER injection needs a length of at most 15",
              ("CTRL.ENTRY.FRED_EVENT_LEN",),
              "for type 7 with vector 1 or 2 (FRED: SYSCALL/SYSENTER, events that exist only with guest "
              "CR4.FRED = 1, CTL094), VM_ENTRY_INSTRUCTION_LEN is at most 15 (FRED architecture spec 346446, "
              "VMX interactions).",
              "Write the SYSCALL/SYSENTER length (2) to VM_ENTRY_INSTRUCTION_LEN.",
              [B(inj(0x80000701, VM_ENTRY_INSTRUCTION_LEN=16, GUEST_CR4=0x1003726F8)),
               G(inj(0x80000701, VM_ENTRY_INSTRUCTION_LEN=2, GUEST_CR4=0x1003726F8)),
               G(inj(0x80000701, VM_ENTRY_INSTRUCTION_LEN=16))])
def inject_fred_length(ctx: Context, info: int) -> object:
    if INFO_TYPE(info) != 7 or INFO_VECTOR(info) not in (1, 2) or not read(ctx, "GUEST_CR4") & CR4_FRED:
        return None
    n = read(ctx, "VM_ENTRY_INSTRUCTION_LEN")
    if n > 15:
        return Violation(f"{shown('VM_ENTRY_INSTRUCTION_LEN', n)} is above 15 ({_desc(info)})")
    return None


# ------------------------------------------------------------------- SMM

@ctl(id="CTL105", slug="ctl-entry-to-smm-outside-smm", title='"entry to SMM" must be 0 outside SMM',
     sdm=ENTRYC, catalog=("CTRL.ENTRY.SMM_OUTSIDE_SMM",),
     checks='Outside SMM (state.smm = false), VM-entry control "entry to SMM" (bit 10) is 0.',
     broken="VMLAUNCH/VMRESUME fail with VMfailValid(7).",
     fix='Clear "entry to SMM": it is only for the SMM-transfer monitor returning from SMM.',
     examples=[B(controls_patch(("entry.entry_to_smm", 1))), G({**controls_patch(("entry.entry_to_smm", 1)),
                                                                 "state/smm": True})])
def entry_to_smm(ctx: Context) -> object:
    if not on(ctx, "entry", "entry_to_smm"):
        return SKIP
    if not ctx.state("smm"):
        return Violation(f"{control_label('entry', 'entry_to_smm')} is 1 "
                         f"({shown('VM_ENTRY_CONTROLS', raw(ctx, 'entry'))}) and the processor is not in SMM")
    return None


@ctl(id="CTL106", slug="ctl-deactivate-dual-monitor-outside-smm",
     title='"deactivate dual-monitor treatment" must be 0 outside SMM',
     sdm=ENTRYC, catalog=("CTRL.ENTRY.DUALMON_OUTSIDE_SMM",),
     checks='Outside SMM, VM-entry control "deactivate dual-monitor treatment" (bit 11) is 0.',
     broken="VMLAUNCH/VMRESUME fail with VMfailValid(7).",
     fix='Clear "deactivate dual-monitor treatment" outside SMM.',
     examples=[B(controls_patch(("entry.deactivate_dual_monitor", 1))),
               G({**controls_patch(("entry.deactivate_dual_monitor", 1)), "state/smm": True})])
def dual_monitor(ctx: Context) -> object:
    if not on(ctx, "entry", "deactivate_dual_monitor"):
        return SKIP
    if not ctx.state("smm"):
        return Violation(f"{control_label('entry', 'deactivate_dual_monitor')} is 1 "
                         f"({shown('VM_ENTRY_CONTROLS', raw(ctx, 'entry'))}) and the processor is not in SMM")
    return None


__all__ = ["allowed_settings", "aligned_in_width", "dependency", "msr_area", "sdm"]
