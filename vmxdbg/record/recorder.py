"""Recorder: a Backend that wraps another and records every call to a `.vmxrec.jsonl`.

    with Recorder(live, "session.vmxrec.jsonl", command="check", argv=sys.argv[1:]) as rec:
        snapshot = collect(rec)          # rec is a Backend; every call goes to `live`

Each call, with its result, its error or the event it ended in, becomes one
flushed line of the recording (format in vmxdbg/record/recording.py). The file is
written as `NAME.partial` and renamed to NAME when the recorder is closed,
also when the `with` block ends in an exception (the trailer then names it);
a process killed outright leaves the `.partial`, readable up to its last
complete line. A call a signal (Ctrl-C, SIGTERM) cuts short is not recorded,
nor is anything after it (the clean-up): the recording ends where the
session was interrupted. The wrapped backend is not closed unless `close_backend=True`.

Before the first call the header is written with the backend's identity and
capabilities and, when `probe=True`, the target's processors and VMX
capability MSRs, read without being recorded (only MSRs that exist, as
collect() decides, so a real machine never sees an RDMSR that would #GP).
"""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Mapping, Optional, Tuple, Union

from ..common.errors import BackendError, NotAvailable
from .forwarding import forwards_ops
from .recording import (RecordTooLarge, RecordingWriter, encode_call, encode_error, encode_event, encode_result,
                         new_header)
from ..common.numbers import hexs
from ..backends.base import CPUID, MSR, Backend, StopEvent


def probe_target(backend: Backend) -> Dict[str, Any]:
    """The target's processors and VMX capability MSRs, as far as the backend tells them.

    Never raises a BackendError: what cannot be read is left out.
    """
    from ..state.collect import VMX_BASE_MSRS, _after_secondary, _optional_vmx_msrs
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


@forwards_ops
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
        self._interrupted = False

    # ------------------------------------------------------------ plumbing
    @property
    def events(self) -> int:
        """How many records have been written so far."""
        return self.writer.events

    def _call(self, op: str, cpu: Optional[int], args: Tuple[Any, ...], fn: Callable[[], Any]) -> Any:
        if self._interrupted:   # clean-up after a signal is not part of the session: not recorded
            return fn()
        line = encode_call(op, cpu, args)
        try:
            value = fn()
        except (KeyboardInterrupt, SystemExit):
            # a signal: the recording ends before this call, which it does not hold; a replay
            # reaches its end here and says the session was interrupted (the trailer says how)
            self._interrupted = True
            raise
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

    def _forward(self, op: str, cpu: Optional[int], args: Tuple[Any, ...], call: Callable[[Backend], Any]) -> Any:
        return self._call(op, cpu, args, lambda: call(self.inner))

    def known_vmx_root(self, cpu: int, why: str) -> None:
        """Passed on, not recorded: a hint that answers nothing (a replay needs no answer)."""
        self.inner.known_vmx_root(cpu, why)

    def prefetch(self, cpu: int, msrs: Iterable[int] = (), leaves: Iterable[Tuple[int, int]] = ()) -> None:
        """Passed to the backend when it has it, not recorded: it only fills the backend's caches;
        the reads that follow are recorded one by one, as a replay asks for them."""
        inner = getattr(self.inner, "prefetch", None)
        if inner is not None:
            inner(cpu, msrs, leaves)

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
