"""VM-entry checks on the host-state area: VM-instruction error 8.

Sources: Vol.3C 27.2.2 "Checks on Host Control Registers, MSRs, and SSP",
27.2.3 "Checks on Host Segment and Descriptor-Table Registers", 27.2.4
"Checks Related to Address-Space Size" (SDM 325462-080US, June 2023); the
host FRED and IA32_SPEC_CTRL fields come from later material, cited per rule.
The address-space-size rules are reported as error 8 even where they
constrain the "IA-32e mode guest" VM-entry control, and they use the current
IA32_EFER.LMA of the processor executing VMLAUNCH/VMRESUME.

These rules share the tier of controls.py: a processor may check controls and
host state in any order (27.2), so both errors are possible outcomes.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

from .entrystate import intel64
from ..common.numbers import bits_of, hexs
from .bits import describe_bits, reg_bit, reg_field, reg_reserved
from . import msrvalues
from .engine import SKIP, Context, Example, Missing, Tier, Violation, bad, good, rule
from .entry_tables import BASELINE, baseline_vmcs, controls_patch, field_patch, table, table_row
from .vmcsctl import control_label, encoding, is_canonical, label, linear_width, on, qualified, raw, read, shown

ED = "(SDM 325462-080US, 2023)"
ENTRY = ("vmlaunch", "vmresume")
OUTCOME = "VMfailValid:8"
CRS = f"Vol.3C 27.2.2 Checks on Host Control Registers, MSRs, and SSP {ED}"
SEGS = f"Vol.3C 27.2.3 Checks on Host Segment and Descriptor-Table Registers {ED}"
SIZE = f"Vol.3C 27.2.4 Checks Related to Address-Space Size {ED}"
FRED = "FRED architecture specification 346446 (VMX interactions), with Vol.3C 27.2.2 (SDM 325462-086US, Dec 2024)"
BROKEN = "VMLAUNCH/VMRESUME fail with VMfailValid(8): VM entry with invalid host-state field(s)."
# register bits and fields by their structs/registers.yaml names
CR0_WP = reg_bit("CR0", "wp")
CR4_PAE, CR4_PCIDE, CR4_CET = (reg_bit("CR4", n) for n in ("pae", "pcide", "cet"))
EFER_LME, EFER_LMA = reg_bit("IA32_EFER", "lme"), reg_bit("IA32_EFER", "lma")
PMU_VERSION, PMU_GP_COUNTERS = reg_field("CPUID_0A_EAX", "version"), reg_field("CPUID_0A_EAX", "gp_counters")
PMU_FIXED_COUNTERS = reg_field("CPUID_0A_EDX", "fixed_counters")
SEL_RPL, SEL_TI = reg_field("SEGMENT_SELECTOR", "rpl"), reg_bit("SEGMENT_SELECTOR", "ti")
PERF_METRICS = reg_bit("IA32_PERF_GLOBAL_CTRL", "perf_metrics_enable")
FIXED_CTR0 = reg_field("IA32_PERF_GLOBAL_CTRL", "fixed_ctr_enables").lo
S_CET_RESERVED = reg_reserved("IA32_S_CET")  # bits 9:6
S_CET_RESERVED_BITS = reg_field("IA32_S_CET", "reserved_9_6")
S_CET_SUPPRESS, S_CET_TRACKER = reg_bit("IA32_S_CET", "suppress"), reg_bit("IA32_S_CET", "tracker")


def B(patch: Dict[str, Any]) -> Example:
    return bad(patch, BASELINE)


def G(patch: Dict[str, Any]) -> Example:
    return good(patch, BASELINE)


def host(**kw: Any) -> Callable[[Callable[[Context], Any]], Callable[[Context], Any]]:
    """`rule` with this module's instructions, tier and outcome."""
    kw.setdefault("broken", BROKEN)
    return rule(instructions=ENTRY, tier=Tier.CONTROLS_HOST, outcome=OUTCOME, **kw)


def base(field: str) -> int:
    """The vmentry baseline's value of a VMCS field (for building example patches)."""
    return baseline_vmcs()[encoding(field)]


def host64(ctx: Context) -> bool:
    return on(ctx, "exit", "host_address_space_size")


def _canonical_violation(ctx: Context, field: str, why: str = "") -> Optional[Violation]:
    v = read(ctx, field)
    n = linear_width(ctx)
    if not is_canonical(v, n):
        return Violation(f"{shown(field, v)} is not canonical: bits 63:{n - 1} are not all equal "
                         f"({n}-bit linear addresses, CPUID.80000008H:EAX[15:8]){why}",
                         f"Write a canonical (sign-extended) address to {label(field)}.")
    return None


# ------------------------------------------------------- CR0 / CR4 fixed bits

def _fixed(ctx: Context, field: str, reg: str, msr: int, msr_name: str, must_be_one: bool) -> Optional[Violation]:
    v, fixed = read(ctx, field), ctx.msr(msr)
    badbits = fixed & ~v if must_be_one else v & ~fixed & 0xFFFFFFFFFFFFFFFF
    if not badbits:
        return None
    state = "clear" if must_be_one else "set"
    need = "set" if must_be_one else "clear"
    return Violation(f"{shown(field, v)} has {describe_bits(reg, badbits)} {state}, but {msr_name} "
                     f"(MSR {hexs(msr)}) = {hexs(fixed)} requires {'them' if badbits & (badbits - 1) else 'it'} {need}",
                     f"{'Set' if must_be_one else 'Clear'} {hexs(badbits)} in {label(field)} (the host runs with these "
                     f"{reg.upper()} bits after every VM exit; copy the current {reg.upper()}, which passed VMXON).")


_FIXED = (
    ("HOST001", "host-cr0-fixed0", "HOST_CR0", "cr0", 0x486, "IA32_VMX_CR0_FIXED0", True, "HOST.CR0.FIXED0",
     {"vmcs/0x6c00": "0x80050013"}, {"vmcs/0x6c00": "0x80050033"}),
    ("HOST002", "host-cr0-fixed1", "HOST_CR0", "cr0", 0x487, "IA32_VMX_CR0_FIXED1", False, "HOST.CR0.FIXED1",
     {"vmcs/0x6c00": "0x180050033"}, {"vmcs/0x6c00": "0x80050033"}),
    ("HOST003", "host-cr4-fixed0", "HOST_CR4", "cr4", 0x488, "IA32_VMX_CR4_FIXED0", True, "HOST.CR4.FIXED0",
     {"vmcs/0x6c04": "0x3706f8"}, {"vmcs/0x6c04": "0x3726f8"}),
    ("HOST004", "host-cr4-fixed1", "HOST_CR4", "cr4", 0x489, "IA32_VMX_CR4_FIXED1", False, "HOST.CR4.FIXED1",
     {"vmcs/0x6c04": "0x13726f8"}, {"vmcs/0x6c04": "0x3726f8"}),
)

for _id, _slug, _field, _reg, _msr, _name, _one, _cat, _bad, _good in _FIXED:
    host(id=_id, defined_in="vmxdbg/rules/host.py, _FIXED and _fixed()", slug=_slug,
         title=f"{label(_field)}: bits {'set' if _one else 'clear'} in {_name} must be {'1' if _one else '0'}",
         sdm=f"{CRS}; Vol.3C 24.8 Restrictions on VMX Operation; Vol.3D A.7-A.8 {ED}", catalog=(_cat,),
         checks=(f"({label(_field)} & {_name}) == {_name}" if _one else f"({label(_field)} & ~{_name}) == 0")
         + f" (MSR {hexs(_msr)}); no unrestricted-guest relaxation applies to the host.",
         fix=f"Write the {_reg.upper()} the host really runs with (it passed VMXON's identical check).",
         examples=[B(_bad), G(_good)],
         )(lambda ctx, _f=_field, _r=_reg, _m=_msr, _n=_name, _o=_one: _fixed(ctx, _f, _r, _m, _n, _o))


@host(id="HOST005", slug="host-cet-requires-wp", title="Host CR4.CET = 1 requires host CR0.WP = 1",
      sdm=CRS, catalog=("HOST.CR4.CET_REQUIRES_WP",),
      checks="If bit 23 (CET) of HOST_CR4 is 1, bit 16 (WP) of HOST_CR0 is 1.",
      fix="Set CR0.WP in HOST_CR0 (CET cannot be enabled with write protection off).",
      examples=[B({"vmcs/0x6c04": "0xb726f8", "vmcs/0x6c00": "0x80040033"}),
                G({"vmcs/0x6c04": "0xb726f8", "vmcs/0x6c00": "0x80050033"})])
def cet_requires_wp(ctx: Context) -> object:
    cr4 = read(ctx, "HOST_CR4")
    if not cr4 & CR4_CET:
        return SKIP
    cr0 = read(ctx, "HOST_CR0")
    if not cr0 & CR0_WP:
        return Violation(f"{shown('HOST_CR4', cr4)} sets CET (bit 23) but {shown('HOST_CR0', cr0)} has WP (bit 16) clear")
    return None


@host(id="HOST006", slug="host-cr3-width", title="HOST_CR3 must not set bits beyond the physical-address width",
      sdm=CRS, catalog=("HOST.CR3.RESERVED",),
      checks="No bit of HOST_CR3 at or above MAXPHYADDR is set (bits 62:61 are allowed on processors with LAM, "
             "CPUID.(EAX=7,ECX=1):EAX[26]).",
      fix="Write the host's page-table base physical address (as read from CR3) to HOST_CR3.",
      examples=[B({"vmcs/0x6c02": "0x80000001ad000"}), G({"vmcs/0x6c02": "0x1ad000"})])
def cr3_width(ctx: Context) -> object:
    cr3 = read(ctx, "HOST_CR3")
    n = ctx.maxphyaddr()
    over = cr3 >> n << n
    lam = over & (3 << 61)
    if lam and not over & ~lam:     # only bits 62:61: allowed where LAM is supported
        if ctx.cpuid_bit(7, 1, 0, 26):
            over &= ~lam
    elif lam:                       # other bits fail anyway; name them without asking about LAM
        over &= ~lam
    if over:
        return Violation(f"{shown('HOST_CR3', cr3)} sets bit(s) {', '.join(str(b) for b in bits_of(over))} at or "
                         f"above MAXPHYADDR ({n})")
    return None


# ------------------------------------------------ canonical fields (table)

def canonical(ctx: Context, field: str, guard: Optional[str]) -> object:
    if guard and not on(ctx, *qualified(guard)):
        return SKIP
    return _canonical_violation(ctx, field)


def _register_canonical(row: Dict[str, Any]) -> None:
    field, guard = row["field"], row.get("guard")
    gp = controls_patch((guard, 1)) if guard else {}
    when = f"If {control_label(*qualified(guard))} is 1: " if guard else ""
    host(id=row["id"], defined_in=table_row("host_canonical", row), slug=f"host-canonical-{field.lower().replace('_', '-')}",
         title=f"{label(field)} must be canonical",
         sdm=f"Vol.3C {row['sdm']} {ED}" if "(SDM" not in row["sdm"] else f"Vol.3C {row['sdm']}",
         catalog=row["catalog"],
         checks=f"{when}{label(field)} holds a canonical address: bits 63:N-1 are equal, N being the linear-address "
                "width (CPUID.80000008H:EAX[15:8]: 48, or 57 with 5-level paging).",
         fix=f"Write a sign-extended address to {label(field)} (copy the value the host really uses).",
         examples=[B({**gp, **field_patch(field, 0x0000800000000000)}),
                   B({**gp, **field_patch(field, 0xFFFF7FFFFFFFF000)}),
                   G({**gp, **field_patch(field, 0xFFFF800000001000)})],
         )(lambda ctx, _f=field, _g=guard: canonical(ctx, _f, _g))


# ------------------------------------------------------- selectors (table)

def selector_rpl_ti(ctx: Context, field: str) -> object:
    sel = read(ctx, field)
    if sel & (SEL_RPL.mask | SEL_TI):
        parts = []
        if SEL_RPL(sel):
            parts.append(f"RPL = {SEL_RPL(sel)}")
        if sel & SEL_TI:
            parts.append("TI = 1 (LDT)")
        return Violation(f"{shown(field, sel)}: {' and '.join(parts)}; the host selector must have RPL 0 and TI 0",
                         f"Write {hexs(sel & ~(SEL_RPL.mask | SEL_TI))} ({label(field)} & ~7); a VM exit loads selectors without a "
                         "descriptor-table check, so the host's kernel selectors with RPL 0 are wanted.")
    return None


def _register_selector(row: Dict[str, Any]) -> None:
    field = row["field"]
    b = base(field)
    host(id=row["id"], defined_in=table_row("host_selectors", row), slug=f"host-selector-{field.lower().replace('_', '-')}",
         title=f"{label(field)}: RPL and TI must be 0", sdm=SEGS, catalog=row["catalog"],
         checks=f"Bits 2:0 of {label(field)} (TI and RPL) are 0.",
         fix="Mask the selector with ~7 (e.g. a Windows DS of 0x2b becomes 0x28).",
         examples=[B(field_patch(field, b | 3)), B(field_patch(field, b | 4)), G(field_patch(field, b))],
         )(lambda ctx, _f=field: selector_rpl_ti(ctx, _f))


def _register_tables() -> None:
    t = table()
    for row in t["host_canonical"]:
        _register_canonical(row)
    for row in t["host_selectors"]:
        _register_selector(row)


_register_tables()


@host(id="HOST037", slug="host-cs-nonnull", title="HOST_CS_SELECTOR (0x0c02) must not be 0",
      sdm=SEGS, catalog=("HOST.CS.NONNULL",), checks="The host CS selector is not 0000H.",
      fix="Write the host's kernel code selector (e.g. 0x10 on Windows x64).",
      examples=[B(field_patch("HOST_CS_SELECTOR", 0)), G(field_patch("HOST_CS_SELECTOR", 0x10))])
def cs_nonnull(ctx: Context) -> object:
    if read(ctx, "HOST_CS_SELECTOR") == 0:
        return Violation(f"{shown('HOST_CS_SELECTOR', 0)} is the null selector")
    return None


@host(id="HOST038", slug="host-tr-nonnull", title="HOST_TR_SELECTOR (0x0c0c) must not be 0",
      sdm=SEGS, catalog=("HOST.TR.NONNULL",), checks="The host TR selector is not 0000H.",
      fix="Write the host's task-register selector (STR; e.g. 0x40 on Windows x64).",
      examples=[B(field_patch("HOST_TR_SELECTOR", 0)), G(field_patch("HOST_TR_SELECTOR", 0x40))])
def tr_nonnull(ctx: Context) -> object:
    if read(ctx, "HOST_TR_SELECTOR") == 0:
        return Violation(f"{shown('HOST_TR_SELECTOR', 0)} is the null selector")
    return None


@host(id="HOST039", slug="host-ss-nonnull-32bit", title="HOST_SS_SELECTOR must not be 0 for a 32-bit host",
      sdm=SEGS, catalog=("HOST.SS.NONNULL_IF_32BIT_HOST",),
      checks='If "host address-space size" is 0, the host SS selector is not 0000H (a 64-bit host may use a null SS).',
      fix="Write the host's stack selector to HOST_SS_SELECTOR.",
      examples=[B({**controls_patch(("exit.host_address_space_size", 0)), **field_patch("HOST_SS_SELECTOR", 0)}),
                G({**controls_patch(("exit.host_address_space_size", 0)), **field_patch("HOST_SS_SELECTOR", 0x18)})])
def ss_nonnull(ctx: Context) -> object:
    if host64(ctx):
        return SKIP
    if read(ctx, "HOST_SS_SELECTOR") == 0:
        return Violation(f"{shown('HOST_SS_SELECTOR', 0)} is null and {control_label('exit', 'host_address_space_size')} is 0")
    return None


# ------------------------------------------------------------ host MSRs

def _perf_valid_mask(ctx: Context) -> int:
    """Bits of IA32_PERF_GLOBAL_CTRL that exist: one enable per GP counter (CPUID.0AH:EAX[15:8]) and per
    fixed counter (EDX[4:0], at bit 32 + i)."""
    eax, _, _, edx = ctx.cpuid(0xA)
    gp = PMU_GP_COUNTERS(eax)
    fixed = PMU_FIXED_COUNTERS(edx) if PMU_VERSION(eax) > 1 else 0
    return ((1 << gp) - 1) | (((1 << fixed) - 1) << FIXED_CTR0)


@host(id="HOST016", slug="host-perf-global-ctrl-reserved",
      title="HOST_IA32_PERF_GLOBAL_CTRL must not set reserved bits when loaded",
      sdm=f"{CRS}; Vol.3B 20.2.2 Architectural Performance Monitoring Version 2 {ED}",
      catalog=("HOST.PERF_GLOBAL_CTRL.RESERVED",),
      checks='If "load IA32_PERF_GLOBAL_CTRL" (exit control bit 12) is 1: only counter-enable bits that exist are set '
             "(CPUID.0AH: EAX[15:8] general-purpose counters at bits n-1:0, EDX[4:0] fixed counters at bits 32+). "
             "Bit 48 (perf metrics) exists only where IA32_PERF_CAPABILITIES[15] says so: reported as "
             "implementation-specific.",
      fix="Write only bits for counters the processor has (copy the host's IA32_PERF_GLOBAL_CTRL).",
      examples=[B({**controls_patch(("exit.load_ia32_perf_global_ctrl", 1)),
                   **field_patch("HOST_IA32_PERF_GLOBAL_CTRL", 0x70000001F)}),
                G({**controls_patch(("exit.load_ia32_perf_global_ctrl", 1)),
                   **field_patch("HOST_IA32_PERF_GLOBAL_CTRL", 0x70000000F)})])
def perf_global_ctrl(ctx: Context) -> object:
    if not on(ctx, "exit", "load_ia32_perf_global_ctrl"):
        return SKIP
    v = read(ctx, "HOST_IA32_PERF_GLOBAL_CTRL")
    try:
        valid = _perf_valid_mask(ctx)
    except Missing:
        # without CPUID leaf 0AH, bits no processor has (structs/msr_values.yaml) still decide
        never = v & msrvalues.by_name("IA32_PERF_GLOBAL_CTRL").always_reserved
        if not never:
            raise
        return Violation(f"{shown('HOST_IA32_PERF_GLOBAL_CTRL', v)} sets bit(s) "
                         f"{', '.join(str(b) for b in bits_of(never))}, reserved on every processor")
    extra = v & ~valid
    out = []
    sure = extra & ~PERF_METRICS
    if sure:
        out.append(Violation(f"{shown('HOST_IA32_PERF_GLOBAL_CTRL', v)} sets reserved bit(s) "
                             f"{', '.join(str(b) for b in bits_of(sure))} (valid bits per CPUID.0AH: {hexs(valid)})"))
    if extra & PERF_METRICS:
        out.append(Violation(f"{shown('HOST_IA32_PERF_GLOBAL_CTRL', v)} sets bit 48 (perf metrics), reserved unless "
                             "IA32_PERF_CAPABILITIES[15] = 1", certain=False))
    return out or None


def _pat_types() -> List[int]:
    from ..decode import defs
    f = defs.register("IA32_PAT").fields[0]
    return sorted(f.enum)


@host(id="HOST017", slug="host-pat-valid", title="HOST_IA32_PAT entries must be valid memory types when loaded",
      sdm=CRS, catalog=("HOST.PAT.VALID",),
      checks='If "load IA32_PAT" (exit control bit 19) is 1: each of the 8 bytes of HOST_IA32_PAT is 0 (UC), 1 (WC), '
             "4 (WT), 5 (WP), 6 (WB) or 7 (UC-).",
      fix="Write the host's IA32_PAT (RDMSR 0x277), e.g. 0x0007010600070106.",
      examples=[B(field_patch("HOST_IA32_PAT", 0x0007010600070102)), B(field_patch("HOST_IA32_PAT", 0x0807010600070106)),
                G(field_patch("HOST_IA32_PAT", 0x0007040600070106))])
def pat_valid(ctx: Context) -> object:
    if not on(ctx, "exit", "load_ia32_pat"):
        return SKIP
    v = read(ctx, "HOST_IA32_PAT")
    ok = _pat_types()
    badv = [(i, v >> (8 * i) & 0xFF) for i in range(8) if v >> (8 * i) & 0xFF not in ok]
    if badv:
        return Violation(f"{shown('HOST_IA32_PAT', v)}: " + ", ".join(f"PA{i} = {hexs(t)}" for i, t in badv)
                         + f" is not a memory type (allowed: {', '.join(str(t) for t in ok)})")
    return None


def _efer_valid() -> int:
    from ..decode import defs
    m = 0
    for f in defs.register("IA32_EFER").fields:
        if not getattr(f, "reserved", False):
            m |= ((1 << (f.hi - f.lo + 1)) - 1) << f.lo
    return m


@host(id="HOST018", slug="host-efer-reserved", title="HOST_IA32_EFER must not set reserved bits when loaded",
      sdm=CRS, catalog=("HOST.EFER.RESERVED",),
      checks='If "load IA32_EFER" (exit control bit 21) is 1: only SCE (0), LME (8), LMA (10) and NXE (11) may be set '
             "(the fields structs/registers.yaml defines for IA32_EFER).",
      fix="Write the host's IA32_EFER (RDMSR 0xC0000080), e.g. 0xd01.",
      examples=[B(field_patch("HOST_IA32_EFER", 0x1D01)), G(field_patch("HOST_IA32_EFER", 0xD01))])
def efer_reserved(ctx: Context) -> object:
    if not on(ctx, "exit", "load_ia32_efer"):
        return SKIP
    v = read(ctx, "HOST_IA32_EFER")
    extra = v & ~_efer_valid()
    if extra:
        return Violation(f"{shown('HOST_IA32_EFER', v)} sets reserved bit(s) {', '.join(str(b) for b in bits_of(extra))}")
    return None


@host(id="HOST019", slug="host-efer-matches-address-space-size",
      title='HOST_IA32_EFER.LMA and .LME must equal "host address-space size"',
      sdm=CRS, catalog=("HOST.EFER.LMA_MATCHES_HOST_SIZE", "HOST.EFER.LME_MATCHES_HOST_SIZE"),
      checks='If "load IA32_EFER" is 1: bits 10 (LMA) and 8 (LME) of HOST_IA32_EFER each equal the '
             '"host address-space size" exit control (bit 9).',
      fix="A 64-bit host needs LMA = LME = 1 in HOST_IA32_EFER (0xd01 on Windows/Linux x64); a 32-bit host needs both 0.",
      examples=[B(field_patch("HOST_IA32_EFER", 0x901)), B(field_patch("HOST_IA32_EFER", 0xC01)),
                G(field_patch("HOST_IA32_EFER", 0xD01))])
def efer_matches(ctx: Context) -> object:
    if not on(ctx, "exit", "load_ia32_efer"):
        return SKIP
    v = read(ctx, "HOST_IA32_EFER")
    size = int(host64(ctx))
    out = []
    for name, b in (("LMA", 10), ("LME", 8)):
        if (v >> b & 1) != size:
            out.append(Violation(f"{shown('HOST_IA32_EFER', v)}: {name} (bit {b}) = {v >> b & 1} but "
                                 f"{control_label('exit', 'host_address_space_size')} is {size} "
                                 f"({shown('VM_EXIT_CONTROLS', raw(ctx, 'exit'))})"))
    return out or None


def _cet_patch(**fields: int) -> Dict[str, str]:
    p = controls_patch(("exit.load_cet_state", 1))
    for k, v in {"HOST_S_CET": 0, "HOST_SSP": 0, "HOST_INTR_SSP_TABLE": 0, **fields}.items():
        p.update(field_patch(k, v))
    return p


@host(id="HOST020", slug="host-s-cet-reserved", title="HOST_S_CET must not set reserved bits when CET state is loaded",
      sdm=CRS, catalog=("HOST.CET.S_CET_RESERVED",),
      checks='If "load CET state" (exit control bit 28) is 1: bits 9:6 of HOST_S_CET are 0, and SUPPRESS (bit 10) '
             "and TRACKER (bit 11) are not both 1.",
      fix="Write the host's IA32_S_CET (RDMSR 0x6A2).",
      examples=[B(_cet_patch(HOST_S_CET=0x40)), B(_cet_patch(HOST_S_CET=0xC00)), G(_cet_patch(HOST_S_CET=0x401))])
def s_cet_reserved(ctx: Context) -> object:
    if not on(ctx, "exit", "load_cet_state"):
        return SKIP
    v = read(ctx, "HOST_S_CET")
    out = []
    if v & S_CET_RESERVED:
        out.append(Violation(f"{shown('HOST_S_CET', v)}: reserved bits 9:6 = {hexs(S_CET_RESERVED_BITS(v))}"))
    if v & S_CET_SUPPRESS and v & S_CET_TRACKER:
        out.append(Violation(f"{shown('HOST_S_CET', v)}: SUPPRESS (bit 10) and TRACKER (bit 11) are both 1"))
    return out or None


@host(id="HOST021", slug="host-ssp-aligned", title="HOST_SSP bits 1:0 must be 0 when CET state is loaded",
      sdm=CRS, catalog=("HOST.CET.SSP_ALIGN",),
      checks='If "load CET state" is 1: bits 1:0 of HOST_SSP are 0.',
      fix="Write a 4-byte aligned shadow-stack pointer to HOST_SSP.",
      examples=[B(_cet_patch(HOST_SSP=0xFFFF800000001002)), G(_cet_patch(HOST_SSP=0xFFFF800000001008))])
def ssp_aligned(ctx: Context) -> object:
    if not on(ctx, "exit", "load_cet_state"):
        return SKIP
    v = read(ctx, "HOST_SSP")
    if v & 3:
        return Violation(f"{shown('HOST_SSP', v)}: bits 1:0 are not 0")
    return None


@host(id="HOST022", slug="host-pkrs-reserved", title="HOST_IA32_PKRS bits 63:32 must be 0 when loaded",
      sdm=CRS, catalog=("HOST.PKRS.RESERVED",),
      checks='If "load PKRS" (exit control bit 29) is 1: bits 63:32 of HOST_IA32_PKRS are 0.',
      fix="Write the host's 32-bit IA32_PKRS value.",
      examples=[B({**controls_patch(("exit.load_pkrs", 1)), **field_patch("HOST_IA32_PKRS", 1 << 32)}),
                G({**controls_patch(("exit.load_pkrs", 1)), **field_patch("HOST_IA32_PKRS", 0x55555554)})])
def pkrs_reserved(ctx: Context) -> object:
    if not on(ctx, "exit", "load_pkrs"):
        return SKIP
    v = read(ctx, "HOST_IA32_PKRS")
    if v >> 32:
        return Violation(f"{shown('HOST_IA32_PKRS', v)}: bits 63:32 are not 0")
    return None


# ----------------------------------------------- FRED and IA32_SPEC_CTRL

def _fred_patch(**fields: int) -> Dict[str, str]:
    p = controls_patch(("secondary_exit.load_fred", 1))
    vals = {"HOST_IA32_FRED_CONFIG": 0, **{f"HOST_IA32_FRED_RSP{i}": 0xFFFF800000002000 for i in (1, 2, 3)},
            **{f"HOST_IA32_FRED_SSP{i}": 0xFFFF800000003000 for i in (1, 2, 3)}, **fields}
    for k, v in vals.items():
        p.update(field_patch(k, v))
    return p


FRED_CONFIG_RESERVED = reg_reserved("IA32_FRED_CONFIG")  # bits 2, 5:4 and 11


@host(id="HOST023", slug="host-fred-config-reserved", title="HOST_IA32_FRED_CONFIG must not set reserved bits",
      sdm=FRED, catalog=("HOST.FRED.CONFIG_RESERVED",),
      checks='If secondary VM-exit control "load FRED" (bit 1) is 1: bits 2, 5:4 and 11 of HOST_IA32_FRED_CONFIG are 0 '
             "(and the value is canonical).",
      fix="Write the host's IA32_FRED_CONFIG (RDMSR 0x1D4).",
      examples=[B(_fred_patch(HOST_IA32_FRED_CONFIG=0xFFFF800000004004)),
                G(_fred_patch(HOST_IA32_FRED_CONFIG=0xFFFF800000004000))])
def fred_config(ctx: Context) -> object:
    if not on(ctx, "secondary_exit", "load_fred"):
        return SKIP
    v = read(ctx, "HOST_IA32_FRED_CONFIG")
    out = []
    if v & FRED_CONFIG_RESERVED:
        out.append(Violation(f"{shown('HOST_IA32_FRED_CONFIG', v)}: reserved bit(s) "
                             f"{', '.join(str(b) for b in bits_of(v & FRED_CONFIG_RESERVED))} are set"))
    c = _canonical_violation(ctx, "HOST_IA32_FRED_CONFIG")
    if c:
        out.append(c)
    return out or None


def _fred_stack(ctx: Context, kind: str, align: int) -> object:
    if not on(ctx, "secondary_exit", "load_fred"):
        return SKIP
    out = []
    for i in (1, 2, 3):
        f = f"HOST_IA32_FRED_{kind}{i}"
        v = read(ctx, f)
        if v & (align - 1):
            out.append(Violation(f"{shown(f, v)}: bits {align.bit_length() - 2}:0 are not 0"))
        c = _canonical_violation(ctx, f)
        if c:
            out.append(c)
    return out or None


@host(id="HOST024", slug="host-fred-rsp", title="HOST_IA32_FRED_RSP1-3 must be canonical and 64-byte aligned",
      sdm=FRED, catalog=("HOST.FRED.RSP_CANONICAL_ALIGNED",),
      checks='If "load FRED" is 1: each of HOST_IA32_FRED_RSP1, RSP2 and RSP3 is canonical with bits 5:0 = 0.',
      fix="Write the host's FRED stack pointers (64-byte aligned, canonical).",
      examples=[B(_fred_patch(HOST_IA32_FRED_RSP2=0xFFFF800000002010)), B(_fred_patch(HOST_IA32_FRED_RSP3=1 << 47)),
                G(_fred_patch())])
def fred_rsp(ctx: Context) -> object:
    return _fred_stack(ctx, "RSP", 64)


@host(id="HOST025", slug="host-fred-ssp", title="HOST_IA32_FRED_SSP1-3 must be canonical and 8-byte aligned",
      sdm=FRED, catalog=("HOST.FRED.SSP_CANONICAL_ALIGNED",),
      checks='If "load FRED" is 1: each of HOST_IA32_FRED_SSP1, SSP2 and SSP3 is canonical with bits 2:0 = 0.',
      fix="Write the host's FRED shadow-stack pointers (8-byte aligned, canonical).",
      examples=[B(_fred_patch(HOST_IA32_FRED_SSP1=0xFFFF800000003004)), G(_fred_patch())])
def fred_ssp(ctx: Context) -> object:
    return _fred_stack(ctx, "SSP", 8)


#: IA32_SPEC_CTRL bit -> (CPUID leaf, subleaf, register index, bit) enumerating it (Vol.4 Table 2-2)
SPEC_CTRL_BITS = {0: (7, 0, 3, 26), 1: (7, 0, 3, 27), 2: (7, 0, 3, 31), 3: (7, 2, 3, 1), 4: (7, 2, 3, 1),
                  5: (7, 2, 3, 2), 6: (7, 2, 3, 2), 7: (7, 2, 3, 0), 8: (7, 2, 3, 3), 10: (7, 2, 3, 4)}


@host(id="HOST026", slug="host-spec-ctrl-reserved", title="HOST_IA32_SPEC_CTRL must not set bits the processor lacks",
      sdm="Vol.3C 27.2.2 (SDM 325462-086US, Dec 2024; not in 080); Vol.4 Table 2-2 IA32_SPEC_CTRL",
      catalog=("HOST.SPEC_CTRL.RESERVED",),
      checks='If secondary VM-exit control "load IA32_SPEC_CTRL" (bit 2) is 1: each set bit of HOST_IA32_SPEC_CTRL is '
             "one CPUID enumerates (IBRS, STIBP, SSBD: CPUID.7.0:EDX[26,27,31]; IPRED/RRSBA/PSFD/DDPD/BHI: "
             "CPUID.7.2:EDX). A bit vmxdbg has no enumeration for is reported as implementation-specific.",
      fix="Write the host's IA32_SPEC_CTRL (RDMSR 0x48).",
      examples=[B({**controls_patch(("secondary_exit.load_ia32_spec_ctrl", 1)), **field_patch("HOST_IA32_SPEC_CTRL", 0x8),
                   "cpuid/0x7.2": ["0x0", "0x0", "0x0", "0x0"]}),
                G({**controls_patch(("secondary_exit.load_ia32_spec_ctrl", 1)), **field_patch("HOST_IA32_SPEC_CTRL", 0x5)})])
def spec_ctrl(ctx: Context) -> object:
    if not on(ctx, "secondary_exit", "load_ia32_spec_ctrl"):
        return SKIP
    v = read(ctx, "HOST_IA32_SPEC_CTRL")
    out = []
    for b in bits_of(v):
        where = SPEC_CTRL_BITS.get(b)
        if where is None:
            out.append(Violation(f"{shown('HOST_IA32_SPEC_CTRL', v)} sets bit {b}, which no known CPUID bit enumerates",
                                 certain=False))
            continue
        leaf, sub, reg, cb = where
        if not ctx.cpuid_bit(leaf, sub, reg, cb):
            out.append(Violation(f"{shown('HOST_IA32_SPEC_CTRL', v)} sets bit {b}, but CPUID.(EAX={leaf:x}H,ECX={sub})"
                                 f":{'EAX EBX ECX EDX'.split()[reg]}[{cb}] = 0 (not supported)"))
    return out or None


# ----------------------------------------------------- address-space size

def _lma(ctx: Context) -> bool:
    """IA32_EFER.LMA of the processor executing VM entry."""
    return ctx.long_mode_active()


def _size_rule(id_: str, slug: str, title: str, catalog: str, checks: str, fix: str,
               examples: List[Example]) -> Callable[[Callable[[Context], Any]], Any]:
    return host(id=id_, slug=slug, title=title, sdm=SIZE, catalog=(catalog,), checks=checks, fix=fix,
                broken="VMLAUNCH/VMRESUME fail with VMfailValid(8) (address-space-size checks report the "
                       "host-state error even when they constrain a VM-entry control).",
                examples=examples)


LEGACY = {"registers/efer": "0x0", "msr/0xc0000080": "0x0"}


@_size_rule("HOST040", "host-lma0-no-ia32e-guest", 'Outside IA-32e mode, "IA-32e mode guest" must be 0',
            "HOST.ADDRSIZE.LMA0_NO_IA32E_GUEST",
            'If IA32_EFER.LMA = 0 on the processor executing VM entry, the "IA-32e mode guest" entry control is 0.',
            "A 64-bit guest needs a 64-bit VMM: run VMLAUNCH in IA-32e mode, or clear \"IA-32e mode guest\".",
            [B(LEGACY), G({**LEGACY, **controls_patch(("entry.ia32e_mode_guest", 0))})])
def lma0_guest(ctx: Context) -> object:
    if _lma(ctx):
        return SKIP
    if on(ctx, "entry", "ia32e_mode_guest"):
        return Violation(f"IA32_EFER = {hexs(ctx.reg('efer'))} (LMA = 0) and {control_label('entry', 'ia32e_mode_guest')} "
                         f"is 1 ({shown('VM_ENTRY_CONTROLS', raw(ctx, 'entry'))})")
    return None


@_size_rule("HOST041", "host-lma0-no-host64", 'Outside IA-32e mode, "host address-space size" must be 0',
            "HOST.ADDRSIZE.LMA0_NO_HOST64",
            'If IA32_EFER.LMA = 0 on the processor executing VM entry, the "host address-space size" exit control is 0.',
            "Clear \"host address-space size\": a VM exit cannot switch a 32-bit VMM into 64-bit mode.",
            [B(LEGACY), G({**LEGACY, **controls_patch(("exit.host_address_space_size", 0))})])
def lma0_host64(ctx: Context) -> object:
    if _lma(ctx):
        return SKIP
    if host64(ctx):
        return Violation(f"IA32_EFER = {hexs(ctx.reg('efer'))} (LMA = 0) and "
                         f"{control_label('exit', 'host_address_space_size')} is 1 "
                         f"({shown('VM_EXIT_CONTROLS', raw(ctx, 'exit'))})")
    return None


@_size_rule("HOST042", "host-lma1-requires-host64", 'In IA-32e mode, "host address-space size" must be 1',
            "HOST.ADDRSIZE.LMA1_REQUIRES_HOST64",
            'If IA32_EFER.LMA = 1 on the processor executing VM entry, the "host address-space size" exit control is 1.',
            "Set \"host address-space size\" (VM-exit control bit 9) for a 64-bit VMM.",
            [B(controls_patch(("exit.host_address_space_size", 0))), G({})])
def lma1_host64(ctx: Context) -> object:
    if not _lma(ctx):
        return SKIP
    if not host64(ctx):
        return Violation(f"IA32_EFER = {hexs(ctx.reg('efer'))} (LMA = 1) and "
                         f"{control_label('exit', 'host_address_space_size')} is 0 "
                         f"({shown('VM_EXIT_CONTROLS', raw(ctx, 'exit'))})")
    return None


HOST32 = controls_patch(("exit.host_address_space_size", 0), ("entry.ia32e_mode_guest", 0))


@_size_rule("HOST043", "host-32bit-no-ia32e-guest", 'A 32-bit host ("host address-space size" = 0) cannot have a 64-bit guest',
            "HOST.ADDRSIZE.HOST32_NO_IA32E_GUEST",
            'If "host address-space size" is 0, "IA-32e mode guest" is 0.',
            "Set \"host address-space size\" (64-bit VMM) or clear \"IA-32e mode guest\".",
            [B(controls_patch(("exit.host_address_space_size", 0))), G(HOST32)])
def host32_guest(ctx: Context) -> object:
    if host64(ctx):
        return SKIP
    if on(ctx, "entry", "ia32e_mode_guest"):
        return Violation(f"{control_label('exit', 'host_address_space_size')} is 0 and "
                         f"{control_label('entry', 'ia32e_mode_guest')} is 1")
    return None


@_size_rule("HOST044", "host-32bit-no-pcide", "A 32-bit host must have HOST_CR4.PCIDE = 0",
            "HOST.ADDRSIZE.HOST32_NO_PCIDE",
            'If "host address-space size" is 0, bit 17 (PCIDE) of HOST_CR4 is 0.',
            "Clear CR4.PCIDE in HOST_CR4 for a 32-bit VMM (PCIDs exist only in IA-32e mode).",
            [B(HOST32), G({**HOST32, **field_patch("HOST_CR4", 0x3526F8)})])
def host32_pcide(ctx: Context) -> object:
    if host64(ctx):
        return SKIP
    cr4 = read(ctx, "HOST_CR4")
    if cr4 & CR4_PCIDE:
        return Violation(f"{shown('HOST_CR4', cr4)} sets PCIDE (bit 17) and "
                         f"{control_label('exit', 'host_address_space_size')} is 0")
    return None


@_size_rule("HOST045", "host-32bit-rip-high", "A 32-bit host's HOST_RIP bits 63:32 must be 0",
            "HOST.ADDRSIZE.HOST32_RIP_HIGH",
            'If "host address-space size" is 0, bits 63:32 of HOST_RIP are 0.',
            "Write the 32-bit address of the VM-exit handler to HOST_RIP.",
            [B(HOST32), G({**HOST32, **field_patch("HOST_RIP", 0x80401000)})])
def host32_rip(ctx: Context) -> object:
    if host64(ctx):
        return SKIP
    rip = read(ctx, "HOST_RIP")
    if rip >> 32:
        return Violation(f"{shown('HOST_RIP', rip)}: bits 63:32 are not 0 for a 32-bit host")
    return None


HOST32_CET = controls_patch(("exit.host_address_space_size", 0), ("entry.ia32e_mode_guest", 0),
                            ("exit.load_cet_state", 1))


@_size_rule("HOST046", "host-32bit-cet-high", "A 32-bit host's HOST_S_CET and HOST_SSP bits 63:32 must be 0",
            "HOST.ADDRSIZE.HOST32_CET_HIGH",
            'If "host address-space size" is 0 and "load CET state" is 1, bits 63:32 of HOST_S_CET and HOST_SSP '
            "are 0.",
            "Write 32-bit values to the host CET fields of a 32-bit VMM.",
            [B({**_cet_patch(HOST_SSP=0xFFFF800000001000), **HOST32_CET}),
             G({**_cet_patch(HOST_SSP=0x80001000), **HOST32_CET})])
def host32_cet(ctx: Context) -> object:
    if host64(ctx) or not on(ctx, "exit", "load_cet_state"):
        return SKIP
    out = []
    for f in ("HOST_S_CET", "HOST_SSP"):
        v = read(ctx, f)
        if v >> 32:
            out.append(Violation(f"{shown(f, v)}: bits 63:32 are not 0 for a 32-bit host"))
    return out or None


@_size_rule("HOST047", "host-64bit-pae", "A 64-bit host must have HOST_CR4.PAE = 1",
            "HOST.ADDRSIZE.HOST64_PAE",
            'If "host address-space size" is 1, bit 5 (PAE) of HOST_CR4 is 1.',
            "Set CR4.PAE in HOST_CR4 (IA-32e mode requires PAE).",
            [B(field_patch("HOST_CR4", 0x3726D8)), G(field_patch("HOST_CR4", 0x3726F8))])
def host64_pae(ctx: Context) -> object:
    if not host64(ctx):
        return SKIP
    cr4 = read(ctx, "HOST_CR4")
    if not cr4 & CR4_PAE:
        return Violation(f"{shown('HOST_CR4', cr4)} has PAE (bit 5) clear and "
                         f"{control_label('exit', 'host_address_space_size')} is 1")
    return None


@_size_rule("HOST048", "host-64bit-rip-canonical", "A 64-bit host's HOST_RIP must be canonical",
            "HOST.ADDRSIZE.HOST64_RIP_CANONICAL",
            'If "host address-space size" is 1, HOST_RIP is canonical (bits 63:N-1 equal, N = the linear-address '
            "width, CPUID.80000008H:EAX[15:8]).",
            "Write the address of the VM-exit handler (a kernel address such as 0xfffff803...) to HOST_RIP.",
            [B(field_patch("HOST_RIP", 0x0000F80351A21000)), G(field_patch("HOST_RIP", 0xFFFFF80351A21000))])
def host64_rip(ctx: Context) -> object:
    if not host64(ctx):
        return SKIP
    return _canonical_violation(ctx, "HOST_RIP")


@_size_rule("HOST049", "host-64bit-ssp-canonical", "A 64-bit host's HOST_SSP must be canonical when CET state is loaded",
            "HOST.ADDRSIZE.HOST64_SSP_CANONICAL",
            'If "host address-space size" is 1 and "load CET state" is 1, HOST_SSP is canonical.',
            "Write the host's canonical shadow-stack pointer to HOST_SSP.",
            [B(_cet_patch(HOST_SSP=0x0000800000001000)), G(_cet_patch(HOST_SSP=0xFFFF800000001000))])
def host64_ssp(ctx: Context) -> object:
    if not host64(ctx) or not on(ctx, "exit", "load_cet_state"):
        return SKIP
    return _canonical_violation(ctx, "HOST_SSP")


NO_LM = {"cpuid/0x80000001": ["0x0", "0x0", "0x121", "0xc100800"]}


@_size_rule("HOST050", "host-no-intel64", "Without Intel 64 support, both address-space controls must be 0",
            "HOST.ADDRSIZE.NO_INTEL64",
            'On a processor without Intel 64 architecture (CPUID.80000001H:EDX[29] = 0), "IA-32e mode guest" and '
            '"host address-space size" are both 0.',
            "Clear both controls: the processor cannot run 64-bit code.",
            [B(NO_LM), G({**NO_LM, **HOST32})])
def no_intel64(ctx: Context) -> object:
    if intel64(ctx):
        return SKIP
    out = []
    if host64(ctx):
        out.append(Violation(f"the processor lacks Intel 64 (CPUID.80000001H:EDX[29] = 0) and "
                             f"{control_label('exit', 'host_address_space_size')} is 1"))
    if on(ctx, "entry", "ia32e_mode_guest"):
        out.append(Violation(f"the processor lacks Intel 64 (CPUID.80000001H:EDX[29] = 0) and "
                             f"{control_label('entry', 'ia32e_mode_guest')} is 1"))
    return out or None


__all__ = ["canonical", "selector_rpl_ti", "host64"]
