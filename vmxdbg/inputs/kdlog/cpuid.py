"""`!cpuid` and `!cpuinfo` output: one row per processor with family, model, stepping
(decimal), vendor and MHz; `!cpuinfo` adds the microcode update signature (PRCB
signature) and feature columns:

    CP  F/M/S Manufacturer  MHz PRCB Signature    MSR 8B Signature Features ArchitectureClass
     0  6,183,1 GenuineIntel 3187 0000012f00000000 >0000012f00000000<351b3fff 0

Every processor a row names becomes a processor of the snapshot, and its vendor
(the CPUID leaf 0 vendor string) becomes `state:vendor`: the VMX rules read it
(an AuthenticAMD processor has no VMX). The rows show no CPUID leaf itself, so
no `cpuid` entry is filled (unknown is not zero). The rest is kept as identity.
"""
from __future__ import annotations

import re

from .output import CommandOutput
from .reader import Line
from .state import MAX_CPU

_ROW = re.compile(r"^\s*(\d+)\s+(\d+),(\d+),(\d+)\s+([A-Za-z][\x21-\x7e]{0,11})(?:\s+(\d+))?(?:\s+(.*))?$")
_SIGNATURE = re.compile(r"[>\s]*([0-9a-f]{16})(?:<|\s|$)", re.I)
_LOOKS = re.compile(r"^\s*\d+\s+\d+,\d+,\d+\s")


class CpuidOutput(CommandOutput):
    """Rows of `!cpuid` or `!cpuinfo` (`self.command` tells which)."""

    MARK = ","   # a row, and a line that looks like one, has `F,M,S`

    def feed(self, line: Line) -> None:
        m = _ROW.match(line.text)
        if m is None:
            if _LOOKS.match(line.text):
                self.state.warn(line.number, f"{self.command.split()[0]} row does not parse: "
                                             f"{line.text.strip()[:80]!r}")
            return
        if not line.ended:
            return
        cpu = int(m.group(1))
        if cpu >= MAX_CPU:
            self.state.warn(line.number, f"processor number {cpu} is out of range; row ignored")
            return
        identity = {"family": int(m.group(2)), "model": int(m.group(3)), "stepping": int(m.group(4)),
                    "vendor": m.group(5), "mhz": int(m.group(6)) if m.group(6) else None,
                    "line": line.number}
        sig = _SIGNATURE.match(m.group(7) or "")
        if sig and self.command.lower().lstrip("!").startswith(("cpuinfo", "kdexts.cpuinfo")):
            identity["update_signature"] = int(sig.group(1), 16)
        self.state.result.identity[cpu] = identity
        self.state.set_state(cpu, "vendor", m.group(5), line.number)
