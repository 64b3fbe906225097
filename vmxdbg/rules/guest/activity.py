"""Guest-state checks of SDM Vol.3C 27.3.1.5: guest activity state (SDM 325462-080US, 2023)."""
from __future__ import annotations

from typing import Optional

from ...common.numbers import hexs
from ..bits import reg_field
from ..engine import CheckResult, Context, SKIP, Violation
from ..entrystate import show
from .common import (ACTIVE, ACTIVITY_NAMES, B, BLK_MOVSS, BLK_STI, ED, EXT_INT, G, HLT, HW_EXC, NMI, OTHER,
                     S5, SHUTDOWN, WAIT_SIPI, _entry, _entry_patch, _event_text, _interruption, grule)
from .segments_fred import _ss_dpl

# IA32_VMX_MISC bits 6-8: activity states HLT, shutdown and wait-for-SIPI supported (Vol.3D A.6)
MISC_ACTIVITY = {HLT: reg_field("IA32_VMX_MISC", "activity_hlt"),
                 SHUTDOWN: reg_field("IA32_VMX_MISC", "activity_shutdown"),
                 WAIT_SIPI: reg_field("IA32_VMX_MISC", "activity_wait_for_sipi")}


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
    misc, supported = ctx.msr(0x485), MISC_ACTIVITY[state]
    if not supported(misc):
        return Violation(f"{show(ctx, 'GUEST_ACTIVITY_STATE')} ({ACTIVITY_NAMES[state]}) but IA32_VMX_MISC "
                         f"(MSR 0x485) = {hexs(misc)} has bit {supported.lo} clear: not supported")
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
