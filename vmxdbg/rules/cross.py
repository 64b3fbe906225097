"""The context of cross-processor rules: every processor at once.

Cross-processor rules register with `cross=True`; their Violations carry the
processors involved (`CrossViolation.cpus`), and the finding is reported on
each of them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List

from ..state.snapshot import Snapshot
from .engine import Context, Violation


@dataclass
class CrossViolation(Violation):
    cpus: List[int] = field(default_factory=list)


class CrossContext:
    """One Context per processor, sharing the list of inputs read."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.used: List[str] = []
        self.cpus: Dict[int, Context] = {}
        for cpu in sorted(snapshot.processors):
            ctx = Context(snapshot, cpu)
            ctx.used = self.used
            self.cpus[cpu] = ctx


# ---------------------------------------------------------------- the rules
# These problems are between processors: no single processor's VMX instruction
# detects them, so they are reported as `advice` on every processor involved
# (they never change a predicted outcome), and the summary names the processors.

from typing import Callable, Iterable, Tuple  # noqa: E402

from ..common.statekeys import NO_VMCS  # noqa: E402
from ..common.numbers import hexs  # noqa: E402
from .bits import reg_bit, reg_field  # noqa: E402
from .engine import Missing, Tier, bad, good, rule  # noqa: E402

BASIC_REGION_SIZE = reg_field("IA32_VMX_BASIC", "region_size")
FEATURE_CONTROL_VMX = sum(reg_bit("IA32_FEATURE_CONTROL", n) for n in ("lock", "vmx_inside_smx", "vmx_outside_smx"))

ED = "(SDM 325462-080US, 2023)"
CAPABILITY_MSRS = tuple(range(0x480, 0x494))


def _names(cpus: Iterable[int]) -> str:
    cpus = sorted(cpus)
    if len(cpus) == 1:
        return f"processor {cpus[0]}"
    return "processors " + ", ".join(str(c) for c in cpus[:-1]) + f" and {cpus[-1]}"


def _known(ctx: CrossContext, read: Callable[["Context"], object]) -> Dict[int, object]:
    """read() on every processor that has the input; the others are left out."""
    out: Dict[int, object] = {}
    for cpu, c in ctx.cpus.items():
        try:
            out[cpu] = read(c)
        except Missing:
            continue
    return out


def _region_size(c: "Context") -> int:
    """Region size from IA32_VMX_BASIC[44:32]; a page when BASIC is unknown (the usual size)."""
    try:
        return BASIC_REGION_SIZE(c.msr(0x480)) or 4096
    except Missing:
        return 4096


@rule(id="XCPU001", slug="shared-vmxon-region", title="Each processor needs its own VMXON region",
      sdm=f"Vol.3C 25.11.5 VMXON Region; 24.7 Enabling and Entering VMX Operation {ED}",
      instructions=("vmxon",), tier=Tier.OPERAND, outcome="ok", status="advice", cross=True,
      checks="No two processors' VMXON pointers name the same or overlapping regions "
             "(region size from IA32_VMX_BASIC[44:32]).",
      broken="The SDM asks for a separate VMXON region per logical processor; VMXON does not check it, "
             "and the processors then share state the SDM leaves undefined.",
      fix="Allocate one VMXON region per logical processor (e.g. an array indexed by "
          "KeGetCurrentProcessorNumberEx) and pass each processor its own.",
      examples=[bad({"/processors/1/vmxon_pointer": "0x1a2b3000"}, "vmxon-2cpu"),
                bad({"/processors/1/vmxon_pointer": "0x1a2b3000"}, "vmxon-2cpu", cpu=1),
                good({}, "vmxon-2cpu")])
def shared_vmxon_region(ctx: CrossContext) -> List[CrossViolation]:
    ptrs = _known(ctx, lambda c: (c.vmxon_pointer(), _region_size(c)))
    out: List[CrossViolation] = []
    items = sorted(ptrs.items(), key=lambda kv: kv[1][0])  # type: ignore[index]
    groups: List[Tuple[int, int, List[int]]] = []  # start, end, cpus
    for cpu, (ptr, size) in items:  # type: ignore[misc]
        if groups and ptr < groups[-1][1]:
            start, end, cpus = groups[-1]
            groups[-1] = (start, max(end, ptr + size), cpus + [cpu])
        else:
            groups.append((ptr, ptr + size, [cpu]))
    for start, end, cpus in groups:
        if len(cpus) > 1:
            same = len({ptrs[c][0] for c in cpus}) == 1  # type: ignore[index]
            what = f"share VMXON region {hexs(start)}" if same else \
                f"have overlapping VMXON regions in {hexs(start)}-{hexs(end - 1)}"
            out.append(CrossViolation(f"{_names(cpus)} {what}", cpus=cpus))
    return out


@rule(id="XCPU002", slug="vmcs-current-on-many", title="A VMCS must be active on one processor at a time",
      sdm=f"Vol.3C 25.1 Overview; 25.11.1 Software Use of Virtual-Machine Control Structures {ED}",
      instructions=("vmlaunch", "vmresume"), tier=Tier.CURRENT_VMCS, outcome="ok", status="advice", cross=True,
      checks="No VMCS region is the current VMCS of more than one processor.",
      broken="The SDM says a VMCS must not be active on more than one logical processor; the processors "
             "cache its data separately and the region's content becomes undefined.",
      fix="Give each processor its own VMCS; to move a VMCS, VMCLEAR it on the old processor first.",
      examples=[bad({"/processors/1/vmcs_pointer": "0x1a2b4000"}, "vmxroot-2cpu"), good({}, "vmxroot-2cpu")])
def vmcs_on_many(ctx: CrossContext) -> List[CrossViolation]:
    current = _known(ctx, lambda c: c.vmcs_pointer())
    by_ptr: Dict[int, List[int]] = {}
    for cpu, ptr in current.items():
        if ptr != NO_VMCS:
            by_ptr.setdefault(int(ptr), []).append(cpu)  # type: ignore[arg-type]
    return [CrossViolation(f"{_names(cpus)} all have VMCS {hexs(ptr)} current", cpus=cpus)
            for ptr, cpus in sorted(by_ptr.items()) if len(cpus) > 1]


@rule(id="XCPU003", slug="vmcs-is-other-vmxon-region", title="A VMCS must not be another processor's VMXON region",
      sdm=f"Vol.3C 25.11.5 VMXON Region; 31.3 VMPTRLD {ED}",
      instructions=("vmptrld", "vmlaunch", "vmresume"), tier=Tier.OPERAND, outcome="ok", status="advice",
      cross=True,
      checks="No processor's current VMCS (or VMPTRLD operand) is another processor's VMXON region.",
      broken="VMPTRLD only compares its operand with its own processor's VMXON pointer (error 10); using "
             "another processor's VMXON region as a VMCS corrupts both.",
      fix="Keep VMXON regions and VMCS regions in separate pages, one of each per processor.",
      examples=[bad({"/processors/1/vmcs_pointer": "0x1a2b3000",
                     "/processors/1/operands/vmptrld": "0x1a2b3000"}, "vmxroot-2cpu"),
                good({}, "vmxroot-2cpu")])
def vmcs_is_vmxon(ctx: CrossContext) -> List[CrossViolation]:
    vmxon = _known(ctx, lambda c: c.vmxon_pointer())
    owner = {int(p): cpu for cpu, p in vmxon.items()}  # type: ignore[arg-type]
    out: List[CrossViolation] = []
    for cpu, c in ctx.cpus.items():
        for label, read in (("current VMCS", lambda c=c: c.vmcs_pointer()),
                            ("VMPTRLD operand", lambda c=c: c.operand("vmptrld"))):
            try:
                ptr = read()
            except Missing:
                continue
            other = owner.get(ptr)
            if other is not None and other != cpu:
                out.append(CrossViolation(f"processor {cpu}'s {label} {hexs(ptr)} is processor {other}'s VMXON "
                                          "region", cpus=sorted({cpu, other})))
    return out


def _differs(ctx: CrossContext, read: Callable[["Context"], object], what: str,
             show: Callable[[object], str] = lambda v: hexs(v)) -> List[CrossViolation]:  # type: ignore[arg-type]
    values = _known(ctx, read)
    if len(set(values.values())) <= 1:
        return []
    by_value: Dict[object, List[int]] = {}
    for cpu, v in values.items():
        by_value.setdefault(v, []).append(cpu)
    parts = [f"{_names(cpus)}: {show(v)}" for v, cpus in sorted(by_value.items(), key=lambda kv: kv[1][0])]
    return [CrossViolation(f"{what} differs between processors ({'; '.join(parts)})", cpus=sorted(values))]


@rule(id="XCPU004", slug="feature-control-differs", title="IA32_FEATURE_CONTROL must agree on every processor",
      sdm=f"Vol.3C 24.7 Enabling and Entering VMX Operation {ED}", instructions=("vmxon",), tier=Tier.GP,
      outcome="ok", status="advice", cross=True,
      checks="The lock bit and the two VMX enable bits of IA32_FEATURE_CONTROL (MSR 0x3A) are the same on "
             "every processor.",
      broken="VMXON fails with #GP(0) only on the processors whose MSR is unlocked or not enabled (a known "
             "firmware fault: the BIOS programs the boot processor only).",
      fix="Update the firmware; as a workaround, if the MSR is still unlocked on those processors, write the "
          "boot processor's value (enable + lock) on each of them before VMXON.",
      examples=[bad({"/processors/1/msr/0x3a": "0x0"}, "vmxon-2cpu"), good({}, "vmxon-2cpu")])
def feature_control_differs(ctx: CrossContext) -> List[CrossViolation]:
    return _differs(ctx, lambda c: c.msr(0x3A) & FEATURE_CONTROL_VMX, "IA32_FEATURE_CONTROL[2:0] (lock, VMX in/outside SMX)")


@rule(id="XCPU005", slug="vmx-capabilities-differ", title="VMX capability MSRs must agree on every processor",
      sdm=f"Vol.3D A.1 Basic VMX Information {ED}", instructions=("vmxon",), tier=Tier.GP, outcome="ok",
      status="advice", cross=True,
      checks="Each of the VMX capability MSRs 0x480-0x493 (including CR0/CR4 FIXED0/FIXED1) that is known "
             "on several processors has the same value on all of them.",
      broken="A driver that reads the capabilities on one processor and builds every processor's VMCS or "
             "CR0/CR4 from them fails on the processors that differ (a hybrid or misconfigured system, or a "
             "VMM that virtualises the MSRs per vCPU).",
      fix="Read the capability MSRs on each processor and adjust that processor's controls, CR0 and CR4 "
          "from its own values.",
      examples=[bad({"/processors/1/msr/0x489": "0x1727ff"}, "vmxon-2cpu"), good({}, "vmxon-2cpu")])
def capabilities_differ(ctx: CrossContext) -> List[CrossViolation]:
    out: List[CrossViolation] = []
    for index in CAPABILITY_MSRS:
        present = [c for c in ctx.cpus.values() if c.has_msr(index)]
        if len(present) > 1:
            out += _differs(ctx, lambda c, i=index: c.msr(i), f"MSR {hexs(index)}")
    return out


@rule(id="XCPU006", slug="cpuid-vmx-differs", title="CPUID.1:ECX.VMX must agree on every processor",
      sdm=f"Vol.3C 24.6 Discovering Support for VMX {ED}", instructions=("vmxon",), tier=Tier.UD, outcome="ok",
      status="advice", cross=True,
      checks="CPUID.01H:ECX[5] (VMX) is the same on every processor.",
      broken="VMXON raises #UD on the processors that do not report VMX; a driver that checked CPUID once "
             "assumes it everywhere.",
      fix="Check CPUID on each processor before enabling VMX on it; on a VM, give every vCPU the same CPU model.",
      examples=[bad({"/processors/1/cpuid/0x1": ["0x906ea", "0x100800", "0x7ffafb9f", "0xbfebfbff"]},
                    "vmxon-2cpu"), good({}, "vmxon-2cpu")])
def cpuid_vmx_differs(ctx: CrossContext) -> List[CrossViolation]:
    return _differs(ctx, lambda c: int(c.vmx_supported()), "CPUID.1:ECX.VMX",
                    lambda v: "VMX" if v else "no VMX")


# XCPU007 (retired, never reuse the id): "processors half in VMX operation" flagged every
# normal bring-up, where cores enter VMX one after another. A processor about to run VMXON
# while already in VMX operation is VMXON008 (error 15), on that processor.
