"""Record modes, with vcrpy's names and meanings, over a recording file.

    with open_cassette("s.vmxrec.jsonl", "once", live_factory=start_bochs) as backend:
        snapshot = collect(backend)

- none (default): replay only. The recording must exist; a call it does not
  hold is a divergence (strict) or NotAvailable (keyed). Nothing is written.
- once: replay the recording if it exists (as none); record a new one from a
  live target if it does not.
- new_episodes: replay the recorded calls (matched by op, processor and
  arguments, each used once, in any order) and send every other call to a
  live target; the file is rewritten as this session's calls in the order
  they were made, followed by the recorded calls it did not use.
- all: record anew from a live target, replacing the file when closed.

`live_factory()` opens the live backend; it is called only when a live
target is needed, and the backend it gives is closed with the cassette.
"""
from __future__ import annotations

import contextlib
import os
from collections import deque
from pathlib import Path
from typing import Any, Callable, Deque, Dict, FrozenSet, Iterator, List, Optional, Tuple, Union

from ..backends.base import Backend
from .forwarding import forwards_ops
from .recorder import Recorder
from .replay import ReplayBackend, recorded_error
from ..common.errors import VmxdbgError
from .recording import CallKey, Record, Recording, read_recording, record_json

MODES = ("none", "once", "new_episodes", "all")
LiveFactory = Callable[[], Backend]


class NoLiveTarget(VmxdbgError):
    """A record mode needs a live target and none was given."""


@forwards_ops
class _Episodes(Backend):
    """Answers from a recording (each recorded call used once), else from a live target."""

    def __init__(self, recording: Recording, live_factory: Optional[LiveFactory], path: str) -> None:
        self.recording = recording
        self.name = str(recording.backend.get("kind", "recorded"))
        self._live_factory = live_factory
        self._live: Optional[Backend] = None
        self._path = path
        self._left: Dict[CallKey, Deque[Record]] = {}
        for r in recording.records:
            if r.op is not None:
                self._left.setdefault(r.key, deque()).append(r)

    def _live_backend(self) -> Backend:
        if self._live is None:
            if self._live_factory is None:
                raise NoLiveTarget(f"{self._path}: record mode new_episodes met a call the recording does not "
                                   "hold and has no live target to ask")
            self._live = self._live_factory()
        return self._live

    def unused(self) -> List[Record]:
        """Recorded calls not asked for, in their recorded order."""
        return sorted((r for q in self._left.values() for r in q), key=lambda r: r.seq)

    def _ask(self, op: str, cpu: Optional[int], args: Tuple[Any, ...], live: Callable[[Backend], Any]) -> Any:
        q = self._left.get((op, cpu, args))
        if q:
            r = q.popleft()
            if r.error is not None:
                raise recorded_error(r.error, self.name)
            return r.result
        return live(self._live_backend())

    def capabilities(self) -> FrozenSet[str]:
        return self.recording.capabilities

    def describe(self) -> Dict[str, str]:
        return {str(k): str(v) for k, v in self.recording.backend.items()}

    def _forward(self, op: str, cpu: Optional[int], args: Tuple[Any, ...], call: Callable[[Backend], Any]) -> Any:
        return self._ask(op, cpu, args, call)

    def close(self) -> None:
        if self._live is not None:
            self._live.close()


def _live(live_factory: Optional[LiveFactory], path: Path, mode: str) -> Backend:
    if live_factory is None:
        raise NoLiveTarget(f"{path}: record mode {mode} needs a live target to record from, and none was given")
    return live_factory()


@contextlib.contextmanager
def open_cassette(path: Union[str, "os.PathLike[str]"], mode: str = "none",
                  live_factory: Optional[LiveFactory] = None, *, strict: bool = True,
                  command: Optional[Dict[str, Any]] = None, partial: bool = False) -> Iterator[Backend]:
    """A Backend for `path` in record mode `mode` (see the module doc).

    `command` ({"command", "argv", "params"}) goes into the header of a new
    recording. A replay in strict mode that leaves recorded calls unused is
    not an error here; ask the yielded ReplayBackend's `unused()`.
    """
    if mode not in MODES:
        raise VmxdbgError(f"unknown record mode {mode!r} (modes: {', '.join(MODES)})")
    p = Path(path)
    exists = p.exists()
    if mode == "none" or (mode == "once" and exists):
        if not exists:
            raise NoLiveTarget(f"{p}: no such recording (record mode none replays only; "
                               "use once or all to record one)")
        yield ReplayBackend(read_recording(p, partial=partial), strict=strict)
        return
    if mode in ("all", "once") or not exists:
        live = _live(live_factory, p, mode)
        with Recorder(live, p, command=command, close_backend=True) as rec:
            yield rec
        return
    # new_episodes over an existing recording
    old = read_recording(p, partial=partial)
    episodes = _Episodes(old, live_factory, str(p))
    header_command = {"command": old.command, "argv": old.argv, "params": old.params}
    target = old.header.get("target") if isinstance(old.header.get("target"), dict) else None
    rec = Recorder(episodes, p, command=command or header_command, probe=False, target=target,
                   close_backend=True)
    exc: Optional[BaseException] = None
    try:
        yield rec
    except BaseException as e:
        exc = e
        raise
    finally:
        for r in episodes.unused():
            rec.writer.write(record_json(r))
        rec.close(exc)
