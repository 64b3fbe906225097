"""pytest plugin: recorded sessions under recordings/ become test items.

Inert unless asked: no option given and no `vmxdbg_recordings` ini value means
no item is collected and nothing else changes. (The collection lands in a
following commit; this module exists so the declared entry point loads.)
"""
from __future__ import annotations

RECORD_MODES = ("none", "once", "new_episodes", "all")


def pytest_addoption(parser):  # type: ignore[no-untyped-def]
    group = parser.getgroup("vmxdbg", "vmxdbg recorded sessions")
    group.addoption("--vmxdbg-recordings", action="append", default=[], metavar="DIR",
                    help="collect DIR/**/*.vmxrec.jsonl that have a NAME.expected.json next to them")
    group.addoption("--vmxdbg-record-mode", choices=RECORD_MODES, default="none",
                    help="vcrpy-style record mode for recorded sessions (default: none = replay only)")
    group.addoption("--vmxdbg-update-expected", action="store_true", default=False,
                    help="rewrite each NAME.expected.json from the replayed report instead of comparing")
    parser.addini("vmxdbg_recordings", "directories whose recordings become test items", type="paths", default=[])
