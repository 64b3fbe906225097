"""VM-entry MSR loading (exit reason 34): the VM-entry MSR-load area, entry by entry.

Source: SDM Vol.3C 27.4 "Loading MSRs", 25.8.2 (the VM-entry MSR-load count
and address, the 16-byte entry format) and 27.8 (exit qualification = the
1-based position of the failing entry), SDM 325462-080US (June 2023); Vol.4
Table 2-2 for the MSRs a processor "may prevent" loading (0x79, 0x8B).

After the guest state has been checked and loaded, the processor processes
the VM_ENTRY_MSR_LOAD_COUNT (0x4014) entries at VM_ENTRY_MSR_LOAD_ADDR (0x200A)
in order, as WRMSR would, and the first entry that fails ends the VM entry
with exit reason 34 and exit qualification n. An entry (bits 31:0 MSR index,
63:32 reserved, 127:64 value) fails when its index is IA32_FS_BASE or
IA32_GS_BASE, an x2APIC MSR (bits 31:8 = 000008H), an MSR writable only in SMM
while the entry did not start in SMM, an MSR the model does not load on VM
entry, when bits 63:32 are not 0, or when WRMSR of the value would #GP.

Each SDM bullet is one rule. All of them share one walk over the list, so
that every finding carries the instruction's outcome, entry-fail:34:<n> with
n the first entry that certainly fails; an entry whose memory the snapshot
lacks, or whose value cannot be judged, before that one makes the verdict
unknown (naming the address / input) with entry-fail:34:<k> possible.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from ..common.numbers import hexs
from . import msrvalues
from .bits import reg_bit, reg_field
from .engine import ENTRY, SKIP, CheckResult, Context, Example, Missing, Tier, Violation, bad, good, rule
from .entrystate import ia32e_guest
from .vmcsctl import in_smm

ED = "(SDM 325462-080US, 2023)"
SDM = f"Vol.3C 27.4 Loading MSRs; Vol.3C 27.8 VM-Entry Failures During or After Loading Guest State {ED}"
OUTCOME = "entry-fail:34:<n>"

IA32_FS_BASE, IA32_GS_BASE = 0xC0000100, 0xC0000101
IA32_EFER = 0xC0000080
CR0_PG = reg_bit("CR0", "pg")
EFER_LME = reg_field("IA32_EFER", "lme")
#: MSRs that can be written only in SMM (27.4 names IA32_SMM_MONITOR_CTL)
SMM_ONLY = {0x9B: "IA32_SMM_MONITOR_CTL"}
#: MSRs a processor "may prevent writing ... when loading guest states on VM entries" (Vol.4 Table 2-2)
MODEL_SPECIFIC = {0x79: "IA32_BIOS_UPDT_TRIG", 0x8B: "IA32_BIOS_SIGN_ID"}

AREA = "0x1a2b9000"


@dataclass(frozen=True)
class Entry:
    """One 16-byte entry of the VM-entry MSR-load area."""

    position: int   # 1-based
    address: int
    index: int
    reserved: int   # bits 63:32
    value: int      # bits 127:64

    def label(self) -> str:
        return (f"entry {self.position} at {hexs(self.address)} (MSR {hexs(self.index)}, "
                f"value {hexs(self.value)})")


@dataclass
class Outcome:
    """What one check says about one entry."""

    message: str = ""
    certain: bool = True
    missing: Optional[Missing] = None


CheckFn = Callable[[Context, Entry], Optional[Outcome]]


# ------------------------------------------------------------------ per-entry checks

def c_fs_gs_base(ctx: Context, e: Entry) -> Optional[Outcome]:
    if e.index in (IA32_FS_BASE, IA32_GS_BASE):
        name = "IA32_FS_BASE" if e.index == IA32_FS_BASE else "IA32_GS_BASE"
        return Outcome(f"{e.label()} loads {name}, which VM entry never loads from the list")
    return None


def c_x2apic(ctx: Context, e: Entry) -> Optional[Outcome]:
    if e.index >> 8 == 0x8:
        return Outcome(f"{e.label()} is an x2APIC MSR (bits 31:8 = 000008H)")
    return None


def c_smm_only(ctx: Context, e: Entry) -> Optional[Outcome]:
    if e.index not in SMM_ONLY:
        return None
    try:
        smm = in_smm(ctx)
    except Missing as exc:      # this entry's verdict is unknown, not the whole list's
        return Outcome(missing=exc)
    if not smm:
        return Outcome(f"{e.label()} is {SMM_ONLY[e.index]}, writable only in SMM, and the VM entry did not "
                       "start in SMM")
    return None


def c_model_specific(ctx: Context, e: Entry) -> Optional[Outcome]:
    if e.index in MODEL_SPECIFIC:
        return Outcome(f"{e.label()} is {MODEL_SPECIFIC[e.index]}, which a processor may refuse to load on VM "
                       "entry (model-specific)", certain=False)
    return None


def c_reserved(ctx: Context, e: Entry) -> Optional[Outcome]:
    if e.reserved:
        return Outcome(f"{e.label()} has bits 63:32 = {hexs(e.reserved)}, not 0")
    return None


def _efer_problem(ctx: Context, e: Entry) -> Optional[str]:
    """WRMSR to IA32_EFER #GPs if it changes LME while paging is on (guest CR0.PG is loaded by then)."""
    if e.index != IA32_EFER or not ctx.vmcs("GUEST_CR0") & CR0_PG:
        return None
    lme_now = ia32e_guest(ctx)  # after guest-state loading, EFER.LME = LMA = "IA-32e mode guest"
    if bool(EFER_LME(e.value)) != lme_now:
        return (f"it changes IA32_EFER.LME to {EFER_LME(e.value)} while the guest has CR0.PG = 1 and LME = "
                f"{int(lme_now)}: WRMSR raises #GP")
    return None


def c_wrmsr(ctx: Context, e: Entry) -> Optional[Outcome]:
    try:
        r = msrvalues.rule_for(e.index)
        if r is None:
            if e.index in ctx.p.msr:
                return None  # the MSR exists on this processor; its value rules are not modelled
            raise ctx.missing(f"msr:{hexs(e.index)}", "whether this processor implements the MSR (vmxdbg has no "
                                                      "value rules for it)")
        problems = msrvalues.wrmsr_problems(ctx, r, e.index, e.value)
        efer = _efer_problem(ctx, e)
        if efer:
            problems.append(efer)
    except Missing as exc:
        return Outcome(missing=exc)
    if problems:
        return Outcome(f"{e.label()}: " + "; ".join(problems))
    return None


# ------------------------------------------------------------------ the shared walk

@dataclass
class Walk:
    """Every readable entry, each check's result per entry, the first certain failure."""

    entries: List[Entry] = field(default_factory=list)
    unreadable: Optional[Tuple[int, Missing]] = None          # (position, Missing) of the first unread entry
    results: Dict[str, Dict[int, Outcome]] = field(default_factory=dict)
    first_fail: Optional[int] = None

    def before_first_fail(self, position: int) -> bool:
        return self.first_fail is None or position < self.first_fail


CHECKS: Dict[str, CheckFn] = {"fs_gs_base": c_fs_gs_base, "x2apic": c_x2apic, "smm_only": c_smm_only,
                              "model_specific": c_model_specific, "reserved": c_reserved, "wrmsr": c_wrmsr}


def walk(ctx: Context) -> Optional[Walk]:
    """Read and check the VM-entry MSR-load list; None when the count is 0.

    Stops at the first entry whose 16 bytes the snapshot lacks: the processor
    would go on, but nothing after it can be judged."""
    count = ctx.vmcs("VM_ENTRY_MSR_LOAD_COUNT")
    if count == 0:
        return None
    base = ctx.vmcs("VM_ENTRY_MSR_LOAD_ADDR")
    w = Walk(results={name: {} for name in CHECKS})
    for i in range(count):
        addr = base + 16 * i
        try:
            raw = ctx.mem(addr, 16)
        except Missing as exc:
            exc.what = f"VM-entry MSR-load entry {i + 1} of {count} (16 bytes)"
            exc.outcome = f"entry-fail:34:{i + 1}"
            w.unreadable = (i + 1, exc)
            break
        lo, hi = int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:], "little")
        e = Entry(i + 1, addr, lo & 0xFFFFFFFF, lo >> 32, hi)
        w.entries.append(e)
        for name, fn in CHECKS.items():
            got = fn(ctx, e)
            if got is not None:
                w.results[name][e.position] = got
                if got.missing is None and got.certain and w.first_fail is None:
                    w.first_fail = e.position
    return w


def judge(ctx: Context, name: str) -> CheckResult:
    """The findings of check `name` on the walked list (see the module doc for the outcome)."""
    w = walk(ctx)
    if w is None:
        return SKIP
    results = w.results[name]
    for pos in sorted(results):
        got = results[pos]
        if got.missing is not None and w.before_first_fail(pos):
            got.missing.outcome = f"entry-fail:34:{pos}"
            raise got.missing
    if w.unreadable is not None and w.before_first_fail(w.unreadable[0]):
        raise w.unreadable[1]
    out = []
    for pos in sorted(results):
        got = results[pos]
        if got.missing is not None:
            continue
        if got.certain:
            n = w.first_fail
        else:
            n = pos if w.before_first_fail(pos) else w.first_fail
        note = "" if n == pos else f" (the VM entry already fails at entry {n})"
        out.append(Violation(got.message + note, outcome=f"entry-fail:34:{n}", certain=got.certain))
    return out or None


def _entry_hex(index: int, value: int, reserved: int = 0) -> str:
    """The 16 bytes of one MSR-load entry, as snapshot memory hex."""
    return ((reserved << 32 | index).to_bytes(8, "little") + value.to_bytes(8, "little")).hex()


def _list(*entries: Tuple[int, int], reserved: int = 0) -> Dict[str, object]:
    """A patch putting `entries` [(index, value), ...] at AREA with the count and address set."""
    data = "".join(_entry_hex(i, v, reserved if n == len(entries) - 1 else 0) for n, (i, v) in enumerate(entries))
    return {"vmcs/0x4014": hex(len(entries)), "vmcs/0x200a": AREA, f"/memory/{AREA}": data}


STAR = (0xC0000081, 0x0023001000000000)
LSTAR = (0xC0000082, 0xFFFFF80351801A40)


def _register(rid: str, name: str, slug: str, title: str, catalog: str, checks: str, fix: str,
              examples: List[Example]) -> None:
    @rule(id=rid, slug=slug, title=title, sdm=SDM, instructions=ENTRY, tier=Tier.MSR_LOAD, outcome=OUTCOME,
          catalog=(catalog,),
          checks=checks + " Entries are read from snapshot memory at VM_ENTRY_MSR_LOAD_ADDR (0x200A), "
                          "VM_ENTRY_MSR_LOAD_COUNT (0x4014) of them; a missing page is reported unknown with its "
                          "address.",
          broken="VM entry fails after loading guest state: exit reason 34, exit qualification = the 1-based "
                 "position of the first failing entry; the processor then loads host state as on a VM exit.",
          fix=fix, examples=examples)
    def check(ctx: Context) -> CheckResult:
        return judge(ctx, name)

    check.__name__ = f"msr_load_{name}"


_register("MSRLD001", "reserved", "msr-load-reserved", "MSR-load entries: bits 63:32 must be 0", "MSRLOAD.ENTRY_RESERVED",
          "Bits 63:32 of each entry (the dword after the MSR index) are 0.",
          "Write each entry as {u32 index; u32 reserved = 0; u64 value}; zero the area before filling it.",
          [bad(_list(STAR, LSTAR, reserved=1), baseline="vmentry"), good(_list(STAR, LSTAR), baseline="vmentry")])
_register("MSRLD002", "fs_gs_base", "msr-load-fs-gs-base", "MSR-load entries must not load IA32_FS_BASE or IA32_GS_BASE",
          "MSRLOAD.FS_GS_BASE",
          "No entry's index is C0000100H (IA32_FS_BASE) or C0000101H (IA32_GS_BASE).",
          "Load the guest FS and GS bases through GUEST_FS_BASE (0x680E) and GUEST_GS_BASE (0x6810) instead.",
          [bad(_list(STAR, (IA32_GS_BASE, 0)), baseline="vmentry"), good(_list(STAR), baseline="vmentry")])
_register("MSRLD003", "x2apic", "msr-load-x2apic", "MSR-load entries must not load x2APIC MSRs (800H-8FFH)",
          "MSRLOAD.X2APIC_RANGE",
          "No entry's index has bits 31:8 = 000008H (the x2APIC MSRs 800H-8FFH), whatever the APIC mode.",
          "Virtualize the x2APIC with the APIC-virtualization controls and MSR bitmaps, not the MSR-load list.",
          [bad(_list((0x808, 0x10)), baseline="vmentry"), good(_list(STAR), baseline="vmentry")])
_register("MSRLD004", "smm_only", "msr-load-smm-only", "MSR-load entries must not load SMM-only MSRs outside SMM",
          "MSRLOAD.SMM_ONLY",
          "Unless the VM entry starts in SMM (state.smm), no entry loads an MSR writable only in SMM "
          "(IA32_SMM_MONITOR_CTL, 9BH).",
          "Remove IA32_SMM_MONITOR_CTL from the list; only SMM code may write it.",
          [bad(_list((0x9B, 0)), baseline="vmentry"), good(_list(STAR), baseline="vmentry"),
           good({**_list((0x9B, 0)), "state/smm": True}, baseline="vmentry")])
_register("MSRLD005", "model_specific", "msr-load-model-specific",
          "MSR-load entries should not load the microcode-update MSRs (model-specific)", "MSRLOAD.MODEL_SPECIFIC",
          "No entry loads an MSR the processor may refuse on VM entry for model-specific reasons: IA32_BIOS_UPDT_TRIG "
          "(79H) and IA32_BIOS_SIGN_ID (8BH) per Vol.4. Implementation-specific: reported as \"may fail\", with "
          "both outcomes possible. Confidence medium (the full model-specific list is not published per model).",
          "Do not switch microcode-update MSRs through the VM-entry list.",
          [bad(_list(STAR, (0x8B, 0)), baseline="vmentry"), good(_list(STAR), baseline="vmentry")])
_register("MSRLD006", "wrmsr", "msr-load-wrmsr-gp", "MSR-load entries must hold values WRMSR accepts",
          "MSRLOAD.WRMSR_GP",
          "WRMSR of bits 127:64 to the entry's MSR at CPL 0 would not #GP: for the MSRs in structs/msr_values.yaml, "
          "the MSR exists (CPUID), is writable (not read-only or locked), its value sets no reserved bit, is "
          "canonical where it is an address and a valid PAT; IA32_EFER.LME does not change while the guest's "
          "CR0.PG = 1. For other MSRs vmxdbg checks only that the processor has them (the snapshot holds their "
          "value); otherwise the rule is unknown, naming the MSR.",
          "Load values the MSR accepts (e.g. canonical addresses in IA32_LSTAR / IA32_KERNEL_GS_BASE); never "
          "list read-only MSRs.",
          [bad(_list(STAR, (0xC0000082, 0x0000800000000000)), baseline="vmentry"),
           bad(_list(STAR, (IA32_EFER, 0x401)), baseline="vmentry"),
           good(_list(STAR, LSTAR, (IA32_EFER, 0xD01)), baseline="vmentry")])


__all__ = ["Entry", "Walk", "CHECKS", "walk", "judge"]
