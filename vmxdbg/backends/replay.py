"""Replay backend: answers backend calls from a recording, without the target.

Strict mode (the default) walks the recording in order, as rr does: each call
must be the next recorded one (same op, processor and arguments) and gets the
recorded result, error or event. The first call that differs raises
ReplayDivergence naming the seq, the recorded call, the call made and the
closest recorded matches. A call past the end of a complete recording
diverges too; past the end of a partial one it is NotAvailable (the rest of
the session is unknown, not different). `unused()` lists the recorded calls
no one made.

Keyed mode (strict=False) serves interactive exploration in any order. The
recording is cut into stops by its execution events (go, step, unsolicited
events); `position` k means "after the k-th stop" (0 = before the first). A
query is answered by the latest recorded answer at or before the position;
single registers are also found inside batched reads, and physical or
virtual memory is assembled from every read that covers it. go()/step() move
to the next recorded stop, `seek(k)` anywhere.
"""
from __future__ import annotations

import bisect
from typing import Any, Dict, FrozenSet, Iterable, List, Optional, Tuple, Union

from ..errors import BackendError, Divergence, NotAvailable, TargetGone
from ..recording import EVENT_OPS, CallKey, Record, Recording, call_text, gc_paused, read_recording, record_text
from ..snapshot import Memory
from .base import Backend, StopEvent

_ERRORS = {"NotAvailable": NotAvailable, "TargetGone": TargetGone, "BackendError": BackendError}
MAX_CLOSEST = 3


class PastEnd(NotAvailable):
    """A call past the end of a partial recording: what the session did next is unknown."""


class ReplayDivergence(Divergence):
    """The replayed session made a call other than the recorded one."""

    def __init__(self, message: str, *, seq: int, recorded: Optional[Record], called: str,
                 closest: List[Record]) -> None:
        super().__init__(message)
        self.seq, self.recorded, self.called, self.closest = seq, recorded, called, closest


def _mismatch(a: CallKey, b: CallKey) -> int:
    """How many of processor and arguments differ between two calls of one op."""
    n = int(a[1] != b[1])
    n += sum(1 for x, y in zip(a[2], b[2]) if x != y) + abs(len(a[2]) - len(b[2]))
    return n


def recorded_error(err: Dict[str, Any], default_backend: str) -> BackendError:
    """The exception a recorded error stands for (same class where vmxdbg has it, same message)."""
    typ = str(err.get("type", "BackendError"))
    cls = _ERRORS.get(typ, BackendError)
    message = str(err.get("message", ""))
    if typ not in _ERRORS:
        message = f"{typ}: {message}"
    return cls(message, backend=str(err.get("backend", default_backend)), cpu=err.get("cpu"),
               what=err.get("what"))


class ReplayBackend(Backend):
    """A Backend answering from a Recording (see the module doc)."""

    name = "replay"

    def __init__(self, recording: Union[Recording, str], *, strict: bool = True, partial: bool = False) -> None:
        if not isinstance(recording, Recording):
            recording = read_recording(recording, partial=partial)
        self.recording = recording
        self.strict = strict
        self._records = recording.records
        self._next = 0                  # strict: index of the next record to answer with
        self._used = bytearray(len(self._records))
        self._recorded_backend = str(recording.backend.get("kind", "recorded"))
        # the stops (execution events) and the stop each record belongs to
        self.stops: List[int] = []      # indices into records
        self._epoch: List[int] = []
        for i, r in enumerate(self._records):
            if r.event is not None and (r.op is None or r.op in EVENT_OPS):
                self.stops.append(i)
            self._epoch.append(len(self.stops))
        self.position = 0
        self._index: Optional[Dict[CallKey, Tuple[List[int], List[int]]]] = None
        self._memory_cache: Dict[Tuple[int, Optional[int]], Memory] = {}

    # ------------------------------------------------------------ identity
    def capabilities(self) -> FrozenSet[str]:
        return self.recording.capabilities

    def describe(self) -> Dict[str, str]:
        return {**{k: str(v) for k, v in self.recording.backend.items()}, "kind": self.name,
                "recorded": self._recorded_backend, "recording": self.recording.path}

    # ------------------------------------------------------------ strict mode
    def _closest(self, key: CallKey, near: int) -> List[Record]:
        same = [r for r in self._records if r.op == key[0]]
        if not same:
            lo = max(0, near - 1)
            return [r for r in self._records[lo:lo + MAX_CLOSEST] if r.op is not None]
        same.sort(key=lambda r: (_mismatch(r.key, key), abs(r.seq - (near + 1))))
        return same[:MAX_CLOSEST]

    def _diverge(self, key: CallKey, expected: Optional[Record]) -> ReplayDivergence:
        called = call_text(*key)
        closest = self._closest(key, self._next)
        near = "; closest recorded: " + ", ".join(record_text(r) for r in closest) if closest else ""
        where = self.recording.path
        if expected is None:
            seq = self.recording.last_seq + 1
            msg = (f"{where}: replay diverged after the last recorded call (seq {seq - 1}): "
                   f"called {called}, which the recording does not hold{near}")
        else:
            seq = expected.seq
            msg = (f"{where}:{expected.line}: replay diverged at seq {seq}: recorded "
                   f"{call_text(*expected.key)}, called {called}{near}")
        return ReplayDivergence(msg, seq=seq, recorded=expected, called=called, closest=closest)

    def _strict(self, key: CallKey) -> Record:
        recs = self._records
        i = self._next
        while i < len(recs) and recs[i].op is None:   # unsolicited events: passed over
            self._used[i] = 1
            i += 1
        if i >= len(recs):
            self._next = i
            if not self.recording.complete:
                raise PastEnd(f"not in the partial recording (it ends at seq {self.recording.last_seq})",
                                   backend=self.name, cpu=key[1], what=call_text(*key))
            raise self._diverge(key, None)
        r = recs[i]
        if r.key != key:
            self._next = i
            raise self._diverge(key, r)
        self._used[i] = 1
        self._next = i + 1
        if r.event is not None and r.op in EVENT_OPS:
            self.position = self._epoch[i]
        return r

    # ------------------------------------------------------------ keyed mode
    def _build_index(self) -> Dict[CallKey, Tuple[List[int], List[int]]]:
        """Call key -> (stop numbers, record indices), in recorded order. Batched register
        reads are indexed per processor under the key ("read_registers", cpu, None)."""
        index: Dict[CallKey, Tuple[List[int], List[int]]] = {}
        epochs = self._epoch
        with gc_paused():
            self._fill_index(index, epochs)
        return index

    def _fill_index(self, index: Dict[CallKey, Tuple[List[int], List[int]]], epochs: List[int]) -> None:
        for i, r in enumerate(self._records):
            if r.op is None:
                continue
            key = (r.op, r.cpu, r.args)
            if r.op == "read_registers" and r.error is None:
                key = ("read_registers", r.cpu, None)  # type: ignore[assignment]
            found = index.get(key)
            if found is None:
                index[key] = ([epochs[i]], [i])
            else:
                found[0].append(epochs[i])
                found[1].append(i)

    def _keyed(self, key: CallKey) -> Record:
        if self._index is None:
            self._index = self._build_index()
        best = -1
        found = self._index.get(key)
        if found is not None:
            k = bisect.bisect_right(found[0], self.position)
            if k:
                best = found[1][k - 1]
        if key[0] == "read_register":
            # a later batched read that holds this register answers it too
            batches = self._index.get(("read_registers", key[1], None))  # type: ignore[arg-type]
            if batches is not None:
                rows = batches[1]
                name = key[2][0]
                for j in range(bisect.bisect_right(batches[0], self.position) - 1, -1, -1):
                    if rows[j] < best:
                        break
                    if name in self._records[rows[j]].result:
                        best = rows[j]
                        break
        if best >= 0:
            self._used[best] = 1
            return self._records[best]
        raise NotAvailable("not in the recording" + (f" up to stop {self.position}" if self.stops else ""),
                           backend=self.name, cpu=key[1], what=call_text(*key))

    def _answer(self, op: str, cpu: Optional[int], args: Tuple[Any, ...]) -> Any:
        key = (op, cpu, args)
        r = self._strict(key) if self.strict else self._keyed(key)
        if r.error is not None:
            raise recorded_error(r.error, self._recorded_backend)
        if op == "read_register" and r.op == "read_registers":
            return r.result[args[0]]
        return r.result

    def _memory(self, cpu: Optional[int], address: int, size: int) -> bytes:
        """Keyed memory: the bytes as the reads up to this position left them."""
        op = "read_physical" if cpu is None else "read_virtual"
        cache_key = (self.position, cpu)
        mem = self._memory_cache.get(cache_key)
        if mem is None:
            mem = Memory()
            for i, r in enumerate(self._records):
                if self._epoch[i] > self.position:
                    break
                if r.op == op and r.cpu == cpu and r.error is None:
                    mem.add(r.args[0], r.result)
            self._memory_cache = {cache_key: mem}
        data = mem.read(address, size)
        if data is None:
            try:
                return self._answer(op, cpu, (address, size))  # a recorded error for exactly this read
            except NotAvailable:
                raise NotAvailable("not in the recording", backend=self.name, cpu=cpu,
                                   what=f"{'physical' if cpu is None else 'virtual'} 0x{address:x}+0x{size:x}") from None
        return data

    # ------------------------------------------------------------ timeline
    def stop_record(self, k: int) -> Record:
        """The record of the k-th stop (1-based)."""
        return self._records[self.stops[k - 1]]

    def stop_count(self) -> int:
        """How many stops the recording has."""
        return len(self.stops)

    def stop_event(self, k: int) -> StopEvent:
        """The event of the k-th stop (1-based)."""
        return self.stop_record(k).event  # type: ignore[return-value]

    def seek(self, k: int) -> Optional[StopEvent]:
        """Move to just after the k-th stop (0 = the start); returns its event."""
        if not 0 <= k <= len(self.stops):
            raise NotAvailable(f"no stop {k} (the recording has {len(self.stops)})", backend=self.name)
        self.position = k
        return self.stop_record(k).event if k else None

    def _next_stop(self, op: str, cpu: Optional[int]) -> StopEvent:
        for k in range(self.position + 1, len(self.stops) + 1):
            r = self.stop_record(k)
            if r.op == op and (cpu is None or r.cpu == cpu):
                self._used[self.stops[k - 1]] = 1
                self.position = k
                return r.event  # type: ignore[return-value]
        raise NotAvailable(f"no recorded {op} after stop {self.position}", backend=self.name, cpu=cpu)

    # ------------------------------------------------------------ bookkeeping
    def unused(self) -> List[Record]:
        """Recorded calls no one made (strict: every record after the last answered one)."""
        return [r for i, r in enumerate(self._records) if not self._used[i] and r.op is not None]

    def unused_note(self) -> Optional[str]:
        """One line about the recorded calls that were not replayed, or None."""
        left = self.unused()
        if not left:
            return None
        shown = ", ".join(record_text(r) for r in left[:3]) + (", ..." if len(left) > 3 else "")
        return f"{self.recording.path}: {len(left)} recorded call(s) were not replayed: {shown}"

    # ------------------------------------------------------------ the contract
    def processors(self) -> List[int]:
        if self.strict:
            return list(self._answer("processors", None, ()))
        try:
            return list(self._answer("processors", None, ()))
        except NotAvailable:
            return self._known_processors()

    def _known_processors(self) -> List[int]:
        """Keyed mode, when the session never asked: the header's, else those the calls name."""
        target = self.recording.header.get("target")
        cpus = target.get("processors") if isinstance(target, dict) else None
        if isinstance(cpus, list) and all(isinstance(c, int) and not isinstance(c, bool) for c in cpus):
            return sorted(cpus)
        return sorted({r.cpu for r in self._records if r.cpu is not None})

    def read_register(self, cpu: int, name: str) -> int:
        return self._answer("read_register", cpu, (name,))

    def read_registers(self, cpu: int, names: Iterable[str]) -> Dict[str, int]:
        names = tuple(names)
        if self.strict:
            try:
                return dict(self._answer("read_registers", cpu, (names,)))
            except PastEnd:
                return {}   # the contract: what cannot be read is left out
        return super().read_registers(cpu, names)

    def read_msr(self, cpu: int, index: int) -> int:
        return self._answer("read_msr", cpu, (index,))

    def cpuid(self, cpu: int, leaf: int, subleaf: int = 0) -> Tuple[int, int, int, int]:
        return self._answer("cpuid", cpu, (leaf, subleaf))

    def read_physical(self, address: int, size: int) -> bytes:
        if self.strict:
            return self._answer("read_physical", None, (address, size))
        return self._memory(None, address, size)

    def read_virtual(self, cpu: int, address: int, size: int) -> bytes:
        if self.strict:
            return self._answer("read_virtual", cpu, (address, size))
        return self._memory(cpu, address, size)

    def read_vmcs(self, cpu: int, encoding: int) -> int:
        return self._answer("read_vmcs", cpu, (encoding,))

    def vmx_state(self, cpu: int) -> Dict[str, object]:
        return dict(self._answer("vmx_state", cpu, ()))

    def write_physical(self, address: int, data: bytes) -> None:
        self._answer("write_physical", None, (address, bytes(data)))

    def write_vmcs(self, cpu: int, encoding: int, value: int) -> None:
        self._answer("write_vmcs", cpu, (encoding, value))

    def write_cr4(self, cpu: int, value: int) -> None:
        self._answer("write_cr4", cpu, (value,))

    def set_breakpoint(self, address: int, physical: bool = False) -> int:
        return self._answer("set_breakpoint", None, (address, bool(physical)))

    def remove_breakpoint(self, bp: int) -> None:
        self._answer("remove_breakpoint", None, (bp,))

    def go(self, timeout: float = 30.0) -> StopEvent:
        if self.strict:
            return self._answer("go", None, (float(timeout),))
        return self._next_stop("go", None)

    def step(self, cpu: int) -> StopEvent:
        if self.strict:
            return self._answer("step", cpu, ())
        return self._next_stop("step", cpu)

    def stop(self) -> None:
        if self.strict:
            self._answer("stop", None, ())
