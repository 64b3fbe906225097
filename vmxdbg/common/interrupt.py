"""Signals that end a session: what was being done when they came, and the exit status.

SIGINT raises KeyboardInterrupt (Python's own behaviour) and SIGTERM raises
Terminated, a SystemExit with status 143, so `with` blocks and `finally`
clean-up (the recorder's trailer, Bochs' close) run for both. Code that does
something worth naming wraps it in `doing("...")`; the signal handler keeps
what was being done at the moment the signal came, and `signal_line()` makes
the one line the CLI prints: which signal, what it interrupted, and what the
clean-up confirmed (`confirm(...)`, e.g. "the injected RDMSR was undone").
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Dict, Iterator, List, Optional

#: exit statuses of a run ended by a signal: 128 + the signal's number, as a shell reports it
SIGINT_STATUS, SIGTERM_STATUS = 128 + signal.SIGINT, 128 + signal.SIGTERM


class Terminated(SystemExit):
    """SIGTERM arrived: unwinds like SystemExit(143), so clean-up runs."""

    def __init__(self) -> None:
        super().__init__(SIGTERM_STATUS)

    def __str__(self) -> str:
        return "SIGTERM"


_doing: List[str] = []
_state: dict = {"during": None, "signal": None, "confirmed": []}


@contextlib.contextmanager
def doing(what: str) -> Iterator[None]:
    """Name what the enclosed code does, for the line a signal ends the run with."""
    _doing.append(what)
    try:
        yield
    finally:
        _doing.pop()


def current() -> str:
    """What is being done now, innermost last ("" when nothing was named)."""
    return ": ".join(_doing)


def confirm(what: str) -> None:
    """A clean-up step done after a signal (said in the final line)."""
    if _state["signal"] is not None:
        _state["confirmed"].append(what)


def _note(signame: str) -> None:
    if _state["signal"] is None:
        _state.update(signal=signame, during=current() or None)


_held: Dict[str, Any] = {"depth": 0, "pending": None}


@contextlib.contextmanager
def held() -> Iterator[None]:
    """A signal that comes inside waits until the enclosed code is done, then is raised
    (a recording's line and its count are written together, never one without the other)."""
    _held["depth"] += 1
    try:
        yield
    finally:
        _held["depth"] -= 1
        if not _held["depth"] and _held["pending"] is not None:
            pending, _held["pending"] = _held["pending"], None
            raise pending


def _raise(exc: BaseException) -> None:
    if _held["depth"]:
        _held["pending"] = _held["pending"] or exc
        return
    raise exc


def _on_sigint(signum: int, frame: Any) -> None:
    _note("SIGINT")
    _raise(KeyboardInterrupt())


def on_sigterm(signum: int = signal.SIGTERM, frame: Any = None) -> None:
    """The SIGTERM handler: note what was being done and raise Terminated."""
    _note("SIGTERM")
    _raise(Terminated())


def install() -> Dict[int, Any]:
    """SIGINT and SIGTERM raise (main thread only; a SIGINT the parent ignores stays ignored);
    returns the handlers replaced, for restore()."""
    replaced: Dict[int, Any] = {}
    if threading.current_thread() is not threading.main_thread():
        return replaced
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        replaced[signal.SIGINT] = signal.signal(signal.SIGINT, _on_sigint)
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        replaced[signal.SIGTERM] = signal.signal(signal.SIGTERM, on_sigterm)
    return replaced


def restore(replaced: Dict[int, Any]) -> None:
    """Put back the handlers install() replaced."""
    if threading.current_thread() is threading.main_thread():
        for signum, handler in replaced.items():
            signal.signal(signum, handler)


def reset() -> None:
    _state.update(signal=None, during=None, confirmed=[])


def signal_line(exc: BaseException, tail: Optional[str] = None) -> str:
    """The one line for a run a signal ended: `interrupted by SIGINT during ...; ...`."""
    signame = _state["signal"] or ("SIGTERM" if isinstance(exc, Terminated) else "SIGINT")
    parts = [f"interrupted by {signame}"]
    if _state["during"]:
        parts[0] += f" during {_state['during']}"
    parts += _state["confirmed"]
    if tail:
        parts.append(tail)
    return "; ".join(parts)


def status_of(exc: BaseException) -> int:
    return SIGTERM_STATUS if isinstance(exc, Terminated) else SIGINT_STATUS


__all__ = ["Terminated", "doing", "current", "confirm", "install", "restore", "reset", "signal_line", "status_of",
           "on_sigterm"]
