"""`.formats EXPR` blocks and `? EXPR` answers. The value shown is a register's
only when EXPR names one (`.formats cr4`, `? @cr4`); a number typed by hand
(`.formats 0x00000000`80000021`) teaches nothing and is only checked."""
from __future__ import annotations

import re
from typing import Optional

from .output import CommandOutput
from .reader import Line
from .registers import apply_register, register_target
from .state import LogState

_HEX_LINE = re.compile(r"^\s*Hex:\s+([0-9a-f]{1,8}(?:`[0-9a-f]{8})?)\s*$", re.I)
_EVAL = re.compile(r"^\s*Evaluate expression:\s+(-?\d+)\s*=\s*([0-9a-f]{1,8}(?:`[0-9a-f]{8})?)\s*$", re.I)


def _expression(command: str) -> str:
    parts = command.strip().split(None, 1)
    return parts[1].strip() if len(parts) > 1 else ""


class _RegisterValueOutput(CommandOutput):
    """Shared: a register named by the command's expression gets the value shown."""

    def __init__(self, state: LogState, cpu: int, command: str, line: int, live: bool = True,
                 kind: str = "") -> None:
        super().__init__(state, cpu, command, line, live, kind)
        self.target: Optional[str] = register_target(_expression(command))

    def _value(self, value: int, number: int) -> None:
        if self.target is None or not self.live:
            return
        apply_register(self.state, self.cpu, self.target, value, number)


class FormatsOutput(_RegisterValueOutput):
    MARK = "hex:"

    def feed(self, line: Line) -> None:
        stripped = line.text.strip()
        if not stripped.lower().startswith("hex:"):
            return
        m = _HEX_LINE.match(stripped)
        if m is None:
            self.state.warn(line.number, f".formats Hex line does not parse: {stripped[:80]!r}")
            return
        self._value(int(m.group(1).replace("`", ""), 16), line.number)


class EvaluateOutput(_RegisterValueOutput):
    MARK = "evaluate expression:"

    def feed(self, line: Line) -> None:
        stripped = line.text.strip()
        if not stripped.lower().startswith("evaluate expression:") or stripped.lower() == "evaluate expression:":
            return
        m = _EVAL.match(stripped)
        if m is None:
            self.state.warn(line.number, f"? answer does not parse: {stripped[:80]!r}")
            return
        self._value(int(m.group(2).replace("`", ""), 16), line.number)
