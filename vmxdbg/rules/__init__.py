"""Rules: one module per SDM group, discovered at first use.

A new group is a new module in this package that registers its rules with
`engine.rule`; nothing else needs editing.
"""
from __future__ import annotations

import importlib
import pkgutil

_INFRA = {"engine", "evaluate", "cross", "docs", "bits"}
_loaded = False


def load_all() -> None:
    """Import every rule module of this package once (duplicate ids fail here)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    importlib.import_module(f"{__name__}.cross")
    for mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        if mod not in _INFRA and not mod.startswith("_"):
            importlib.import_module(f"{__name__}.{mod}")


def check_snapshot(snapshot, cpus=None):  # type: ignore[no-untyped-def]
    """See evaluate.check_snapshot."""
    from .evaluate import check_snapshot as _check
    return _check(snapshot, cpus)
