"""Saved kd / WinDbg session logs (`.logopen` text) as a vmxdbg input.

`parse_file(path, at_line)` streams the log into a KdLog: the Snapshot of
every processor as the log showed it (each value with the log line it came
from), warnings for lines that look like a known command's output but do not
parse, and the register contexts that were not live. `looks_like_kdlog` and
`load_for_check` are its sources.py probe and loader.
"""
from __future__ import annotations

import contextlib
import re
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from ...state.snapshot import Snapshot
from ...common import progress
from ...common.errors import InputError
from .parser import PROMPT, QUOTE, parse_file, parse_stream, parse_text
from .reader import MIB, READ_LABEL, detect_encoding
from .state import KdLog, KdWarning, NonLiveContext

__all__ = ["KdLog", "KdWarning", "NonLiveContext", "parse_file", "parse_stream", "parse_text",
           "looks_like_kdlog", "load_for_check", "print_warnings"]

_BANNERS = ("Kernel Debugger connection established", "Microsoft (R) Windows Debugger",
            "Opened log file")
MAX_PRINTED_WARNINGS = 50
LOOKED_FOR = "a kd prompt (`0: kd>`, `kd>`, `lkd>`) at the start of a line, also after `>` quote marks"
# Debuggers that take kd's command syntax behind a prompt of their own. Their output
# is their own (HyperDbg's `r` prints `RAX=... OF 0 DF 0`), so vmxdbg refuses them by name.
OTHER_DEBUGGERS = re.compile(r"^\s*(?:\d{1,5}:\s?)?(k?HyperDbg)>", re.I)
_NAMES = {"khyperdbg": "HyperDbg (kernel debugger)", "hyperdbg": "HyperDbg"}


def _head_lines(head: bytes) -> List[str]:
    encoding, skip = detect_encoding(head)
    text = head[skip:].decode(encoding, errors="replace").replace("\x00", "")
    return [QUOTE.sub("", line, count=1) for line in re.split(r"\r\n|\r|\n", text)[:2000]]

#: logs from this size on take a second or more to read (bench/bench_kdlog.py): progress is
#: shown on a terminal
PROGRESS_BYTES = 4 << 20


def read_so_far(done: int) -> None:
    """The parser's progress callback: bytes read, shown as MiB (nothing unless progress is shown)."""
    progress.reached(READ_LABEL, -(-done // MIB))


def looks_like_kdlog(head: bytes) -> bool:
    """Content probe: a kd prompt at the start of a line (after quote marks, if any), a kd
    banner, or the prompt of a debugger in kd's syntax (refused by name when loaded)."""
    for line in _head_lines(head):
        if PROMPT.match(line) or OTHER_DEBUGGERS.match(line) or any(b in line for b in _BANNERS):
            return True
    return False


def other_debugger(path: Path) -> Optional[Tuple[int, str]]:
    """(line, debugger name) of the first prompt of another kd-syntax debugger in the
    file's first 64 KiB, when it has no kd prompt there; else None."""
    with open(path, "rb") as f:
        head = f.read(64 * 1024)
    found = None
    for n, line in enumerate(_head_lines(head), 1):
        if PROMPT.match(line):
            return None
        m = OTHER_DEBUGGERS.match(line)
        if m and found is None:
            found = (n, _NAMES.get(m.group(1).lower(), m.group(1)))
    return found


def print_warnings(log: KdLog, write: Optional[Callable[[str], Any]] = None) -> None:
    """One line per warning (the first MAX_PRINTED_WARNINGS, then a count), to stderr by default."""
    if write is None:
        write = sys.stderr.write
    shown = log.warnings[:MAX_PRINTED_WARNINGS]
    for w in shown:
        write(f"vmxdbg: warning: {w.format(log.source)}\n")
    rest = len(log.warnings) - len(shown) + log.warnings_dropped
    if rest:
        write(f"vmxdbg: warning: {rest} more warnings in {log.source}\n")


def load_for_check(path: Path, options: Dict[str, Any]) -> Snapshot:
    """sources.py loader: the snapshot as of `options["at_line"]` (default: the end);
    warnings go to `options["warn"]` (a callable taking the KdLog) or stderr."""
    path = Path(path)
    other = other_debugger(path) if path.is_file() else None
    if other is not None:
        line, name = other
        raise InputError(f"line {line}: a {name} session; its commands print in its own format, "
                         "which vmxdbg does not read (it reads kd/WinDbg output)", source=str(path))
    size = path.stat().st_size if path.is_file() else 0
    shown = progress.shown(f"vmxdbg: reading {path.name}") if size >= PROGRESS_BYTES else contextlib.nullcontext()
    with shown:
        progress.phase(READ_LABEL, total=-(-size // MIB))
        log = parse_file(path, options.get("at_line"), options.get("progress") or read_so_far)
    if log.prompts == 0:
        raise InputError(f"no debugger session found: looked for {LOOKED_FOR}", source=str(path))
    if not shows_anything(log.snapshot):
        log.warnings.append(KdWarning(log.lines, f"the log has a kd session ({log.prompts} prompts) but shows "
                                                 "nothing vmxdbg checks (no register, MSR, memory or processor "
                                                 "identity): every rule is unknown"))
    warn = options.get("warn")
    if callable(warn):
        warn(log)
    else:
        print_warnings(log)
    return log.snapshot


def shows_anything(snap: Snapshot) -> bool:
    """Whether a snapshot holds any value a rule reads."""
    if snap.memory:
        return True
    for p in snap.processors.values():
        if (p.msr or p.registers or p.segments or p.tables or p.state or p.cpuid or p.vmcs or p.operands
                or p.vmxon_pointer is not None or p.vmcs_pointer is not None or p.virtual_memory):
            return True
    return False
