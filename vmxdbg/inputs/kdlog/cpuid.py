"""`!cpuid` output: one row per processor with family, model, stepping (decimal),
vendor and MHz. It says nothing of the CPUID leaves themselves, so it fills
no `cpuid` entry of the snapshot (unknown is not zero); it names the
processors and is kept as their identity."""
from __future__ import annotations

import re

from .output import CommandOutput
from .reader import Line

_ROW = re.compile(r"^\s*(\d+)\s+(\d+),(\d+),(\d+)\s+(\S+)(?:\s+(\d+))?\s*$")
_LOOKS = re.compile(r"^\s*\d+\s+\d+,")


class CpuidOutput(CommandOutput):
    def feed(self, line: Line) -> None:
        m = _ROW.match(line.text)
        if m:
            cpu = int(m.group(1))
            if line.ended:
                self.state.processor(cpu)
                self.state.result.identity[cpu] = {
                    "family": int(m.group(2)), "model": int(m.group(3)), "stepping": int(m.group(4)),
                    "vendor": m.group(5), "mhz": int(m.group(6)) if m.group(6) else None,
                    "line": line.number}
        elif _LOOKS.match(line.text):
            self.state.warn(line.number, f"!cpuid row does not parse: {line.text.strip()[:80]!r}")
