"""A saved kd log as a read-only backend (for the replay console and `collect`).

It answers from the snapshot the log gave (SnapshotBackend: registers, MSRs,
physical memory, and each processor's virtual memory dumped with
`db`/`dd`/`dq`/`dp`), and it can say which log line each value came from
(`where`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

from ..inputs.kdlog import KdLog, parse_file
from ..common.numbers import hexs
from .snapshot_backend import SnapshotBackend


class KdLogBackend(SnapshotBackend):
    """Read-only answers from a parsed kd log; anything the log did not show is NotAvailable."""

    name = "kdlog"

    def __init__(self, log: KdLog) -> None:
        super().__init__(log.snapshot)
        self.log = log

    @classmethod
    def open(cls, path: Path, at_line: Optional[int] = None) -> "KdLogBackend":
        return cls(parse_file(Path(path), at_line))

    def describe(self) -> Dict[str, str]:
        return {"kind": self.name, "source": self.log.source, "lines": str(self.log.lines)}

    def where(self, cpu: int, key: str) -> Optional[str]:
        """`file:line` of the value behind input key `key` (e.g. `msr:0x480`), if known."""
        return self._p(cpu).provenance.get(key)

    def where_msr(self, cpu: int, index: int) -> Optional[str]:
        return self.where(cpu, f"msr:{hexs(index)}")
