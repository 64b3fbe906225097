"""Recorded sessions of commands: making a recording of `check`, and reading any
recording back as the Snapshot `vmxdbg check` checks.

A recording of `check` holds, in its header, what collect() was asked for
(`params`: processors, VMXON pointers, source); replaying it re-runs collect()
against the strict replay backend, so the snapshot, and so the report, are
the ones the live session had, and any change in the calls collect() makes
is caught as a divergence. A recording of any other command (a trace) is
read one moment per processor: collect() against the keyed replay at that
processor's last complete stop (or its last stop up to a chosen one).
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

from ..backends.base import Backend
from .recorder import Recorder
from .replay import ReplayBackend
from ..state.collect import collect
from ..common.errors import BackendError, InputError, NotAvailable
from .recording import Recording, read_recording
from ..state.snapshot import Snapshot
from ..common.numbers import hexs, parse_int

CHECK = "check"
#: calls that show a stop read the processor's state there (not only where it stopped)
STATE_READS = ("read_msr", "vmx_state", "cpuid")


def check_params(cpus: Optional[Iterable[int]] = None, vmxon_pointers: Optional[Dict[int, int]] = None,
                 source: str = "") -> Dict[str, Any]:
    """The header `params` of a check: exactly the arguments collect() gets."""
    out: Dict[str, Any] = {}
    if cpus is not None:
        out["cpus"] = [int(c) for c in cpus]
    if vmxon_pointers:
        out["vmxon_pointers"] = {str(c): hexs(p) for c, p in sorted(vmxon_pointers.items())}
    if source:
        out["source"] = source
    return out


def collect_args(p: Dict[str, Any], where: str) -> Dict[str, Any]:
    """collect()'s keyword arguments from a header's params; InputError names the file and bad key."""
    def bad(key: str, msg: str) -> InputError:
        return InputError(msg, source=where, line=1, key=f"params.{key}")
    out: Dict[str, Any] = {"source": str(p.get("source") or f"recording {where}")}
    cpus = p.get("cpus")
    if cpus is not None:
        if not isinstance(cpus, list) or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0
                                                 for c in cpus):
            raise bad("cpus", "expected a list of processor numbers")
        out["cpus"] = cpus
    ptrs = p.get("vmxon_pointers")
    if ptrs is not None:
        if not isinstance(ptrs, dict):
            raise bad("vmxon_pointers", "expected an object of processor -> address")
        try:
            out["vmxon_pointers"] = {int(str(c), 10): parse_int(v, what=f"processor {c}") for c, v in ptrs.items()}
        except (ValueError, InputError) as exc:
            raise bad("vmxon_pointers", str(exc)) from None
    return out


def record_check(backend: Backend, path: Union[str, "os.PathLike[str]"], *, cpus: Optional[Iterable[int]] = None,
                 vmxon_pointers: Optional[Dict[int, int]] = None, source: str = "",
                 argv: Optional[List[str]] = None) -> Snapshot:
    """collect() from `backend` while recording the session to `path`; returns the snapshot."""
    cpus = None if cpus is None else list(cpus)
    params = check_params(cpus, vmxon_pointers, source)
    with Recorder(backend, path, command=CHECK, argv=argv if argv is not None else ["check"], params=params) as rec:
        return collect(rec, cpus=cpus, vmxon_pointers=vmxon_pointers, source=source or backend.name)


def run_check(backend: Backend, rec_params: Dict[str, Any]) -> Snapshot:
    """The calls a `check` makes: collect() with the header params (see check_params)."""
    return collect(backend, **collect_args(rec_params, "<params>"))


#: command -> "module:function(backend, params) -> Snapshot" that runs that command's
#: session against a backend (used to record it anew). One line per command.
RUNNERS: Dict[str, str] = {CHECK: "vmxdbg.record.recorded:run_check"}


def runner(command: Optional[str]) -> Optional[Callable[[Backend, Dict[str, Any]], Snapshot]]:
    """The session runner of a command, or None when vmxdbg cannot run it again."""
    spec = RUNNERS.get(command or "")
    if spec is None:
        return None
    mod, _, attr = spec.partition(":")
    return getattr(importlib.import_module(mod), attr)


def replay_session(rec: Recording, stop: Optional[int] = None) -> Tuple[Snapshot, ReplayBackend]:
    """The Snapshot a recording stands for (see the module doc) and the replay that gave it;
    `stop` N: the processors as they were at stop N (recordings with stops)."""
    kwargs = collect_args(rec.params, rec.path)
    if rec.command == CHECK:
        replay = ReplayBackend(rec, strict=True)
    else:
        replay = ReplayBackend(rec, strict=False)
        moments = stop_moments(replay, stop)
        if moments:
            return _collect_at(replay, moments, kwargs), replay
        replay.seek(replay.stop_count() if stop is None else stop)
        if "cpus" not in kwargs:
            kwargs["cpus"] = _processors(rec, replay)
    return collect(replay, **kwargs), replay


def stop_moments(replay: ReplayBackend, stop: Optional[int] = None) -> Dict[int, int]:
    """processor -> the stop whose reads make its snapshot: its last complete stop (a stop of
    that processor followed by a later event: the reads made there all recorded), or with
    `stop` N its last stop at or before N. Step events are not moments: after a step only
    RIP, RFLAGS and the VMX state are read again, so a snapshot there would mix moments."""
    limit = replay.stop_count() if stop is None else stop
    if not 0 <= limit <= replay.stop_count():
        raise InputError(f"--stop {stop}: the recording has stops 1 to {replay.stop_count()}",
                         source=replay.recording.path)
    out: Dict[int, int] = {}
    for k in range(1, limit + 1):
        ev = replay.stop_event(k)
        if ev.cpu is None or ev.kind == "step":
            continue
        if stop is None and k == replay.stop_count():
            continue        # nothing after it: its reads may have been cut off
        if not any(r.cpu == ev.cpu and r.op in STATE_READS for r in replay.stop_records(k)):
            continue        # a stop where the session read nothing of this processor's state
        out[ev.cpu] = k
    return out


def _collect_at(replay: ReplayBackend, moments: Dict[int, int], kwargs: Dict[str, Any]) -> Snapshot:
    """One Snapshot of each processor as read at its own stop (see stop_moments)."""
    wanted = kwargs.pop("cpus", None)
    snap: Optional[Snapshot] = None
    for cpu, k in sorted(moments.items()):
        if wanted is not None and cpu not in wanted:
            continue
        replay.seek(k)
        one = collect(replay, cpus=[cpu], **kwargs)
        one.processors[cpu].provenance.setdefault("moment", f"stop {k} of {replay.recording.path}")
        if snap is None:
            snap = one
        else:
            snap.processors[cpu] = one.processors[cpu]
    return snap if snap is not None else Snapshot(source=str(kwargs.get("source", "")))


def _processors(rec: Recording, replay: ReplayBackend) -> List[int]:
    """The processors of a recording that may not hold a processors() call (a trace never
    asks): the recorded answer, else the header's target, else every cpu a record names."""
    try:
        return list(replay.processors())
    except NotAvailable:
        pass
    target = rec.header.get("target")
    listed = target.get("processors") if isinstance(target, dict) else None
    if isinstance(listed, list) and listed and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 0xFFFFFFFF
                                                  for c in listed):
        return sorted(set(listed))
    return sorted({r.cpu for r in rec.records if r.cpu is not None})


def snapshot_of(rec: Recording, notes: Optional[List[str]] = None, stop: Optional[int] = None) -> Snapshot:
    """The Snapshot a recording stands for; notes gather what a person should know.

    A backend error the replay meets (a recorded TargetGone, a call the
    recording cannot answer) is an InputError naming the recording."""
    try:
        return _snapshot_of(rec, notes, stop)
    except BackendError as exc:
        raise InputError(f"replaying it: {exc}", source=rec.path) from None


def _snapshot_of(rec: Recording, notes: Optional[List[str]] = None, stop: Optional[int] = None) -> Snapshot:
    notes = notes if notes is not None else []
    if not rec.complete:
        notes.append(f"{rec.path} is a partial recording: {len(rec.records)} events up to seq {rec.last_seq}, "
                     "the recorder did not finish; what it did not reach is unknown")
    elif rec.ended_early() is not None:
        notes.append(f"{rec.path}: {rec.ended_early()}; what it did not reach is unknown")
    snap, replay = replay_session(rec, stop)
    if not replay.strict:
        moments = stop_moments(replay, stop)
        if moments:
            notes.append(f"{rec.path}: each processor as read at its "
                         + ("last complete stop" if stop is None else f"last stop up to stop {stop}") + ": "
                         + ", ".join(f"cpu {c} at stop {k}" for c, k in sorted(moments.items())))
        elif replay.stop_count():
            notes.append(f"{rec.path}: checking the state at the last recorded stop ({replay.stop_count()})")
    else:
        unused = replay.unused_note()
        if unused:
            notes.append(unused)
    return snap


def load_for_check(path: Path, options: Dict[str, Any]) -> Snapshot:
    """sources.py loader: `partial` accepts an unfinished recording; notes go to options['notes']."""
    rec = read_recording(path, partial=bool(options.get("partial")))
    return snapshot_of(rec, options.setdefault("notes", []), options.get("stop"))
