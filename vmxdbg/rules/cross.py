"""The context of cross-processor rules: every processor at once.

Cross-processor rules register with `cross=True`; their Violations carry the
processors involved (`CrossViolation.cpus`), and the finding is reported on
each of them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List

from ..snapshot import Snapshot
from .engine import Context, Violation


@dataclass
class CrossViolation(Violation):
    cpus: List[int] = field(default_factory=list)


class CrossContext:
    """One Context per processor, sharing the list of inputs read."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.used: List[str] = []
        self.cpus: Dict[int, Context] = {}
        for cpu in sorted(snapshot.processors):
            ctx = Context(snapshot, cpu)
            ctx.used = self.used
            self.cpus[cpu] = ctx
