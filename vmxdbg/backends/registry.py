"""Every backend vmxdbg has, by name, and the one place that selects one.

Hosts name a backend here instead of importing its module: the WinDbg host
(`bang`) asks for "windbg", `trace --bochs` for "bochs", and an input file gets
the backend its content calls for (`for_file`). Modules are imported only
when asked for, so nothing here pulls in pykd or starts Bochs.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Tuple, Type

from ..common.errors import InputError
from .base import Backend


@dataclass(frozen=True)
class BackendKind:
    """A backend: its name, where its class is (`module:Class`), whether it drives a live target."""

    name: str
    where: str
    live: bool
    what: str


KINDS: Tuple[BackendKind, ...] = (
    BackendKind("windbg", "vmxdbg.backends.windbg:WinDbgBackend", True,
                "a live kernel target in WinDbg, through pykd"),
    BackendKind("bochs", "vmxdbg.backends.bochs:BochsBackend", True,
                "a live Bochs emulator, through its debugger"),
    BackendKind("replay", "vmxdbg.record.replay:ReplayBackend", False,
                "a recording (*.vmxrec.jsonl), answered call by call"),
    BackendKind("snapshot", "vmxdbg.backends.snapshot_backend:SnapshotBackend", False,
                "a snapshot (*.vmxsnap.json)"),
    BackendKind("kdlog", "vmxdbg.backends.kdlog:KdLogBackend", False,
                "a saved kd session (.logopen text), with its virtual memory and line numbers"),
)
BY_NAME: Dict[str, BackendKind] = {k.name: k for k in KINDS}


def backend_class(name: str) -> Type[Backend]:
    """The class of the backend called `name` (InputError naming the known ones)."""
    kind = BY_NAME.get(name)
    if kind is None:
        raise InputError(f"no backend called {name!r} (there are: {', '.join(BY_NAME)})")
    module, _, cls = kind.where.partition(":")
    return getattr(importlib.import_module(module), cls)


def for_file(path: Path, *, partial: bool = False) -> Tuple[Backend, Any]:
    """The backend over an input file, chosen by its content, and what it was read from
    (the Recording, Snapshot or KdLog)."""
    from ..inputs.sources import kind_of
    kind = kind_of(path)
    if kind == "recording":
        from ..record.recording import read_recording
        rec = read_recording(path, partial=partial)
        return backend_class("replay")(rec, strict=False), rec
    if kind == "kd log":
        from ..inputs.kdlog import parse_file
        log = parse_file(Path(path))
        return backend_class("kdlog")(log), log
    from ..state.snapshot import load_snapshot
    snap = load_snapshot(path)
    return backend_class("snapshot")(snap), snap
