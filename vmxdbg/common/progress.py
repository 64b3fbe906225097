"""Progress on stderr for what takes seconds (booting Bochs, each core's stops), through
prompt_toolkit's ProgressBar, and only when stderr is a terminal: piped or redirected,
nothing is printed.

    with progress.shown("vmxdbg trace"):
        progress.phase("booting Bochs", total=1)
        ...
        progress.advance("booting Bochs")
        progress.advance("cpu 0 stops", total=4)   # a phase is made on its first use

Code that reports progress calls the module functions; they do nothing unless a
`shown()` block is active, so library use and tests are untouched.
"""
from __future__ import annotations

import contextlib
import sys
from typing import Any, Dict, Iterator, Optional

_active: Dict[str, Any] = {"bar": None, "counters": {}}


def wanted(stream: Any = None) -> bool:
    """True when `stream` (stderr) is a terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


@contextlib.contextmanager
def shown(title: str) -> Iterator[None]:
    """A progress display on stderr for the enclosed work (nothing when stderr is not a terminal)."""
    if not wanted() or _active["bar"] is not None:
        yield
        return
    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output import create_output
    from prompt_toolkit.shortcuts import ProgressBar
    # keys are not read (stdin may be anything): an input that stays open and silent
    with create_pipe_input() as keys, \
            ProgressBar(title=title, output=create_output(stdout=sys.stderr), input=keys) as bar:
        _active.update(bar=bar, counters={})
        try:
            yield
        finally:
            for counter in _active["counters"].values():
                counter.done = True
            _active.update(bar=None, counters={})


def phase(label: str, total: Optional[int] = None) -> None:
    """Show a phase (a line of the display), if not shown yet."""
    bar = _active["bar"]
    if bar is not None and label not in _active["counters"]:
        _active["counters"][label] = bar(label=label, total=total)


def advance(label: str, total: Optional[int] = None) -> None:
    """One more item of `label` done (the phase is made on first use)."""
    if _active["bar"] is None:
        return
    phase(label, total)
    counter = _active["counters"][label]
    counter.item_completed()
    if counter.total is not None and counter.items_completed >= counter.total:
        counter.done = True


def reached(label: str, done: int) -> None:
    """`done` items of `label` are done (for work that counts its own position, such as bytes read)."""
    counter = _active["counters"].get(label)
    if counter is None or done <= counter.items_completed:
        return
    counter.items_completed = done
    counter.progress_bar.invalidate()
    if counter.total is not None and done >= counter.total:
        counter.done = True


def finish(label: str) -> None:
    """The phase is done."""
    counter = _active["counters"].get(label)
    if counter is not None:
        counter.done = True


__all__ = ["shown", "phase", "advance", "reached", "finish", "wanted"]
