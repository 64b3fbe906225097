"""The base of every command-output reader: it gets the lines a command printed.

The parser makes one reader per command it recognises, passes it each output
line until the next prompt, then calls `end()`. Readers set values through the
LogState (which records provenance) and report lines that look like their
output but do not parse through `state.warn`.
"""
from __future__ import annotations

from .reader import Line
from .state import LogState


class CommandOutput:
    """Reads the output of one command run on processor `cpu`.

    `live` is False when the debugger shows a saved context (`.cxr`, `.trap`,
    `.thread`) rather than the processor's own registers; `command` is the
    command text (after the prompt) and `line` its line number.
    """

    def __init__(self, state: LogState, cpu: int, command: str, line: int, live: bool = True) -> None:
        self.state, self.cpu, self.command, self.line, self.live = state, cpu, command, line, live

    def feed(self, line: Line) -> None:
        """One output line."""

    def end(self) -> None:
        """The output is over (a new prompt, or the end of the log)."""
