"""`rdmsr` output: `msr[480] = 00da0400`00000004`."""
from __future__ import annotations

import re

from ...common.errors import InputError
from .output import CommandOutput
from .reader import MAX_LINE, Line

# a `// ...` after the value is a note someone added to a pasted log, not output
_MSR_TEXT = r"^\s*msr\[([0-9a-f]{1,8})\]\s*=\s*([0-9a-f]{8}`?[0-9a-f]{8})\s*(?://.*)?$"
_MSR = re.compile(_MSR_TEXT, re.I)
# the same, matched at a line start inside a block of lines: no part of it can match a
# line end, so it matches as it does on the line alone. Both cases spelled out instead of
# re.IGNORECASE (faster), with the long s that folds to "s".
_MSR_IN_BLOCK = re.compile(_MSR_TEXT.replace(r"\s", r"[^\S\n]").replace("0-9a-f", "0-9a-fA-F")
                           .replace("msr", "[mM][sS\u017f][rR]"), re.MULTILINE)
_WIDE = re.compile(r"^\s*msr\[([0-9a-f]{1,8})\]\s*=\s*([0-9a-f`]{18,})\s*(?://.*)?$", re.I)


class RdmsrOutput(CommandOutput):
    """Every `msr[N] = V` line sets MSR N; other `msr[` lines are warnings."""

    def feed_segment(self, text: str, start: int, end: int, first: int) -> None:
        """Each `msr[N] = V` line matched in place; any other line goes to `feed_lines`."""
        match, set_msr, cpu = _MSR_IN_BLOCK.match, self.state.set_msr, self.cpu
        pos, n = start, first
        while pos < end:
            m = match(text, pos, end)
            line_end = m.end() if m is not None else text.find("\n", pos, end)
            if m is None or line_end - pos > MAX_LINE:
                self.feed_lines([text[pos:line_end]], n)
            else:
                set_msr(cpu, int(m.group(1), 16), int(m.group(2).replace("`", ""), 16), n)
            pos, n = line_end + 1, n + 1

    def feed(self, line: Line) -> None:
        m = _MSR.match(line.text)
        if m:
            value = int(m.group(2).replace("`", ""), 16)
            self.state.set_msr(self.cpu, int(m.group(1), 16), value, line.number)
        elif _WIDE.match(line.text) and len(_WIDE.match(line.text).group(2).replace("`", "").lstrip("0")) > 16:
            raise InputError(f"msr[{_WIDE.match(line.text).group(1)}]: the value is too wide (an MSR holds 64 bits)",
                             source=self.state.result.source, line=line.number)
        elif line.text.lstrip().lower().startswith("msr["):
            self.state.warn(line.number, f"rdmsr output does not parse: {line.text.strip()[:80]!r}")
