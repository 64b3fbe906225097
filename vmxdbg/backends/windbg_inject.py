"""`--inject` on WinDbg: run CPUID, VMPTRST and VMREAD on the stopped processor (docs/windbg.md).

One batch per processor per stop (vmxdbg/backends/stub.py): the stub goes
into the padding after the end of the executable section that holds RIP in
the driver's own image (bytes past the section's virtual size, up to its
page end: mapped, executable, and referenced by no code), its output goes on
the processor's own stack below RSP. It runs with RFLAGS.IF clear, so no
interrupt can move the thread to another processor, and ends in INT3.

Every exit path puts back what was changed: the stub's bytes, the stack bytes
it wrote, and the eleven registers it touches (RAX RBX RCX RDX RSI RDI R8 R9
RSP RIP RFLAGS), then reads each back to check. What cannot be put back (the
target is gone) is said in the error.

Refused with one line (NotAvailable): CPL not 0, not 64-bit mode, RFLAGS.TF
set, the processor is not the one the target stopped on, RIP in no module,
no padding large enough, a breakpoint in the padding, the stack below RSP not
readable, the code not writable (HVCI keeps kernel code read-only) or the
written bytes not reading back.
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from ..common.errors import BackendError, NotAvailable, TargetGone
from . import stub

if TYPE_CHECKING:
    from .windbg import WinDbgBackend

SAVED = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "rsp", "rip", "efl")
TF, IF, DF, AC = 1 << 8, 1 << 9, 1 << 10, 1 << 18
SCN_EXECUTE = 0x20000000
PAGE = 0x1000
STUB_ALIGN = 16
RUN_TIMEOUT = 10.0
MAX_RUNS = 8
EFER, VMX_MISC, VMX_VMCS_ENUM = 0xC0000080, 0x485, 0x48A


def executable_tails(headers: bytes, base: int) -> List[Tuple[int, int]]:
    """(start, end) of the padding after each executable section of the PE image at `base`:
    from the end of its virtual size to the end of that page (Microsoft PE format: section
    table, VirtualSize, VirtualAddress, Characteristics IMAGE_SCN_MEM_EXECUTE)."""
    if headers[:2] != b"MZ" or len(headers) < 0x40:
        return []
    pe = struct.unpack_from("<I", headers, 0x3C)[0]
    if pe + 24 > len(headers) or headers[pe:pe + 4] != b"PE\0\0":
        return []
    count = struct.unpack_from("<H", headers, pe + 6)[0]
    opt = struct.unpack_from("<H", headers, pe + 20)[0]
    out = []
    for i in range(count):
        at = pe + 24 + opt + 40 * i
        if at + 40 > len(headers):
            break
        vsize, rva, raw = struct.unpack_from("<III", headers, at + 8)
        chars = struct.unpack_from("<I", headers, at + 36)[0]
        size = vsize or raw
        if not chars & SCN_EXECUTE or not size:
            continue
        end = base + rva + size
        out.append((end, (end + PAGE - 1) & ~(PAGE - 1)))
    return out


class Injector:
    """Runs batches on one WinDbg backend's stopped processors (see the module doc)."""

    def __init__(self, backend: "WinDbgBackend") -> None:
        self.b = backend
        self.runs = 0                                   # times the target was resumed for a stub
        self._tails: Dict[int, List[Tuple[int, int]]] = {}   # module base -> padding ranges
        self._journal: Optional[Dict[str, Any]] = None

    # ---------------------------------------------------------------- refusals
    def _refuse(self, cpu: int, why: str) -> NotAvailable:
        """The refusal, also kept as a note: a check turns the NotAvailable into `unknown`, and the
        person should still learn why --inject did not run (printed once at the end)."""
        note = f"cpu {cpu}: --inject did not run: {why}"
        if note not in self.b.notes:
            self.b.notes.append(note)
        return NotAvailable(f"--inject cannot run here: {why}", backend=self.b.name, cpu=cpu,
                            what="CPUID/VMREAD by injection")

    def _preconditions(self, cpu: int) -> None:
        b = self.b
        stopped = b.event_processor()
        if stopped is not None and stopped != cpu:
            raise self._refuse(cpu, f"the target stopped on processor {stopped}; running code on another "
                                    "would let that one run on past its stop")
        cpl = b._reg(cpu, "cs") & 3
        if cpl:
            raise self._refuse(cpu, f"CPL {cpl} (the stub needs CPL 0)")
        try:
            efer = b.read_msr(cpu, EFER)
            cs_l = b.read_register(cpu, "cs.attributes") >> 13 & 1
        except NotAvailable as exc:
            raise self._refuse(cpu, f"cannot tell whether the processor is in 64-bit mode ({exc.detail})") from None
        if not (efer >> 10 & 1 and cs_l):
            raise self._refuse(cpu, "the processor is not in 64-bit mode")
        if b._reg(cpu, "efl") & TF:
            raise self._refuse(cpu, "RFLAGS.TF is set")

    # ---------------------------------------------------------------- where
    def _site(self, cpu: int, rip: int, length: int) -> Tuple[int, bytes]:
        """Address of padding in RIP's module for `length` bytes, and the bytes there now."""
        b, pk = self.b, self.b.pykd
        try:
            mod = pk.module(rip)
            base = int(mod.begin())
        except b._exc("DbgException"):   # type: ignore[misc]
            b._raise_if_gone(cpu, "module lookup")
            raise self._refuse(cpu, f"RIP 0x{rip:x} is in no module: no padding to run a stub in") from None
        if base not in self._tails:
            headers = b.read_virtual(cpu, base, PAGE)
            self._tails[base] = executable_tails(headers, base)
        for start, end in self._tails[base]:
            at = (start + STUB_ALIGN - 1) & ~(STUB_ALIGN - 1)
            at += STUB_ALIGN     # keep clear of the last instruction's bytes
            if at + length > end:
                continue
            current = b.read_virtual(cpu, at, length)
            if any(x not in (0, 0xCC) for x in current):
                continue         # not padding (someone uses these bytes)
            return at, current
        raise self._refuse(cpu, f"no safe place: no padding of {length} bytes after an executable section of "
                                f"the module at 0x{base:x}")

    def _breakpoints_in(self, start: int, end: int) -> List[int]:
        pk = self.b.pykd
        out = []
        try:
            for i in range(int(pk.getNumberBreakpoints())):
                offset = int(pk.getBp(i).getOffset())
                if start <= offset < end:
                    out.append(offset)
        except self.b._exc("DbgException"):   # type: ignore[misc]
            self.b._raise_if_gone(None, "breakpoint list")
        return out

    # ---------------------------------------------------------------- run
    def run(self, cpu: int, leaves: Sequence[Tuple[int, int]], fields: Sequence[int]) -> stub.BatchResult:
        """CPUID of `leaves` and (in VMX root operation only: the caller knows) VMPTRST + VMREAD of
        `fields` on `cpu`, in one run; everything is put back before this returns or raises."""
        b = self.b
        self._preconditions(cpu)
        fields = list(fields)
        restore_error = False
        if fields:
            try:
                fields = stub.fields_within_enum(fields, b.read_msr(cpu, VMX_VMCS_ENUM))
            except NotAvailable:
                pass
            fields = [stub.VM_INSTRUCTION_ERROR] + [f for f in fields if f != stub.VM_INSTRUCTION_ERROR]
            try:
                restore_error = bool(b.read_msr(cpu, VMX_MISC) >> 29 & 1)
            except NotAvailable:
                restore_error = False
        batch = stub.batch_stub(leaves, fields, restore_error)
        regs = {r: b._reg(cpu, r) for r in SAVED}
        site, old_code = self._site(cpu, regs["rip"], len(batch.code))
        hit = self._breakpoints_in(site, site + len(batch.code))
        if hit:
            raise self._refuse(cpu, f"a breakpoint at 0x{hit[0]:x} lies in the padding the stub would use")
        rsp = regs["rsp"]
        out_lo = rsp - batch.out_offset
        low = rsp - batch.rsp_drop - stub.TRAP_ROOM
        try:
            stack = b.read_virtual(cpu, low, rsp - low)
        except NotAvailable:
            raise self._refuse(cpu, f"the stack below RSP 0x{rsp:x} is not readable down to 0x{low:x}") from None
        old_out = stack[out_lo - low:out_lo - low + batch.out_size]
        known = b._cache_of(cpu)
        self._journal = {"cpu": cpu, "site": site, "code": old_code, "out": (out_lo, old_out), "regs": regs,
                         "written": False, "ended": False, "set": []}
        try:
            self._write(cpu, site, batch.code)
            self._journal["written"] = True
            self._journal["set"] = ["rip", "efl"]
            b._set_reg(cpu, "rip", site)
            b._set_reg(cpu, "efl", regs["efl"] & ~(TF | IF | DF | AC))
            self._journal["set"] = list(SAVED)       # the stub may change any of them
            event = self._run_to_end(cpu, site, batch)
            self._check_end(cpu, site, batch, event)
            self._journal["ended"] = True
            raw = b.pykd_load(out_lo, batch.out_size)
            result = stub.parse_batch(batch, raw)
            unsupported = [f for f, why in result.failed.items() if why == "VMfailValid"]
            if unsupported and not restore_error:
                was = result.fields.get(stub.VM_INSTRUCTION_ERROR)
                b.notes.append(f"cpu {cpu}: VMREAD of {len(unsupported)} field(s) this processor does not support "
                               f"left 12 in the VM-instruction error field (it was "
                               f"{'?' if was is None else was}); IA32_VMX_MISC[29] is 0, so VMWRITE cannot put "
                               "it back")
        finally:
            self.restore()
            b._keep_cache(cpu, known)
        return result

    def _write(self, cpu: int, address: int, data: bytes) -> None:
        b = self.b
        try:
            b.pykd_write(address, data)
        except b._exc("MemoryException"):   # type: ignore[misc]
            raise self._refuse(cpu, f"the code at 0x{address:x} is not writable by the debugger (HVCI/VBS keeps "
                                    "kernel code read-only)") from None
        if b.pykd_load(address, len(data)) != data:
            raise self._refuse(cpu, f"the bytes written at 0x{address:x} do not read back (HVCI/VBS?)")

    def _run_to_end(self, cpu: int, site: int, batch: stub.Batch) -> Dict[str, Any]:
        """Resume until the stub's processor stops. KD resumes every processor; one that stops first
        (a breakpoint) cannot be left waiting, and a debugger may change only the processor that
        stopped, so the target is resumed again (that processor runs on past its breakpoint: its
        stop is kept as a "missed" stop for the next go()) until `cpu` stops, at most MAX_RUNS times."""
        event: Dict[str, Any] = {}
        for _ in range(MAX_RUNS):
            self.runs += 1
            event = self.b._run(RUN_TIMEOUT)
            if event["cpu"] == cpu or event["fired"]:
                return event
            self.b._queue_missed(event, f"processor {event['cpu']} stopped there while vmxdbg's stub ran on "
                                        f"processor {cpu}; it ran on past it when the stub was resumed")
        return event

    def _check_end(self, cpu: int, site: int, batch: stub.Batch, event: Dict[str, Any]) -> None:
        """The run must end at the stub's INT3 on `cpu`; otherwise say what happened."""
        at = site + batch.int3_at
        if event["cpu"] == cpu and event["rip"] in (at, at + 1) and not event["breakpoint"]:
            return
        where = f"0x{event['rip']:x}" if event["rip"] is not None else "?"
        if event["cpu"] != cpu:
            raise BackendError(f"--inject: processor {cpu} did not finish the stub at 0x{site:x} (the target "
                               f"stopped on processor {event['cpu']} at {where}); its registers can be put back "
                               "only when it is the processor the target stops on", backend=self.b.name, cpu=cpu)
        if event["fired"]:
            raise self._refuse(cpu, f"the stub did not finish within {RUN_TIMEOUT:g} s; state restored")
        if event["breakpoint"] and site <= (event["rip"] or 0) < site + len(batch.code):
            raise self._refuse(cpu, f"a breakpoint inside the stub was hit at {where}; state restored")
        raise self._refuse(cpu, f"the injected code stopped at {where} (an exception: the processor is not in "
                                "the state vmxdbg assumed); state restored")

    # ---------------------------------------------------------------- restore
    def restore(self) -> None:
        """Put back the journal's bytes and registers, and read them back (raises BackendError
        naming what differs; TargetGone naming what could not be put back)."""
        j, self._journal = self._journal, None
        if j is None:
            return
        b, cpu = self.b, j["cpu"]
        if b._gone():
            raise TargetGone(f"the target is gone during --inject: the stub at 0x{j['site']:x} and the registers "
                             f"of processor {cpu} could not be put back", backend=b.name, cpu=cpu)
        stopped = b.event_processor()
        if j["set"] and stopped is not None and stopped != cpu:
            # a debugger changes only the processor that stopped (WinDbg's multiprocessor syntax)
            raise BackendError(f"--inject: the stub at 0x{j['site']:x} is still in place and processor {cpu}'s "
                               f"registers are not put back: the target stopped on processor {stopped}; resume "
                               "it (g): the stub ends in INT3 on that processor", backend=b.name, cpu=cpu)
        bad = []
        b._select_now(cpu)
        for name in j["set"]:
            b._set_reg(cpu, name, j["regs"][name])
        out_lo, old_out = j["out"]
        if j["written"]:
            b.pykd_write(j["site"], j["code"])
            if b.pykd_load(j["site"], len(j["code"])) != j["code"]:
                bad.append(f"code at 0x{j['site']:x}")
        if j["ended"]:
            # only when the stub reached its INT3: the break's own frames then lie below the records.
            # Otherwise the frames of the exception or freeze that stopped the processor are there now,
            # in stack below RSP that the processor owns, and they are left alone.
            b.pykd_write(out_lo, old_out)
            if b.pykd_load(out_lo, len(old_out)) != old_out:
                bad.append(f"stack at 0x{out_lo:x}")
        for name in j["set"]:
            if b.pykd_reg(name) != j["regs"][name]:
                bad.append(name)
        if bad:
            raise BackendError("--inject could not put back: " + ", ".join(bad), backend=b.name, cpu=cpu)

    @property
    def pending(self) -> bool:
        return self._journal is not None
