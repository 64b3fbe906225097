"""Recognise an input file by its content and turn it into a Snapshot.

Probes run in order on the first bytes of the file (volatility-style); the
first that claims the file loads it. A new input kind is one line in KINDS:
(name, "module:probe", "module:loader"), probe(head: bytes) -> bool,
loader(path: Path, options: dict) -> Snapshot.
Options understood: `at_line` (kd logs), `partial` (recordings).
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

from ..common.errors import InputError
from ..state.snapshot import Snapshot

KINDS: Tuple[Tuple[str, str, str], ...] = (
    ("snapshot", "vmxdbg.state.snapshot:looks_like_snapshot", "vmxdbg.state.snapshot:load_for_check"),
    ("recording", "vmxdbg.record.recording:looks_like_recording", "vmxdbg.record.recorded:load_for_check"),
    ("kd log", "vmxdbg.inputs.kdlog:looks_like_kdlog", "vmxdbg.inputs.kdlog:load_for_check"),
)
HEAD_BYTES = 64 * 1024
# what the probes look for, for the refusal of a file none of them claims
LOOKED_FOR = ('"format": "vmxdbg-snapshot" (snapshot), a first line naming "vmxdbg-recording" (recording), or '
              "kd prompt (`0: kd>`, `kd>`, `lkd>`) or kd banner (kd log)")


def _resolve(spec: str) -> Callable[..., Any]:
    mod, _, attr = spec.partition(":")
    return getattr(importlib.import_module(mod), attr)


def read_head(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(HEAD_BYTES)
    except OSError as exc:
        raise InputError(exc.strerror or str(exc), source=str(path)) from None


def kind_of(path: Path) -> str:
    """The name of the first kind whose probe claims the file; InputError if none."""
    head = read_head(path)
    for name, probe, _ in KINDS:
        try:
            if _resolve(probe)(head):
                return name
        except ImportError:
            continue
    known = ", ".join(k[0] for k in KINDS)
    raise InputError(f"not a file vmxdbg reads (it reads: {known}); its first {HEAD_BYTES // 1024} KiB hold "
                     f"no {LOOKED_FOR}", source=str(path))


def load_any(path: Path, options: Optional[Dict[str, Any]] = None) -> Snapshot:
    """The Snapshot of any input kind vmxdbg reads."""
    name = kind_of(path)
    loader = dict((k[0], k[2]) for k in KINDS)[name]
    return _resolve(loader)(path, options or {})
