"""Recorder: a Backend that wraps another and records every call to a `.vmxrec.jsonl`.

    with Recorder(live, "session.vmxrec.jsonl", command="check", argv=sys.argv[1:]) as rec:
        snapshot = collect(rec)          # rec is a Backend; every call goes to `live`

Each call, with its result, its error or the event it ended in, becomes one
flushed line of the recording (format in vmxdbg/recording.py). The file is
written as `NAME.partial` and renamed to NAME when the recorder is closed,
also when the `with` block ends in an exception (the trailer then names it);
a process killed outright leaves the `.partial`, readable up to its last
complete line. The wrapped backend is not closed unless `close_backend=True`.

Before the first call the header is written with the backend's identity and
capabilities and, when `probe=True`, the target's processors and VMX
capability MSRs, read without being recorded (only MSRs that exist, as
collect() decides, so a real machine never sees an RDMSR that would #GP).
"""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Mapping, Optional, Tuple, Union

from ..errors import BackendError, NotAvailable
from ..recording import (RecordTooLarge, RecordingWriter, encode_call, encode_error, encode_event, encode_result,
                         new_header)
from ..values import hexs
from .base import CPUID, MSR, Backend, StopEvent


def probe_target(backend: Backend) -> Dict[str, Any]:
    """The target's processors and VMX capability MSRs, as far as the backend tells them.

    Never raises a BackendError: what cannot be read is left out.
    """
    from ..collect import VMX_BASE_MSRS, _after_secondary, _optional_vmx_msrs
    out: Dict[str, Any] = {}
    try:
        cpus = list(backend.processors())
    except BackendError:
        return out
    out["processors"] = cpus
    caps = backend.capabilities()
    if MSR not in caps:
        return out
    msrs: Dict[str, Dict[str, str]] = {}
    for cpu in cpus:
        if CPUID in caps:
            try:
                if not backend.cpuid(cpu, 1, 0)[2] >> 5 & 1:   # CPUID.1:ECX.VMX[bit 5]
                    continue
            except BackendError:
                pass
        known: Dict[int, int] = {}

        def read(indices: Iterable[int]) -> None:
            for i in indices:
                try:
                    known[i] = backend.read_msr(cpu, i)
                except BackendError:
                    pass
        read(VMX_BASE_MSRS)
        read(_optional_vmx_msrs(known))
        read(_after_secondary(known))
        if known:
            msrs[str(cpu)] = {hexs(k): hexs(v) for k, v in sorted(known.items())}
    if msrs:
        out["capability_msrs"] = msrs
    return out


class Recorder(Backend):
    """Forwards every call to `backend` and records it (see the module doc)."""

    def __init__(self, backend: Backend, path: Union[str, "os.PathLike[str]"], *,
                 command: Union[None, str, Mapping[str, Any]] = None, argv: Optional[List[str]] = None,
                 params: Optional[Dict[str, Any]] = None, probe: bool = True,
                 target: Optional[Dict[str, Any]] = None, close_backend: bool = False) -> None:
        """`command` is the command being run ("check", "trace"), or a mapping with
        keys command / argv / params; `params` are what a replay needs to make the
        same calls again (e.g. the processors and VMXON pointers of a check);
        `target` (processors, capability MSRs) replaces what `probe` would read."""
        if isinstance(command, Mapping):
            argv = command.get("argv", argv)
            params = command.get("params", params)
            command = command.get("command")
        self.inner = backend
        self.name = backend.name
        self.close_backend = close_backend
        self._caps = backend.capabilities()
        header = new_header(backend.describe(), sorted(self._caps), command=command, argv=argv,
                            params=params, target=target if target is not None
                            else (probe_target(backend) if probe else None))
        self.writer = RecordingWriter(path, header)
        self.path = self.writer.path
        self._closed = False

    # ------------------------------------------------------------ plumbing
    @property
    def events(self) -> int:
        """How many records have been written so far."""
        return self.writer.events

    def _call(self, op: str, cpu: Optional[int], args: Tuple[Any, ...], fn: Callable[[], Any]) -> Any:
        line = encode_call(op, cpu, args)
        try:
            value = fn()
        except Exception as exc:
            line["error"] = encode_error(exc)
            self.writer.write(line)
            raise
        key, encoded = encode_result(op, value)
        line[key] = encoded
        try:
            self.writer.write(line)
        except RecordTooLarge as exc:
            # an answer no line may hold: the caller gets the error the replay will give
            refused = NotAvailable(f"answer too large to record ({exc.size} bytes)", backend=self.name, cpu=cpu)
            del line[key]
            line["error"] = encode_error(refused)
            self.writer.write(line)
            raise refused from None
        return value

    def record_event(self, event: StopEvent) -> None:
        """Record an event the target reported without being asked (no call)."""
        self.writer.write({"event": encode_event(event)})

    def capabilities(self) -> FrozenSet[str]:
        return self._caps

    def describe(self) -> Dict[str, str]:
        return self.inner.describe()

    # ------------------------------------------------------------ queries
    def processors(self) -> List[int]:
        return self._call("processors", None, (), self.inner.processors)

    def read_register(self, cpu: int, name: str) -> int:
        return self._call("read_register", cpu, (name,), lambda: self.inner.read_register(cpu, name))

    def read_registers(self, cpu: int, names: Iterable[str]) -> Dict[str, int]:
        names = tuple(names)
        return self._call("read_registers", cpu, (names,), lambda: self.inner.read_registers(cpu, names))

    def read_msr(self, cpu: int, index: int) -> int:
        return self._call("read_msr", cpu, (index,), lambda: self.inner.read_msr(cpu, index))

    def cpuid(self, cpu: int, leaf: int, subleaf: int = 0) -> Tuple[int, int, int, int]:
        return self._call("cpuid", cpu, (leaf, subleaf), lambda: self.inner.cpuid(cpu, leaf, subleaf))

    def read_physical(self, address: int, size: int) -> bytes:
        return self._call("read_physical", None, (address, size), lambda: self.inner.read_physical(address, size))

    def read_virtual(self, cpu: int, address: int, size: int) -> bytes:
        return self._call("read_virtual", cpu, (address, size),
                          lambda: self.inner.read_virtual(cpu, address, size))

    def read_vmcs(self, cpu: int, encoding: int) -> int:
        return self._call("read_vmcs", cpu, (encoding,), lambda: self.inner.read_vmcs(cpu, encoding))

    def vmx_state(self, cpu: int) -> Dict[str, object]:
        return self._call("vmx_state", cpu, (), lambda: self.inner.vmx_state(cpu))

    # ------------------------------------------------------------ writes (injected faults)
    def write_physical(self, address: int, data: bytes) -> None:
        return self._call("write_physical", None, (address, bytes(data)),
                          lambda: self.inner.write_physical(address, data))  # type: ignore[attr-defined]

    def write_vmcs(self, cpu: int, encoding: int, value: int) -> None:
        return self._call("write_vmcs", cpu, (encoding, value),
                          lambda: self.inner.write_vmcs(cpu, encoding, value))  # type: ignore[attr-defined]

    def write_cr4(self, cpu: int, value: int) -> None:
        return self._call("write_cr4", cpu, (value,), lambda: self.inner.write_cr4(cpu, value))  # type: ignore[attr-defined]

    # ------------------------------------------------------------ execution
    def set_breakpoint(self, address: int, physical: bool = False) -> int:
        return self._call("set_breakpoint", None, (address, physical),
                          lambda: self.inner.set_breakpoint(address, physical))

    def remove_breakpoint(self, bp: int) -> None:
        return self._call("remove_breakpoint", None, (bp,), lambda: self.inner.remove_breakpoint(bp))

    def go(self, timeout: float = 30.0) -> StopEvent:
        return self._call("go", None, (float(timeout),), lambda: self.inner.go(timeout))

    def step(self, cpu: int) -> StopEvent:
        return self._call("step", cpu, (), lambda: self.inner.step(cpu))

    def stop(self) -> None:
        return self._call("stop", None, (), self.inner.stop)

    # ------------------------------------------------------------ lifetime
    def close(self, exception: Optional[BaseException] = None) -> None:
        """Finish the recording (trailer, rename); then close the wrapped backend if owned."""
        if self._closed:
            return
        self._closed = True
        try:
            extra = {"exception": f"{type(exception).__name__}: {exception}"} if exception is not None else {}
            self.writer.close(**extra)
        finally:
            if self.close_backend:
                self.inner.close()

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(exc)
