"""Shared set-up of the WinDbg tests: the pykd stand-in on sys.path and targets built from snapshots."""
from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any, List, Tuple  # noqa: F401

import vmxdbg
from vmxdbg.state.snapshot import Snapshot, load_snapshot

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


def broken_pair():
    """Two processors of the vmxon example; processor 1 has CR4.VMXE clear (VMXON #UD there)."""
    pk, t = target_with(2, "vmxon")
    t.processors[1].regs["cr4"] &= ~(1 << 13)
    return pk, t


def output_text(t: Any) -> str:
    return "".join(text for text, _ in t.output)


DRIVER_BASE = 0xFFFFF80061200000
STACK_TOP = 0xFFFFF80071208000
# hvdrv's .text: a VMXON/VMCLEAR/VMPTRLD/VMLAUNCH sequence (as the bundled minihv runs it), then RET
DRIVER_CODE = bytes.fromhex(
    "f30fc7742408"      # vmxon [rsp+8]
    "660fc7742410"      # vmclear [rsp+16]
    "0fc7742410"        # vmptrld [rsp+16]
    "0f01c2"            # vmlaunch
    "c3")               # ret
VMLAUNCH_AT = DRIVER_BASE + 0x1000 + 6 + 6 + 5
TEXT_SIZE = 0x9A0       # virtual size of .text: the page's last 0x660 bytes are padding


def inject_target(n: int = 1, example: str = "vmentry", text_size: int = TEXT_SIZE) -> Tuple[Any, Any]:
    """`n` processors of the example, stopped at hvdrv's VMLAUNCH (processor 0's breakpoint event),
    with hvdrv loaded (a PE image: .text executable, .data writable) and a mapped kernel stack."""
    pk, t = target_with(n, example)
    text = DRIVER_CODE + bytes(text_size - len(DRIVER_CODE))
    t.add_module("hvdrv", DRIVER_BASE, [(".text", 0x1000, text, text_size, 0x60000020),
                                         (".data", 0x2000, bytes(0x10), 0x10, 0xC0000040)])
    for cpu, p in enumerate(t.processors):
        top = STACK_TOP + cpu * 0x10000
        t.virtual.add(top - 0x8000, bytes(range(256)) * 0x80)     # stack contents worth restoring
        p.regs["rsp"] = top - 0x1F8
        p.regs["rip"] = VMLAUNCH_AT
    t.last_event = ("Breakpoint", 0)
    return pk, t


RECORDING_ARGS = ["record", "{path}", "--vmxon", "0x1a2b3000"]


def make_recording(path: str) -> int:
    """`!vmxcheck record PATH --vmxon 0x1a2b3000` on broken_pair(), through the pykd stand-in."""
    from vmxdbg import bang
    pk, _ = broken_pair()
    return bang.main([a.format(path=path) for a in RECORDING_ARGS], pk)


if __name__ == "__main__":   # python tests/windbg_fixtures.py recordings/windbg/NAME.vmxrec.jsonl
    sys.exit(make_recording(sys.argv[1]))
