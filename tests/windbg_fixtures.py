"""Shared set-up of the WinDbg tests: the pykd stand-in on sys.path and targets built from snapshots."""
from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any, List, Tuple

import vmxdbg
from vmxdbg.snapshot import Snapshot, load_snapshot

FAKE_DIR = Path(__file__).resolve().parent / "fake_pykd"
EXAMPLES = Path(vmxdbg.__file__).resolve().parent / "examples"
if str(FAKE_DIR) not in sys.path:
    sys.path.insert(0, str(FAKE_DIR))

import fake_target  # noqa: E402
import pykd as fake_pykd  # noqa: E402  (the stand-in, found first on sys.path)

assert getattr(fake_pykd, "__file__", "").startswith(str(FAKE_DIR)), "the real pykd shadows the stand-in"


def snapshot_with(n: int, example: str = "vmentry") -> Snapshot:
    """The example snapshot's processor 0 copied to processors 0..n-1 (each its own object)."""
    base = load_snapshot(EXAMPLES / f"{example}.vmxsnap.json")
    snap = Snapshot(source=f"{example} x{n}")
    for cpu in range(n):
        snap.processors[cpu] = copy.deepcopy(base.processors[0])
    for addr, data in base.memory.ranges():
        snap.memory.add(addr, data)
    return snap


def target_with(n: int, example: str = "vmentry") -> Tuple[Any, Any]:
    """(fake pykd module, its FakeTarget) for `n` processors of the example."""
    t = fake_pykd.attach(fake_target.FakeTarget.from_snapshot(snapshot_with(n, example)))
    return fake_pykd, t


def text_commands(t: Any) -> List[str]:
    return list(t.commands)
