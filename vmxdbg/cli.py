"""The `vmxdbg` command: subcommands are the modules of vmxdbg.commands.

Each command module defines NAME, HELP, add_arguments(parser) and run(args) -> int.
Exit status: 0 success (every verdict ok), 1 a check failed, 2 bad input
(one line on stderr naming the file, line, key or address; never a traceback).
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from typing import List, NoReturn, Optional

from . import __version__
from .common import interrupt
from .common.errors import VmxdbgError


def _command_modules() -> list:
    from . import commands
    mods = []
    for m in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if not m.name.startswith("_"):
            mod = importlib.import_module(f"{commands.__name__}.{m.name}")
            if hasattr(mod, "NAME") and hasattr(mod, "run"):
                mods.append(mod)
    return mods


class OneLineParser(argparse.ArgumentParser):
    """Usage errors are bad input too: one line on stderr, exit status 2."""

    def error(self, message: str) -> "NoReturn":  # type: ignore[override]
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="vmxdbg",
        description="Why VMXON or VM entry fails: every SDM rule checked on every processor.")
    parser.add_argument("--version", action="version", version=f"vmxdbg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    for mod in _command_modules():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP))
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        print("vmxdbg: name a command (`vmxdbg --help` lists them)", file=sys.stderr)
        return 2
    interrupt.reset()
    handlers = interrupt.install()
    try:
        return int(args._run(args))
    except VmxdbgError as exc:
        print(f"vmxdbg: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, interrupt.Terminated) as exc:
        print(f"vmxdbg: {interrupt.signal_line(exc)}", file=sys.stderr)
        return interrupt.status_of(exc)
    except BrokenPipeError:
        return 0
    finally:
        interrupt.restore(handlers)


if __name__ == "__main__":
    sys.exit(main())
