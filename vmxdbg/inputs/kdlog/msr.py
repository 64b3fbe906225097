"""`rdmsr` output: `msr[480] = 00da0400`00000004`."""
from __future__ import annotations

import re

from ...common.errors import InputError
from .output import CommandOutput
from .reader import Line

# a `// ...` after the value is a note someone added to a pasted log, not output
_MSR = re.compile(r"^\s*msr\[([0-9a-f]{1,8})\]\s*=\s*([0-9a-f]{8}`?[0-9a-f]{8})\s*(?://.*)?$", re.I)
_WIDE = re.compile(r"^\s*msr\[([0-9a-f]{1,8})\]\s*=\s*([0-9a-f`]{18,})\s*(?://.*)?$", re.I)


class RdmsrOutput(CommandOutput):
    """Every `msr[N] = V` line sets MSR N; other `msr[` lines are warnings."""

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
