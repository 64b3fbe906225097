"""Step a hypervisor through its VMX instructions, core by core, on a live backend.

For each VMXON / VMCLEAR / VMPTRLD / VMLAUNCH / VMRESUME found in a code range
(decoded with iced-x86): stop there on every core, read that core's state,
predict the outcome with the rule engine, single-step that core only, read
what the processor actually did, and compare. A mismatch is a bug in vmxdbg
or in the target's VMX implementation, and is shown loudly.

What "actually happened" is read the architectural way, so any backend works:
RIP after the step; RFLAGS.CF / ZF (VMfailInvalid / VMfailValid); the
VM-instruction error field (0x4400); for VM entry, the processor's VMX mode
and the exit-reason field (0x4402) with bit 31 (entry failure) and the exit
qualification (0x6400); for an exception, RIP compared with the IDT gates of
#UD (6) and #GP (13).
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import iced_x86 as ix

from ..backends.base import EXECUTION, Backend, StopEvent
from ..state.assume import apply_to_processor
from ..state.collect import collect_processor
from .deviations import Deviation, explain, implementation_of, known_for
from ..common import interrupt, progress
from ..common.errors import BackendError, NotAvailable, VmxdbgError
from ..report.model import Report, Verdict
from ..rules.engine import all_rules
from ..rules.evaluate import _cross_findings, verdict_for
from ..state.snapshot import Processor, Snapshot

MNEMONICS = {ix.Mnemonic.VMXON: "vmxon", ix.Mnemonic.VMCLEAR: "vmclear", ix.Mnemonic.VMPTRLD: "vmptrld",
             ix.Mnemonic.VMLAUNCH: "vmlaunch", ix.Mnemonic.VMRESUME: "vmresume"}
_REG_NAMES = {getattr(ix.Register, n): n.lower() for n in dir(ix.Register) if n.isupper()}
_WIDE = {f"e{r}": f"r{r}" for r in ("ax", "bx", "cx", "dx", "si", "di", "sp", "bp")}
_WIDE.update({f"r{i}d": f"r{i}" for i in range(8, 16)})
VM_INSTRUCTION_ERROR, EXIT_REASON, EXIT_QUALIFICATION, HOST_RIP = 0x4400, 0x4402, 0x6400, 0x6C16
CF, ZF = 1, 1 << 6
#: `actual` of the row where a session ended early (Ctrl-C, SIGTERM, a killed recorder)
INTERRUPTED = "interrupted"
MISSED = "missed stop"
NOT_REACHED = "not reached"


@dataclass
class VmxSite:
    """One VMX instruction in the code: its address, length and decoded form."""

    address: int
    length: int
    instruction: str
    decoded: ix.Instruction

    @property
    def has_memory_operand(self) -> bool:
        return self.decoded.op_count > 0 and self.decoded.op0_kind == ix.OpKind.MEMORY


@dataclass
class StepResult:
    """One stop: what was predicted, what the processor did, and whether they agree."""

    cpu: int
    instruction: str
    address: int
    verdict: Optional[Verdict]
    actual: str
    match: Optional[bool]            # None: nothing to compare (a missed stop, an unknown)
    operand: Optional[int] = None
    log: List[str] = field(default_factory=list)
    note: str = ""
    #: known deviations of the target from the SDM that explain a match of False (vmxdbg.trace.deviations)
    deviations: List[Deviation] = field(default_factory=list)


def find_vmx_instructions(code: bytes, base: int, bitness: int = 64) -> List[VmxSite]:
    """Every VMX instruction vmxdbg steps through in `code` loaded at `base`."""
    sites = []
    for ins in ix.Decoder(bitness, code, ip=base):
        name = MNEMONICS.get(ins.mnemonic)
        if name:
            sites.append(VmxSite(ins.ip, ins.len, name, ins))
    return sites


def operand_address(site: VmxSite, read: Callable[[str], int]) -> int:
    """Linear address of the instruction's memory operand, from the registers `read` gives."""
    ins = site.decoded

    def reg(r: int) -> int:
        if r == ix.Register.NONE:
            return 0
        name = _REG_NAMES[r]
        return read(_WIDE.get(name, name)) & (0xFFFFFFFF if name in _WIDE else 0xFFFFFFFFFFFFFFFF)

    if ins.memory_base == ix.Register.RIP or ins.memory_base == ix.Register.EIP:
        ea = ins.memory_displacement
    else:
        ea = reg(ins.memory_base) + reg(ins.memory_index) * ins.memory_index_scale + ins.memory_displacement
    seg = _REG_NAMES.get(ins.memory_segment, "")
    if seg in ("fs", "gs"):
        ea += read(f"{seg}.base")
    return ea & 0xFFFFFFFFFFFFFFFF


class Stepper:
    """Drives a live backend through the VMX instructions at `sites`."""

    def __init__(self, backend: Backend, sites: Sequence[VmxSite], *, physical: bool = False,
                 breakpoints: bool = True, assume: Optional[Dict[str, object]] = None,
                 log: Optional[Callable[[str], None]] = None,
                 prepare: Optional[Callable[[Backend, int, VmxSite], None]] = None,
                 approaches: Optional[Dict[int, bytes]] = None) -> None:
        """`breakpoints=False`: the target stops by itself at each site (a magic
        breakpoint right before it); every stop whose RIP is a site is handled.
        `assume`: state no debugger shows, filled where the target did not give it
        (vmxdbg.state.assume). `prepare(backend, cpu, site)`: runs at each stop on a VMX
        instruction before the state is read (faults injected through the debugger,
        vmxdbg.trace.faults). `approaches`: address -> bytes of instructions that lead straight
        into a site (vmxdbg.trace.elfcode.approaches): a breakpoint there is stepped once, and
        when that lands on a site the site is handled there: a site whose own breakpoint Bochs
        misses is still caught, and the instruction just executed is known, which settles
        blocking by MOV SS and by STI at a VM entry (read_state)."""
        if EXECUTION not in backend.capabilities():
            raise NotAvailable("stepping needs a live target", backend=backend.name)
        self.backend = backend
        self.sites = {s.address: s for s in sites}
        self.physical = physical
        self.use_breakpoints = breakpoints
        self.assume = dict(assume or {})
        self.prepare = prepare
        self.approaches: Dict[int, ix.Instruction] = {}
        for address, data in sorted((approaches or {}).items()):
            ins = next(iter(ix.Decoder(64, data, ip=address)))
            if ins.is_invalid or ins.len != len(data):
                raise VmxdbgError(f"approach at {address:#x}: {data.hex()} is not one instruction")
            if address not in self.sites:
                self.approaches[address] = ins
        self.results: List[StepResult] = []
        self.in_root: set = set()               # processors whose VMXON this trace saw succeed
        self.state: Dict[int, Processor] = {}   # each processor as read at its last stop
        #: the stop being handled (cpu, site) while handle_stop runs; None between stops
        self.at: Optional[Tuple[int, VmxSite]] = None
        #: per processor, its first VMX instruction that did not succeed: (instruction, outcome)
        self.failed: Dict[int, Tuple[str, str]] = {}
        self._log = log or (lambda line: None)
        self._breakpoints: List[int] = []
        self.implementation = implementation_of(backend.describe())
        self.known_deviations = known_for(self.implementation)

    # ---------------------------------------------------------------- running
    def run(self, *, timeout: float = 60.0, max_stops: int = 1000,
            until: Optional[Callable[[StopEvent], bool]] = None) -> List[StepResult]:
        """Run until the target exits, `until(event)` says so, or `max_stops`;
        every breakpoint set here is removed on every way out."""
        with interrupt.doing("the trace"):
            return self._run(timeout, max_stops, until)

    def _run(self, timeout: float, max_stops: int,
             until: Optional[Callable[[StopEvent], bool]]) -> List[StepResult]:
        try:
            for address in (list(self.sites) + list(self.approaches) if self.use_breakpoints else ()):
                self._breakpoints.append(self.backend.set_breakpoint(address, physical=self.physical))
            for _ in range(max_stops):
                with interrupt.doing(f"the target running to its next stop, after {len(self.results)} stop(s)"):
                    event = self.backend.go(timeout=timeout)
                if event.kind in ("exited", "timeout"):
                    self._log(f"target {event.kind}: {event.detail}".rstrip(": "))
                    break
                if event.kind == "missed":
                    self.results.append(self.missed_stop(event))
                    progress.advance(f"cpu {self.results[-1].cpu}: stops")
                    continue
                if event.cpu is not None:
                    self.handle_stop(event)
                if until is not None and until(event):
                    break
        finally:
            self.remove_breakpoints()
        share_cross_findings(self.results)
        return self.results

    def missed_stop(self, event: StopEvent) -> StepResult:
        """The row of a planned stop the target ran past: MISSED with the debugger's reason, or
        NOT_REACHED when an earlier VMX instruction of that core failed (the code after it did
        not run there). A guest line saying this instruction failed counts as its failure."""
        cpu = event.cpu if event.cpu is not None else -1
        site = self.sites.get(event.address) if event.address is not None else None
        insn = site.instruction if site is not None else "?"
        before = self.failed.get(cpu)
        if before is not None:
            row = StepResult(cpu, insn, event.address or 0, None, NOT_REACHED, None, log=list(event.log),
                             note=f"cpu {cpu}'s {before[0]} failed ({before[1]}) before it: the code after "
                                  "it did not run on this core")
        else:
            row = StepResult(cpu, insn, event.address or 0, None, MISSED, None, log=list(event.log),
                             note=event.detail or "the debugger did not stop where a breakpoint was set")
        said = [line for line in event.log if site is not None and re.search(
            rf"\b{insn}\b.*\bfail", line, re.I)]
        if said and cpu not in self.failed:
            told = "the target says: " + said[-1].split(": ", 1)[-1].strip()
            self.failed[cpu] = (insn, told)
            row.note = f"{told}; {row.note}"
        return row

    def remove_breakpoints(self) -> None:
        """Remove every breakpoint this stepper set (errors while removing are collected, not raised twice)."""
        errors = []
        while self._breakpoints:
            bp = self._breakpoints.pop()
            try:
                self.backend.remove_breakpoint(bp)
            except BackendError as exc:
                errors.append(str(exc))
        if errors:
            self._log("could not remove breakpoints: " + "; ".join(errors))

    # ------------------------------------------------------------ one stop
    def handle_stop(self, event: StopEvent) -> Optional[StepResult]:
        """Predict, step and compare at a stop on a VMX instruction; other stops are ignored."""
        cpu = event.cpu
        assert cpu is not None
        rip = self.backend.read_register(cpu, "rip")
        site = self.sites.get(rip)
        before: Optional[ix.Instruction] = None
        if site is None and rip in self.approaches:
            step = self.backend.step(cpu)      # the instruction before a VM entry: run it, note it
            landed = self.backend.read_register(cpu, "rip")
            site = self.sites.get(landed)
            if site is None:                   # an event was delivered instead: the site's own stop follows
                return None
            before = self.approaches[rip]
            event = StopEvent(event.kind, cpu, landed, breakpoint=event.breakpoint, log=list(event.log) + list(step.log))
        if site is None:
            return None
        self.at = (cpu, site)
        with interrupt.doing(f"cpu {cpu}'s {site.instruction} at {site.address:#x} "
                             f"(after {len(self.results)} stop(s))"):
            return self._handle_site(event, cpu, site, before)

    def _handle_site(self, event: StopEvent, cpu: int, site: VmxSite,
                     before: Optional[ix.Instruction] = None) -> StepResult:
        if self.prepare is not None:
            self.prepare(self.backend, cpu, site)
        self.hint_vmx_root(cpu, site)
        snap, operand = self.read_state(cpu, site, magic=event.kind == "magic", before=before)
        verdict = self.predict(snap, cpu, site.instruction)
        step = self.backend.step(cpu)
        actual = self.actual_outcome(cpu, site, snap.processors[cpu])
        if site.instruction == "vmxon":
            (self.in_root.add if actual == "ok" else self.in_root.discard)(cpu)
        match = None if verdict.outcome == "unknown" and actual not in verdict.possible else actual in verdict.possible
        result = StepResult(cpu, site.instruction, site.address, verdict, actual, match, operand,
                            log=list(event.log) + list(step.log))
        if match is False:
            result.deviations = explain(snap, cpu, verdict, actual, self.known_deviations)
        self.results.append(result)
        progress.advance(f"cpu {cpu}: stops")
        if actual != "ok" and cpu not in self.failed:
            self.failed[cpu] = (site.instruction, actual)
        self.at = None
        return result

    def read_state(self, cpu: int, site: VmxSite, magic: bool = False,
                   before: Optional[ix.Instruction] = None) -> Tuple[Snapshot, Optional[int]]:
        """A snapshot with this processor read now and the others as last seen.

        At a magic-breakpoint stop the instruction just executed was `xchg bx, bx`,
        which blocks no events: no blocking by MOV SS or by STI. When the stop was
        reached by stepping `before` (an approach), blocking by MOV SS is there exactly
        when `before` loaded SS (MOV SS / POP SS: events are blocked until the end of
        the next instruction, SDM 325462-080US Vol.2B MOV, POP; Vol.3C 25.4.2 Table 25-3),
        and blocking by STI only when it was STI (then left unknown: it also needs IF=0)."""
        snap = Snapshot(source=f"{self.backend.name} stop on cpu {cpu} at {site.address:#x}")
        for other, p in self.state.items():
            if other != cpu:
                snap.processors[other] = p.copy()
        operand = None
        if site.has_memory_operand:
            ea = operand_address(site, lambda name: self.backend.read_register(cpu, name))
            operand = int.from_bytes(self.backend.read_virtual(cpu, ea, 8), "little")
        kwargs: Dict[str, object] = {}
        if site.instruction == "vmxon":
            kwargs["vmxon_pointer"] = operand
        elif site.instruction in ("vmclear", "vmptrld") and operand is not None:
            kwargs["operands"] = {site.instruction: operand}
        p = collect_processor(self.backend, cpu, snap, **kwargs)  # type: ignore[arg-type]
        if magic:
            for key in ("blocking_by_mov_ss", "blocking_by_sti"):
                if key not in p.state:
                    p.state[key] = False
                    p.provenance[f"state:{key}"] = "the instruction before was the magic breakpoint xchg bx, bx"
        elif before is not None:
            text = ix.Formatter(ix.FormatterSyntax.INTEL).format(before)
            loads_ss = before.op0_kind == ix.OpKind.REGISTER and before.op0_register == ix.Register.SS and \
                before.mnemonic in (ix.Mnemonic.MOV, ix.Mnemonic.POP)
            why = (f"the instruction before was `{text}` at {before.ip:#x}, executed by a single step "
                   "from a breakpoint on it")
            known = {"blocking_by_mov_ss": loads_ss}
            if before.mnemonic != ix.Mnemonic.STI:
                known["blocking_by_sti"] = False
            for key, value in known.items():
                if key not in p.state:
                    p.state[key] = value
                    p.provenance[f"state:{key}"] = why
        apply_to_processor(p, self.assume)  # type: ignore[arg-type]
        self.state[cpu] = p.copy()
        return snap, operand

    def hint_vmx_root(self, cpu: int, site: VmxSite) -> None:
        """Tell the backend where the processor is surely in VMX root operation (a backend that runs
        VMX instructions on the target, WinDbg --inject, runs them only there): after a VMXON this
        trace saw succeed, at VMLAUNCH/VMRESUME (unless this trace saw its VMXON fail), or when the
        person assumed vmx=root."""
        why = None
        if self.assume.get("vmx") == "root":
            why = "--assume vmx=root"
        elif cpu in self.in_root:
            why = "its VMXON succeeded earlier in this trace"
        elif site.instruction in ("vmlaunch", "vmresume") and cpu not in self._vmxon_failed():
            why = f"it stopped at {site.instruction.upper()}"
        if why is not None:
            self.backend.known_vmx_root(cpu, why)

    def _vmxon_failed(self) -> set:
        return {r.cpu for r in self.results if r.instruction == "vmxon" and r.actual != "ok"} - self.in_root

    @staticmethod
    def predict(snap: Snapshot, cpu: int, instruction: str) -> Verdict:
        rules = all_rules()
        cross = _cross_findings(snap, [r for r in rules if r.cross])
        return verdict_for(snap, cpu, instruction, rules, cross)

    def actual_outcome(self, cpu: int, site: VmxSite, before: Processor) -> str:
        """What the processor did, read after the single step."""
        b = self.backend
        rip = b.read_register(cpu, "rip")
        rflags = b.read_register(cpu, "rflags")
        if rip == site.address + site.length:
            if rflags & CF:
                return "VMfailInvalid"
            if rflags & ZF:     # VMfailValid: the processor is in VMX operation, with a current VMCS
                b.known_vmx_root(cpu, f"{site.instruction.upper()} gave VMfailValid")
                try:
                    return f"VMfailValid:{b.read_vmcs(cpu, VM_INSTRUCTION_ERROR)}"
                except NotAvailable:
                    return "VMfailValid:?"
            return "ok"
        if site.instruction in ("vmlaunch", "vmresume"):
            mode = self._vmx_mode(cpu)
            if mode == "non-root":
                return "ok"
            host_rip = before.vmcs.get(0x6C16)      # HOST_RIP: a failed VM entry lands there, in root
            guest_rip = before.vmcs.get(0x681E)     # GUEST_RIP: a VM entry that succeeded starts there
            if mode is None and guest_rip is not None and rip == guest_rip != host_rip:
                return "ok"    # the processor runs the guest (Vol.3C 27.3.2.1: RIP from the guest-state area)
            if host_rip is not None and rip == host_rip:
                b.known_vmx_root(cpu, "the VM entry ended at HOST_RIP")
            try:
                reason = b.read_vmcs(cpu, EXIT_REASON)
            except NotAvailable:
                reason = None
            if reason is not None and reason >> 31 & 1:
                try:
                    qual = b.read_vmcs(cpu, EXIT_QUALIFICATION)
                except NotAvailable:
                    qual = None
                return f"entry-fail:{reason & 0xFFFF}:{'?' if qual is None else qual}"
            if reason is not None and self._exited_after_entry(cpu, rip, before, site.instruction):
                return "ok"
        vector = self._exception_at(cpu, rip, before)
        return vector or f"jumped to {rip:#x}"

    def _exited_after_entry(self, cpu: int, rip: int, before: Processor, instruction: str) -> bool:
        """The entry succeeded and a VM exit followed within the same step (e.g. an injected
        event whose delivery faulted, a VMX-preemption timer of 0): RIP is the host RIP, the
        exit reason has no entry-failure bit, and the VMCS is launched (a VMLAUNCH found it
        clear: only a successful one sets it; Vol.3C 27.1, 28.1; SDM 325462-080US, 2023)."""
        try:
            host_rip = self.backend.read_vmcs(cpu, HOST_RIP)
            launch = self.backend.vmx_state(cpu).get("vmcs_launch_state")
        except NotAvailable:
            return False
        was = before.vmcs_launch_state
        return rip == host_rip and launch == "launched" and (instruction == "vmresume" or was == "clear")

    def _vmx_mode(self, cpu: int) -> Optional[str]:
        try:
            return str(self.backend.vmx_state(cpu).get("vmx"))
        except NotAvailable:
            return None

    def _exception_at(self, cpu: int, rip: int, before: Processor) -> Optional[str]:
        """'#UD' or '#GP' when RIP is that vector's IDT handler (64-bit gates)."""
        idt = before.tables.get("idtr")
        if idt is None or idt.base is None:
            return None
        for vector, name in ((6, "#UD"), (13, "#GP")):
            try:
                gate = self.backend.read_virtual(cpu, idt.base + vector * 16, 16)
            except BackendError:
                return None
            handler = (int.from_bytes(gate[0:2], "little") | int.from_bytes(gate[6:8], "little") << 16
                       | int.from_bytes(gate[8:12], "little") << 32)
            if handler == rip:
                return name
        return None


def share_cross_findings(results: Sequence[StepResult]) -> None:
    """A finding between processors, seen at one processor's stop, is also shown on
    the same instruction of every other processor it names (once)."""
    for r in results:
        if r.verdict is None:
            continue
        for f in r.verdict.findings:
            if len(f.cpus) < 2:
                continue
            for other in results:
                if other is r or other.verdict is None or other.cpu not in f.cpus or \
                        other.instruction != r.instruction:
                    continue
                if all(g.id != f.id for g in other.verdict.findings):
                    other.verdict.findings.append(copy.copy(f))


def results_report(results: Iterable[StepResult]) -> Report:
    """The trace as a report: per processor, one verdict per stop in order
    (the report format of docs/formats.md; `actual` and `address` are extra keys)."""
    rep = Report(source="trace")
    for r in results:
        if r.verdict is None:
            continue
        rep.processors.setdefault(r.cpu, []).append(r.verdict)
    return rep


def mismatches(results: Iterable[StepResult]) -> List[StepResult]:
    """Stops where the processor did something not predicted that no known deviation explains."""
    return [r for r in results if r.match is False and not r.deviations]


def deviations(results: Iterable[StepResult]) -> List[StepResult]:
    """Stops a known deviation of the target from the SDM explains (shown as `deviation`)."""
    return [r for r in results if r.match is False and r.deviations]


__all__ = ["VmxSite", "StepResult", "Stepper", "find_vmx_instructions", "operand_address",
           "results_report", "mismatches", "deviations", "VmxdbgError"]
