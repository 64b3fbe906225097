"""Errors vmxdbg reports to a person: one line, naming the file, line, key or address.

Every error a user can cause derives from VmxdbgError; the CLI prints
`vmxdbg: <message>` and exits 2 for it, never a traceback.
"""
from __future__ import annotations

from typing import Optional


class VmxdbgError(Exception):
    """Base of every error meant for a person (CLI exit status 2)."""


class InputError(VmxdbgError):
    """Bad input: names where (file, line, key) and what was wrong."""

    def __init__(self, message: str, *, source: Optional[str] = None,
                 line: Optional[int] = None, key: Optional[str] = None) -> None:
        self.source, self.line, self.key, self.detail = source, line, key, message
        where = ""
        if source:
            where = str(source) + (f":{line}" if line is not None else "")
        if key:
            where = f"{where} [{key}]" if where else key
        super().__init__(f"{where}: {message}" if where else message)


class DefinitionError(InputError):
    """A malformed hardware definition in structs/ (names the file and key)."""


class BackendError(VmxdbgError):
    """A backend query failed: names the backend, the processor and the address/index."""

    def __init__(self, message: str, *, backend: str, cpu: Optional[int] = None,
                 what: Optional[str] = None) -> None:
        self.backend, self.cpu, self.what, self.detail = backend, cpu, what, message
        parts = [backend]
        if cpu is not None:
            parts.append(f"cpu {cpu}")
        if what:
            parts.append(what)
        super().__init__(f"{' '.join(parts)}: {message}")


class NotAvailable(BackendError):
    """The backend cannot answer this query (no such capability or value)."""


class TargetGone(BackendError):
    """The live target exited, hung or disconnected."""


class Divergence(VmxdbgError):
    """A replayed session asked for something other than what was recorded."""
