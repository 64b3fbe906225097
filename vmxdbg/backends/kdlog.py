"""A saved kd log as a read-only backend (for the replay console and `collect`).

It answers from the snapshot the log gave (SnapshotBackend), plus virtual
memory dumped with `db`/`dd`/`dq`/`dp`, and it can say which log line each
value came from (`where`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, FrozenSet, Optional

from ..common.errors import NotAvailable
from ..inputs.kdlog import KdLog, parse_file
from ..common.numbers import hexs
from .base import VIRTUAL
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

    def capabilities(self) -> FrozenSet[str]:
        return super().capabilities() | {VIRTUAL}

    def describe(self) -> Dict[str, str]:
        return {"kind": self.name, "source": self.log.source, "lines": str(self.log.lines)}

    def read_virtual(self, cpu: int, address: int, size: int) -> bytes:
        self._p(cpu)
        mem = self.log.virtual.get(cpu)
        data = mem.read(address, size) if mem is not None else None
        if data is None:
            raise NotAvailable("not shown in the log", backend=self.name, cpu=cpu,
                               what=f"virtual 0x{address:x}+0x{size:x}")
        return data

    def where(self, cpu: int, key: str) -> Optional[str]:
        """`file:line` of the value behind input key `key` (e.g. `msr:0x480`), if known."""
        return self._p(cpu).provenance.get(key)

    def where_msr(self, cpu: int, index: int) -> Optional[str]:
        return self.where(cpu, f"msr:{hexs(index)}")
