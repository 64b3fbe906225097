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
from typing import Any, Callable, Dict, Optional

from ...state.snapshot import Snapshot
from .parser import PROMPT, parse_file, parse_stream, parse_text
from ...common import progress
from .reader import CHUNK, READ_LABEL, detect_encoding
from .state import KdLog, KdWarning, NonLiveContext

__all__ = ["KdLog", "KdWarning", "NonLiveContext", "parse_file", "parse_stream", "parse_text",
           "looks_like_kdlog", "load_for_check", "print_warnings"]

_BANNERS = ("Kernel Debugger connection established", "Microsoft (R) Windows Debugger",
            "Opened log file")
MAX_PRINTED_WARNINGS = 50
#: logs from this size on take about 2 s or more to read (bench/bench_kdlog.py: about 8 MB/s):
#: progress is shown on a terminal
PROGRESS_BYTES = 16 << 20


def looks_like_kdlog(head: bytes) -> bool:
    """Content probe: a kd prompt at the start of a line, or a kd banner, in the first bytes."""
    encoding, skip = detect_encoding(head)
    text = head[skip:].decode(encoding, errors="replace").replace("\x00", "")
    for line in re.split(r"\r\n|\r|\n", text)[:2000]:
        if PROMPT.match(line) or any(b in line for b in _BANNERS):
            return True
    return False


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
    size = Path(path).stat().st_size if Path(path).is_file() else 0
    shown = progress.shown(f"vmxdbg: reading {Path(path).name}") if size >= PROGRESS_BYTES \
        else contextlib.nullcontext()
    with shown:
        progress.phase(READ_LABEL, total=-(-size // CHUNK))
        log = parse_file(Path(path), options.get("at_line"))
    warn = options.get("warn")
    if callable(warn):
        warn(log)
    else:
        print_warnings(log)
    return log.snapshot
