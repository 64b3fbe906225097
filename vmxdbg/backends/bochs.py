"""A live Bochs target: the backend contract over Bochs' internal debugger.

Where each value comes from (docs/bochs.md has the table):
- GPRs, RIP, RFLAGS: `r`; CR0/2/3/4/8, EFER: `creg`; DR0-3/6/7: `dreg`;
- segments (selector, 64-bit base, limit, access rights), GDTR, IDTR: the
  parameter tree, `show "cpuN.CS"` ...; VMX state: `show "cpuN.VMX"`;
- MSRs the tree holds (`show "cpuN.MSR"`: IA32_FEATURE_CONTROL, EFER, PAT,
  SYSENTER_*, STAR..., MTRRs) and FS/GS base (from the segment caches);
- every other MSR (the VMX capability MSRs 0x480-0x493, ...) and CPUID: by
  executing RDMSR / CPUID on that processor (see `_inject`), restoring every
  byte and register it touched;
- memory: `xp` (physical), after `page` translation for linear addresses.

Execution: breakpoints (`lb`/`pb`), `c` with a timeout (SIGINT), `s N 1`.
Bochs can silently miss a code breakpoint, so `plan_stops()` declares the
stops each processor must make in order; a processor that reaches a later
planned stop, or whose guest prints its done line, first yields a "missed"
StopEvent (a debugger miss, never a guest result) before the real stop.

Clean-up: close() — also run at interpreter exit, on SIGTERM (turned into
Terminated, a SystemExit(143), while a backend is open) and after Ctrl-C — brings Bochs back to
its prompt, undoes an interrupted injection, deletes every breakpoint it set,
checks `blist`, quits Bochs and kills it if it lingers.  `close_report`
says what was done.
"""
from __future__ import annotations

import atexit
import contextlib
import re
import signal
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, FrozenSet, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

from ..common import interrupt
from ..common.errors import BackendError, DefinitionError, NotAvailable, TargetGone
from ..decode.header import first_dword, revision_id
from ..decode.layouts import known_layouts, layout_for_revision
from . import bochs_parse as P
from . import stub
from .base import CPUID, EXECUTION, MSR, PHYSICAL, REGISTERS, SEGMENT_NAMES, TABLE_NAMES, VIRTUAL, VMCS, VMX_STATE, \
    Backend, StopEvent
from . import stub as S
from .bochs_process import BochsMachine, BochsProcess

NAME = "bochs"
GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12",
        "r13", "r14", "r15")
CREG_NAMES = ("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "xcr0")
DREG_NAMES = ("dr0", "dr1", "dr2", "dr3", "dr6", "dr7")
PARAM_GROUP = {"es": "ES", "cs": "CS", "ss": "SS", "ds": "DS", "fs": "FS", "gs": "GS", "ldtr": "LDTR",
               "tr": "TR", "gdtr": "GDTR", "idtr": "IDTR"}
SEGMENT_PARTS = ("selector", "base", "limit", "attributes")
#: the debugger answers a stop reads (registers, segments, tables, VMX state, the MSR group),
#: fetched together in one exchange (`_fill`)
STOP_GROUPS = ("r", "creg", "dreg") + tuple(PARAM_GROUP.values()) + ("VMX", "MSR", "in_smm")
_STOP_KEYS = frozenset(g if g in ("r", "creg", "dreg") else "show:" + g for g in STOP_GROUPS)
XP_CHUNK = 4096
BIOS_ROM = (0xFFFE0000, 0x100000000)      # BIOS-bochs-latest, 128 KiB below 4 GiB
STACK_SAVE = 64                           # bytes below RSP an exception frame may use
EFER_LMA = 1 << 10
VMCS_HEAD = 16                            # bytes of a VMCS region read for its revision id and launch state
RFLAGS_RF = 1 << 16

# The injected stub (64-bit mode), written mid-instruction so no stale trace
# of Bochs' trace cache can start there (setpmem does not invalidate it):
#   +0  0F 08        INVD: flush every trace cache, so the rest is decoded fresh
#   +2  0F 32/0F A2  RDMSR or CPUID
#   +4  48 83 C4 08  ADD RSP, 8   } only after an exception: pop the error code
#   +8  48 CF        IRETQ        } and return to +2 with RSP/RFLAGS/CS/SS as before
#   +10 0F 08        INVD: drop the traces that hold these bytes
STUB_INSN = {"rdmsr": stub.RDMSR, "cpuid": stub.CPUID,
             "mov_cr4": b"\x0f\x22\xe0"}   # mov cr4, rax: a fault injected on purpose (write_cr4)
STUB_TAIL = b"\x48\x83\xc4\x08\x48\xcf\x0f\x08"
RFLAGS_IF = 1 << 9          # the interrupt flag (Vol.1 3.4.3, SDM 325462-080US)
STUB_LEN = 2 + max(len(i) for i in STUB_INSN.values()) + len(STUB_TAIL)   # bytes saved around the stub
#: MSRs a processor never changes, read by RDMSR once per processor and kept across stops: the
#: read-only VMX capability reports (Vol.3D A.1-A.13) and IA32_MTRRCAP (Vol.3A 12.11.2.1),
#: SDM 325462-080US (2023).
CONSTANT_MSRS = frozenset(range(0x480, 0x494)) | {0xFE}
#: CPUID leaves read once per processor and kept across stops. What software can change in them
#: is recomputed at each read from the register it mirrors (Vol.2A CPUID, SDM 325462-080US, 2023):
#: (leaf, register 0-3 = EAX-EDX, bit) -> (source, bit), source a `creg` register or an MSR.
#: MSRs RDMSR cannot #GP on (the architecture's, _msr_surely_exists)
SURE_MSRS = frozenset({0x10, 0x1B, 0x3A, 0x174, 0x175, 0x176, 0x277})
#: when a VMX capability MSR (and IA32_MTRRCAP) exists: any of these bits set, each (MSR, bit) or
#: ((CPUID leaf,), bit of EAX..EDX as 0-127); Vol.3D A.1-A.11, Vol.3A 12.11.1 (SDM 325462-080US, 2023)
_VMX = ((0x1,), 64 + 5)
VMX_MSR_GUARDS: Dict[int, Tuple[Tuple[Any, int], ...]] = {
    **{i: (_VMX,) for i in range(0x480, 0x48B)},
    0x48B: ((0x482, 63),), 0x48C: ((0x48B, 33), (0x48B, 37)),
    **{i: ((0x480, 55),) for i in range(0x48D, 0x491)},
    0x491: ((0x48B, 45),), 0x492: ((0x482, 49),), 0x493: ((0x483, 63),),
    0xFE: (((0x1,), 96 + 12),),
}
CONSTANT_LEAVES = frozenset({0x0, 0x1, 0x7, 0x80000000, 0x80000001, 0x80000008})
CPUID_MIRRORS: Dict[Tuple[int, int, int], Tuple[object, int]] = {
    (0x1, 2, 27): ("cr4", 18),      # OSXSAVE = CR4.OSXSAVE
    (0x7, 2, 4): ("cr4", 22),       # OSPKE = CR4.PKE
    (0x1, 3, 9): (0x1B, 11),        # APIC = IA32_APIC_BASE global enable
}


@dataclass
class _Breakpoint:
    address: int
    physical: bool


@dataclass
class _Journal:
    """What an injection changed, to put back even if it is interrupted."""

    cpu: int
    memory: List[Tuple[int, bytes]] = field(default_factory=list)   # (physical, original bytes)
    registers: Dict[str, int] = field(default_factory=dict)         # name -> original value
    stub: Optional[Tuple[int, int]] = None                          # (rip of stub, physical)
    invd: Optional[Tuple[int, int]] = None      # (linear of the stub's final INVD, RIP after it)


_OPEN: "weakref.WeakSet[BochsBackend]" = weakref.WeakSet()


def _close_all_at_exit() -> None:
    for b in list(_OPEN):
        try:
            b.close()
        except BaseException:  # interpreter is ending: never raise here
            pass


atexit.register(_close_all_at_exit)


class _SigtermGuard:
    """While some backend is open (main thread only): SIGTERM raises SystemExit(143),
    so `with`/finally clean-up and close() run."""

    count = 0
    previous: Any = None

    @classmethod
    def enter(cls) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        if cls.count == 0:
            cls.previous = signal.getsignal(signal.SIGTERM)
            signal.signal(signal.SIGTERM, cls._raise)
        cls.count += 1

    @classmethod
    def leave(cls) -> None:
        if threading.current_thread() is not threading.main_thread() or cls.count == 0:
            return
        cls.count -= 1
        if cls.count == 0:
            signal.signal(signal.SIGTERM, cls.previous if cls.previous is not None else signal.SIG_DFL)

    @staticmethod
    def _raise(signum: int, frame: object) -> None:
        interrupt.on_sigterm(signum, frame)


def _canonical48(linear: int) -> bool:
    """A canonical 48-bit linear address (bits 63:47 all equal), within 64 bits."""
    return linear < 0x0000800000000000 or 0xFFFF800000000000 <= linear <= 0xFFFFFFFFFFFFFFFF


class BochsBackend(Backend):
    """Bochs booted from `machine`, stopped at its debugger prompt between calls."""

    name = NAME

    def __init__(self, machine: BochsMachine, *, bochs: Optional[str] = None, startup_timeout: float = 30.0,
                 command_timeout: float = 10.0, done_line: str = r"^done$", batched: bool = True) -> None:
        """`batched=False`: no multi-step read stub (`prefetch` does nothing), every MSR and CPUID
        leaf is read by its own two-step injection: for a guest such as a Linux kernel, where a
        stub stepped over many instructions was carried away from its range (measured under KVM)."""
        self.machine = machine
        self.batched = batched
        self.proc = BochsProcess(machine, bochs=bochs, startup_timeout=startup_timeout,
                                 command_timeout=command_timeout)
        self._cpus = list(range(machine.cpus))
        self._current: Optional[int] = None       # what `set $cpu` last chose
        self._cache: Dict[Tuple[int, str], Any] = {}
        self._constant: Dict[Tuple[int, int], int] = {}   # (cpu, MSR) -> value, CONSTANT_MSRS only
        self._leaves: Dict[Tuple[int, int, int], Tuple[int, int, int, int]] = {}  # (cpu, leaf, subleaf)
        self._bps: Dict[int, _Breakpoint] = {}
        self._vmexit_armed: Set[int] = set()
        self._unread: Set[int] = set()           # processors whose stop has not been read since go()
        self._plan: Dict[int, List[int]] = {}
        self._progress: Dict[int, int] = {}
        self._queued: List[StopEvent] = []
        self._journal: Optional[_Journal] = None
        self._e9_partial = ""
        self._held_log: List[str] = []           # log lines read before an injection, for the next event
        self._running = False
        self._state = "open"                     # "open", "closing", "closed"
        self._done_line = re.compile(done_line)
        self._guest_seen: Dict[int, int] = {}     # per processor: guest lines already attached to an event
        self.guest_lines: Dict[Optional[int], List[str]] = {}     # port 0xE9 lines by processor
        self.bochs_log: Dict[Optional[int], List[str]] = {}       # VMX/error log lines by processor
        self.close_report: Dict[str, Any] = {}
        #: commands: every debugger command; round_trips: exchanges with Bochs (a batch of
        #: commands sent together, `_cmds`, is one); injections: stubs executed on a processor
        self.stats = {"commands": 0, "round_trips": 0, "injections": 0}
        self._absent: Set[Tuple[int, int]] = set()       # (cpu, MSR) whose RDMSR raised #GP
        _OPEN.add(self)
        _SigtermGuard.enter()
        try:
            known_layouts()   # the VMCS layouts, read once per session: now rather than at the first stop
        except DefinitionError:
            pass              # a bad layout file is reported where a VMCS is read, as before

    # ---------------------------------------------------------------- basics
    def capabilities(self) -> FrozenSet[str]:
        return frozenset({REGISTERS, MSR, CPUID, PHYSICAL, VIRTUAL, VMX_STATE, VMCS, EXECUTION})

    def describe(self) -> Dict[str, str]:
        m = re.search(r"Bochs x86 Emulator ([0-9.]+)", self.proc.banner)
        return {"kind": NAME, "version": m.group(1) if m else "unknown", "model": self.machine.cpu_model,
                "cpus": str(self.machine.cpus)}

    def processors(self) -> List[int]:
        return list(self._cpus)

    @property
    def current(self) -> Optional[int]:
        """The processor `set $cpu` points at (None before the first selection)."""
        return self._current

    @property
    def closed(self) -> bool:
        return self._state == "closed"

    def _alive(self) -> None:
        if self._state == "closed":
            raise TargetGone("the backend is closed", backend=NAME)

    def _cmd(self, text: str, timeout: Optional[float] = None) -> str:
        """One debugger command; first regains the prompt if an exception cut the last one short."""
        self._alive()
        if self.proc.pending is not None:
            self._absorb(self.proc.resync())
            self._invalidate()
        self.stats["commands"] += 1
        self.stats["round_trips"] += 1
        return self.proc.command(text, timeout)

    def _cmds(self, texts: List[str]) -> List[str]:
        """Several commands in one exchange (answers in order)."""
        self._alive()
        if self.proc.pending is not None:
            self._absorb(self.proc.resync())
            self._invalidate()
        if not texts:
            return []
        self.stats["commands"] += len(texts)
        self.stats["round_trips"] += 1
        return self.proc.commands(texts)

    def _source(self, texts: List[str]) -> str:
        """Commands this backend built, run from a file in one exchange (their output joined)."""
        self._alive()
        if self.proc.pending is not None:
            self._absorb(self.proc.resync())
            self._invalidate()
        if not texts:
            return ""
        self.stats["commands"] += len(texts)
        self.stats["round_trips"] += 1
        return self.proc.source(texts)

    def _check_cpu(self, cpu: int) -> None:
        if not isinstance(cpu, int) or cpu not in self._cpus:
            raise BackendError(f"no processor {cpu!r} (this machine has {len(self._cpus)})", backend=NAME)

    def select(self, cpu: int) -> None:
        """Make `cpu` the processor later `r`, `creg`, `page`, `u`, `set` act on."""
        self._check_cpu(cpu)
        if self._current != cpu:
            out = self._cmd(f"set $cpu = {cpu}")
            if out.strip():
                raise BackendError(f"`set $cpu = {cpu}` answered {out.strip()!r}", backend=NAME, cpu=cpu)
            self._current = cpu

    def _invalidate(self) -> None:
        self._cache.clear()

    def _cached(self, cpu: int, key: str, fetch: Callable[[], Any]) -> Any:
        k = (cpu, key)
        if k not in self._cache and cpu in self._unread and key in _STOP_KEYS:
            # the first read of a processor's registers since the target ran: everything a stop
            # reads comes in one exchange (a failure there leaves each to its own command)
            self._unread.discard(cpu)
            try:
                self._fill(cpu, STOP_GROUPS)
            except TargetGone:
                raise
            except BackendError:
                pass
        if k not in self._cache:
            self._cache[k] = fetch()
        return self._cache[k]

    def _show(self, cpu: int, group: str) -> Dict[str, Any]:
        def fetch() -> Dict[str, Any]:
            cmd = f'show "cpu{cpu}.{group}"'
            tree = P.parse_param_tree(self._cmd(cmd), cmd)
            if group not in tree:
                raise BackendError(f"`{cmd}` has no {group}", backend=NAME, cpu=cpu)
            return tree[group]
        self._check_cpu(cpu)
        return self._cached(cpu, "show:" + group, fetch)

    # ------------------------------------------------------------- registers
    def _r(self, cpu: int) -> Dict[str, int]:
        def fetch() -> Dict[str, int]:
            self.select(cpu)
            text = self._cmd("r")
            if P.parse_r_cpu(text) not in (None, cpu):
                raise BackendError(f"`r` answered for another processor: {text[:20]!r}", backend=NAME, cpu=cpu)
            return P.parse_r(text)
        return self._cached(cpu, "r", fetch)

    def _creg(self, cpu: int) -> Dict[str, int]:
        def fetch() -> Dict[str, int]:
            self.select(cpu)
            return P.parse_creg(self._cmd("creg"))
        return self._cached(cpu, "creg", fetch)

    def _dreg(self, cpu: int) -> Dict[str, int]:
        def fetch() -> Dict[str, int]:
            self.select(cpu)
            return P.parse_dreg(self._cmd("dreg"))
        return self._cached(cpu, "dreg", fetch)

    def _fill(self, cpu: int, groups: Iterable[str]) -> None:
        """Fetch the answers a stop needs in one exchange: `r`, `creg`, `dreg` and parameter-tree
        groups (`show "cpuN.GROUP"`) not cached yet; each is parsed as its own command is."""
        keys = [g for g in dict.fromkeys(groups) if (cpu, g if g in ("r", "creg", "dreg") else "show:" + g)
                not in self._cache]
        if len(keys) < 2:
            return
        self._check_cpu(cpu)
        cmds = [] if self._current == cpu else [f"set $cpu = {cpu}"]
        cmds += [k if k in ("r", "creg", "dreg") else f'show "cpu{cpu}.{k}"' for k in keys]
        answers = self._cmds(cmds)
        if len(cmds) > len(keys):
            if answers[0].strip():
                raise BackendError(f"`set $cpu = {cpu}` answered {answers[0].strip()!r}", backend=NAME, cpu=cpu)
            self._current = cpu
            answers = answers[1:]
        for key, cmd, text in zip(keys, cmds[len(cmds) - len(keys):], answers):
            if key == "r":
                if P.parse_r_cpu(text) not in (None, cpu):
                    raise BackendError(f"`r` answered for another processor: {text[:20]!r}", backend=NAME, cpu=cpu)
                self._cache[(cpu, "r")] = P.parse_r(text)
            elif key == "creg":
                self._cache[(cpu, "creg")] = P.parse_creg(text)
            elif key == "dreg":
                self._cache[(cpu, "dreg")] = P.parse_dreg(text)
            else:
                tree = P.parse_param_tree(text, cmd)
                if key not in tree:
                    raise BackendError(f"`{cmd}` has no {key}", backend=NAME, cpu=cpu)
                self._cache[(cpu, "show:" + key)] = tree[key]

    def read_registers(self, cpu: int, names: Iterable[str]) -> Dict[str, int]:
        """Several registers: every debugger answer they need is fetched in one exchange first."""
        names = list(names)
        groups = []
        for n in (x.lower() for x in names):
            base, _, part = n.partition(".")
            if n in GPRS or n in ("rip", "rflags"):
                groups.append("r")
            elif n in CREG_NAMES:
                groups.append("creg")
            elif n in DREG_NAMES:
                groups.append("dreg")
            elif n == "cpl":
                groups += ["creg", "r", "CS"]
            elif base in PARAM_GROUP and part:
                groups.append(PARAM_GROUP[base])
        self._fill(cpu, groups + list(STOP_GROUPS))     # and what the same stop reads next

        return super().read_registers(cpu, names)

    def read_register(self, cpu: int, name: str) -> int:
        """Registers named as in base.py; segment attributes in VMCS access-rights format."""
        self._check_cpu(cpu)
        n = name.lower()
        if n in GPRS or n in ("rip", "rflags"):
            return self._r(cpu)[n]
        if n in CREG_NAMES:
            values = self._creg(cpu)
            if n not in values:
                raise NotAvailable("`creg` does not show it", backend=NAME, cpu=cpu, what=f"register {name}")
            return values[n]
        if n in DREG_NAMES:
            return self._dreg(cpu)[n]
        if n == "cpl":
            return self._cpl(cpu)
        base, _, part = n.partition(".")
        if base in SEGMENT_NAMES and part in SEGMENT_PARTS:
            seg = P.segment_from_param(self._show(cpu, PARAM_GROUP[base]), f"cpu{cpu}.{PARAM_GROUP[base]}")
            return seg[SEGMENT_PARTS.index(part)]
        if base in TABLE_NAMES and part in ("base", "limit"):
            group = self._show(cpu, PARAM_GROUP[base])
            return group[part]
        raise NotAvailable("no such register in Bochs", backend=NAME, cpu=cpu, what=f"register {name}")

    def _cpl(self, cpu: int) -> int:
        if not self._creg(cpu)["cr0"] & 1:
            return 0
        if self._r(cpu)["rflags"] & (1 << 17):
            return 3
        return self._show(cpu, "CS")["selector"] & 3

    def _long64(self, cpu: int) -> bool:
        return bool(self._creg(cpu)["efer"] & EFER_LMA) and bool(self._show(cpu, "CS").get("l"))

    # ------------------------------------------------------------- VMX, MSRs
    def vmx_state(self, cpu: int) -> Dict[str, object]:
        """vmx off/root/non-root, vmxon_pointer, vmcs_pointer (show "cpuN.VMX"), smm
        (show "cpuN.in_smm"; left out where the tree lacks it), and the current VMCS's
        launch state from its region (Bochs' layout keeps it at byte 8)."""
        try:
            self._fill(cpu, ("VMX", "in_smm"))          # both in one exchange when neither is cached
        except TargetGone:
            raise
        except BackendError:
            pass
        state: Dict[str, object] = dict(P.vmx_state_from_param(self._show(cpu, "VMX")))
        try:
            state["smm"] = bool(self._show(cpu, "in_smm"))
        except TargetGone:
            raise
        except BackendError:
            pass
        try:
            _, layout, head = self._vmcs_head(cpu)     # the launch state without reading every field
        except NotAvailable:
            return state
        extras = layout.parse_extras(head)
        if "launch_state" not in extras and any(e.name == "launch_state" for e in layout.extras):
            _, extras = self._current_vmcs(cpu)
        launch = {0: "clear", 1: "launched"}.get(extras.get("launch_state", -1))
        if launch:
            state["vmcs_launch_state"] = launch
        return state

    def _current_vmcs(self, cpu: int) -> Tuple[Dict[int, int], Dict[str, int]]:
        """The current VMCS's fields and extras, read from its region in Bochs' own
        memory layout (structs/vmcs_layouts/bochs.yaml) in one read per stop."""
        def fetch() -> Tuple[Dict[int, int], Dict[str, int]]:
            ptr, layout, _ = self._vmcs_head(cpu)
            data = self.read_physical(ptr, layout.span)
            return layout.parse(data), layout.parse_extras(data)
        return self._cached(cpu, "vmcs", fetch)

    def _vmcs_head(self, cpu: int) -> Tuple[int, Any, bytes]:
        """(pointer, layout, first VMCS_HEAD bytes) of the current VMCS, once per stop."""
        def fetch() -> Tuple[int, Any, bytes]:
            st = P.vmx_state_from_param(self._show(cpu, "VMX"))
            ptr = st.get("vmcs_pointer")
            if st.get("vmx") == "off" or not isinstance(ptr, int) or ptr == 0xFFFFFFFFFFFFFFFF:
                raise NotAvailable("no current VMCS", backend=NAME, cpu=cpu, what="VMCS fields")
            head = self.read_physical(ptr, VMCS_HEAD)
            revision = revision_id(first_dword(head))
            layout = layout_for_revision(revision)
            if layout is None:
                raise NotAvailable(f"no VMCS layout for revision id 0x{revision:x}", backend=NAME, cpu=cpu,
                                   what=f"VMCS at 0x{ptr:x}")
            return ptr, layout, head
        return self._cached(cpu, "vmcs_head", fetch)

    def read_vmcs(self, cpu: int, encoding: int) -> int:
        fields, _ = self._current_vmcs(cpu)
        if encoding not in fields:
            raise NotAvailable("field not in this VMCS layout", backend=NAME, cpu=cpu, what=f"VMCS field 0x{encoding:04x}")
        return fields[encoding]

    def write_vmcs(self, cpu: int, encoding: int, value: int) -> None:
        """Write a field of the current VMCS in its region, through Bochs' memory layout
        (Bochs' VMLAUNCH/VMREAD read the region itself, so this is what a VMWRITE would do)."""
        from ..decode.layouts import layout_for_revision
        st = P.vmx_state_from_param(self._show(cpu, "VMX"))
        ptr = st.get("vmcs_pointer")
        if st.get("vmx") == "off" or not isinstance(ptr, int) or ptr == 0xFFFFFFFFFFFFFFFF:
            raise NotAvailable("no current VMCS", backend=NAME, cpu=cpu, what=f"VMCS field 0x{encoding:04x}")
        layout = layout_for_revision(int.from_bytes(self.read_physical(ptr, 4), "little") & 0x7FFFFFFF)
        slot = layout.by_encoding.get(encoding) if layout is not None else None
        if slot is None:
            raise NotAvailable("field not in this VMCS layout", backend=NAME, cpu=cpu, what=f"VMCS field 0x{encoding:04x}")
        self.write_physical(ptr + slot.offset, slot.encode(value).to_bytes(slot.size, "little"))

    def read_vmcs_fields(self, cpu: int, encodings: Iterable[int]) -> Dict[int, int]:
        try:
            fields, _ = self._current_vmcs(cpu)
        except NotAvailable:
            return {}
        return {e: fields[e] for e in encodings if e in fields}

    def _tree_msrs(self, cpu: int) -> Dict[int, int]:
        """The MSRs of the parameter tree's MSR group by index (parsed once per read of the group)."""
        group = self._show(cpu, "MSR")
        got = self._cache.get((cpu, "msrs"))
        if got is None or got[0] is not group:
            got = (group, P.msrs_from_param(group))
            self._cache[(cpu, "msrs")] = got
        return got[1]

    def read_msr(self, cpu: int, index: int) -> int:
        """From the parameter tree where it holds the MSR, else by executing RDMSR (once per
        processor for CONSTANT_MSRS, which no processor changes)."""
        self._check_cpu(cpu)
        tree = self._tree_msrs(cpu)
        if index in tree:
            return tree[index]
        if index in (0xC0000100, 0xC0000101):
            return self.read_register(cpu, "fs.base" if index == 0xC0000100 else "gs.base")
        if (cpu, index) in self._absent:
            raise NotAvailable("RDMSR of it raised #GP on this processor (an MSR it does not have)",
                               backend=NAME, cpu=cpu, what=f"MSR 0x{index:x}")
        if (cpu, f"msr:{index:x}") in self._cache:
            return self._cache[(cpu, f"msr:{index:x}")]
        if index in CONSTANT_MSRS:
            if (cpu, index) not in self._constant:
                self._constant[(cpu, index)] = self.read_msr_by_rdmsr(cpu, index)
            return self._constant[(cpu, index)]
        try:
            return self.read_msr_by_rdmsr(cpu, index)
        except NotAvailable as e:
            if "raised an exception" in str(e):
                self._note_absent(cpu, index)
            raise

    def prefetch(self, cpu: int, msrs: Iterable[int] = (), leaves: Iterable[Tuple[int, int]] = ()) -> None:
        """Read every MSR and CPUID leaf of the lists that this stop still needs with one injected
        stub (vmxdbg/backends/stub.py): one step, one memory read. What is cached (per processor
        for CONSTANT_MSRS and CONSTANT_LEAVES, else until the target runs), in the parameter
        tree, or known to raise #GP is left out. An MSR that may not exist is stepped alone
        inside the same injection, its #GP undone. Nothing is raised: what could not be read
        stays for read_msr / cpuid to try (or refuse) one by one."""
        self._check_cpu(cpu)
        if not self.batched:
            return
        self._fill(cpu, STOP_GROUPS)
        reads: List[S.Read] = []
        where: Dict[Tuple[str, int, int], int] = {}

        def add(read: S.Read) -> None:
            where[(read.kind, read.index, read.subleaf)] = len(reads)
            reads.append(read)
        for leaf, sub in leaves:
            if (leaf in CONSTANT_LEAVES and sub == 0 and (cpu, leaf, 0) in self._leaves) or \
                    (cpu, f"cpuid:{leaf:x}.{sub:x}") in self._cache or ("cpuid", leaf, sub) in where:
                continue
            add(S.Read("cpuid", leaf & 0xFFFFFFFF, sub & 0xFFFFFFFF))
        try:
            tree = self._tree_msrs(cpu)
        except NotAvailable:
            tree = {}
        known = {i: v for (c, i), v in self._constant.items() if c == cpu}
        for index in sorted(set(msrs), key=lambda i: (i not in range(0x480, 0x48B), i)):
            if index in tree or index in (0xC0000100, 0xC0000101) or index in known or \
                    (cpu, index) in self._absent or (cpu, f"msr:{index:x}") in self._cache:
                continue
            guard = self._batch_guard(cpu, index, where, known)
            if guard is False:
                continue                          # the architecture says it does not exist here
            add(S.Read("rdmsr", index, guard=guard if isinstance(guard, tuple) else (),
                       risky=guard is None))
        if not reads:
            return
        try:
            values, faulted = self._inject_batch(cpu, reads)
        except NotAvailable:
            return
        for i, (read, value) in enumerate(zip(reads, values)):
            if read.kind == "cpuid" and value is not None:
                if read.index in CONSTANT_LEAVES and read.subleaf == 0:
                    self._leaves[(cpu, read.index, 0)] = value  # type: ignore[assignment]
                else:
                    self._cache[(cpu, f"cpuid:{read.index:x}.{read.subleaf:x}")] = value
            elif read.kind == "rdmsr":
                if i in faulted:
                    self._note_absent(cpu, read.index)
                elif value is not None and read.index in CONSTANT_MSRS:
                    self._constant[(cpu, read.index)] = value  # type: ignore[assignment]
                elif value is not None:
                    self._cache[(cpu, f"msr:{read.index:x}")] = value

    def _batch_guard(self, cpu: int, index: int, where: Dict[Tuple[str, int, int], int],
                     known: Dict[int, int]) -> Any:
        """How a batched RDMSR of `index` is guarded: () none needed (it surely exists), a tuple
        of (read position, bit) alternatives, False (it surely does not exist), None (it may
        not exist: a risky read). The bits are those of _msr_surely_exists."""
        if index in SURE_MSRS or 0xC0000080 <= index <= 0xC0000102:
            return ()
        rule = VMX_MSR_GUARDS.get(index)
        if rule is None:
            return None
        options = []
        for source, bit in rule:
            if isinstance(source, tuple):                 # a CPUID leaf
                leaf = self._leaves.get((cpu, source[0], 0))
                if leaf is not None:
                    if leaf[bit // 32] >> (bit % 32) & 1:
                        return ()
                    continue
                pos = where.get(("cpuid", source[0], 0))
            else:
                if source in known:
                    if known[source] >> bit & 1:
                        return ()
                    continue
                pos = where.get(("rdmsr", source, 0))
            if pos is None:
                return None                              # its condition is not known: risky
            options.append((pos, bit))
        return tuple(options) if options else False

    def _note_absent(self, cpu: int, index: int) -> None:
        """RDMSR(index) raised #GP on `cpu`: it will again (an MSR does not come into existence),
        and on every processor of this machine, which is then never asked: Bochs builds all its
        processors from the one `cpu:` model and MSR configuration, and whether its RDMSR faults
        depends on that model alone (bochs/cpu/msr.cc, BX_CPU_C::rdmsr and handle_unknown_rdmsr:
        the model's extensions, its VMX capabilities, the configured MSRs). Except the x2APIC
        range, which depends on each processor's APIC mode (Vol.3A 11.12.1; msr.cc reads that
        processor's IA32_APIC_BASE there)."""
        if not 0x800 <= index <= 0x8FF:
            self._absent.update((c, index) for c in self._cpus)

    def _inject_batch(self, cpu: int, reads: Sequence[S.Read]) -> Tuple[List[Any], Set[int]]:
        """Run one stub of `reads` on `cpu`; (values, positions that raised #GP). Restores every
        byte and register; NotAvailable where _inject would refuse."""
        with interrupt.doing(f"{len(reads)} MSRs and CPUID leaves read by an injected stub on cpu {cpu}"):
            return self._inject_batch_now(cpu, reads)

    def _inject_batch_now(self, cpu: int, reads: Sequence[S.Read]) -> Tuple[List[Any], Set[int]]:
        if self._journal is not None:
            self._undo()
        insn = "rdmsr" if any(r.kind == "rdmsr" for r in reads) else "cpuid"
        self._inject_preconditions(cpu, insn, "a batch of MSRs/CPUID leaves")
        frame_stack: Optional[int] = None
        if any(r.risky for r in reads):
            gate = self._gp_gate(cpu)
            if gate is None:                     # a #GP would shut the machine down: leave them out
                keep = [r for r in reads if not r.risky]
                if not keep:
                    raise NotAvailable("no usable #GP gate for MSRs that may not exist", backend=NAME, cpu=cpu)
                values, faulted = self._inject_batch_now(cpu, keep)
                it = iter(values)
                return [None if r.risky else next(it) for r in reads], set()
            frame_stack = self._r(cpu)["rsp"] if gate == 0 else self._ist_pointer(cpu, gate)
        stub = S.build(reads)
        if stub.size > 0x1000:
            raise NotAvailable("the batch stub is larger than a page", backend=NAME, cpu=cpu)
        self.stats["injections"] += 1
        self._held_log = self._take_log()
        before = dict(self._r(cpu))
        known = dict(self._cache)
        site = self._stub_site(cpu, before["rip"])
        lin = (frame_stack & ~0xF) - STACK_SAVE if frame_stack is not None else site
        self._translate_pages(cpu, (site, site + stub.size - 1, lin, lin + STACK_SAVE - 1))
        p0, p1 = self.translate(cpu, site), self.translate(cpu, site + stub.size - 1)
        saves = [(site, p0, p1, stub.size)]
        if frame_stack is not None:
            saves.append((lin, self.translate(cpu, lin), self.translate(cpu, lin + STACK_SAVE - 1), STACK_SAVE))
        j = _Journal(cpu)
        self._journal = j
        faulted: Set[int] = set()
        with self._journaled(j, "read stub"):
            j.memory += self._save_linear(saves)
            j.stub = (site, p0)
            j.invd = (site + stub.end_invd, site + stub.end)
            for reg in ("rax", "rbx", "rcx", "rdx", "rdi", "rip"):
                j.registers[reg] = before[reg]
            j.registers["$eflags"] = before["rflags"]
            # the stub's bytes and its registers in one sourced file (nothing runs before both are in):
            # interrupts masked while the stub runs (RFLAGS is put back with the rest): with IF = 1, as
            # in a Linux kernel, a timer interrupt taken between two steps would carry RIP away
            self._poke_many(self._linear_pieces(site, p0, p1, stub.code),
                            regs=[("rdi", site + stub.buffer_offset), ("rip", site),
                                  ("$eflags", before["rflags"] & ~RFLAGS_IF)])
            # a breakpoint inside the stub's range cuts a multi-step short: step on (the stub is
            # straight-line code, extra steps spin on its JMP $)
            self._step_through(cpu, stub.straight_steps, site + stub.end, site, site + stub.end)
            for i, entry in sorted(stub.risky.items()):
                insn_rip = site + stub.insn_at[i]
                self._set_regs([("rdi", site + stub.buffer_offset + stub.slots[i]), ("rip", site + entry)])
                self._step_raw(cpu)                                  # mov ecx, index
                if self._step_raw(cpu)["rip"] != insn_rip + 2:       # rdmsr
                    self._unwind(cpu, before, insn_rip, site + stub.unwind)
                    faulted.add(i)
                    continue
                self._step_through(cpu, 3, insn_rip + 5, insn_rip + 2, insn_rip + 5)   # stosd; xchg; stosd
            data = self._read_buffer(site, p0, p1, stub)
            values = S.parse(stub, reads, data, faulted)
        self._cache = known
        return values, faulted

    @staticmethod
    def _linear_pieces(lin: int, p0: int, p1: int, data: bytes) -> List[Tuple[int, bytes]]:
        """(physical, bytes) pieces of `data` at linear `lin`, in a range whose first byte is at
        physical p0 and whose last byte (on the same or the next page) is at physical p1."""
        split = 0x1000 - (lin & 0xFFF)
        if split >= len(data):
            return [(p0, data)]
        return [(p0, data[:split]), ((p1 & ~0xFFF), data[split:])]

    def _read_buffer(self, site: int, p0: int, p1: int, stub: "S.Stub") -> bytes:
        """The results buffer (it may cross into the stub range's second page)."""
        lin = site + stub.buffer_offset
        first_page_end = (site & ~0xFFF) + 0x1000
        out = b""
        for at, n in ((lin, min(stub.buffer_size, max(0, first_page_end - lin))),
                      (max(lin, first_page_end), stub.buffer_size - min(stub.buffer_size, max(0, first_page_end - lin)))):
            if n:
                phys = p0 + (at - site) if at < first_page_end else (p1 & ~0xFFF) + (at & 0xFFF)
                out += self.read_physical(phys, n)
        return out

    def _step_through(self, cpu: int, count: int, target: int, lo: int, hi: int) -> None:
        """Step `cpu` until RIP is `target` (`s N count`, again while RIP stays in [lo, hi]:
        a breakpoint there stopped it early); BackendError if RIP leaves that range."""
        for _ in range(8):
            rip = self._step_read(cpu, count)[1]["rip"]
            if rip == target:
                return
            if not lo <= rip <= hi:
                break
        raise BackendError(f"the injected code stopped at 0x{self._r(cpu)['rip']:x}, not at 0x{target:x}",
                           backend=NAME, cpu=cpu)

    def _unwind(self, cpu: int, before: Dict[str, int], insn_rip: int, unwind: int) -> None:
        """An exception was delivered at the injected RDMSR at `insn_rip`: IRETQ back through the
        stub's `add rsp, 8; iretq`, so RSP, RFLAGS, CS and SS are the interrupted ones again."""
        now = self._r(cpu)
        frame = self.read_virtual(cpu, now["rsp"], 16)
        q0, q1 = int.from_bytes(frame[:8], "little"), int.from_bytes(frame[8:], "little")
        if q1 == insn_rip:
            self._set_reg("rip", unwind)
            self._step_to(cpu, unwind + 4, "ADD RSP, 8")
        elif q0 == insn_rip:
            self._set_reg("rip", unwind + 4)
        else:
            raise BackendError(f"the injected RDMSR was diverted to 0x{now['rip']:x} and no exception frame "
                               "returns to it", backend=NAME, cpu=cpu)
        self._step_to(cpu, insn_rip, "IRETQ")
        back = self._r(cpu)
        if back["rsp"] != before["rsp"]:
            raise BackendError("IRETQ did not restore RSP after the injected RDMSR faulted", backend=NAME, cpu=cpu)

    def read_msr_by_rdmsr(self, cpu: int, index: int) -> int:
        """Execute RDMSR(index) on `cpu` and restore everything; NotAvailable if it faults."""
        if not 0 <= index <= 0xFFFFFFFF:
            raise BackendError(f"MSR index 0x{index:x} is not 32-bit", backend=NAME, cpu=cpu)
        regs = self._inject(cpu, "rdmsr", {"rcx": index}, what=f"MSR 0x{index:x}")
        return (regs["rdx"] & 0xFFFFFFFF) << 32 | (regs["rax"] & 0xFFFFFFFF)

    def write_register(self, cpu: int, name: str, value: int) -> None:
        """Set a register the debugger can set (`set NAME = VALUE`: GPRs, RIP, RFLAGS) on `cpu`."""
        self._check_cpu(cpu)
        self.select(cpu)
        self._set_reg(name, value)

    def write_cr4(self, cpu: int, value: int) -> None:
        """Load CR4 on `cpu` by executing MOV CR4, RAX there (the debugger cannot set control
        registers): the injection machinery puts back every byte and register but CR4.
        NotAvailable (and nothing changed) if the processor faults, e.g. #GP for a value
        CR4 cannot take (SDM Vol.3A 2.5, 325462-080US)."""
        self._inject(cpu, "mov_cr4", {"rax": value}, what="CR4")
        self._invalidate()

    def cpuid(self, cpu: int, leaf: int, subleaf: int = 0) -> Tuple[int, int, int, int]:
        """Execute CPUID(leaf, subleaf) on `cpu` and restore everything. CONSTANT_LEAVES (subleaf 0)
        are executed once per processor, their CPUID_MIRRORS bits recomputed at every call; other
        leaves are cached until the target runs."""
        if leaf in CONSTANT_LEAVES and subleaf == 0:
            self._check_cpu(cpu)
            key3 = (cpu, leaf, subleaf)
            if key3 not in self._leaves:
                self._leaves[key3] = self._cpuid_now(cpu, leaf, subleaf)
            regs = list(self._leaves[key3])
            for (lf, reg, bit), (source, sbit) in CPUID_MIRRORS.items():
                if lf == leaf:
                    value = self._creg(cpu)[source] if isinstance(source, str) else self.read_msr(cpu, int(source))
                    regs[reg] = (regs[reg] & ~(1 << bit)) | (value >> sbit & 1) << bit
            return tuple(regs)  # type: ignore[return-value]
        return self._cpuid_now(cpu, leaf, subleaf)

    def _cpuid_now(self, cpu: int, leaf: int, subleaf: int) -> Tuple[int, int, int, int]:
        def fetch() -> Tuple[int, int, int, int]:
            regs = self._inject(cpu, "cpuid", {"rax": leaf & 0xFFFFFFFF, "rcx": subleaf & 0xFFFFFFFF},
                                what=f"CPUID 0x{leaf:x}.{subleaf:x}")
            return tuple(regs[r] & 0xFFFFFFFF for r in ("rax", "rbx", "rcx", "rdx"))  # type: ignore[return-value]
        self._check_cpu(cpu)
        key = f"cpuid:{leaf:x}.{subleaf:x}"
        if (cpu, key) in self._cache:
            return self._cache[(cpu, key)]
        value = fetch()
        self._cache[(cpu, key)] = value      # after the injection (it clears the cache)
        return value

    # ---------------------------------------------------------------- memory
    def _check_physical(self, address: int, size: int) -> None:
        end = address + size
        ram = self.machine.megs << 20
        if address < 0 or size < 0 or not (end <= ram or (address >= BIOS_ROM[0] and end <= BIOS_ROM[1])):
            raise NotAvailable(f"outside RAM (0-0x{ram:x}) and the BIOS ROM", backend=NAME,
                               what=f"physical 0x{address:x}+0x{size:x}")

    def read_physical(self, address: int, size: int) -> bytes:
        return self.read_physical_many([(address, size)])[0]

    def read_physical_many(self, ranges: Sequence[Tuple[int, int]]) -> List[bytes]:
        """Several (physical address, size) ranges, every `xp` they need sent in one exchange."""
        plans = []
        for address, size in ranges:
            self._check_physical(address, size)
            # whole aligned 8-byte items (RAM and the BIOS ROM are made of them): 8x less text for
            # Bochs to print and for us to parse than bytes, wherever the range starts
            lo, hi = address & ~7, (address + size + 7) & ~7
            plans.append((address - lo, size, self._xp_plan(lo, hi - lo)))
        cmds = [cmd for _, _, plan in plans for cmd, _, _, _ in plan]
        answers = iter(self._cmds(cmds) if len(cmds) > 1 else [self._cmd(c) for c in cmds])
        return [b"".join(P.parse_xp(next(answers), at, n, unit, cmd) for cmd, at, n, unit in plan)[skip:skip + size]
                for skip, size, plan in plans]

    def _xp_plan(self, address: int, size: int) -> List[Tuple[str, int, int, str]]:
        """The `xp` commands of a range, (command, address, bytes, unit), XP_CHUNK bytes at most each."""
        self._check_physical(address, size)
        plan = []
        at, end = address, address + size
        while at < end:
            n = min(XP_CHUNK, end - at)
            unit = "g" if at % 8 == 0 and n >= 8 else "b"    # 8-byte items: 8x less text to print and parse
            if unit == "g":
                n -= n % 8
            plan.append((f"xp /{n // P.XP_UNITS[unit]}{unit}x 0x{at:x}", at, n, unit))
            at += n
        return plan

    def write_physical(self, address: int, data: bytes) -> None:
        """Write guest memory (e.g. minihv's configuration block); only changed dwords are sent."""
        self._check_physical(address, len(data))
        old = self.read_physical(address, len(data))
        i = 0
        while i < len(data):
            n = 4 if i + 4 <= len(data) and (address + i) % 4 == 0 else 1
            if data[i:i + n] != old[i:i + n]:
                self._setpmem(address + i, data[i:i + n])
            i += n
        self._invalidate()

    def _setpmem(self, address: int, data: bytes) -> None:
        out = self._cmd(f"setpmem 0x{address:x} {len(data)} 0x{int.from_bytes(data, 'little'):x}")
        if out.strip():
            raise BackendError(f"setpmem at 0x{address:x}: {out.strip()}", backend=NAME)

    def _translate_pages(self, cpu: int, linears: Iterable[int]) -> None:
        """Translate the pages of `linears` not translated yet in one exchange (`page` each)."""
        if not self._creg(cpu)["cr0"] & (1 << 31):
            return
        pages = [p for p in dict.fromkeys(x & ~0xFFF for x in linears) if (cpu, f"page:{p:x}") not in self._cache]
        if len(pages) < 2:
            return
        self.select(cpu)
        for page, text in zip(pages, self._cmds([f"page 0x{p:x}" for p in pages])):
            self._cache[(cpu, f"page:{page:x}")] = P.parse_page(text)

    def translate(self, cpu: int, linear: int) -> int:
        """Physical address of `linear` as processor `cpu` sees it (paging via `page`)."""
        if not self._creg(cpu)["cr0"] & (1 << 31):
            return linear
        page = linear & ~0xFFF
        def fetch() -> Optional[int]:
            self.select(cpu)
            return P.parse_page(self._cmd(f"page 0x{page:x}"))
        phys = self._cached(cpu, f"page:{page:x}", fetch)
        if phys is None:
            raise NotAvailable("not mapped", backend=NAME, cpu=cpu, what=f"linear 0x{linear:x}")
        return phys | (linear & 0xFFF)

    def read_virtual(self, cpu: int, address: int, size: int) -> bytes:
        self._check_cpu(cpu)
        out = bytearray()
        while len(out) < size:
            at = address + len(out)
            n = min(size - len(out), 0x1000 - (at & 0xFFF))
            out += self.read_physical(self.translate(cpu, at), n)
        return bytes(out)

    # ------------------------------------------------------------ injection
    def _inject(self, cpu: int, insn: str, inputs: Dict[str, int], what: str) -> Dict[str, int]:
        """Run RDMSR or CPUID on `cpu` with `inputs` in registers; return the registers after.

        Preconditions (else NotAvailable): 64-bit mode, CPL 0 for RDMSR,
        running (activity state 0), not in VMX non-root operation, TF clear,
        no event pending.  The stub (STUB_*) goes mid-instruction near RIP;
        every byte and register is restored and checked afterwards.
        """
        with interrupt.doing(f"{what} by an injected {insn.upper()} on cpu {cpu}"):
            return self._inject_now(cpu, insn, inputs, what)

    def _inject_now(self, cpu: int, insn: str, inputs: Dict[str, int], what: str) -> Dict[str, int]:
        self._check_cpu(cpu)
        if self._journal is not None:
            self._undo()
        self._inject_preconditions(cpu, insn, what)
        frame_stack: Optional[int] = None
        if insn in ("rdmsr", "mov_cr4"):   # these can #GP (an MSR that does not exist, a bad CR4 value):
            gate = self._gp_gate(cpu)       # the exception frame must be undone
            if gate is not None:
                frame_stack = self._r(cpu)["rsp"] if gate == 0 else self._ist_pointer(cpu, gate)
            elif insn == "mov_cr4":
                raise NotAvailable("cannot execute MOV CR4 here: no usable #GP gate in the IDT", backend=NAME,
                                   cpu=cpu, what=what)
            elif not self._msr_surely_exists(cpu, inputs["rcx"]):
                raise NotAvailable("cannot execute RDMSR here: no usable #GP gate in the IDT, and this MSR "
                                   "may not exist (a #GP would shut the machine down)", backend=NAME,
                                   cpu=cpu, what=what)
        self.stats["injections"] += 1
        self._held_log = self._take_log()       # the guest's lines so far; what the stub causes is dropped
        before = dict(self._r(cpu))
        known = dict(self._cache)               # still true once everything is put back
        rip = before["rip"]
        stub_rip = self._stub_site(cpu, rip)
        phys = [self.translate(cpu, stub_rip + k) for k in (0, STUB_LEN - 1)]
        saves = [(stub_rip, phys, STUB_LEN)]
        if frame_stack is not None:
            stack_lin = (frame_stack & ~0xF) - STACK_SAVE
            saves.append((stack_lin, [self.translate(cpu, stack_lin + k) for k in (0, STACK_SAVE - 1)], STACK_SAVE))
        j = _Journal(cpu)
        self._journal = j
        with self._journaled(j, insn):
            j.memory += self._save_linear([(lin, p0, p1, n) for lin, (p0, p1), n in saves])
            stub = b"\x0f\x08" + STUB_INSN[insn] + STUB_TAIL
            n = len(STUB_INSN[insn])
            self._write_linear(stub_rip, phys[0], phys[1], stub)
            j.stub = (stub_rip, phys[0])
            j.invd = (stub_rip + 8 + n, stub_rip + 10 + n)     # INVD(2) insn(n) add rsp,8(4) iretq(2) INVD
            for reg, value in inputs.items():
                j.registers[reg] = before[reg]
                self._set_reg(reg, value)
            j.registers["rip"] = rip
            self._set_reg("rip", stub_rip)
            self._step_to(cpu, stub_rip + 2, "INVD")
            after = self._step_raw(cpu)
            if after["rip"] != stub_rip + 2 + n:
                self._recover_from_event(cpu, before, stub_rip, n)
                raise NotAvailable(f"{insn.upper()} raised an exception on this processor (the state is "
                                   "restored)", backend=NAME, cpu=cpu, what=what)
            for reg in ("rax", "rbx", "rcx", "rdx"):
                j.registers.setdefault(reg, before[reg])
            result = dict(after)
        self._cache = known
        return result

    @contextlib.contextmanager
    def _journaled(self, j: _Journal, name: str) -> Iterator[None]:
        """An injection whose changes `j` records: everything is put back however it ends. After a
        signal it is also read back and said in the line the run ends with, never an undo error."""
        try:
            yield
        except (KeyboardInterrupt, SystemExit):
            interrupt.confirm(self._undo_after_signal(j, name))
            raise
        except BaseException:
            try:
                self._undo()
            finally:
                self.proc.read_log()
            raise
        self._undo()
        self.proc.read_log()

    def _undo_after_signal(self, j: _Journal, insn: str) -> str:
        """Undo an injection a signal cut short, then read back every register and byte it
        changed; one phrase saying what was confirmed (or what could not be)."""
        name = f"the injected {insn.upper() if insn in STUB_INSN else insn} on cpu {j.cpu}"
        try:
            self._undo()
            self.proc.read_log()
            regs = self._r(j.cpu)
            wrong = [r for r, v in j.registers.items() if regs.get("rflags" if r == "$eflags" else r) != v]
            wrong += [f"memory 0x{at:x}" for at, data in j.memory if self.read_physical(at, len(data)) != data]
        except BaseException as exc:   # a second signal, or Bochs gone: say it, keep the first
            return f"{name} could not be undone ({type(exc).__name__}: {str(exc)[:120]})"
        if wrong:
            return f"{name} was undone but {', '.join(wrong)} differ from before"
        return (f"{name} was undone: its {len(j.registers)} registers and {len(j.memory)} memory ranges "
                "read back as before")

    def _inject_preconditions(self, cpu: int, insn: str, what: str) -> None:
        def refuse(why: str) -> NotAvailable:
            return NotAvailable(f"cannot execute {insn.upper()} here: {why}", backend=NAME, cpu=cpu, what=what)
        if self.vmx_state(cpu)["vmx"] == "non-root":
            raise refuse("the processor is in VMX non-root operation (it would cause a VM exit)")
        if (cpu, "activity") not in self._cache or (cpu, "events") not in self._cache:
            names = ("activity_state", "pending_event", "event_mask")      # one exchange for the three
            cmds = [f'show "cpu{cpu}.{n}"' for n in names]
            answers = self._cmds(cmds + self._site_reads(cpu))
            self._keep_site_reads(cpu, answers[len(cmds):])
            got = {n: P.parse_param_tree(text, cmd).get(n) for n, cmd, text in zip(names, cmds, answers)}
            if any(not isinstance(v, int) for v in got.values()):
                raise BackendError(f"`show \"cpu{cpu}.activity_state/pending_event/event_mask\"` answered {got}",
                                   backend=NAME, cpu=cpu)
            self._cache[(cpu, "activity")] = got["activity_state"]
            # pending events that are not masked, e.g. an external interrupt is masked while RFLAGS.IF = 0
            self._cache[(cpu, "events")] = got["pending_event"] & ~got["event_mask"]
        activity = self._cache[(cpu, "activity")]
        if activity != 0:
            raise refuse(f"activity state {activity} (halted or waiting for SIPI)")
        if not self._long64(cpu):
            raise refuse("only 64-bit mode is supported")
        if self._r(cpu)["rflags"] & (1 << 8):
            raise refuse("RFLAGS.TF is set")
        if insn in ("rdmsr", "mov_cr4") and self._cpl(cpu) != 0:
            raise refuse(f"CPL {self._cpl(cpu)} ({insn.upper()} needs CPL 0)")
        events = self._cache[(cpu, "events")]
        if events:
            raise refuse(f"an unmasked event is pending (0x{events:x}); stepping would deliver it")

    def _gp_gate(self, cpu: int) -> Optional[int]:
        """The IST index (0 = none) of a usable 64-bit #GP gate (vector 13), else None.

        Usable: in the IDT limit, present, 64-bit interrupt/trap type, non-null
        selector, reserved dword zero, handler mapped; with an IST, a busy 64-bit
        TSS in TR whose IST pointer is mapped."""
        try:
            idt_base, idt_limit = self.read_register(cpu, "idtr.base"), self.read_register(cpu, "idtr.limit")
            if idt_limit < 13 * 16 + 15:
                return None
            gate = self.read_virtual(cpu, idt_base + 13 * 16, 16)
            selector = int.from_bytes(gate[2:4], "little")
            target = int.from_bytes(gate[0:2] + gate[6:12], "little")
            if not gate[5] & 0x80 or gate[5] & 0x0F not in (0xE, 0xF) or selector < 4 or any(gate[12:16]):
                return None
            self.translate(cpu, target)
            ist = gate[4] & 7
            if ist:
                tr = self.read_register(cpu, "tr.attributes")
                if tr & 0x1000F != 0xB or self.read_register(cpu, "tr.limit") < 0x67:
                    return None
                self.translate(cpu, self._ist_pointer(cpu, ist) - 1)
            return ist
        except NotAvailable:
            return None

    def _ist_pointer(self, cpu: int, ist: int) -> int:
        """IST `ist` from the current TSS (offset 0x24 + 8 * (ist - 1))."""
        data = self.read_virtual(cpu, self.read_register(cpu, "tr.base") + 0x24 + 8 * (ist - 1), 8)
        return int.from_bytes(data, "little")

    def _msr_surely_exists(self, cpu: int, index: int) -> bool:
        """True where the architecture says RDMSR(index) cannot #GP on this processor
        (Vol.3D A.1-A.11 for the VMX capability MSRs, SDM 325462-080US, 2023)."""
        if index in (0x10, 0x1B, 0x3A, 0x174, 0x175, 0x176, 0x277) or 0xC0000080 <= index <= 0xC0000102:
            return True
        if not 0x480 <= index <= 0x493 or not self.cpuid(cpu, 1)[2] >> 5 & 1:
            return False
        if index <= 0x48A:
            return True
        def bit(msr: int, n: int) -> bool:
            return self._msr_surely_exists(cpu, msr) and bool(self.read_msr(cpu, msr) >> n & 1)
        rules = {0x48B: lambda: bit(0x482, 63), 0x48C: lambda: bit(0x48B, 33) or bit(0x48B, 37),
                 0x48D: lambda: bit(0x480, 55), 0x48E: lambda: bit(0x480, 55), 0x48F: lambda: bit(0x480, 55),
                 0x490: lambda: bit(0x480, 55), 0x491: lambda: bit(0x48B, 45), 0x492: lambda: bit(0x482, 49),
                 0x493: lambda: bit(0x483, 63)}
        return rules[index]()

    def _site_reads(self, cpu: int) -> List[str]:
        """What _stub_site and the stub's page translations will ask of the selected processor `cpu`,
        to go in the preconditions' exchange: `u` at RIP, `page` of RIP's page and the next (a stub
        starts within an instruction of RIP and is smaller than a page). Nothing when `cpu` is not
        the selected processor or its registers are not read yet."""
        regs = self._cache.get((cpu, "r"))
        creg = self._cache.get((cpu, "creg"))
        if self._current != cpu or regs is None or creg is None:
            return []
        rip = regs["rip"]
        out = [] if (cpu, f"site:{rip:x}") in self._cache else [f"u /4 0x{rip:x}"]
        if creg["cr0"] & (1 << 31):
            out += [f"page 0x{p:x}" for p in (rip & ~0xFFF, (rip & ~0xFFF) + 0x1000)
                    if (cpu, f"page:{p:x}") not in self._cache and _canonical48(p)]
        return out

    def _keep_site_reads(self, cpu: int, answers: Sequence[str]) -> None:
        """Cache the answers to _site_reads(cpu) as _stub_site and translate would have."""
        for cmd, text in zip(self._site_reads(cpu), answers):
            if cmd.startswith("page "):
                try:
                    self._cache[(cpu, f"page:{int(cmd.split()[1], 16):x}")] = P.parse_page(text)
                except P.BochsParseError:
                    pass                   # translate asks again if the stub needs that page
                continue
            rip = int(cmd.split()[-1], 16)
            site = next((i.address + 1 for i in P.parse_disasm(text) if len(i.data) >= 2), None)
            if site is not None:           # else _stub_site asks again and says why it cannot
                self._cache[(cpu, f"site:{rip:x}")] = site

    def _stub_site(self, cpu: int, rip: int) -> int:
        """A linear address one byte into an instruction of length >= 2 at or after RIP."""
        def fetch() -> int:
            self.select(cpu)
            for insn in P.parse_disasm(self._cmd(f"u /4 0x{rip:x}")):
                if len(insn.data) >= 2:
                    return insn.address + 1
            raise NotAvailable("no instruction of 2 bytes or more near RIP", backend=NAME, cpu=cpu,
                               what=f"stub site near 0x{rip:x}")
        return self._cached(cpu, f"site:{rip:x}", fetch)

    def _save_linear(self, saves: Sequence[Tuple[int, int, int, int]]) -> List[Tuple[int, bytes]]:
        """(physical, bytes now there) of linear ranges (linear, physical of the first byte, of the
        last byte, size), each split where it crosses a page; read in one exchange."""
        ranges: List[Tuple[int, int]] = []
        for lin, p0, p1, n in saves:
            split = 0x1000 - (lin & 0xFFF)
            ranges += [(p0, n)] if split >= n else [(p0, split), (p1 - (n - 1 - split), n - split)]
        return [(at, data) for (at, _), data in zip(ranges, self.read_physical_many(ranges))]

    def _write_linear(self, lin: int, p0: int, p1: int, data: bytes) -> None:
        self._poke_many(self._linear_pieces(lin, p0, p1, data))

    def _poke_many(self, pieces: Sequence[Tuple[int, bytes]], regs: Sequence[Tuple[str, int]] = ()) -> None:
        """setpmem every piece (physical address, bytes), 4, 2 or 1 bytes per command, and then
        `set` each of `regs` on the selected processor, all of them run from one sourced file
        (one exchange, no per-character echo). Each answers nothing when it worked."""
        cmds = []
        for address, data in pieces:
            self._check_physical(address, len(data))
            i = 0
            while i < len(data):
                n = 4 if len(data) - i >= 4 else 2 if len(data) - i >= 2 else 1
                cmds.append(f"setpmem 0x{address + i:x} {n} 0x{int.from_bytes(data[i:i + n], 'little'):x}")
                i += n
        cmds += [f"set {name} = 0x{value:x}" for name, value in regs]
        out = self._source(cmds)
        if regs:
            self._invalidate()
        if out.strip():
            raise BackendError(f"setpmem of {len(cmds) - len(regs)} pieces"
                               + (f" and `set` of {', '.join(n for n, _ in regs)}" if regs else "")
                               + f" answered {out.strip()[:200]!r}", backend=NAME, cpu=self._current if regs else None)

    def _set_regs(self, values: Sequence[Tuple[str, int]]) -> None:
        """`set` several registers of the selected processor in one exchange."""
        cmds = [f"set {name} = 0x{value:x}" for name, value in values]
        for cmd, out in zip(cmds, self._cmds(cmds)):
            if out.strip():
                raise BackendError(f"`{cmd}` answered {out.strip()!r}", backend=NAME, cpu=self._current)
        self._invalidate()

    def _set_reg(self, name: str, value: int) -> None:
        out = self._cmd(f"set {name} = 0x{value:x}")
        if out.strip():
            raise BackendError(f"`set {name}` answered {out.strip()!r}", backend=NAME, cpu=self._current)
        self._invalidate()

    def _step_raw(self, cpu: int) -> Dict[str, int]:
        return self._step_read(cpu, 1)[1]

    def _step_read(self, cpu: int, count: int) -> Tuple[str, Dict[str, int]]:
        """`s N count` and `r` in one exchange: (the step's answer without the guest's port 0xE9
        output, the registers after it)."""
        self._check_cpu(cpu)
        self._invalidate()
        cmds = ([] if self._current == cpu else [f"set $cpu = {cpu}"]) + [f"s {cpu} {count}", "r"]
        answers = self._cmds(cmds)
        if len(cmds) == 3:
            if answers[0].strip():
                raise BackendError(f"`set $cpu = {cpu}` answered {answers[0].strip()!r}", backend=NAME, cpu=cpu)
            self._current = cpu
        step, text = self._absorb(answers[-2]).debugger, answers[-1]
        if P.parse_r_cpu(text) not in (None, cpu):
            raise BackendError(f"`r` answered for another processor: {text[:20]!r}", backend=NAME, cpu=cpu)
        regs = P.parse_r(text)
        self._cache[(cpu, "r")] = regs
        return step, regs

    def _step_to(self, cpu: int, expected_rip: int, what: str) -> None:
        regs = self._step_raw(cpu)
        if regs["rip"] != expected_rip:
            raise BackendError(f"after the injected {what} RIP is 0x{regs['rip']:x}, expected "
                               f"0x{expected_rip:x}", backend=NAME, cpu=cpu)

    def _recover_from_event(self, cpu: int, before: Dict[str, int], stub_rip: int, n: int = 2) -> None:
        """An exception was delivered at the injected instruction: IRETQ back through the
        stub, so RSP, RFLAGS, CS and SS are the interrupted ones again."""
        now = self._r(cpu)
        frame = self.read_virtual(cpu, now["rsp"], 16)
        q0, q1 = int.from_bytes(frame[:8], "little"), int.from_bytes(frame[8:], "little")
        insn_rip = stub_rip + 2
        if q1 == insn_rip:       # error code, then the return RIP
            self._set_reg("rip", stub_rip + 2 + n)
            self._step_to(cpu, stub_rip + 6 + n, "ADD RSP, 8")
        elif q0 == insn_rip:
            self._set_reg("rip", stub_rip + 6 + n)
        else:
            raise BackendError(f"the injected instruction was diverted to 0x{now['rip']:x} and no "
                               "exception frame returns to it: registers may be changed", backend=NAME, cpu=cpu)
        self._step_to(cpu, insn_rip, "IRETQ")
        back = self._r(cpu)
        # a fault pushes RFLAGS with RF set; the final INVD of the stub clears it again
        if back["rsp"] != before["rsp"] or (back["rflags"] ^ before["rflags"]) & ~RFLAGS_RF:
            raise BackendError("IRETQ did not restore RSP/RFLAGS after the injected instruction faulted",
                               backend=NAME, cpu=cpu)

    def _undo(self) -> None:
        """Put back what the current injection changed; flush the trace cache (the final INVD).

        One attempt: the journal is dropped first, so a failure raises once and is not retried."""
        j, self._journal = self._journal, None
        if j is None:
            return
        self.select(j.cpu)
        if j.invd is not None:
            self._set_reg("rip", j.invd[0])
            try:
                self._step_to(j.cpu, j.invd[1], "INVD")
            except BackendError:
                pass
        now = self._r(j.cpu)
        sets = [(reg, value) for reg, value in j.registers.items()
                if now.get("rflags" if reg == "$eflags" else reg) != value]
        self._poke_many(j.memory, regs=sets)           # bytes and registers back in one exchange
        self._invalidate()

    # ---------------------------------------------------------- breakpoints
    def set_breakpoint(self, address: int, physical: bool = False) -> int:
        """`lb` (linear) or `pb` (physical) on every processor; returns Bochs' number.
        Bochs 2.7 has 16 of each kind: a 17th is a BackendError with Bochs' own words."""
        before = {b.number for b in P.parse_blist(self._cmd("blist"))}
        out = self._cmd(f"{'pb' if physical else 'lb'} 0x{address:x}")
        if out.strip():
            raise BackendError(f"breakpoint at 0x{address:x}: {out.strip()}", backend=NAME)
        new = [b for b in P.parse_blist(self._cmd("blist")) if b.number not in before]
        if len(new) != 1 or new[0].address != address:
            raise BackendError(f"breakpoint at 0x{address:x} not found in blist after setting it", backend=NAME)
        self._bps[new[0].number] = _Breakpoint(address, physical)
        return new[0].number

    def remove_breakpoint(self, bp: int) -> None:
        if bp not in self._bps:
            raise BackendError(f"breakpoint {bp} was not set by this backend", backend=NAME)
        self._cmd(f"d {bp}")
        del self._bps[bp]

    def breakpoints(self) -> Dict[int, Tuple[int, bool]]:
        """{id: (address, physical)} of the breakpoints this backend holds."""
        return {n: (b.address, b.physical) for n, b in self._bps.items()}

    def bochs_breakpoints(self) -> List[P.BochsBreakpoint]:
        """What Bochs itself lists (`blist`)."""
        return P.parse_blist(self._cmd("blist"))

    def arm_vmexit_stop(self, cpu: int, enabled: bool = True) -> None:
        """Stop at each VM exit on `cpu` (`vmexitbp`; INIT clears it: arm after the AP started)."""
        self._check_cpu(cpu)
        if (cpu in self._vmexit_armed) != enabled:
            self.select(cpu)
            out = self._cmd("vmexitbp")
            want = "enabled" if enabled else "disabled"
            if want not in out:
                raise BackendError(f"`vmexitbp` answered {out.strip()!r}", backend=NAME, cpu=cpu)
            (self._vmexit_armed.add if enabled else self._vmexit_armed.discard)(cpu)

    def plan_stops(self, addresses: Sequence[int], cpus: Optional[Iterable[int]] = None) -> None:
        """Declare the linear RIPs (breakpoints or magic stops) each processor must stop at, in order."""
        for cpu in (self._cpus if cpus is None else cpus):
            self._check_cpu(cpu)
            self._plan[cpu] = list(addresses)
            self._progress[cpu] = 0

    def pending_stops(self, cpu: int) -> List[int]:
        """Planned stops `cpu` has not reached yet."""
        return self._plan.get(cpu, [])[self._progress.get(cpu, 0):]

    # ------------------------------------------------------------ execution
    def _absorb(self, text: str) -> P.GuestOutput:
        out = P.split_guest_output(self._e9_partial + text)
        self._e9_partial = out.partial
        for cpu, line in out.lines:
            self.guest_lines.setdefault(cpu, []).append(line)
        return out

    def _take_log(self) -> List[str]:
        """VMX and error lines Bochs logged since the last call (kept per processor too)."""
        shown, self._held_log = self._held_log, []
        for raw in self.proc.read_log():
            line = P.parse_log_line(raw)
            if line is not None and P.is_vmx_log(line):
                self.bochs_log.setdefault(line.cpu, []).append(line.message)
                shown.append(f"cpu{line.cpu}: {line.message}" if line.cpu is not None
                             else f"{line.component}: {line.message}")
        return shown

    def go(self, timeout: float = 30.0) -> StopEvent:
        """Run all processors until a stop or `timeout` s (then SIGINT: kind "timeout").

        Kinds: breakpoint, magic, vmexit, timeout, exited, stopped (no reason
        given), missed (a planned stop that did not happen; the real stop follows
        on the next call without running).
        """
        self._alive()
        if self._queued:
            return self._queued.pop(0)
        self._invalidate()
        self._unread = set(self._cpus)
        self._running = True
        try:
            try:
                text, interrupted = self.proc.run("c", timeout)
            except TargetGone as e:
                if self.proc.alive:
                    raise
                return self._exited(f"the guest ran until Bochs exited (status {self.proc.proc.poll()})"
                                    + (f"; {e.detail.split('; ', 1)[1]}" if "; " in e.detail else ""))
        finally:
            self._running = False
        self.stats["commands"] += 1
        self.stats["round_trips"] += 1
        guest = self._absorb(text)
        log = self._take_log()
        rep = P.parse_stop(guest.debugger)
        if interrupted:
            event = StopEvent("timeout", detail=f"no stop within {timeout} s (interrupted)", log=log)
        elif rep.kind == "none":
            event = StopEvent("stopped", detail=guest.debugger.strip()[:200], log=log)
        else:
            event = StopEvent(rep.kind, cpu=rep.cpu, address=rep.rips.get(rep.cpu) if rep.cpu is not None else None,
                              breakpoint=rep.breakpoint if rep.kind == "breakpoint" else None, log=log)
        missed = self._missed(event, guest)
        if missed:
            self._queued = missed[1:] + [event]
            return missed[0]
        return event

    def _exited(self, detail: str) -> StopEvent:
        """Bochs is gone: a "missed" event for every planned stop not made, then "exited"."""
        event = StopEvent("exited", detail=detail, log=self._take_log())
        missed: List[StopEvent] = []
        for cpu in sorted(self._plan):
            pending = self.pending_stops(cpu)
            said = self._guest_said(cpu)
            for k, address in enumerate(pending):
                missed.append(StopEvent("missed", cpu=cpu, address=address, log=said if k == 0 else [], detail=(
                    f"Bochs exited with planned stops of cpu{cpu} not made at {', '.join(hex(a) for a in pending)}: "
                    f"it did not stop at 0x{address:x} (a debugger miss, not a guest result)")))
            self._progress[cpu] = len(self._plan[cpu])
        if missed:
            self._queued = missed[1:] + [event]
            return missed[0]
        return event

    def _guest_said(self, cpu: int) -> List[str]:
        """The guest's own lines from `cpu` not attached to an event yet (`guest cpuN: ...`)."""
        lines = self.guest_lines.get(cpu, [])
        seen, self._guest_seen[cpu] = self._guest_seen.get(cpu, 0), len(lines)
        return [f"guest cpu{cpu}: {line}" for line in lines[seen:]]

    def _missed(self, event: StopEvent, guest: P.GuestOutput) -> List[StopEvent]:
        out: List[StopEvent] = []
        for cpu, line in guest.lines:
            if cpu is not None and self._done_line.search(line) and self.pending_stops(cpu):
                pending = self.pending_stops(cpu)
                said = self._guest_said(cpu)
                for k, address in enumerate(pending):     # one event per planned stop not made
                    out.append(StopEvent("missed", cpu=cpu, address=address, log=event.log + said if k == 0 else [],
                                         detail=(f"cpu{cpu} reported {line!r} with planned stops not made at "
                                                 f"{', '.join(hex(a) for a in pending)}: Bochs did not stop at "
                                                 f"0x{address:x} (a debugger miss, not a guest result)")))
                self._progress[cpu] = len(self._plan[cpu])
        if event.cpu is not None and event.address is not None and event.kind in ("breakpoint", "magic", "vmexit"):
            pending = self.pending_stops(event.cpu)
            if event.address in pending:
                idx = pending.index(event.address)
                for skipped in pending[:idx]:
                    out.append(StopEvent("missed", cpu=event.cpu, address=skipped, log=event.log, detail=(
                        f"cpu{event.cpu} stopped at the later planned stop 0x{event.address:x} before "
                        f"0x{skipped:x}: Bochs did not stop there (a debugger miss, not a guest result)")))
                self._progress[event.cpu] += idx + 1
        return out

    def step(self, cpu: int) -> StopEvent:
        """Execute one instruction on `cpu` only (`s N 1`)."""
        self._check_cpu(cpu)
        if self._journal is not None:
            self._undo()
        text, _ = self._step_read(cpu, 1)       # the registers after it come in the same exchange
        rep = P.parse_stop(text)
        return StopEvent("step", cpu=cpu, address=rep.rips.get(cpu), log=self._take_log())

    def stop(self) -> None:
        """Interrupt a go() running in another thread (SIGINT to Bochs)."""
        if self._running and self.proc.alive:
            import os
            os.kill(self.proc.pid, signal.SIGINT)

    # ----------------------------------------------------------------- close
    def _remove_all_breakpoints(self) -> List[int]:
        removed = []
        for bp in sorted(self._bps):
            self.proc.command(f"d {bp}")
            removed.append(bp)
            del self._bps[bp]
        return removed

    def _disarm_all_vmexit_stops(self) -> List[int]:
        done = []
        for cpu in sorted(self._vmexit_armed):
            self.proc.command(f"set $cpu = {cpu}")
            self._current = cpu
            self.proc.command("vmexitbp")
            done.append(cpu)
            self._vmexit_armed.discard(cpu)
        return done

    def close(self) -> None:
        """Back to the prompt, undo an interrupted injection, delete our breakpoints,
        check blist, quit Bochs (kill it if needed).  Never raises; see close_report."""
        if self._state != "open":
            return
        self._state = "closing"
        report: Dict[str, Any] = {"breakpoints_set": sorted(self._bps), "errors": []}

        def phase(name: str, fn: Callable[[], Any]) -> None:
            try:
                result = fn()
                if result is not None:
                    report[name] = result
            except BaseException as e:  # report it and go on: Bochs must still be quit
                report["errors"].append(f"{name}: {type(e).__name__}: {e}")

        try:
            if self.proc.alive:
                phase("resynced", lambda: bool(self._absorb(self.proc.resync())) if self.proc.pending else None)
                if self._journal is not None:
                    def undo() -> bool:
                        try:
                            self._undo()
                        finally:
                            self._journal = None
                        return True
                    phase("injection_undone", undo)
                phase("breakpoints_removed", self._remove_all_breakpoints)
                phase("vmexit_stops_disarmed", self._disarm_all_vmexit_stops)
                phase("blist_after", lambda: [b.number for b in P.parse_blist(self.proc.command("blist"))])
            else:
                report["target_gone"] = f"Bochs had exited (status {self.proc.proc.poll()})"
        finally:
            self.proc.quit()
            report["bochs_exit_status"] = self.proc.proc.poll()
            report["bochs_pid"] = self.proc.pid
            self.close_report = report
            self._state = "closed"
            _OPEN.discard(self)
            _SigtermGuard.leave()
