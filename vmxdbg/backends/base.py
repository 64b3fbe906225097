"""The backend contract: one abstract class whose docstrings are the contract.

Every source of processor state — a live WinDbg session (pykd), a live Bochs,
a recording being replayed, a kd log, a snapshot file — is a Backend. Callers
ask `capabilities()` rather than test a class. Every query either returns a
value or raises a BackendError subclass naming the backend, the processor and
the register/index/address; none returns a sentinel. A backend that cannot
answer a kind of query raises NotAvailable.

Register names (lower case): cr0 cr2 cr3 cr4 cr8 dr7 rflags rip rsp rax ... efer
(also readable as MSR 0xC0000080); segment parts as `cs.selector`, `cs.base`,
`cs.limit`, `cs.attributes` (VMCS access-rights format, bit 16 = unusable) for
es cs ss ds fs gs ldtr tr; `gdtr.base`, `gdtr.limit`, `idtr.base`, `idtr.limit`;
`cpl`. VMX state (capability "vmx-state"): `vmx_state(cpu)` gives any of
vmx ("off"/"root"/"non-root"), vmxon_pointer, vmcs_pointer, vmcs_launch_state,
and the processor state a debugger rarely sees, where this backend can: a20m,
smm, smx, blocking_by_mov_ss, blocking_by_sti (booleans), cpl.

Execution control (capability "execution"): breakpoints by linear or
physical address, `go()` until a stop or a timeout, `step(cpu)` one
instruction on one processor, `stop()`. A backend that sets breakpoints removes
them on every exit path (close(), errors, Ctrl-C).

What a failure means:
- NotAvailable: this backend cannot answer this question here (no CPUID on a
  kernel debugger, a VMCS field outside the recording, an MSR the target
  refuses). The caller treats the input as unknown; it is never zero.
- TargetGone: the target stopped answering (Bochs exited, the KD link
  dropped); nothing more can be asked of it.
- Divergence: a replay was asked a call the recording does not hold next.
- Any other BackendError: the question was asked and failed (a read past
  RAM); its message names backend, processor and address.

Optional methods, with defaults here, that some backends override:
- `read_registers`, `read_vmcs_fields`: batched reads (fewer round trips);
- `current_processor()`: the processor the debugger has selected (WinDbg);
- `evaluate(expression)`: a debugger expression such as `mydrv!InitVmx+0x10`;
- `stop_count()` / `seek(k)`: the recorded stops of a replay, to move
  through them (the replay console's t-/p-/g-).
Recordings hold exactly the operations of `vmxdbg.record.recording.OPS`;
the recorder, the cassette and the replay backend are written from that list.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Dict, FrozenSet, Iterable, List, Optional, Tuple

from ..common.errors import NotAvailable
from ..common.statekeys import SEGMENTS, TABLES

# capability names
REGISTERS = "registers"
MSR = "msr"
CPUID = "cpuid"
PHYSICAL = "physical"
VIRTUAL = "virtual"
VMCS = "vmcs"
VMX_STATE = "vmx-state"
EXECUTION = "execution"

SEGMENT_NAMES = SEGMENTS
TABLE_NAMES = TABLES


@dataclass
class StopEvent:
    """Why the target stopped.

    kind: "breakpoint" (a breakpoint vmxdbg set), "step" (a single step ended),
    "magic" (a magic breakpoint in the guest), "vmexit", "timeout" (still running,
    stopped by us), "missed" (the target ran past a planned stop: reported as a
    debugger miss, never as a guest result), "exited" (the target is gone).
    """

    kind: str
    cpu: Optional[int] = None
    address: Optional[int] = None
    breakpoint: Optional[int] = None
    detail: str = ""
    log: List[str] = field(default_factory=list)  # target log lines since the last stop


class Backend(abc.ABC):
    """A source of processor state; override every method you support."""

    #: short name used in errors and recordings ("bochs", "windbg", "replay" ...)
    name: str = "backend"

    def capabilities(self) -> FrozenSet[str]:
        """The capability names this backend supports."""
        return frozenset()

    def describe(self) -> Dict[str, str]:
        """Identity of the target for recording headers (kind, version, model)."""
        return {"kind": self.name}

    def _unsupported(self, what: str, cpu: Optional[int] = None) -> NotAvailable:
        return NotAvailable(f"{what} is not available from this backend", backend=self.name, cpu=cpu)

    # ---------------------------------------------------------------- queries
    @abc.abstractmethod
    def processors(self) -> List[int]:
        """Numbers of the logical processors the target has (0-based)."""

    def read_register(self, cpu: int, name: str) -> int:
        """One register of processor `cpu` (names in the module docstring)."""
        raise self._unsupported(f"register {name}", cpu)

    def read_registers(self, cpu: int, names: Iterable[str]) -> Dict[str, int]:
        """Several registers at once; a name the backend cannot read is left out.

        Backends with a batched read (one `r` or `sreg` answers many) override
        this to save round trips; the default asks one by one.
        """
        out: Dict[str, int] = {}
        for n in names:
            try:
                out[n] = self.read_register(cpu, n)
            except NotAvailable:
                continue
        return out

    def read_msr(self, cpu: int, index: int) -> int:
        """The MSR `index` of processor `cpu`."""
        raise self._unsupported(f"MSR 0x{index:x}", cpu)

    def cpuid(self, cpu: int, leaf: int, subleaf: int = 0) -> Tuple[int, int, int, int]:
        """CPUID(leaf, subleaf) on processor `cpu` as (eax, ebx, ecx, edx)."""
        raise self._unsupported(f"CPUID 0x{leaf:x}", cpu)

    def read_physical(self, address: int, size: int) -> bytes:
        """`size` bytes of physical memory at `address` (all of them, or an error)."""
        raise self._unsupported(f"physical memory at 0x{address:x}")

    def read_virtual(self, cpu: int, address: int, size: int) -> bytes:
        """`size` bytes of linear memory at `address` as processor `cpu` sees it."""
        raise self._unsupported(f"virtual memory at 0x{address:x}", cpu)

    def read_vmcs(self, cpu: int, encoding: int) -> int:
        """The current VMCS's field `encoding` on processor `cpu`."""
        raise self._unsupported(f"VMCS field 0x{encoding:04x}", cpu)

    def read_vmcs_fields(self, cpu: int, encodings: Iterable[int]) -> Dict[int, int]:
        """Several VMCS fields at once; a field the backend cannot read is left out.

        Backends that read the whole VMCS in one go override this; the default
        asks field by field."""
        out: Dict[int, int] = {}
        for enc in encodings:
            try:
                out[enc] = self.read_vmcs(cpu, enc)
            except NotAvailable:
                continue
        return out

    def vmx_state(self, cpu: int) -> Dict[str, object]:
        """What the backend knows of the processor's VMX state (see module doc)."""
        raise self._unsupported("VMX state", cpu)

    def known_vmx_root(self, cpu: int, why: str) -> None:
        """A hint from the caller: `cpu` is in VMX root operation until it runs again (it stopped
        at VMLAUNCH/VMRESUME, its VMXON succeeded, or the person said so). A backend that executes
        VMX instructions on the target (WinDbg --inject) runs them only after this; others ignore it."""

    # ------------------------------------------- writes (faults injected on purpose)
    def write_physical(self, address: int, data: bytes) -> None:
        """Write `data` to physical memory at `address` (a fault injected through the debugger)."""
        raise self._unsupported(f"writing physical memory at 0x{address:x}")

    def write_vmcs(self, cpu: int, encoding: int, value: int) -> None:
        """Write field `encoding` of processor `cpu`'s current VMCS."""
        raise self._unsupported(f"writing VMCS field 0x{encoding:04x}", cpu)

    def write_cr4(self, cpu: int, value: int) -> None:
        """Load CR4 of processor `cpu` as the processor would (MOV to CR4), not only the debugger's view."""
        raise self._unsupported("writing CR4", cpu)

    # ------------------------------------------------------ execution control
    def set_breakpoint(self, address: int, physical: bool = False) -> int:
        """Set a code breakpoint on every processor; returns its id."""
        raise self._unsupported("breakpoints")

    def remove_breakpoint(self, bp: int) -> None:
        """Remove a breakpoint this backend set."""
        raise self._unsupported("breakpoints")

    def go(self, timeout: float = 30.0) -> StopEvent:
        """Run every processor until a stop, or `timeout` seconds (then stop it)."""
        raise self._unsupported("execution")

    def step(self, cpu: int) -> StopEvent:
        """Execute one instruction on processor `cpu` only."""
        raise self._unsupported("single-step", cpu)

    def stop(self) -> None:
        """Break into a running target."""
        raise self._unsupported("execution")

    def close(self) -> None:
        """Release the target: remove breakpoints, restore what was changed."""

    # ------------------------------------------------------ optional helpers
    def current_processor(self) -> Optional[int]:
        """The processor the debugger has selected, where the backend knows it (else None)."""
        return None

    def evaluate(self, expression: str) -> int:
        """The value of a debugger expression (a symbol, `module!name+0x10`)."""
        raise self._unsupported(f"expression {expression!r}")

    def stop_count(self) -> int:
        """How many recorded stops this backend can move between (0: none, a live target)."""
        return 0

    def seek(self, k: int) -> Optional[StopEvent]:
        """Move to just after the k-th recorded stop (0 = the start); returns its event."""
        raise self._unsupported("moving between recorded stops")

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
