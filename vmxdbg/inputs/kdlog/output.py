"""The base of every command-output reader: it gets the lines a command printed.

The parser makes one reader per command it recognises, passes it the output
until the next prompt, then calls `end()`. The output comes as runs of whole
lines (`feed_segment`: a slice of the block the parser holds, never split by
it); a reader that does not override it gets them split into lines
(`feed_lines`), and each line that can matter goes to `feed`. Readers set
values through the LogState (which records provenance) and report lines that
look like their output but do not parse through `state.warn`.

A reader's `feed_segment` is its fast path: it must give exactly what
`feed_lines` gives for the same lines (tests/test_kdlog_fast.py checks this
on the real excerpts and on generated and mutated logs). Where it cannot tell,
it hands the lines to `feed_lines`.
"""
from __future__ import annotations

from typing import List, Optional

from .reader import MAX_LINE, Line
from .state import LogState


class CommandOutput:
    """Reads the output of one command run on processor `cpu`.

    `live` is False when the debugger shows a saved context (`.cxr`, `.trap`,
    `.thread`) rather than the processor's own registers, and `kind` then names
    what made it so (`.cxr`, `!analyze`); `command` is the command text (after the
    prompt) and `line` its line number.
    """

    def __init__(self, state: LogState, cpu: int, command: str, line: int, live: bool = True,
                 kind: str = "") -> None:
        self.state, self.cpu, self.command, self.line, self.live = state, cpu, command, line, live

    # A string every output line that can matter contains; other lines are not
    # looked at (most of a long output, e.g. the prose of `!analyze -v`).
    KEY: Optional[str] = None
    # For a reader without a KEY: a lower-case string every line that `feed` does not
    # ignore contains once lowered. Only those lines are cut out and fed, when the
    # output is ASCII (lower() keeps every offset) and shorter than MAX_LINE (so no
    # line of it is too long, which every line would be warned for).
    MARK: str | None = None

    def feed_segment(self, text: str, start: int, end: int, first: int) -> None:
        """Whole lines `text[start:end]` (each ending in "\n"), the first numbered `first`.
        With a KEY, only the lines holding it are cut out (found by str.find); with a
        MARK, see there; else the lines go to `feed_lines`."""
        key = self.KEY
        if key is not None:
            self._feed_holding(text, text, key, start, end, first)
            return
        segment = text[start:end]
        if self.MARK is None or end - start > MAX_LINE or not segment.isascii():
            self.feed_lines(segment.split("\n")[:-1], first)
            return
        self._feed_holding(segment, segment.lower(), self.MARK, 0, end - start, first)

    def _feed_holding(self, text: str, searched: str, key: str, start: int, end: int, first: int) -> None:
        """Each line of text[start:end] where `searched` (`text`, or a copy with the same
        offsets) holds `key`, to `feed_lines`."""
        find, count = searched.find, text.count
        pos, n = start, first
        while True:
            k = find(key, pos, end)
            if k < 0:
                return
            line_start = text.rfind("\n", pos, k) + 1 or pos
            line_end = text.find("\n", k, end)
            n += count("\n", pos, line_start)
            self.feed_lines([text[line_start:line_end]], n)
            pos, n = line_end + 1, n + 1

    def feed_lines(self, lines: List[str], first: int) -> None:
        """Output lines, the first numbered `first`: each that can matter goes to `feed`."""
        key = self.KEY
        feed = self.feed
        for n, text in enumerate(lines, first):
            if key is not None and key not in text:
                continue
            if len(text) > MAX_LINE:
                self.state.warn(n, f"line longer than {MAX_LINE} characters; cut there and not used")
                continue
            feed(Line(n, text))

    def feed(self, line: Line) -> None:
        """One output line."""

    def end(self) -> None:
        """The output is over (a new prompt, or the end of the log)."""
