"""Errors vmxdbg reports to a person: one line, naming the file, line, key or address.

Every error a user can cause derives from VmxdbgError; the CLI prints
`vmxdbg: <message>` and exits 2 for it, never a traceback.
"""
from __future__ import annotations

import os
import re
from typing import Optional

# C0 and C1 controls (line ends, ESC of terminal sequences), DEL, and Unicode's line separators
MAX_KEY = 160
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def one_line(text: str) -> str:
    """`text` as one printable line: each control character (a line end, the ESC of a
    terminal sequence) is shown as its escape, e.g. `\\n`, `\\x1b`."""
    if not _CONTROL.search(text):
        return text
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def _rebuilt(cls: type, args: tuple, state: dict) -> "VmxdbgError":
    err = cls.__new__(cls, *args)
    err.args = args
    err.__dict__.update(state)
    return err  # type: ignore[no-any-return]


class VmxdbgError(Exception):
    """Base of every error meant for a person (CLI exit status 2).

    Its message is one printable line whatever an input put into it (see one_line)."""

    def __str__(self) -> str:
        return one_line(super().__str__())

    def __reduce__(self):  # type: ignore[no-untyped-def]
        """Pickled as its message and attributes, so an error raised in a worker process
        (multiprocessing) reaches the parent whole; the default pickling calls the class with
        the message alone, which the keyword-only constructors below refuse."""
        return (_rebuilt, (type(self), self.args, dict(self.__dict__)))


class InputError(VmxdbgError):
    """Bad input: names where (file, line, key) and what was wrong."""

    def __init__(self, message: str, *, source: Optional[str] = None,
                 line: Optional[int] = None, key: Optional[str] = None) -> None:
        if key and len(key) > MAX_KEY:   # a key path built from a file's own (maybe huge) keys
            key = key[:MAX_KEY - 3] + "..."
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


def refuse_special_output(path: "os.PathLike[str] | str", what: str) -> None:
    """Output files are written to a temp name and renamed into place; renaming over a
    device or a pipe (`-o /dev/null` as root) would replace it with a regular file, so an
    existing path that is not a regular file is refused with one line."""
    import stat
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if not stat.S_ISREG(mode):
        raise InputError(f"cannot write the {what}: not a regular file (vmxdbg writes a temp file "
                         "and renames it into place)", source=str(path))


def refuse_existing(path: "os.PathLike[str] | str | None", what: str, force: bool, option: str = "--force") -> None:
    """An output file that exists is not replaced without `--force`: one line saying so."""
    if path is None or force:
        return
    if os.path.isfile(path):      # a device or directory is refused by refuse_special_output / the write
        raise InputError(f"{what} exists; pass {option} to replace it", source=str(path))
